"""Where each predicted crop lands on the object canvas: the central crop of a patch, its
bilinear placement (values, weights and flat pixel indices per patch) and the per-pixel offsets
the offset fit's shape terms are evaluated on. Stitching, phase synchronisation and the offset
fit all work on a ``Placement``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .phase_offsets import PatchGrid
from .physics import sample_windows

# Canvas pixels whose accumulated weight is below this share of the largest are left empty.
MIN_WEIGHT_SHARE = 1e-3


def central(a: np.ndarray, crop: int) -> np.ndarray:
    """The central ``crop`` x ``crop`` region of the last two axes (pixel N//2 stays the centre)."""
    lo = a.shape[-1] // 2 - crop // 2
    return a[..., lo : lo + crop, lo : lo + crop]


@dataclass
class Placement:
    """Where each patch's central crop lands on the object canvas, with its bilinear weights.

    ``values`` (M, S) are the crops shifted by their fractional offsets, ``weights`` (M, S) the
    matching interpolation weights and ``index`` (M, S) the flat canvas pixels (S = (crop+1)^2;
    entries outside the canvas carry weight zero).
    """

    values: torch.Tensor
    weights: torch.Tensor
    index: torch.Tensor
    size: int

    def weight_sum(self) -> torch.Tensor:
        """Accumulated weights per canvas pixel."""
        return torch.zeros(self.size, dtype=torch.float64).index_add_(0, self.index.ravel(), self.weights.ravel())

    def value_sum(self, phasors: torch.Tensor | None = None) -> torch.Tensor:
        """Accumulated values per canvas pixel, each patch times its factor (M,) or per-pixel factors (M, S)."""
        vals = self.values if phasors is None else self.values * (phasors if phasors.ndim == 2 else phasors[:, None])
        return torch.zeros(self.size, dtype=vals.dtype, device=vals.device).index_add_(0, self.index.ravel(),
                                                                                    vals.ravel())

    def inverse_weight(self) -> torch.Tensor:
        """1 / accumulated weight per canvas pixel, zero where the weight is negligible: the
        weighted average is ``value_sum(phasors) * inverse_weight()``."""
        weight = self.weight_sum()
        return torch.where(weight > MIN_WEIGHT_SHARE * weight.max(), 1.0 / weight.clamp_min(1e-12),
                           torch.zeros_like(weight))


def patch_grid(x: np.ndarray, y: np.ndarray, crop: int) -> PatchGrid:
    """Each placed pixel's offset from its patch's position (x, y), in half crops (+-1 at the crop's
    edge), for the layout ``place`` gives: (crop + 1)^2 whole pixels per patch, row by row, from
    floor(x) - crop // 2 and floor(y) - crop // 2."""
    half = crop / 2
    steps = (torch.arange(crop + 1, dtype=torch.float64) - crop // 2) / half
    v, u = (t.ravel() for t in torch.meshgrid(steps, steps, indexing="ij"))
    du, dv = (torch.from_numpy(np.asarray(c, np.float64) % 1.0) / half for c in (x, y))
    return PatchGrid(u, v, du, dv)


def place(patches: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], crop: int,
          illumination: np.ndarray | None = None) -> Placement:
    h, w = shape
    c = torch.from_numpy(np.ascontiguousarray(central(patches, crop)))
    if illumination is None:
        weight_map = torch.ones(crop, crop)
    else:
        weight_map = torch.from_numpy(np.ascontiguousarray(central(np.asarray(illumination, np.float32), crop)))
    span = crop + 1
    steps = torch.arange(span)
    xs, ys = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    col0 = torch.floor(xs).long() - crop // 2
    row0 = torch.floor(ys).long() - crop // 2
    fx, fy = (xs - torch.floor(xs)).float(), (ys - torch.floor(ys)).float()
    src = torch.stack((c.real * weight_map, c.imag * weight_map, weight_map.expand_as(c.real)), dim=1)
    win = sample_windows(src, span // 2 - fx, span // 2 - fy, span, span).double()  # (M, 3, span, span)
    rows = row0[:, None, None] + steps[None, :, None]
    cols = col0[:, None, None] + steps[None, None, :]
    ok = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).expand(-1, span, span)
    flat = rows * w + cols
    index = torch.where(ok, flat, torch.zeros_like(flat)).reshape(len(xs), -1)
    weights = (win[:, 2] * ok).reshape(len(xs), -1)
    values = (torch.complex(win[:, 0], win[:, 1]) * ok).reshape(len(xs), -1)
    return Placement(values, weights, index, h * w)
