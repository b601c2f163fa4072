"""Image metrics for reconstructions, from torchmetrics where they exist, plus a careful FRC.

PSNR uses the ground truth's own data range (never an 8-bit 255) and is capped at ``PSNR_CAP_DB``
for identical images (an infinite value does not survive JSON). MS-SSIM uses as many of the
standard five scales as the image size allows and reports how many.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.functional import mean_absolute_error, mean_squared_error
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

PSNR_CAP_DB = 100.0
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_KERNEL = 11
# torchmetrics' SSIM in float64 unfolds every 11x11 window on CPU: about 5 kB per pixel. It is
# computed in row strips of about this many bytes of that buffer (exactly the same mean).
SSIM_STRIP_BYTES = 32 * 2**20

# The two parts of a complex object, scored apart, in this order everywhere.
PARTS = ("amplitude", "phase")


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float64))[None, None]


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    if np.array_equal(pred, target):
        return PSNR_CAP_DB
    value = float(peak_signal_noise_ratio(_t(pred), _t(target), data_range=data_range))
    return min(value, PSNR_CAP_DB)


def ms_ssim_scales(shape: tuple[int, int], kernel: int = SSIM_KERNEL) -> int:
    """Most scales (<= 5) whose coarsest level still holds the SSIM window, within torchmetrics' limit."""
    side = min(shape)
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if side // 2 ** (scales - 1) >= kernel and side > (kernel - 1) * max(1, scales - 1) ** 2:
            return scales
    return 0


def ms_ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> tuple[float | None, int]:
    scales = ms_ssim_scales(target.shape)
    if scales < 2:
        return None, scales
    betas = tuple(b / sum(MS_SSIM_BETAS[:scales]) for b in MS_SSIM_BETAS[:scales])
    # Normalise into [0, 1] so the contrast terms stay positive for signed data such as phase.
    lo = float(target.min())
    # float32: float64 would unfold every window (about 5 kB per pixel, see SSIM_STRIP_BYTES);
    # float32 convolutions do not, and change the score in the sixth digit.
    value = multiscale_structural_similarity_index_measure(
        _t((pred - lo) / data_range).float(), _t((target - lo) / data_range).float(), data_range=1.0, betas=betas,
        normalize="relu")
    return float(value), scales


def frc_curve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two real images, rings one frequency bin wide.

    Means are removed and a Hann window applied (edges would otherwise add a spurious cross), so
    the FRC of an image with itself is exactly 1 and of independent noise images scatters about 0.
    Frequencies are in cycles per pixel, up to Nyquist (0.5).
    """
    h, w = a.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    n_bins = min(h, w) // 2
    edges = np.linspace(0.0, 0.5, n_bins + 1)
    ring = np.digitize(radius, edges) - 1
    inside = (ring >= 0) & (ring < n_bins)
    r = ring[inside]
    cross = np.bincount(r, (fa * np.conj(fb)).real[inside], n_bins)
    pa = np.bincount(r, np.abs(fa[inside]) ** 2, n_bins)
    pb = np.bincount(r, np.abs(fb[inside]) ** 2, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = cross / np.sqrt(pa * pb)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres[1:], np.nan_to_num(curve[1:], nan=0.0)  # ring 0 is the removed mean


def frc_resolution(freq: np.ndarray, curve: np.ndarray, threshold: float) -> dict[str, Any]:
    """First frequency where the FRC falls below ``threshold`` (linear interpolation).

    If it never does, the resolution is the Nyquist limit and ``reached_nyquist`` says so; if it
    starts below, the frequency is that of the first ring (no claim of resolution).
    """
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        f = float(freq[-1])
        return {"frequency": f, "period_px": 1.0 / f, "reached_nyquist": True}
    i = int(below[0])
    if i == 0:
        f = float(freq[0])
    else:
        f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
        f = float(f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1))
    return {"frequency": f, "period_px": 1.0 / f, "reached_nyquist": False}


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float, strip_bytes: int = SSIM_STRIP_BYTES) -> float:
    """torchmetrics' SSIM (Gaussian window 11, sigma 1.5), in row strips so memory stays bounded.

    Each strip carries ``SSIM_KERNEL // 2`` rows of real neighbours on either side, so every kept
    row of the SSIM map sees exactly the pixels it would in one pass (reflection padding only at
    the image's own edges); the mean over the kept rows is the one-pass SSIM.
    """
    h, w = target.shape
    halo = SSIM_KERNEL // 2
    rows = max(2 * halo + 2, strip_bytes // (w * SSIM_KERNEL**2 * 5 * 8))
    total = 0.0
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        lo, hi = max(0, r0 - halo), min(h, r1 + halo)
        _, image = structural_similarity_index_measure(_t(pred[lo:hi]), _t(target[lo:hi]), data_range=data_range,
                                                       return_full_image=True)
        assert isinstance(image, torch.Tensor)
        total += float(image[0, 0, r0 - lo : r1 - lo].sum())
    return total / (h * w)


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation; 0 for a constant image (it carries no structure to correlate)."""
    a = np.asarray(pred, np.float64).ravel() - np.mean(pred)
    b = np.asarray(target, np.float64).ravel() - np.mean(target)
    denom = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / denom) if denom > 0 else 0.0


