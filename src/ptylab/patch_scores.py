"""The network's patches against the truth's: a score the stitching's offset fit cannot make.

Every PINN score of a stitched reconstruction is the network's predictions and the offset fit's
per-patch offsets, gains and low-order shape terms together (``phase_offsets``); on the user-style
files the fit alone reaches phase correlation 0.75 from flat patches. This module scores what
the network itself predicts inside each patch: its crops as the stitching receives them, before
the fit, so none of the fit's terms enter the score. Each predicted crop is compared with the
truth's crop at the same position, both relative to their own level: the amplitude as its
contrast about the crop's mean, so a gain does not count; the phase referenced to the crop's mean
phasor, since a patch's absolute phase is arbitrary. Weighted by the probe's intensity on the
crop (where the pattern saw the object), the products are pooled over all crops into one Pearson
correlation per part: 1 when every crop carries the truth's structure, 0 for flat crops
(docs/quality.md, "What one pattern carries, and what the network predicts inside each patch",
where this was a diagnostic first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metrics import PARTS
from .physics import extract_patches
from .placement import central

# Crops cut from the truth at a time: bounds the memory of the N x N windows they are cut from.
CHUNK = 1024
# Mean weighted square of a crop's relative structure below which it counts as flat: rounding's
# scale (float32 crops), far below any structure (the user-style phase's is about 4e-3 rad^2).
FLAT = 1e-10
# Share of the probe's peak intensity below which a figure leaves a crop's pixel blank.
DIM = 0.1


def _relative(crops: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per crop, the amplitude's contrast (relative to its weighted mean) and the phase relative to
    the weighted mean phasor, each less its weighted mean."""
    amp = np.abs(crops).astype(np.float64)
    level = (amp * weight).sum((-2, -1), keepdims=True)
    amp = np.where(level > 0, amp / np.maximum(level, 1e-30) - 1.0, 0.0)
    ref = (crops * weight).sum((-2, -1), keepdims=True)
    unit = np.where(np.abs(ref) > 0, np.conj(ref) / np.maximum(np.abs(ref), 1e-30), 1.0)
    phase = np.angle(crops * unit).astype(np.float64)
    phase -= (phase * weight).sum((-2, -1), keepdims=True)
    return amp, phase


@dataclass(frozen=True)
class PatchAgreement:
    """``pooled``: one correlation per part over every crop (None where the truth has no structure
    inside any crop, 0 where the prediction has none); ``per_crop``: each crop's own correlation
    per part (NaN where the crop or the truth's is flat), for maps of where the network learnt."""

    pooled: dict[str, float | None]
    per_crop: dict[str, np.ndarray]

    def per_position(self, members: np.ndarray, n_positions: int) -> dict[str, np.ndarray]:
        """Each position's mean over the crops at it (``members``: crop -> position; at gridsize C
        a pattern's crop is its group's merge, about C of them); NaN where it has none scored."""
        out = {}
        for part, r in self.per_crop.items():
            ok = np.isfinite(r)
            total = np.bincount(members[ok], r[ok], minlength=n_positions)
            count = np.bincount(members[ok], minlength=n_positions)
            out[part] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return out


def _truth_crops(members: np.ndarray, x: np.ndarray, y: np.ndarray, truth: np.ndarray, n: int,
                c: int) -> tuple[np.ndarray, np.ndarray]:
    """The truth's central c x c crops of its n x n windows at the distinct positions ``members``
    names, each cut once, and for each member the index of its crop among them."""
    distinct, inverse = np.unique(members, return_inverse=True)
    obj = torch.from_numpy(np.ascontiguousarray(truth, np.complex64))
    cut = extract_patches(obj, torch.from_numpy(np.asarray(x[distinct], np.float32)),
                          torch.from_numpy(np.asarray(y[distinct], np.float32)), n).numpy()
    return central(cut, c), inverse


def _crop_weight(probe: np.ndarray, c: int) -> np.ndarray:
    """The probe's intensity on the c x c crop, summing to 1: where the pattern saw the object."""
    weight = central(np.abs(probe) ** 2, c).astype(np.float64)
    return weight / weight.sum()


