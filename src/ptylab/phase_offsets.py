"""Per-patch phase offsets, amplitude gains and low-order shape corrections fitted to the data.

A diffraction pattern is blind to its patch's absolute phase, so a network that predicts each patch
from its own pattern leaves one phase offset per patch undetermined. Overlap agreement (spectral
synchronisation, ``phase_sync.phase_sync``) fixes them only relative to each neighbour: small
errors in the predicted patches add up along the scan into large-scale phase errors (measured on
the embedded data: phase correlation 0.62 with synchronised offsets, 0.90 with the true ones).
The data decide them: offsets change how neighbouring patches interfere where they are averaged,
and so the diffraction the stitched object predicts at every position. This module fits the
offsets, one number per patch, to minimise the Poisson likelihood of the measured patterns given
the stitched object, starting from the synchronised ones, and with them one amplitude gain per
patch (a pattern's total counts fix its patch's brightness; the network's brightness errors showed
as a grid at the patch spacing).

With ``order`` 1 to 4 each patch's phase and log-amplitude also get a low-order polynomial in the
patch's own coordinates (ramps; curvature and astigmatism; coma and trefoil; spherical, secondary
astigmatism and tetrafoil). The network's errors are partly the same in every patch, relative to
the probe (a phase bowl where the probe is defocused): averaged over a raster they print a grid at
the scan step (3 px on the embedded data), which no single offset per patch removes. A ramp shifts
a patch's diffraction and a curvature reshapes it, so the patterns determine these terms as they do
the offsets. Still nothing is added at the patches' resolution: five smooth terms per patch (nine
at order 3, fourteen at order 4), never a pixel. But patches overlap every few pixels, so the sum
of their smooth terms can vary on the scale of the scan step: the fit is a small iterative solve in
its own right (on the default job it reaches phase correlation 0.91 from flat patches at order 2).
Evaluation therefore scores it on flat patches beside every network
(``evaluation.fit_alone_scores``).

With ``ramp`` the offsets also move together: two more parameters add a phase ramp across the tile,
evaluated at each patch's position, to every offset. It adds nothing the offsets could not express;
it changes how fast the fit gets there. A ramp across the scan is the fit's slowest mode (a patch
sees only its neighbours, and each offset moves at most about the learning rate per step), and
100 steps left one of 0.2-0.47 rad on every 1e3 run: with the ramp terms phase SSIM rose by 0.025
on both seeds at 1e3, and a little at 1e4 (docs/quality.md).

The fit runs in single precision (the canvas, factors and parameters; phase synchronisation before
it stays in double): it is an evaluation's largest cost, and single precision makes it about 1.6x
faster. Its result is not more exact than that: 100 Adam steps from the synchronised offsets are
sensitive to the last digits of their start. A global phase of 1e-6 rad added to every offset,
which changes no pattern, moved the default job's phase SSIM from 0.662 to 0.644 and 0.671
(docs/quality.md). A rate decaying to zero settles that, but on a worse result: converged, the
fit has fitted noise, so the constant rate is kept and the length chosen as an early stop. From
6.7e3 counts per pattern the result is the parameters averaged over the fit's last half (``average``):
at 1e4 that beat the last step of 100, 150 and 200 steps alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from .physics import Windows, poisson_nll, uncentred_intensity, window_taps
from .progress import Progress

log = logging.getLogger(__name__)

# The fit's precision (canvas, factors, parameters; see the module docstring). Its callers build the
# canvas in it too (``stitching._stitch_tile``).
FIT_REAL = torch.float32
FIT_COMPLEX = torch.complex64
# Patterns per forward/backward chunk: bounds memory on a tile of thousands of patterns.
CHUNK = 256
# Gains move five times slower than phases. At the phases' rate they absorbed noise: amplitude
# SSIM fell by 0.03 (1e4) to 0.06 (1e3) on the default job; at a fifth it rose (docs/quality.md).
GAIN_LR_FACTOR = 0.2
# The phase's shape terms (order >= 1) move faster than the offset: a term's change per step is
# about the learning rate at the crop's edge (coordinates +-1), and patch-shaped phase errors are
# larger than that lets them fix in 100 steps. The factor was chosen on the default job's training
# half, then checked without change elsewhere (docs/quality.md).
SHAPE_LR_FACTOR = 10.0
# The fit's learning rate when none is set, from the data's mean counts per pattern: AUTO_LR at
# AUTO_LR_COUNTS and below, rising as sqrt(counts) up to AUTO_LR_MAX (reached at 9x the counts). With
# 100 steps the fit stops early by design, and how early should depend on the noise: at 1e4
# counts 0.06 converged the large-scale phase further (embedded phase SSIM 0.612 -> 0.675) and
# sharpened the user-style amplitude, while at 1e3 it fitted noise into the amplitude (SSIM
# 0.412 -> 0.358), where 0.02 is right (docs/quality.md).
AUTO_LR = 0.02
AUTO_LR_COUNTS = 1e3
AUTO_LR_MAX = 0.06


@dataclass(frozen=True)
class FitRegime:
    """The fit's shape-term order, length and averaged share for data with ``counts`` or more
    counts per pattern (``AUTO_REGIMES``)."""

    counts: float
    order: int
    steps: int
    average: float


# The fit's order, length and averaged share when none is set, from the data's mean counts per
# pattern: the last row whose counts the data reach.
# - Order 3 (coma and trefoil as well) from 5e3: four more terms per patch sharpen what the fit
#   makes of the network's patches where the counts pin them (at 1e4 every FRC50 finer, embedded
#   phase SSIM +0.05), and fit noise where they do not (at 1e3 amplitude SSIM -0.03; at 2.6e3 and
#   3.4e3 still -0.01 to -0.02). Measured at 0.9e3, 2.6e3, 3.4e3 and 8.6e3 counts: the threshold
#   lies between the last two, at their geometric middle.
# - Order 4 (spherical, two secondary astigmatisms and two tetrafoils as well) from 1.7e4: five
#   more terms sharpen both parts where the counts pin them (at 2.6e4 and 8.6e4 counts every
#   embedded score up, amplitude SSIM +0.02, every FRC50 finer), and below that they cost more than
#   they give (at dose 1e4, 8.6e3 and 1.1e4 counts: the user-style phase SSIM -0.02, the embedded
#   training half's amplitude SSIM -0.007); the geometric middle of 1.1e4 and 2.6e4.
# - The length: 100 steps stop the fit early by design at 1e3 counts (longer fits put noise into
#   the amplitude). From 6.7e3, 200 steps whose result is the parameters averaged over the last half
#   (``average``): at dose 1e4 200 steps alone traded the user-style phase SSIM (-0.005 to -0.010)
#   and the embedded amplitude SSIM (-0.013) for every FRC50; averaged, the training halves gained
#   every score on 100 steps but two, each within 0.002 (embedded amplitude SSIM 0.744 -> 0.743, a
#   user-style phase SSIM 0.514 -> 0.512), FRC50 0.1-0.4 px finer, and beat 150 steps on every
#   SSIM. At 1e3 averaging traded amplitude SSIM for FRC50 at either length, and at 5.2e3 (the
#   embedded object at dose 6e3) it still cost the amplitude SSIM 0.008 for finer FRC50s and phase,
#   at 8.6e3 0.001: the threshold is the geometric middle of 5.2e3 and 8.6e3. From 1.7e4, where the
#   counts pin the fourteen terms of order 4, the training halves chose 800 steps over 400, 200
#   and 100 on every score (3.4e4 and 1.1e5 counts, both test objects, but the embedded amplitude
#   SSIM at 3.4e4, -0.003) and whole jobs agreed (embedded 1e5 amplitude SSIM 0.70 at 100 steps,
#   0.77 at 400, 0.80 at 800); about 25 s per 100 steps and evaluation of the embedded scan.
#   Averaging their last half cost the embedded 1e5 amplitude SSIM 0.008 and every FRC50.
# docs/quality.md has every measurement.
AUTO_REGIMES = (
    FitRegime(0.0, order=2, steps=100, average=0.0),
    FitRegime(5e3, order=3, steps=100, average=0.0),
    FitRegime(6.7e3, order=3, steps=200, average=0.5),
    FitRegime(1.7e4, order=4, steps=800, average=0.0),
)


@dataclass(frozen=True)
class OffsetFit:
    """How offsets (and gains) are fitted, as a config or a bundle states it: ``steps``, ``lr``,
    ``order`` and ``average`` may be None ("from the data's counts"); ``for_counts`` resolves them
    into the ``ResolvedFit`` that ``fit_offsets`` runs. The one place these settings and their
    bundle keys are defined."""

    steps: int | None = None  # 0: no fit (``active``)
    lr: float | None = None
    gains: bool = True  # also fit one amplitude gain per patch
    # polynomial order per patch: 0 offset (and gain), 1 + ramps, 2 + curvature, astigmatism,
    # 3 + coma, trefoil, 4 + spherical, secondary astigmatism, tetrafoil
    order: int | None = None
    ramp: bool = True  # also move all offsets together along a phase ramp across the tile
    # the share of the last steps whose parameters are averaged into the result (0: the last step's)
    average: float | None = None
    # weight of the stitched phase's total variation (``phase_variation``) summed over the object's
    # pixels, in the units of the Poisson NLL summed over the patterns' (0: the likelihood alone)
    phase_tv: float = 0.0
    # the same for the stitched amplitude's relative total variation (``amplitude_variation``)
    amplitude_tv: float = 0.0

    def inference(self) -> dict[str, Any]:
        """The bundle's inference keys for these settings."""
        return _inference(self)

    @classmethod
    def from_inference(cls, info: dict[str, Any]) -> OffsetFit:
        """The settings a bundle recorded; bundles written before the fit (or before its shape or
        ramp terms, the averaging or the phase's or the amplitude's total variation) existed lack
        the keys and reconstruct as they did (no fit; offsets only; no ramp; the last step; the
        likelihood alone). A recorded steps, lr, order or average of null means "from the data",
        as in the run, and a bundle that left the length to the data before the averaging existed
        leaves that to it too: the length and its averaged share were chosen together
        (docs/decisions.md)."""
        steps = _optional(int, info.get("offset_fit_steps", 0))
        return cls(steps, _optional(float, info.get("offset_fit_lr")), bool(info.get("offset_fit_gains", False)),
                   _optional(int, info.get("offset_fit_order", 0)), bool(info.get("offset_fit_ramp", False)),
                   _optional(float, info.get("offset_fit_average", None if steps is None else 0.0)),
                   float(info.get("offset_fit_phase_tv", 0.0)), float(info.get("offset_fit_amplitude_tv", 0.0)))

    @property
    def active(self) -> bool:
        """Whether it fits at all: only 0 steps turn it off (a length from the counts is never 0)."""
        return self.steps != 0

    def overridden(self, **settings: Any) -> OffsetFit:
        """These settings with each of ``settings`` that is not None in its place (a command's
        overrides of a bundle's recorded fit)."""
        return replace(self, **{name: value for name, value in settings.items() if value is not None})

    def for_counts(self, mean_counts: float) -> ResolvedFit:
        """The fit these settings give on data with ``mean_counts`` total counts per pattern: the
        settings that are set, ``auto_lr`` and ``auto_regime``'s for the rest."""
        regime = auto_regime(mean_counts)
        auto: dict[str, Any] = {"steps": regime.steps, "lr": auto_lr(mean_counts), "order": regime.order,
                                "average": regime.average}
        return ResolvedFit(**{name: auto[name] if value is None else value for name, value in _settings(self)})


