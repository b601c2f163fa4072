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

import numpy as np
import torch

from .physics import extract_patches
from .stitching import central

# Crops cut from the truth at a time: bounds the memory of the N x N windows they are cut from.
CHUNK = 1024
# Mean weighted square of a crop's relative structure below which it counts as flat: rounding's
# scale (float32 crops), far below any structure (the user-style phase's is about 4e-3 rad^2).
FLAT = 1e-10


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


def patch_agreement(crops: np.ndarray, members: np.ndarray, x: np.ndarray, y: np.ndarray, truth: np.ndarray,
                    probe: np.ndarray) -> dict[str, float | None]:
    """Pooled, illumination-weighted correlation of each predicted crop's structure with the truth's.

    ``crops`` (M, c, c) complex: the central crops of predicted patches, crop i at the position
    (``x``, ``y``)[``members[i]``] of the (H, W) complex ``truth``; ``probe`` (N, N) gives the
    weight, its intensity on the crop. A pattern is a member of several groups (about C at gridsize
    C > 1, its crop the group's merge each time), so the truth at each position is cut once per
    chunk of crops, not once per crop. Returns ``{"amplitude": r, "phase": r}``; None for a part
    whose truth has no structure inside any crop (a constant phase), where a correlation would
    measure nothing.
    """
    m, c = crops.shape[0], crops.shape[-1]
    n = probe.shape[-1]
    weight = central(np.abs(probe) ** 2, c).astype(np.float64)
    weight /= weight.sum()
    sums = {part: np.zeros(3) for part in ("amplitude", "phase")}  # sum w*p*t, w*p^2, w*t^2
    obj = torch.from_numpy(np.ascontiguousarray(truth, np.complex64))
    for lo in range(0, m, CHUNK):
        hi = min(m, lo + CHUNK)
        distinct, inverse = np.unique(members[lo:hi], return_inverse=True)
        cut = extract_patches(obj, torch.from_numpy(np.asarray(x[distinct], np.float32)),
                              torch.from_numpy(np.asarray(y[distinct], np.float32)), n).numpy()
        pred, true = _relative(np.asarray(crops[lo:hi]), weight), _relative(central(cut, c), weight)
        for part, p, t in zip(("amplitude", "phase"), pred, true, strict=True):
            t = t[inverse]
            sums[part] += [(weight * p * t).sum(), (weight * p * p).sum(), (weight * t * t).sum()]
    out: dict[str, float | None] = {}
    for part, (pt, pp, tt) in sums.items():
        # Flat inside every crop, to rounding: the truth has no structure to agree with (None), the
        # prediction none to offer (0).
        if tt <= FLAT * m:
            out[part] = None
        else:
            out[part] = float(pt / np.sqrt(pp * tt)) if pp > FLAT * m else 0.0
    return out
