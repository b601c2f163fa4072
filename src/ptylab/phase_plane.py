"""The field-wide phase plane: a mode of the object that the patterns cannot see.

A linear phase ramp across the whole object, of slope g rad per pixel, moves every far-field
pattern by g N / (2 pi) detector pixels: 0.3 rad across the embedded test scan (340 px wide)
moves each 64 px pattern by about 0.01 px, far below what these doses resolve. Replacing the
refined arm's plane by another changed its data fit in the fifth digit (1.19684 -> 1.19689 at
1e3, docs/quality.md): the test patterns do not choose it. A network's plane is what it learnt in
training, from many patterns under the probe's symmetries; refinement fits the test patterns alone
and drifts along this mode as it fits their noise: on the 1e3 default job its plane grew to 0.28
rad across the field against the single pass's 0.05, for 0.087 of phase SSIM.

So the refined arm keeps the single pass's plane (``keep_plane``): what the test patterns decide
comes from refinement, the mode they cannot see from training.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .stitching import Stitched


def keep_plane(obj: Stitched, reference: Stitched) -> tuple[Stitched, float]:
    """``obj`` with the phase plane of ``reference``: the plane (and constant) of the two objects'
    phase difference, fitted by weighted least squares inside ``obj``'s scanned box and taken out
    of ``obj``. Weights: ``reference``'s stitching weight times both amplitudes, so empty and dark
    pixels decide nothing. The difference's weighted mean phase is taken out before the fit, so
    that objects whose phases differ by about pi overall do not wrap. Returns the new object
    (amplitude untouched) and the plane's span over the box in rad."""
    if obj.obj.shape != reference.obj.shape:
        raise ValueError(f"objects of shapes {obj.obj.shape} and {reference.obj.shape}: not on one canvas")
    r0, r1, c0, c1 = obj.bbox
    box = np.s_[r0:r1, c0:c1]
    diff = (obj.obj * np.conj(reference.obj))[box].astype(np.complex128)
    weight = (reference.weight * np.abs(obj.obj) * np.abs(reference.obj))[box].astype(np.float64)
    if not weight.sum() > 0:
        raise ValueError("the objects share no weighted pixel in the scanned box")
    mean = np.angle((weight * diff).sum())
    phase = np.angle(diff * np.exp(-1j * mean))
    rows, cols = np.mgrid[: obj.obj.shape[0], : obj.obj.shape[1]].astype(np.float64)
    design = np.stack([cols[box].ravel(), rows[box].ravel(), np.ones(phase.size)], axis=1)
    root = np.sqrt(weight.ravel())
    coef, *_ = np.linalg.lstsq(design * root[:, None], phase.ravel() * root, rcond=None)
    plane = coef[0] * cols + coef[1] * rows
    span = float(np.ptp(plane[box]))
    kept = obj.obj * np.exp(-1j * (plane + coef[2] + mean))
    return replace(obj, obj=kept.astype(obj.obj.dtype)), span