@dataclass(frozen=True)
class ResolvedFit:
    """An offset fit with every setting a number (``OffsetFit.for_counts``): what ``fit_offsets``
    runs and an evaluation records."""

    steps: int
    lr: float
    gains: bool
    order: int
    ramp: bool
    average: float
    phase_tv: float = 0.0
    amplitude_tv: float = 0.0

    def inference(self) -> dict[str, Any]:
        """The bundle's inference keys, as resolved for the data (``metrics.json`` records them)."""
        return _inference(self)

    @property
    def active(self) -> bool:
        return self.steps != 0


def _settings(fit: OffsetFit | ResolvedFit) -> list[tuple[str, Any]]:
    return [(f.name, getattr(fit, f.name)) for f in fields(fit)]


def _inference(fit: OffsetFit | ResolvedFit) -> dict[str, Any]:
    return {f"offset_fit_{name}": value for name, value in _settings(fit)}


def _optional(cast: Callable[[Any], Any], value: Any) -> Any:
    """``value`` as ``cast`` makes it, or None ("from the data") as a bundle recorded it."""
    return None if value is None else cast(value)


def auto_regime(counts: float) -> FitRegime:
    """The offset fit's order, length and averaged share for data with ``counts`` per pattern
    (see AUTO_REGIMES)."""
    return next((r for r in reversed(AUTO_REGIMES) if counts >= r.counts), AUTO_REGIMES[0])