def _structure(crops: np.ndarray, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the score compares, per crop, for figures: the amplitude's contrast and the phase about
    the crop's mean phasor, each less its weighted mean; NaN where the probe's intensity is below
    ``DIM`` of its peak on the crop, which the score all but ignores (a network's crop is often
    wild there, and would set the eye on what does not count)."""
    weight = _crop_weight(probe, crops.shape[-1])
    dim = weight < DIM * weight.max()
    amp, phase = _relative(crops, weight)
    return np.where(dim, np.nan, amp), np.where(dim, np.nan, phase)


def patch_agreement(crops: np.ndarray, members: np.ndarray, x: np.ndarray, y: np.ndarray, truth: np.ndarray,
                    probe: np.ndarray) -> PatchAgreement:
    """Pooled, illumination-weighted correlation of each predicted crop's structure with the truth's.

    ``crops`` (M, c, c) complex: the central crops of predicted patches, crop i at the position
    (``x``, ``y``)[``members[i]``] of the (H, W) complex ``truth``; ``probe`` (N, N) gives the
    weight, its intensity on the crop. A pattern is a member of several groups (about C at gridsize
    C > 1, its crop the group's merge each time), so the truth at each position is cut once per
    chunk of crops, not once per crop. The pooled score per part is None for a part whose truth
    has no structure inside any crop (a constant phase), where a correlation would measure nothing.
    """
    m, c = crops.shape[0], crops.shape[-1]
    weight = _crop_weight(probe, c)
    sums = {part: np.zeros(3) for part in PARTS}  # sum w*p*t, w*p^2, w*t^2
    per = {part: np.zeros((m, 3)) for part in PARTS}  # the same, crop by crop
    for lo in range(0, m, CHUNK):
        hi = min(m, lo + CHUNK)
        cut, inverse = _truth_crops(members[lo:hi], x, y, truth, probe.shape[-1], c)
        true = _relative(cut, weight)
        pred = _relative(np.asarray(crops[lo:hi]), weight)
        for part, p, t in zip(PARTS, pred, true, strict=True):
            t = t[inverse]
            products = [weight * p * t, weight * p * p, weight * t * t]
            # Summed over the chunk at once, as before per-crop scores existed: the pooled score
            # keeps its last digits, so a run re-made with this code reproduces an earlier one's.
            sums[part] += [q.sum() for q in products]
            per[part][lo:hi] = np.stack([q.sum((-2, -1)) for q in products], axis=1)
    pooled: dict[str, float | None] = {}
    per_crop = {}
    for part, (pt, pp, tt) in sums.items():
        # Flat inside every crop, to rounding: the truth has no structure to agree with (None), the
        # prediction none to offer (0).
        if tt <= FLAT * m:
            pooled[part] = None
        else:
            pooled[part] = float(pt / np.sqrt(pp * tt)) if pp > FLAT * m else 0.0
        each = per[part]
        scored = (each[:, 1] > FLAT) & (each[:, 2] > FLAT)
        per_crop[part] = np.where(scored, each[:, 0] / np.sqrt(np.maximum(each[:, 1] * each[:, 2], FLAT**2)), np.nan)
    return PatchAgreement(pooled, per_crop)


def median_crops(agreement: PatchAgreement, crops: np.ndarray, members: np.ndarray, x: np.ndarray, y: np.ndarray,
                 truth: np.ndarray, probe: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The patch figure's examples: per part with any crop scored, the truth's crop and the
    predicted crop of median correlation (``agreement.per_crop``), both as the score compares them
    (``_structure``), and that correlation. Taken from the crops as ``patch_agreement`` read them
    (the stitching keeps them in a scratch file only while it runs)."""
    picks = {part: int(np.nanargmin(np.abs(r - np.nanmedian(r))))
             for part, r in agreement.per_crop.items() if np.isfinite(r).any()}
    if not picks:
        return {}
    index = np.array(list(picks.values()))
    cut, inverse = _truth_crops(members[index], x, y, truth, probe.shape[-1], crops.shape[-1])
    true, pred = _structure(cut[inverse], probe), _structure(np.asarray(crops[index]), probe)
    return {part: (true[PARTS.index(part)][j], pred[PARTS.index(part)][j], float(agreement.per_crop[part][i]))
            for j, (part, i) in enumerate(picks.items())}
