"""Grouping of neighbouring positions (DESIGN section 6).

With gridsize g a sample is C = g^2 patterns: an anchor and its C - 1 nearest neighbours among the
K nearest (KD-tree). One group per anchor by default; extra random groups (oversampling) only on
request and only where they make sense (g > 1, K >= C). Offsets are relative to the group centroid,
so they sum to zero per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .errors import PtylabError


class GroupingError(PtylabError, ValueError):
    pass


@dataclass
class Groups:
    indices: np.ndarray  # (G, C) int64 positions of each group, anchor first
    offsets: np.ndarray  # (G, C, 2) float64 (dx, dy) from the group centroid

    @property
    def n_groups(self) -> int:
        return int(self.indices.shape[0])


def neighbours_needed(gridsize: int, oversample: int = 0) -> int:
    """The least K a grouping at ``gridsize`` can draw from: C - 1 = g^2 - 1 other members, and
    C = g^2 with oversampling (an alternative combination needs one more candidate); none at g = 1."""
    if gridsize == 1:
        return 0
    return gridsize**2 if oversample else gridsize**2 - 1


def group_positions(
    x: np.ndarray,
    y: np.ndarray,
    gridsize: int,
    neighbours: int = 7,
    oversample: int = 0,
    rng: np.random.Generator | None = None,
) -> Groups:
    if gridsize < 1:
        raise GroupingError(f"gridsize must be >= 1, got {gridsize}")
    c = gridsize**2
    m = x.size
    if oversample and gridsize == 1:
        raise GroupingError("oversampling (model.oversample > 0) needs gridsize > 1: a single pattern has no "
                            "alternative neighbours to draw")
    if oversample and neighbours < neighbours_needed(gridsize, oversample):
        raise GroupingError(f"oversampling needs K >= C: model.neighbours={neighbours} < gridsize^2={c}")
    if oversample < 0:
        raise GroupingError(f"model.oversample must be >= 0, got {oversample}")
    if gridsize == 1:
        idx = np.arange(m, dtype=np.int64)[:, None]
        return Groups(idx, np.zeros((m, 1, 2)))
    if neighbours < neighbours_needed(gridsize):
        raise GroupingError(f"model.neighbours={neighbours} is too few for gridsize {gridsize}: need >= {c - 1}")
    if m < c:
        raise GroupingError(f"{m} positions cannot form groups of {c} (gridsize {gridsize})")
    xy = np.column_stack((x, y))
    k = min(neighbours, m - 1)
    _, nn = cKDTree(xy).query(xy, k=k + 1)  # column 0 is the anchor itself
    nn = np.asarray(nn, dtype=np.int64)
    # Coincident positions can put the anchor in a later column: move it to the front.
    for i in np.flatnonzero(nn[:, 0] != np.arange(m)):
        at = np.flatnonzero(nn[i] == i)
        nn[i, [0, at[0]] if at.size else [0]] = nn[i, [at[0], 0]] if at.size else [i]
    groups = [nn[:, :c]]
    if oversample:
        if rng is None:
            raise GroupingError("oversampling needs a seeded generator")
        for _ in range(oversample):
            picks = np.argsort(rng.random((m, k)), axis=1)[:, : c - 1] + 1
            groups.append(np.concatenate([nn[:, :1], np.take_along_axis(nn, picks, axis=1)], axis=1))
    indices = np.concatenate(groups, axis=0)
    members = xy[indices]  # (G, C, 2)
    offsets = members - members.mean(axis=1, keepdims=True)
    return Groups(indices, offsets)
