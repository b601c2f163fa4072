"""Forward model of ptychography, shared by the simulator and the PINN's physics layer.

Conventions (DESIGN section 2): positions are patch centres in object pixels (x = column,
y = row); patch pixel (i, j) sees object pixel (y + i - N//2, x + j - N//2). Sub-pixel positions
are handled by bilinear sampling (``sample_windows``), the same operation the PINN uses to place
and cut patches on its overlap canvas, so simulation and model shift patches identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6


def _normalised_coords(centres: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """Pixel coordinates of a window of ``size`` around each centre, normalised for grid_sample."""
    steps = torch.arange(size, dtype=centres.dtype, device=centres.device) - size // 2
    pixels = centres[:, None] + steps[None, :]
    return 2.0 * pixels / (length - 1) - 1.0


def sample_windows(
    images: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Bilinearly sample a (height, width) window centred at (cx, cy) from each image.

    ``images`` is real with shape (B, K, H, W) (K channels, e.g. real and imaginary part) or
    (1, K, H, W) shared by all B windows. Outside the image the value is zero.
    """
    n_windows = cx.shape[0]
    in_h, in_w = images.shape[-2:]
    gx = _normalised_coords(cx, width, in_w)  # (B, width)
    gy = _normalised_coords(cy, height, in_h)  # (B, height)
    grid = torch.stack(
        (gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)), dim=-1
    )
    if images.shape[0] == 1 and n_windows > 1:
        # One source image: sample all windows in one call by stacking them along the output rows.
        out = F.grid_sample(
            images, grid.reshape(1, n_windows * height, width, 2), align_corners=True, padding_mode="zeros"
        )
        return out.reshape(images.shape[1], n_windows, height, width).transpose(0, 1)
    return F.grid_sample(images, grid, align_corners=True, padding_mode="zeros")


def complex_to_channels(z: torch.Tensor) -> torch.Tensor:
    """(..., H, W) complex -> (..., 2, H, W) real, for the real-valued sampling kernels."""
    return torch.stack((z.real, z.imag), dim=-3)


def channels_to_complex(c: torch.Tensor) -> torch.Tensor:
    return torch.complex(c[..., 0, :, :], c[..., 1, :, :])


