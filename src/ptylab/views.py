"""Overlap views (DESIGN section 5): thin a scan so neighbours overlap by a target fraction.

Solve f(d) = target for the disc-overlap fraction f, then keep positions greedily in scan order so
that no two kept positions are closer than d. A view too small to train on is skipped with a
reason and numbers, never by an exception deep in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.spatial import cKDTree

from .config import ViewConfig
from .data import PtychoData
from .physics import effective_probe_radius


def overlap_fraction(d: float | np.ndarray, radius: float) -> float | np.ndarray:
    """Area shared by two discs of ``radius`` at centre distance d, as a fraction of one disc."""
    d = np.clip(np.asarray(d, dtype=np.float64), 0.0, 2 * radius)
    r2 = radius**2
    lens = 2 * r2 * np.arccos(d / (2 * radius)) - (d / 2) * np.sqrt(4 * r2 - d**2)
    out = lens / (math.pi * r2)
    return float(out) if out.ndim == 0 else out


def spacing_for_overlap(target: float, radius: float) -> float:
    """Minimum centre distance d with f(d) = target (f falls monotonically from 1 to 0)."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"view target_overlap must lie in (0, 1), got {target}")
    return float(brentq(lambda d: overlap_fraction(d, radius) - target, 0.0, 2 * radius, xtol=1e-9))


def greedy_thin(x: np.ndarray, y: np.ndarray, spacing: float) -> np.ndarray:
    """Indices kept, in scan order, such that no two are closer than ``spacing``.

    A spatial hash with cells of size ``spacing`` keeps each check to the 3x3 neighbouring cells.
    """
    if spacing <= 0:
        return np.arange(x.size)
    cells: dict[tuple[int, int], list[int]] = {}
    kept: list[int] = []
    s2 = spacing**2 - 1e-9
    for i in range(x.size):
        cx, cy = int(x[i] // spacing), int(y[i] // spacing)
        close = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cells.get((cx + dx, cy + dy), ()):
                    if (x[i] - x[j]) ** 2 + (y[i] - y[j]) ** 2 < s2:
                        close = True
                        break
                if close:
                    break
            if close:
                break
        if not close:
            kept.append(i)
            cells.setdefault((cx, cy), []).append(i)
    return np.asarray(kept, dtype=np.int64)


def median_nn_distance(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return float("nan")
    d, _ = cKDTree(np.column_stack((x, y))).query(np.column_stack((x, y)), k=2)
    return float(np.median(d[:, 1]))


@dataclass
class ViewSelection:
    """Which positions of each split a view keeps, with the numbers that justify it."""

    name: str
    train_index: np.ndarray
    test_index: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None

    def apply(self, train: PtychoData, test: PtychoData) -> tuple[PtychoData, PtychoData]:
        """The kept positions of each split."""
        return train.subset(self.train_index), test.subset(self.test_index)


def _split_stats(x: np.ndarray, y: np.ndarray, kept: np.ndarray, radius: float) -> dict[str, Any]:
    nn = median_nn_distance(x[kept], y[kept])
    return {
        "kept": int(kept.size),
        "available": int(x.size),
        "median_nn_distance": nn,
        "achieved_overlap": float(overlap_fraction(nn, radius)) if math.isfinite(nn) else None,
    }


def select_view(
    cfg: ViewConfig,
    train_xy: tuple[np.ndarray, np.ndarray],
    test_xy: tuple[np.ndarray, np.ndarray],
    probe_radius: float,
) -> ViewSelection:
    """Apply the view to both splits (a sparse experiment is sparse at test time too)."""
    radius = cfg.probe_radius or probe_radius
    spacing = 0.0 if cfg.target_overlap is None else spacing_for_overlap(cfg.target_overlap, radius)
    train_idx = greedy_thin(*train_xy, spacing)
    test_idx = greedy_thin(*test_xy, spacing)
    stats = {
        "view": cfg.name,
        "target_overlap": cfg.target_overlap,
        "probe_radius": radius,
        "spacing": spacing,
        "min_train_positions": cfg.min_train_positions,
        "train": _split_stats(*train_xy, train_idx, radius),
        "test": _split_stats(*test_xy, test_idx, radius),
    }
    reason = None
    if train_idx.size < cfg.min_train_positions:
        reason = (f"view '{cfg.name}' keeps {train_idx.size} of {train_xy[0].size} training positions at spacing "
                  f"{spacing:.2f} px (target overlap {cfg.target_overlap}), fewer than the "
                  f"{cfg.min_train_positions} it needs (view.min_train_positions)")
    elif test_idx.size == 0:
        reason = f"view '{cfg.name}' keeps no test positions"
    return ViewSelection(cfg.name, train_idx, test_idx, stats, reason)


def select_view_for(cfg: ViewConfig, train: PtychoData, test: PtychoData) -> ViewSelection:
    """The view applied to a dataset's two splits, with the probe's own effective radius."""
    return select_view(cfg, (train.xcoords, train.ycoords), (test.xcoords, test.ycoords),
                       effective_probe_radius(train.probe))
