"""Shared fixtures: a small embedded dataset configuration so tests stay fast on two cores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ptylab.config import EmbeddedDatasetConfig as DatasetConfig
from ptylab.data import PtychoData
from ptylab.physics import extract_patches, make_object, raster_scan
from ptylab.rng import stage_rng
from ptylab.simulate import beamstop_mask
from ptylab.training import LIGHTNING_NOISE

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small but real: 32 x 32 patterns from a 96 x 96 object, ~260 positions.
SMALL_DATASET = {"N": 32, "object_size": 96, "probe_diameter": 11.0, "probe_blur": 1.0, "scan_step": 4.0}
SMALL_OVERRIDES = [f"dataset.{k}={v}" for k, v in SMALL_DATASET.items()]
# A tiny network and a short training for end-to-end tests. Ten offset-fit steps, not 100: these
# tests check the pipeline, and every evaluation fits twice (the network's patches and the flat
# patches of the fit-alone reference); the full fit is tested in test_stitching and test_quality.
TINY_TRAIN = [
    "model.base_filters=[8,16,32]", "model.width=1", "model.batch_size=8", "trainer.max_epochs=2",
    "++trainer.limit_train_batches=4", "++trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
    "view.min_train_positions=16", "refine.steps=3", "eval.offset_fit_steps=10",
]
# Added by tests of plumbing (launchers, search, failures, comparison rows) that neither the refined
# arm nor the fit-alone and network-alone references concern: they take about half of a tiny job's
# time, and other tests cover them (the run-directory, sweep, fault and quality tests keep them on).
PLUMBING = ["refine.enabled=false", "eval.fit_alone=false", "eval.network_alone=false"]


def pytest_configure(config: pytest.Config) -> None:
    """Keep Lightning's noise out of the suite's report, so that a new warning stands out: the two
    warnings ``training.fit`` keeps from jobs, which some tests meet by driving ``lightning.Trainer``
    directly. The test that ``fit`` keeps them from jobs records every warning."""
    for text in LIGHTNING_NOISE:
        config.addinivalue_line("filterwarnings", f"ignore:{re.escape(text)}")


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 96 px complex object, a raster of sub-pixel positions on it and the 32 px patches there."""
    obj = make_object(96, "camera", "astronaut", 0.3, 2.0)
    x, y = raster_scan(obj.shape, 32, 5.0, 0.4, stage_rng(0, "scan"))  # sub-pixel positions
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(x), torch.from_numpy(y), 32).numpy()
    return obj, x, y, patches


@pytest.fixture
def small_dataset_cfg() -> DatasetConfig:
    return DatasetConfig(**SMALL_DATASET)


def behind_beamstop(data: PtychoData, radius: float) -> PtychoData:
    """``data`` as measured behind a round beamstop of ``radius`` px (``simulate.beamstop_mask``):
    its patterns 0 there and the mask with them (radius 1.5: the central 3 x 3 pixels; 2.9: 5 x 5)."""
    valid = beamstop_mask(data.N, radius)
    return replace(data, diff3d=np.where(valid, data.diff3d, 0).astype(np.float32), valid_pixels=valid)


def compose_config(overrides: list[str], name: str = "train") -> DictConfig:
    """A config composed from conf/ with Hydra's compose API, as the entry points compose it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def run_script(args: list[str], cwd: Path, timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a project entry point as a user would, in a subprocess (``env`` added to its environment)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
