"""Simulate the embedded dataset at a photon dose: object + probe + scan -> noisy amplitudes.

The object and probe come from bundled images (DESIGN section 4); the split is by position
(y above the middle row trains, below tests) so most of the test region is never seen in training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import EmbeddedDatasetConfig, ScanPattern
from .data import DataError, PtychoData
from .physics import (
    dose_scale,
    exit_wave_intensity,
    extract_patches,
    fermat_scan,
    make_object,
    make_probe,
    poisson_sample,
    raster_scan,
)
from .rng import stage_rng

log = logging.getLogger(__name__)
CHUNK = 1024


def load_probe(cfg: EmbeddedDatasetConfig) -> np.ndarray:
    if cfg.probe_file is None:
        return make_probe(cfg.N, cfg.probe_diameter, cfg.probe_blur, cfg.probe_defocus)
    probe = read_probe_file(cfg.probe_file)
    if probe.shape != (cfg.N, cfg.N):
        raise DataError(cfg.probe_file, "probeGuess", f"shape ({cfg.N}, {cfg.N}) (dataset.N)", str(probe.shape),
                        ["probeGuess"])
    return probe


def read_probe_file(path: str) -> np.ndarray:
    """A probe from an NPZ/HDF5 file holding ``probeGuess`` (no pickles)."""
    import h5py

    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                keys = list(f.keys())
                if "probeGuess" not in f:
                    raise DataError(path, "probeGuess", "a (N, N) complex probe", "key missing", keys)
                return np.asarray(f["probeGuess"][()], dtype=np.complex64)
        with np.load(path, allow_pickle=False) as npz:
            if "probeGuess" not in npz.files:
                raise DataError(path, "probeGuess", "a (N, N) complex probe", "key missing", list(npz.files))
            return np.asarray(npz["probeGuess"], dtype=np.complex64)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(path, None, "an NPZ or HDF5 file with probeGuess", str(exc), []) from exc


def scan_positions(cfg: EmbeddedDatasetConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions (x, y) the dataset's scan visits on its object, in scan order."""
    shape = (cfg.object_size, cfg.object_size)
    if cfg.scan_pattern == ScanPattern.fermat:
        return fermat_scan(shape, cfg.N, cfg.scan_step)
    return raster_scan(shape, cfg.N, cfg.scan_step, cfg.scan_jitter, stage_rng(seed, "scan"))


def beamstop_mask(n: int, radius: float) -> np.ndarray | None:
    """The detector's measured pixels (N, N) behind a round beamstop of ``radius`` px at the
    patterns' centre pixel N//2 (None for radius 0). Round and centred, it keeps every symmetry a
    disc probe has, so training still draws its transformed samples."""
    if radius <= 0:
        return None
    yy, xx = np.mgrid[:n, :n] - n // 2
    return np.hypot(yy, xx) >= radius


def simulate(cfg: EmbeddedDatasetConfig, dose: float, seed: int) -> tuple[PtychoData, PtychoData, dict[str, Any]]:
    """Return (train, test, summary) for the embedded dataset at ``dose`` photons per pattern."""
    if dose <= 0:
        raise ValueError(f"dose must be positive photons per pattern, got {dose}")
    t0 = time.perf_counter()
    probe = load_probe(cfg)
    obj = make_object(cfg.object_size, cfg.amplitude_image, cfg.phase_image, cfg.amplitude_min, cfg.phase_range,
                      cfg.amplitude_max)
    x, y = scan_positions(cfg, seed)
    obj_t = torch.from_numpy(obj)
    probe_t = torch.from_numpy(probe)
    patches = torch.cat([
        extract_patches(obj_t, torch.from_numpy(x[i:i + CHUNK]), torch.from_numpy(y[i:i + CHUNK]), cfg.N)
        for i in range(0, x.size, CHUNK)
    ])
    scale = dose_scale(probe, patches, dose)
    intensity = torch.cat([
        exit_wave_intensity(probe_t, patches[i:i + CHUNK]) for i in range(0, x.size, CHUNK)
    ]).numpy() * scale**2

    valid = beamstop_mask(cfg.N, cfg.beamstop_radius)
    is_train = y < obj.shape[0] / 2
    base_meta = {
        "source": "embedded",
        "nphotons": float(dose),
        "intensity_scale": scale,
        "seed": int(seed),
        "dataset": asdict(cfg),
        "split_rule": f"train: y < {obj.shape[0] / 2}; test: y >= {obj.shape[0] / 2}",
        "ptylab_version": __version__,
    }
    splits: dict[str, PtychoData] = {}
    stats: dict[str, Any] = {}
    for split, mask in (("train", is_train), ("test", ~is_train)):
        idx = np.flatnonzero(mask)
        counts = poisson_sample(intensity[idx], stage_rng(seed, "noise", float(dose), split))
        if valid is not None:
            counts[:, ~valid] = 0
        totals = counts.sum(axis=(1, 2))
        stats[split] = {
            "positions": int(idx.size),
            "counts_per_pattern": {"mean": float(totals.mean()), "min": float(totals.min()),
                                   "max": float(totals.max())},
        }
        splits[split] = PtychoData(
            diff3d=np.sqrt(counts).astype(np.float32),
            xcoords=x[idx],
            ycoords=y[idx],
            probe=probe,
            obj=obj,
            Y=patches[idx].numpy().astype(np.complex64),
            scan_index=idx.astype(np.int64),
            metadata={**base_meta, "split": split},
            valid_pixels=valid,
        )
    summary = {
        "positions": int(x.size),
        "splits": stats,
        "dose": float(dose),
        "intensity_scale": scale,
        "seed": int(seed),
        "simulate_s": round(time.perf_counter() - t0, 3),
    }
    log.info("simulated %d patterns at dose %g in %.1f s", x.size, dose, summary["simulate_s"])
    return splits["train"], splits["test"], summary
