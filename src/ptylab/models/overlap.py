"""The overlap constraint: place a group's patches on a shared canvas, average, cut them out again.

This is what makes neighbouring predictions consistent; with one patch per group it is the
identity. Placement uses the same bilinear sampler as the simulator's patch extraction.
"""

from __future__ import annotations

import math

import torch

from ..physics import sample_windows

EPS = 1e-6


def merge_overlaps(patches: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """patches (B, C, N, N) complex, offsets (B, C, 2) (dx, dy) -> same shape: at each canvas pixel
    the members' values averaged with ``weight`` (N, N), >= 0 and zero off the predicted support,
    placed with its patch."""
    b, c, n, _ = patches.shape
    if c == 1:
        return patches
    # The canvas frame is arbitrary: move it so the anchor's offset is integral. Members whose
    # positions differ by whole pixels are then placed and cut exactly, without interpolation blur.
    offsets = offsets - (offsets[:, :1] - torch.round(offsets[:, :1]))
    pad = math.ceil(float(offsets.abs().max())) + 1
    size = n + 2 * pad
    w = weight.to(patches.real.dtype)
    patches = patches * w
    src = torch.stack((patches.real, patches.imag, w.expand(b, c, n, n)), dim=2).reshape(b * c, 3, n, n)
    off = offsets.reshape(b * c, 2).to(src.dtype)
    placed = sample_windows(src, n // 2 - off[:, 0], n // 2 - off[:, 1], size, size)
    canvas = placed.reshape(b, c, 3, size, size).sum(dim=1)
    total = canvas[:, 2:3]
    mean = torch.where(total > EPS, canvas[:, :2] / total.clamp_min(EPS), torch.zeros_like(canvas[:, :2]))
    shared = mean[:, None].expand(b, c, 2, size, size).reshape(b * c, 2, size, size)
    cut = sample_windows(shared, size // 2 + off[:, 0], size // 2 + off[:, 1], n, n).reshape(b, c, 2, n, n)
    return torch.complex(cut[:, :, 0], cut[:, :, 1])
