"""Per-patch phase offsets (and amplitude gains) fitted to the measured diffraction.

A diffraction pattern is blind to its patch's absolute phase, so a network that predicts each patch
from its own pattern leaves one phase offset per patch undetermined. Overlap agreement (spectral
synchronisation, ``stitching.phase_sync``) fixes them only relative to each neighbour: small
errors in the predicted patches add up along the scan into large-scale phase errors (measured on
the embedded data: phase correlation 0.62 with synchronised offsets, 0.90 with the true ones).
The data decide them: offsets change how neighbouring patches interfere where they are averaged,
and so the diffraction the stitched object predicts at every position. This module fits the
offsets, one number per patch, to minimise the Poisson likelihood of the measured patterns given
the stitched object, starting from the synchronised ones, and with them one amplitude gain per
patch (a pattern's total counts fix its patch's brightness; the network's brightness errors showed
as a grid at the patch spacing). Nothing else about the patches changes, so it adds no detail the
network did not predict; it only weighs and places what was predicted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .physics import extract_patches, far_field, poisson_nll

log = logging.getLogger(__name__)

# Patterns per forward/backward chunk: bounds memory on a tile of thousands of patterns.
CHUNK = 256
# Gains move five times slower than phases. At the phases' rate they absorbed noise: amplitude
# SSIM fell by 0.03 (1e4) to 0.06 (1e3) on the default job; at a fifth it rose (docs/quality.md).
GAIN_LR_FACTOR = 0.2


@dataclass(frozen=True)
class OffsetFit:
    """How offsets (and gains) are fitted; ``steps`` 0 means not at all. The one place these
    settings and their bundle keys are defined."""

    steps: int = 100
    lr: float = 0.02
    gains: bool = True  # also fit one amplitude gain per patch

    def inference(self) -> dict[str, Any]:
        """The bundle's inference keys for these settings."""
        return {"offset_fit_steps": self.steps, "offset_fit_lr": self.lr, "offset_fit_gains": self.gains}

    @classmethod
    def from_inference(cls, info: dict[str, Any]) -> OffsetFit:
        """The settings a bundle recorded; bundles written before the fit existed carry no keys
        and reconstruct as they did (no fit)."""
        return cls(int(info.get("offset_fit_steps", 0)), float(info.get("offset_fit_lr", cls.lr)),
                   bool(info.get("offset_fit_gains", False)))


@dataclass
class Evidence:
    """The measured patterns behind a set of patches, and how to fit offsets to them.

    ``diff`` (P, N, N) are measured amplitudes (square roots of counts), indexable by an integer
    array (a memory map works); ``pattern`` (M,) says which pattern each patch was predicted from;
    ``x``, ``y`` (P,) are the patterns' positions on the object canvas.
    """

    diff: np.ndarray
    pattern: np.ndarray
    x: np.ndarray
    y: np.ndarray
    probe: np.ndarray
    fit: OffsetFit = field(default_factory=OffsetFit)


def fit_offsets(canvas_of: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, evidence: Evidence,
                patterns: np.ndarray, origin: tuple[int, int]) -> torch.Tensor:
    """Per-patch complex factors (M,) (unit modulus unless ``evidence.fit.gains``) that minimise the
    Poisson NLL of ``patterns`` given the stitched canvas.

    ``canvas_of(factors)`` is the (H, W) complex stitched object for given per-patch factors (it
    must be differentiable); ``start`` (M,) the synchronised phasors; ``patterns`` the indices of
    the patterns that lie on this canvas, whose positions are shifted by ``origin`` (row, col) of
    the canvas. The intensity scale between model and counts is fitted once at the start (the
    Poisson optimum for a fixed object), so the fit needs no ``intensity_scale``.
    """
    n = evidence.probe.shape[-1]
    probe = torch.from_numpy(np.asarray(evidence.probe)).to(torch.complex64)
    obs = torch.from_numpy(np.asarray(evidence.diff[patterns], np.float32)).square()
    xs = torch.from_numpy(np.asarray(evidence.x[patterns], np.float64) - origin[1])
    ys = torch.from_numpy(np.asarray(evidence.y[patterns], np.float64) - origin[0])

    def unit_counts(canvas: torch.Tensor, sl: slice) -> torch.Tensor:
        return far_field(probe * extract_patches(canvas, xs[sl], ys[sl], n)).abs().square()

    chunks = [slice(s, s + CHUNK) for s in range(0, len(patterns), CHUNK)]
    with torch.no_grad():
        canvas0 = canvas_of(start).to(torch.complex64)
        scale = float(obs.sum()) / max(float(sum(unit_counts(canvas0, sl).sum() for sl in chunks)), 1e-30)

    theta = torch.angle(start).detach().clone().requires_grad_(True)
    fit = evidence.fit
    log_gain = torch.zeros_like(theta, requires_grad=fit.gains)
    groups: list[dict[str, object]] = [{"params": [theta]}]
    if fit.gains:
        groups.append({"params": [log_gain], "lr": fit.lr * GAIN_LR_FACTOR})
    opt = torch.optim.Adam(groups, lr=fit.lr)

    def factors() -> torch.Tensor:
        return torch.polar(torch.exp(log_gain), theta)

    first = last = float("nan")
    for step in range(fit.steps):
        opt.zero_grad()
        canvas = canvas_of(factors()).to(torch.complex64)
        leaf = canvas.detach().requires_grad_(True)
        total = 0.0
        for sl in chunks:  # gradients gathered on the canvas chunk by chunk, then sent to theta once
            nll = poisson_nll(scale * unit_counts(leaf, sl), obs[sl]) * (obs[sl].shape[0] / len(patterns))
            nll.backward()
            total += float(nll.detach())
        canvas.backward(leaf.grad)
        opt.step()
        first = total if step == 0 else first
        last = total
    log.debug("phase offsets fitted to %d patterns: NLL %.6g -> %.6g in %d steps", len(patterns), first, last,
              fit.steps)
    return factors().detach()