def auto_lr(counts: float) -> float:
    """The offset fit's learning rate for data with ``counts`` per pattern (see AUTO_LR)."""
    return AUTO_LR * min(max(math.sqrt(max(counts, 0.0) / AUTO_LR_COUNTS), 1.0), AUTO_LR_MAX / AUTO_LR)


def shape_basis(u: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """(K, ...) polynomial terms of patch coordinates (u, v) (+-1 at the crop's edge), without the
    constant: order 1 the ramps u, v; order 2 also curvature u^2 + v^2 and astigmatism u^2 - v^2, 2uv;
    order 3 also coma (u^2 + v^2) u, (u^2 + v^2) v and trefoil u^3 - 3uv^2, 3u^2 v - v^3; order 4
    also spherical (u^2 + v^2)^2, secondary astigmatism (u^2 + v^2)(u^2 - v^2), (u^2 + v^2) 2uv and
    tetrafoil u^4 - 6u^2 v^2 + v^4, 4uv(u^2 - v^2)."""
    terms = [u, v] if order >= 1 else []
    uu, vv = u * u, v * v
    r2 = uu + vv
    if order >= 2:
        terms += [r2, uu - vv, 2 * u * v]
    if order >= 3:
        terms += [r2 * u, r2 * v, u * (uu - 3 * vv), v * (3 * uu - vv)]
    if order >= 4:
        terms += [r2 * r2, r2 * (uu - vv), r2 * 2 * u * v, uu * uu - 6 * uu * vv + vv * vv,
                  4 * u * v * (uu - vv)]
    return torch.stack(terms) if terms else u.new_zeros((0, *u.shape))


def polynomials(u: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """(K + 1, ...) the constant, then ``shape_basis``: every polynomial of degree up to ``order``."""
    return torch.cat((torch.ones_like(u)[None], shape_basis(u, v, order)))


@dataclass(frozen=True)
class PatchGrid:
    """Where each placed pixel lies in its patch, in half crops (+-1 at the crop's edge): a patch
    placed at sub-pixel position x covers whole canvas pixels from floor(x) on, so its pixel j sits
    at ``u[j] - du[m]``: one grid ``u``, ``v`` (S,) shared by every patch, shifted by each patch's
    fractional position ``du``, ``dv`` (M,) (``placement.patch_grid``)."""

    u: torch.Tensor
    v: torch.Tensor
    du: torch.Tensor
    dv: torch.Tensor

    def to(self, device: str | torch.device) -> PatchGrid:
        return PatchGrid(*(t.to(device) for t in (self.u, self.v, self.du, self.dv)))


def shifted_terms(grid: PatchGrid, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``shape_basis`` at every patch's pixels as a product: (mix (K, M, L), q (L, S)) with
    ``shape_basis(u - du, v - dv)[k, m] == mix[k, m] @ q``, q the constant and the K terms on the
    shared grid (L = K + 1).

    The terms span every polynomial of degree 1 to ``order``, and a polynomial shifted is one of
    the same degree plus a constant, so each patch's shifted terms are fixed mixtures of the
    unshifted ones. The fit's parameters and so its steps stay those of the per-pixel basis; only
    the arithmetic changes: per step one (M, L) by (L, S) product in place of K multiply-adds over
    (M, S) forward and K more backward, and no (K, M, S) basis in memory (docs/performance.md, "The
    shape terms as a product"). The mixtures are solved once, in double precision, on the
    (order + 1)^2 points of a tensor grid, on which degree ``order`` polynomials are determined.
    """
    nodes = torch.linspace(-1.0, 1.0, order + 1, dtype=torch.float64)
    pu, pv = (t.ravel() for t in torch.meshgrid(nodes, nodes, indexing="xy"))
    q_nodes = polynomials(pu, pv, order)  # (L, P)
    du, dv = (d.to(torch.float64).cpu()[:, None] for d in (grid.du, grid.dv))
    shifted = shape_basis(pu - du, pv - dv, order)  # (K, M, P)
    mix = shifted @ torch.linalg.pinv(q_nodes)  # (K, M, L): q_nodes has full row rank L
    return mix.to(grid.u.device, FIT_REAL), polynomials(grid.u.to(FIT_REAL), grid.v.to(FIT_REAL), order)


@dataclass
class Evidence:
    """The measured patterns behind a set of patches, and how to fit offsets to them.

    ``diff`` (P, N, N) are measured amplitudes (square roots of counts), indexable by an integer
    array (a memory map works); ``pattern`` (M,) says which pattern each patch was predicted from;
    ``x``, ``y`` (P,) are the patterns' positions on the object canvas. ``fit`` is resolved once
    for the whole split (``OffsetFit.for_counts`` of its ``mean_counts``), the same on every tile.
    """

    diff: np.ndarray
    pattern: np.ndarray
    x: np.ndarray
    y: np.ndarray
    probe: np.ndarray
    fit: ResolvedFit
    valid_pixels: np.ndarray | None = None  # (N, N): the detector's measured pixels (all if None)


def fit_offsets(canvas_of: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, evidence: Evidence,
                patterns: np.ndarray, origin: tuple[int, int], grid: PatchGrid,
                centres: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """Per-patch complex factors (unit modulus unless ``evidence.fit.gains``) that minimise the
    Poisson NLL of ``patterns`` given the stitched canvas: (M,) at order 0, else (M, S), one per
    placed pixel.

    ``canvas_of(factors)`` is the (H, W) complex stitched object for given factors (it must be
    differentiable); ``start`` (M,) the synchronised phasors; ``grid`` the placed pixels' patch
    coordinates (``shape_basis``, ``shifted_terms``); ``centres`` (x, y), each (M,), the patches'
    positions on the canvas (for the ``ramp`` terms); ``patterns`` the indices of
    the patterns that lie on this canvas, whose positions are shifted by ``origin`` (row, col) of
    the canvas. The intensity scale between model and counts is fitted once at the start (the
    Poisson optimum for a fixed object), so the fit needs no ``intensity_scale``.
    """
    n = evidence.probe.shape[-1]
    dev = start.device  # the fit runs where its canvas and start are (stitching's ``device``)
    probe = torch.from_numpy(np.asarray(evidence.probe)).to(dev, torch.complex64)
    # Counts with zero frequency first, as ``uncentred_intensity`` gives them: the likelihood is a
    # sum over pixels, so unshifting the counts once replaces shifting every step's spectra.
    counts = torch.from_numpy(np.asarray(evidence.diff[patterns], np.float32)).to(dev).square()
    obs = torch.fft.ifftshift(counts, dim=(-2, -1))
    valid = (None if evidence.valid_pixels is None else
             torch.fft.ifftshift(torch.from_numpy(np.asarray(evidence.valid_pixels, bool)).to(dev), dim=(-2, -1)))
    measured = float(n * n if valid is None else valid.sum())
    xs = torch.from_numpy(np.asarray(evidence.x[patterns], np.float64) - origin[1]).to(dev)
    ys = torch.from_numpy(np.asarray(evidence.y[patterns], np.float64) - origin[0]).to(dev)

    def unit_counts(canvas: torch.Tensor, windows: Windows) -> torch.Tensor:
        return uncentred_intensity(probe * windows.cut(canvas))

    chunks = [slice(s, s + CHUNK) for s in range(0, len(patterns), CHUNK)]
    with torch.no_grad():
        canvas0 = canvas_of(start).to(FIT_COMPLEX)
        # Each chunk's windows are where its patterns sit on the canvas: the same at every step.
        windows = [window_taps(canvas0.shape, xs[sl], ys[sl], n, FIT_REAL) for sl in chunks]
        on_detector = 1.0 if valid is None else valid.to(obs.dtype)
        scale = float((obs * on_detector).sum()) / max(float(sum((unit_counts(canvas0, win) * on_detector).sum()
                                                                 for win in windows)), 1e-30)

    fit = evidence.fit
    # The priors as sums over the canvas's pixels against the likelihood's sum over the patterns'
    # (the loss is their mean, hence the ratio): one ``phase_tv`` or ``amplitude_tv`` is then the
    # same prior at any dose, scan density or pattern size, weaker beside the data where they hold
    # more counts.
    per_pixel = canvas0.numel() / (len(patterns) * measured)
    priors = [(weight * per_pixel, variation) for weight, variation in
              ((fit.phase_tv, phase_variation), (fit.amplitude_tv, amplitude_variation)) if weight > 0]
    mix, q = shifted_terms(grid, fit.order)  # the terms at each patch's pixels: mix[:, m] @ q
    theta = torch.angle(start).detach().to(FIT_REAL).requires_grad_(True)
    log_gain = torch.zeros_like(theta, requires_grad=fit.gains)
    phase_shape = torch.zeros(len(mix), len(theta), dtype=theta.dtype, device=dev, requires_grad=True)
    gain_shape = torch.zeros(len(mix), len(theta), dtype=theta.dtype, device=dev, requires_grad=fit.gains)
    groups: list[dict[str, object]] = [{"params": [theta]}]
    if fit.order > 0:
        groups.append({"params": [phase_shape], "lr": fit.lr * SHAPE_LR_FACTOR})
    if fit.gains:
        groups.append({"params": [log_gain, gain_shape] if fit.order > 0 else [log_gain],
                       "lr": fit.lr * GAIN_LR_FACTOR})
    # The ramp's terms at each patch's position, +-1 at the tile's outermost patches.
    ramp_basis = torch.stack([_unit_range(torch.from_numpy(np.asarray(c, np.float64)).to(dev, FIT_REAL))
                              for c in centres])
    ramp = torch.zeros(2, dtype=theta.dtype, device=dev, requires_grad=fit.ramp)
    if fit.ramp:
        groups.append({"params": [ramp]})
    opt = torch.optim.Adam(groups, lr=fit.lr)
    # The result: the parameters averaged over the last ``averaged`` steps (Polyak-Ruppert). At a
    # constant rate Adam moves every parameter by about the rate per step whatever its gradient, so
    # a long fit's last step drifts about and away from where the data settle it; the average over
    # the last half holds what the better stop gives (docs/quality.md, tests/test_stitching.py).
    # Only the fitted parameters: the others stay zero, their own average.
    params = [p for p in (theta, log_gain, phase_shape, gain_shape, ramp) if p.requires_grad]
    averaged = round(fit.average * fit.steps)
    sums = [torch.zeros_like(p) for p in params] if averaged else []

    def factors() -> torch.Tensor:
        offset = theta + ramp @ ramp_basis
        if fit.order == 0:
            return _polar(torch.exp(log_gain), offset)
        phase = offset[:, None] + _terms(phase_shape, mix, q)
        log_amp = log_gain[:, None]
        if fit.gains:  # without gains the amplitude terms stay zero: no need to expand them per pixel
            log_amp = log_amp + _terms(gain_shape, mix, q)
        return _polar(torch.exp(log_amp), phase)

    first = last = torch.tensor(float("nan"))
    progress = Progress(f"fitting offsets to {len(patterns)} patterns, step", fit.steps)
    for step in range(fit.steps):
        progress.update(step)
        opt.zero_grad()
        canvas = canvas_of(factors()).to(FIT_COMPLEX)
        leaf = canvas.detach().requires_grad_(True)
        total = torch.zeros((), device=dev)  # a tensor: no device sync per chunk
        # Gradients gathered on the canvas chunk by chunk, then sent to theta once.
        for sl, win in zip(chunks, windows, strict=True):
            nll = poisson_nll(scale * unit_counts(leaf, win), obs[sl], valid) * (obs[sl].shape[0] / len(patterns))
            nll.backward()
            total += nll.detach()
        for weight, variation in priors:
            prior = weight * variation(leaf)
            prior.backward()
            total += prior.detach()
        canvas.backward(leaf.grad)
        opt.step()
        if step >= fit.steps - averaged:
            with torch.no_grad():
                for acc, p in zip(sums, params, strict=True):
                    acc += p
        first = total if step == 0 else first
        last = total
    if averaged:
        with torch.no_grad():
            for acc, p in zip(sums, params, strict=True):
                p.copy_(acc / averaged)
    log.debug("phase offsets fitted to %d patterns: loss %.6g -> %.6g in %d steps", len(patterns), float(first),
              float(last), fit.steps)
    return factors().detach()


def phase_variation(canvas: torch.Tensor) -> torch.Tensor:
    """The total variation of ``canvas``'s phase: the mean over its pixels of |sin| of the phase step
    to the right and below, |Im(a conj(b))| / (|a| |b|), which leaves the amplitude alone and
    vanishes where there is none. Not ``models.pinn.total_variation``, the network's prior on its
    predicted phase: that one differences an unwrapped real phase on the probe's support, while a
    stitched canvas is complex and its phase wrapped, so the step is taken as the sine of the
    angle between neighbours.

    Why the fit has it (``OffsetFit.phase_tv``): overlapping patches whose shape terms disagree
    leave texture at the scan step in the stitched phase, which the patterns do not pin down at
    1e3-1e4 counts: on the user-style files it covered the flat regions and cost the phase SSIM more
    than any other part of the reconstruction. A prior for flat regions with sharp edges, the one
    iterative ptychography uses (docs/quality.md, "The stitched phase's total variation in the
    offset fit")."""
    def steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a * b.conj()
        return (d.imag / (d.abs() + 1e-6)).abs().sum()

    return _neighbour_mean(canvas, steps)


def amplitude_variation(canvas: torch.Tensor) -> torch.Tensor:
    """The relative total variation of ``canvas``'s amplitude: the mean over its pixels of the
    amplitude step to the right and below over the two amplitudes' mean, ||a| - |b|| / ((|a| +
    |b|) / 2), about the step in log-amplitude: the same prior for a bright object as for a faint
    one, and none where there is no amplitude.

    Why the fit has it (``OffsetFit.amplitude_tv``): the stitch's complex average of overlapping
    patches whose fitted phases and gains disagree leaves grain, rings and a scan-step texture in
    the amplitude that the patterns do not pin down (docs/quality.md, "Where the stitched
    amplitude's rings come from"); at 1e3 counts it brought the amplitude's SSIM below a flat
    image's. With it the fit keeps the amplitude detail the data hold and drops what they do not
    (docs/quality.md, "The stitched amplitude's total variation in the offset fit")."""
    def steps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x - y).abs() / ((x + y) / 2 + 1e-6)).sum()

    return _neighbour_mean(canvas.abs(), steps)


def _neighbour_mean(image: torch.Tensor, steps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The fit's priors' shared form: ``steps`` (a sum over pixel pairs) between each pixel and its
    neighbour to the right and below, over the number of pixels."""
    return (steps(image[1:, :], image[:-1, :]) + steps(image[:, 1:], image[:, :-1])) / image.numel()


def _polar(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``torch.polar`` with broadcasting, through real cosines and sines: polar's own backward
    resolves and multiplies by conjugated copies of its (M, S) result; with it the offset-fit
    step on the default job's first tile took 9% longer (docs/performance.md)."""
    return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))


def _terms(coef: torch.Tensor, mix: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The shape terms ``coef`` (K, M) at every patch's pixels (M, S), from ``shifted_terms``."""
    return torch.einsum("km,kml->ml", coef, mix) @ q


def _unit_range(c: torch.Tensor) -> torch.Tensor:
    """``c`` mapped linearly onto [-1, 1] (all zeros if it is constant)."""
    span = float(c.max() - c.min()) if c.numel() else 0.0
    return 2 * (c - c.min()) / span - 1 if span > 0 else torch.zeros_like(c)