def extract_patches(obj: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Cut (M, n, n) complex patches centred at (x, y) from a (H, W) complex object."""
    src = complex_to_channels(obj)[None]  # (1, 2, H, W)
    return channels_to_complex(sample_windows(src, x.to(src.dtype), y.to(src.dtype), n, n))


@dataclass(frozen=True)
class Windows:
    """(P, n, n) windows of (H, W) images at fixed positions, bilinear as ``extract_patches`` and
    zero outside, cut by gathering pixels instead of ``grid_sample``: the zero padding that holds
    every window and, per bilinear tap, the flat pixel index (P, n, n) and its weight (P, 1, 1;
    None for whole-pixel positions).

    For the offset fit, which cuts the same windows from a new differentiable canvas at every step:
    it builds these once (``window_taps``) and only ``cut``s per step. On the CPU grid_sample (its
    backward a scatter per output pixel) took 4-8 times a gather's time for 500 windows of 64 px,
    forward and backward, and the fit step 45% longer (docs/performance.md). Whole-pixel
    positions are cut exactly, where grid_sample's normalised coordinates leave a weight of about
    1e-5 on a neighbouring pixel."""

    pad: tuple[int, int, int, int]  # left, right, top, bottom
    taps: tuple[tuple[torch.Tensor, torch.Tensor | None], ...]

    def cut(self, image: torch.Tensor) -> torch.Tensor:
        """(P, n, n) windows of ``image`` (differentiable)."""
        flat = (F.pad(image, self.pad) if any(self.pad) else image).reshape(-1)
        out: torch.Tensor | None = None
        for index, weight in self.taps:
            tap = flat[index] if weight is None else flat[index] * weight
            out = tap if out is None else out + tap
        assert out is not None
        return out


def window_taps(shape: Sequence[int], x: torch.Tensor, y: torch.Tensor, n: int, dtype: torch.dtype) -> Windows:
    """The ``Windows`` for (P,) positions (x, y) on (H, W) images, weights in the real ``dtype``.
    Only the taps some window needs are kept: whole-pixel positions, as on raster scans, need one."""
    h, w = shape
    x, y = x.to(torch.float64), y.to(torch.float64)
    col, row = torch.floor(x), torch.floor(y)
    fx, fy = (x - col).to(dtype), (y - row).to(dtype)
    taps_x, taps_y = (0, 1) if bool(fx.any()) else (0,), (0, 1) if bool(fy.any()) else (0,)
    steps = torch.arange(n, device=x.device)
    row0, col0 = row.long() - n // 2, col.long() - n // 2  # each window's first pixel
    top, left = max(0, -int(row0.min())), max(0, -int(col0.min()))
    bottom = max(0, int(row0.max()) + n + len(taps_y) - 1 - h)
    right = max(0, int(col0.max()) + n + len(taps_x) - 1 - w)
    width = w + left + right
    taps = []
    for dy in taps_y:
        rows = (row0 + top + dy)[:, None, None] + steps[None, :, None]
        for dx in taps_x:
            index = rows * width + (col0 + left + dx)[:, None, None] + steps[None, None, :]
            weight = ((fy if dy else 1 - fy) * (fx if dx else 1 - fx))[:, None, None]
            taps.append((index, weight if len(taps_x) > 1 or len(taps_y) > 1 else None))
    return Windows((left, right, top, bottom), tuple(taps))


def patches_inside(x: np.ndarray, y: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    """True where the whole n x n patch around (x, y) lies inside an object of ``shape``."""
    h, w = shape
    half = n // 2
    return (x >= half) & (y >= half) & (x <= w - half) & (y <= h - half)


def far_field(psi: torch.Tensor) -> torch.Tensor:
    """Unitary far-field propagation with zero frequency at the array centre."""
    return torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))


def uncentred_intensity(psi: torch.Tensor) -> torch.Tensor:
    """|F(psi)|^2 (unitary) with zero frequency at index 0: ``far_field``'s intensity without its
    shift, for likelihoods that sum over pixels against counts shifted to match
    (``torch.fft.ifftshift``). The offset fit evaluates it at every step, where the shift (a copy
    forward and backward) and |.|'s square root change nothing and made the step 18% longer."""
    field = torch.fft.fft2(psi, norm="ortho")
    return field.real.square() + field.imag.square()


def exit_wave_intensity(probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """|F(P * O)|^2 per pattern, before dose scaling."""
    return far_field(probe * patches).abs().square()


def dose_scale(probe: np.ndarray, patches: np.ndarray | torch.Tensor, nphotons: float) -> float:
    """Scale s such that the mean over patterns of sum |s F|^2 equals ``nphotons``.

    By Parseval (orthonormal FFT) sum |F|^2 = sum |P O|^2, so no FFT is needed here.
    """
    p = torch.as_tensor(probe)
    o = torch.as_tensor(patches)
    energy = (p * o).abs().square().sum(dim=(-2, -1)).double().mean().item()
    if energy <= 0:
        raise ValueError("exit waves carry no energy: probe or object is zero over the scan")
    return float(np.sqrt(nphotons / energy))


def poisson_nll(pred_counts: torch.Tensor, obs_counts: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Poisson negative log-likelihood up to a data-only constant: mean(I_pred - I_obs log I_pred),
    over the pixels ``valid`` (N, N) marks as measured where given (a blocked pixel's zero is no
    observation of zero photons)."""
    return masked_mean(pred_counts - obs_counts * torch.log(pred_counts + EPS), valid)


def masked_mean(terms: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-pixel ``terms`` (..., N, N) over the pixels ``valid`` (N, N) marks (all if None)."""
    if valid is None:
        return terms.mean()
    weight = valid.to(terms.dtype)
    return (terms * weight).sum() / (weight.sum() * (terms.numel() // weight.numel()))


def poisson_sample(intensity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded photon counts; the generator carries the stage's identity (seed, dose, split)."""
    return rng.poisson(np.asarray(intensity, dtype=np.float64)).astype(np.float64)


def effective_probe_radius(probe: np.ndarray) -> float:
    """Radius of the disc with the probe's participation-ratio area (sum I)^2 / sum I^2.

    For a uniform disc this is exactly its radius; blur changes it little.
    """
    intensity = np.abs(np.asarray(probe)) ** 2
    area = intensity.sum() ** 2 / max(float((intensity**2).sum()), 1e-30)
    return float(np.sqrt(area / np.pi))


def make_probe(n: int, diameter: float, blur: float, defocus: float = 0.0) -> np.ndarray:
    """A blurred disc probe, unit peak amplitude, complex64.

    ``defocus`` is the quadratic (defocus-like) phase in radians at the disc's edge. A flat real
    probe makes an object and its conjugate twin give identical diffraction; a focusing optic's
    curvature breaks that symmetry, as in real experiments.
    """
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    r = np.hypot(xx, yy)
    disc = (r <= diameter / 2).astype(np.float64)
    amp = gaussian_filter(disc, blur) if blur > 0 else disc
    amp /= amp.max()
    phase = defocus * (r / (diameter / 2)) ** 2
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def make_object(
    size: int, amplitude_image: str, phase_image: str, amplitude_min: float, phase_range: float,
    amplitude_max: float = 1.0,
) -> np.ndarray:
    """Complex test object: amplitude from one bundled image, phase from another (scikit-image)."""
    amp = _bundled_image(amplitude_image, size)
    phase = _bundled_image(phase_image, size)
    amplitude = amplitude_min + (amplitude_max - amplitude_min) * amp
    return (amplitude * np.exp(1j * phase_range * (phase - 0.5))).astype(np.complex64)


def random_lines(size: int, count: int = 120, blur: float = 1.0, seed: int = 0) -> np.ndarray:
    """Smooth line drawings in [0, 1], the kind of object the PtychoPINN papers simulate ("lines")."""
    from scipy.ndimage import gaussian_filter
    from skimage.draw import line_aa

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size))
    for r0, c0, r1, c1 in rng.integers(0, size, size=(count, 4)):
        rr, cc, val = line_aa(int(r0), int(c0), int(r1), int(c1))
        img[rr, cc] = np.maximum(img[rr, cc], val)
    img = gaussian_filter(img, blur)
    return img / img.max()


def _bundled_image(name: str, size: int) -> np.ndarray:
    """One of scikit-image's bundled data images (or ``lines``, generated), resized, scaled to [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    if name == "lines":
        return random_lines(size)
    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"dataset image '{name}' is neither 'lines' nor one of scikit-image's bundled data images")
    img = np.asarray(loader(), dtype=np.float64)
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    img = resize(img, (size, size), anti_aliasing=True)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def raster_scan(
    shape: tuple[int, int], n: int, step: float, jitter: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Fly-scan-like raster: rows top to bottom, each left to right, covering the object.

    ``jitter`` adds uniform sub-pixel noise along the fast (x) axis, as continuous motion does.
    """
    h, w = shape
    half = n // 2
    xs = np.arange(half, w - half + 1e-9, step)
    ys = np.arange(half, h - half + 1e-9, step)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    x = xx.ravel().astype(np.float64)
    y = yy.ravel().astype(np.float64)
    if jitter > 0:
        x = np.clip(x + rng.uniform(-jitter, jitter, size=x.shape), half, w - half)
    return x, y


GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def fermat_scan(shape: tuple[int, int], n: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Fermat spiral from the object's centre outward, cut to the area a raster covers.

    Position k sits at radius c sqrt(k) and angle k times the golden angle (Vogel's model), which
    fills the plane evenly, one position per pi c^2 of area, with no period. c = step / sqrt(pi)
    gives one position per step**2, the density of a raster of that step. Deterministic.
    """
    h, w = shape
    half = n // 2
    c = step / math.sqrt(math.pi)
    reach = math.hypot(w / 2 - half, h / 2 - half)
    k = np.arange(math.ceil((reach / c) ** 2) + 1, dtype=np.float64)
    r = c * np.sqrt(k)
    x = w / 2 + r * np.cos(k * GOLDEN_ANGLE)
    y = h / 2 + r * np.sin(k * GOLDEN_ANGLE)
    inside = (x >= half) & (x <= w - half) & (y >= half) & (y <= h - half)
    return x[inside], y[inside]
