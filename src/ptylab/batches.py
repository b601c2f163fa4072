"""Grouped diffraction samples as tensors, batched without per-sample Python work.

A batch is gathered with one indexing operation (``__getitems__``), so the data pipeline costs
almost nothing next to the network. Arrays stay where they are (memory-mapped files are gathered
batch by batch, never copied whole).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .grouping import Groups
from .symmetries import transform_images, transform_offsets


class GroupedPatterns(Dataset):
    """Samples of C patterns: ``diff`` (C, N, N), ``offsets`` (C, 2), and ``Y`` (C, N, N) if known.
    A batch carries the detector's mask ``valid`` (N, N) once, where the data have one.

    An item ``i + n * t`` (n groups) is group i under symmetry transform t (``ptylab.symmetries``):
    its patterns, offsets and ``Y`` patches transformed alike. ``EpochShuffle`` draws such items
    when given the probe's symmetries; plain indices (t = 0) are the groups as measured.
    """

    def __init__(self, diff: np.ndarray, groups: Groups, y_patches: np.ndarray | None = None,
                 valid_pixels: np.ndarray | None = None):
        self.diff = diff
        self.indices = groups.indices
        self.offsets = groups.offsets.astype(np.float32)
        self.y = y_patches
        self.valid = None if valid_pixels is None else torch.from_numpy(np.asarray(valid_pixels, dtype=bool))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitems__(self, items: list[int]) -> dict[str, torch.Tensor]:
        coded = np.asarray(items, dtype=np.int64)
        sel, transforms = coded % len(self), coded // len(self)
        members = self.indices[sel]  # (b, C)
        flat = members.ravel()
        order = np.argsort(flat, kind="stable")  # sorted reads are fast on memory-mapped files
        gathered = np.empty((flat.size, *self.diff.shape[1:]), dtype=np.float32)
        gathered[order] = self.diff[flat[order]]
        arrays = {"diff": gathered.reshape(*members.shape, *self.diff.shape[1:]), "offsets": self.offsets[sel]}
        if self.y is not None:
            arrays["Y"] = np.asarray(self.y[flat]).reshape(*members.shape, *self.y.shape[1:])
        if transforms.any():
            arrays = _transformed(arrays, transforms)
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        batch["index"] = torch.from_numpy(sel)
        if self.valid is not None:
            batch["valid"] = self.valid
        return batch

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([item]).items()}


def _transformed(arrays: dict[str, np.ndarray], transforms: np.ndarray) -> dict[str, np.ndarray]:
    """Each sample b of the batch under its transform ``transforms[b]``, one call per transform."""
    out = {k: v.copy() for k, v in arrays.items()}
    for t in np.unique(transforms[transforms > 0]):
        rows = transforms == t
        for k, v in arrays.items():
            out[k][rows] = transform_offsets(v[rows], int(t)) if k == "offsets" else transform_images(v[rows], int(t))
    return out


def _already_batched(batch: Any) -> Any:
    return batch


class EpochShuffle(Sampler[int]):
    """A shuffled order that depends on (seed, epoch) only, never on what ran before.

    Lightning calls ``set_epoch`` before each epoch, so a run resumed at an epoch boundary sees
    exactly the batches the uninterrupted run saw (a generator carried across epochs would restart
    from its seed and reorder everything after the resume). ``fraction`` < 1 draws that share of
    the samples per epoch (a fresh seeded subset each epoch). With ``transforms`` beyond the
    identity, each drawn sample also gets one of them at random (item ``i + n * t``, see
    ``GroupedPatterns``), after the same permutation, so the order does not depend on them.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, fraction: float = 1.0,
                 transforms: tuple[int, ...] = (0,)):
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), shuffle, 0
        self.transforms = np.asarray(transforms, dtype=np.int64)
        self.per_epoch = n if not shuffle else max(1, min(n, math.ceil(n * fraction)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)[: self.per_epoch]
        if self.transforms.size > 1:
            order = order + self.n * self.transforms[rng.integers(self.transforms.size, size=order.size)]
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.per_epoch


def make_loader(dataset: GroupedPatterns, batch_size: int, shuffle: bool, seed: int,
                fraction: float = 1.0, transforms: tuple[int, ...] = (0,)) -> DataLoader:
    sampler = EpochShuffle(len(dataset), seed, shuffle, fraction, transforms)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_already_batched, num_workers=0)


def split_train_val(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random, seeded validation share of the training groups (at least one group each side)."""
    perm = rng.permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1) if val_fraction > 0 and n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def input_scale(diff: np.ndarray) -> float:
    """Scale that makes the mean total normalised intensity (N/2)^2, recorded for inference."""
    n = diff.shape[-1]
    sample = diff[:: max(1, diff.shape[0] // 4096)].astype(np.float64)
    mean_total = float((sample**2).sum(axis=(1, 2)).mean())
    return float(np.sqrt((n / 2) ** 2 / max(mean_total, 1e-12)))
