"""Phase synchronisation: per-patch phase factors that make overlapping predictions agree.

A single diffraction pattern is blind to its patch's absolute phase, so independently predicted
patches carry arbitrary offsets; stitching multiplies each by the factor found here before
averaging, and the offset fit (``phase_offsets``) starts from them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .placement import Placement

log = logging.getLogger(__name__)

# Phase synchronisation forms its (M, M) overlap matrix (sparse) while a canvas pixel is covered by
# at most this many patches on average (weighted by coverage); denser tiles stay matrix-free.
EXPLICIT_SYNC_MAX_COVER = 256.0
# Phase synchronisation's power steps stop when no patch's phase moves by more than SYNC_TOL rad,
# or after SYNC_MAX_STEPS (``phase_sync``).
SYNC_TOL = 1e-4
SYNC_MAX_STEPS = 2000


def phase_sync(placement: Placement, max_steps: int = SYNC_MAX_STEPS, tol: float = SYNC_TOL) -> torch.Tensor:
    """Per-patch phase factors that make overlapping predictions agree (spectral synchronisation).

    Diffraction is blind to a patch's absolute phase, so independently predicted patches carry
    arbitrary phase offsets; averaged as they are, large-scale phase is lost. The offsets that
    best agree on the overlaps maximise v^H A v with A = V^H W^-1 V (V places patches on the
    canvas, W the accumulated weights); its leading eigenvector, projected to unit modulus and
    refined by generalised power steps, gives them. Uses the predictions only.

    The power steps run until no phase moves by more than ``tol`` rad (at most ``max_steps``). A
    step mixes each patch with its neighbours only, so across a scan of some 40 x 40 patches
    the projected eigenvector relaxes slowly, and 20 steps (the first design) could stop with a
    phase vortex that the offset fit then kept: the gridsize-1 and supervised single passes of the
    384 px study failed in phase (correlation 0.55-0.83) and score 0.93-0.97 with the steps run
    to convergence (docs/quality.md).

    A is formed as a sparse matrix unless the patches cover each pixel too many times
    (``EXPLICIT_SYNC_MAX_COVER``): forming it costs the sum over pixels of their coverage squared,
    while each of ARPACK's matrix-free products (a pass over the canvas in Python) costs the
    placement's size once. Measured (docs/performance.md): on the default job's 2,244 patches
    (coverage about 100) 1.8 s explicit against 10 s matrix-free; on a 1 px raster at crop 32
    (coverage 711) 22 s against 10 s. The explicit matrix holds about 4 x coverage entries per
    patch, so memory stays near what a tile's placement needs.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    m = placement.values.shape[0]
    weight = placement.weight_sum()
    inv_w = torch.where(weight > 1e-6, 1.0 / weight.clamp_min(1e-6), torch.zeros_like(weight))
    if coverage(placement) <= EXPLICIT_SYNC_MAX_COVER:
        a = overlap_matrix(placement, inv_w)
        op: Any = a

        def apply(v: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(a @ v.numpy())
    else:
        conj_vals = placement.values.conj()

        def apply(v: torch.Tensor) -> torch.Tensor:
            canvas = torch.zeros(placement.size, dtype=torch.complex128).index_add_(
                0, placement.index.ravel(), (placement.values * v[:, None]).ravel()) * inv_w
            return (conj_vals * canvas[placement.index]).sum(dim=1)

        op = LinearOperator((m, m), matvec=lambda v: apply(torch.from_numpy(np.asarray(v).ravel())).numpy(),
                            dtype=np.complex128)
    _, vec = eigsh(op, k=1, which="LA", v0=np.ones(m, np.complex128), tol=1e-6)
    return projected_power_steps(apply, torch.from_numpy(vec[:, 0]), max_steps, tol, f"{m} patches")


def projected_power_steps(apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, max_steps: int,
                           tol: float, what: str) -> torch.Tensor:
    """Unit-modulus factors from the leading eigenvector ``v`` of the overlap matrix that
    ``apply`` multiplies by: projected onto unit modulus, then generalised power steps (multiply,
    project) until no phase moves by more than ``tol`` rad, at most ``max_steps`` of them. The
    global gauge is fixed: the first factor is real (its patch or tile keeps its phase)."""
    v = v / v.abs().clamp_min(1e-12)
    steps, moved = 0, math.inf
    while steps < max_steps and moved >= tol:
        z = apply(v)
        z = z / z.abs().clamp_min(1e-12)
        moved = float((z * v.conj()).angle().abs().max())
        v, steps = z, steps + 1
    log.debug("phase synchronisation of %s: %d power steps, last move %.2g rad", what, steps, moved)
    return v * (v[0].conj() / v[0].abs())


def coverage(placement: Placement) -> float:
    """Patches per canvas pixel, averaged over the placed pixels: sum(k^2) / sum(k)."""
    k = torch.bincount(placement.index[placement.weights > 0], minlength=placement.size).double()
    return float((k * k).sum() / k.sum().clamp_min(1.0))


def overlap_matrix(placement: Placement, inv_w: torch.Tensor) -> Any:
    """A = V^H W^-1 V as a sparse (M, M) matrix, through V as a sparse (canvas, M) matrix."""
    from scipy.sparse import csr_matrix, diags

    m, s = placement.values.shape
    v = csr_matrix((placement.values.ravel().numpy(), (placement.index.ravel().numpy(), np.repeat(np.arange(m), s))),
                   shape=(placement.size, m))
    return (v.conj().T @ (diags(inv_w.numpy()) @ v)).tocsr()
