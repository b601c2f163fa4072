"""Typed configuration schemas, registered with Hydra's ConfigStore.

Every YAML file under ``conf/`` is merged onto these dataclasses, so a misspelt key or a value of
the wrong type fails at composition (Hydra's own error) before any work starts. Library code takes
these objects (or plain values), never the legacy parameter dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class DatasetConfig:
    """Where the diffraction data come from: the embedded simulation or the user's own files."""

    name: str = "embedded"  # embedded | file
    train_file: str | None = None
    test_file: str | None = None
    # Embedded simulation (ignored for files).
    N: int = 64
    object_size: int = 256
    amplitude_image: str = "camera"
    phase_image: str = "astronaut"
    amplitude_min: float = 0.3
    phase_range: float = 2.0  # radians, peak to peak
    probe_file: str | None = None
    probe_diameter: float = 22.0
    probe_blur: float = 1.5
    probe_defocus: float = 0.0  # quadratic phase (rad) at the disc edge
    scan_step: float = 3.0
    scan_jitter: float = 0.0  # uniform sub-pixel jitter along the fast axis, in pixels


@dataclass
class ViewConfig:
    """An overlap view: thin the scan so neighbours overlap by ``target_overlap`` (None: keep all)."""

    name: str = "dense"
    target_overlap: float | None = 0.7
    min_train_positions: int = 64
    probe_radius: float | None = None  # None: effective radius measured from the probe


@dataclass
class ModelConfig:
    """Network, physics layer and optimisation settings of one model kind."""

    name: str = "pinn"  # pinn | supervised
    base_filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    width: int = 2
    neighbours: int = 7  # K of the KD-tree grouping
    oversample: int = 0  # extra random groups per anchor (gridsize > 1 and K >= C only)
    object_support: str = "center"  # center (N/2 x N/2, zero-padded) | full
    amp_activation: str = "sigmoid"  # sigmoid | swish
    probe_trainable: bool = False
    probe_mask: bool = False
    intensity_scale_trainable: bool = False
    nll_weight: float = 1.0
    mae_weight: float = 0.0
    lr: float = 1e-3
    lr_factor: float = 0.5
    lr_patience: int = 2
    min_lr: float = 1e-4
    early_stop_patience: int = 3
    batch_size: int = 16
    val_fraction: float = 0.1
    max_train_groups: int | None = None  # cap on training samples (None: all)


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    cache_dir: str = "${paths.output_root}/cache"


@dataclass
class EvalConfig:
    """Reconstruction of the test split and its scoring."""

    enabled: bool = True
    stitch_crop: int | None = None  # central region of each patch used for stitching (None: N/2)
    sync_phase: bool = True  # make per-patch phase offsets consistent before stitching
    upsample_factor: int = 20  # sub-pixel registration precision: 1/upsample_factor px
    max_shift_px: float = 4.0  # larger registration shifts are refused (the reconstruction is not trusted)
    remove_phase_plane: bool = False
    batch_size: int = 64


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Passed verbatim to lightning.Trainer, so any Trainer argument works (``++trainer.x=...``).
    trainer: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dose: float = 1e4
    gridsize: int = 2
    seed: int = 1
    ckpt_path: str | None = None
    redo: bool = False  # re-run a job whose directory already holds a finished manifest
    logger: str = "csv"  # csv | tensorboard (needs the tensorboard extra)
    experiment: str | None = None


@dataclass
class SimulateConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    view: ViewConfig | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    dose: float = 1e4
    seed: int = 1
    output_dir: str = MISSING


def format_dose(dose: float) -> str:
    """Short, readable dose tag for directory names: 1000 -> '1e3', 1500 -> '1.5e3'."""
    if dose <= 0:
        return str(dose)
    exponent = math.floor(math.log10(dose))
    mantissa = round(dose / 10**exponent, 3)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    text = f"{mantissa:g}"
    return f"{text}e{exponent}"


def run_tag(dose: float, view: str, gridsize: int, model: str) -> str:
    return f"dose{format_dose(float(dose))}_{view}_gs{gridsize}_{model}"


def register_configs() -> None:
    """Register schemas and resolvers once per process (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="simulate_schema", node=SimulateConfig)
    if not OmegaConf.has_resolver("ptylab_tag"):
        OmegaConf.register_new_resolver("ptylab_tag", run_tag)


register_configs()