def flat_baseline(target: np.ndarray) -> dict[str, float]:
    """What a flat image (the truth's own mean) scores: the floor a reconstruction must beat.

    On smooth, mid-grey objects SSIM rewards flatness, so a noisy but structured reconstruction can
    score below this and a failed, flat one close to it; reporting it beside the scores makes both
    visible.
    """
    flat = np.full_like(np.asarray(target, np.float64), float(np.mean(target)))
    data_range = float(target.max() - target.min()) or 1.0
    return {
        "ssim": ssim(flat, target, data_range),
        "psnr": psnr(flat, np.asarray(target, np.float64), data_range),
        "pearson": 0.0,
    }


def beats(scores: dict[str, Any], reference: str) -> dict[str, bool]:
    """Per score (SSIM, PSNR, correlation), whether the reconstruction beats a reference's scores
    (``scores[reference]``: the flat image, or the offset fit on flat patches)."""
    ref = scores[reference]
    return {k: bool(scores[k] > ref[k]) for k in ("ssim", "psnr", "pearson")}


def reference_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The scores compared against references (``beats``): SSIM, PSNR and correlation."""
    data_range = float(target.max() - target.min()) or 1.0
    return {"ssim": ssim(pred, target, data_range), "psnr": psnr(pred, target, data_range),
            "pearson": pearson(pred, target)}


def score_image(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """All metrics for one real image pair (amplitude or phase), with the flat image's for reference.

    A truth that is one value everywhere (the phase of an amplitude-only object) is marked
    ``constant_truth``: it has no structure, so SSIM, PSNR, correlation and FRC against it measure
    nothing, and a flat image matches it exactly. Its MAE and MSE still say how far from it the
    reconstruction strays; the other scores are kept but not headlined or flagged (evaluation).
    """
    span = float(target.max() - target.min())
    data_range = span or 1.0
    p, t = _t(pred), _t(target)
    ms, scales = ms_ssim(pred, target, data_range)
    freq, curve = frc_curve(pred, target)
    ref = reference_scores(pred, target)
    return {
        "constant_truth": span == 0,
        "pearson": ref["pearson"],
        "flat": flat_baseline(target),
        "mae": float(mean_absolute_error(p, t)),
        "mse": float(mean_squared_error(p, t)),
        "psnr": ref["psnr"],
        "ssim": ref["ssim"],
        "ms_ssim": ms,
        "ms_ssim_scales": scales,
        "data_range": data_range,
        "frc_1_7": frc_resolution(freq, curve, 1 / 7),
        "frc_0_5": frc_resolution(freq, curve, 0.5),
        "frc_curve": {"frequency": freq.tolist(), "frc": curve.tolist()},
    }
