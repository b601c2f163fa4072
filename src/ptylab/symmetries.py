"""The probe's mirror and rotation symmetries: extra training samples, and (optionally) an average
of each prediction over them at evaluation (``prediction.predict_crops``).

Patch pixel i sits at i - N//2 from the scan position and the far field puts zero frequency at
N//2 (``physics.far_field``), so mirroring a row index as i -> (N - i) mod N mirrors the object
about the scan position *and* its diffraction pattern about zero frequency; swapping rows and
columns transposes both. When the probe is unchanged by such a transform T, the pattern T(I) is
exactly what the same probe measures on the object T(O): a valid sample the data did not contain,
with the same Poisson statistics. Its group's relative offsets transform with it. The eight
compositions of a row mirror, a column mirror and a transpose form the square's symmetry group;
a disc probe, defocused or not, has all eight. A measured probe usually has none, and then only
the identity is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Transform t in 0..7: bit 0 mirrors rows, bit 1 mirrors columns, bit 2 then transposes.
TRANSFORMS = tuple(range(8))
PROBE_RTOL = 1e-3


def _mirror(a: Any, axis: int) -> Any:
    """i -> (N - i) mod N along ``axis``: the mirror about pixel N//2 that keeps index 0 in place
    (a numpy array, or a torch tensor: a learnt probe is symmetrised inside the model)."""
    if isinstance(a, np.ndarray):
        return np.roll(np.flip(a, axis=axis), 1, axis=axis)
    return a.flip(axis).roll(1, axis)


def transform_images(images: Any, t: int) -> Any:
    """Apply transform ``t`` to the last two axes (rows, columns) of ``images`` (an array or a tensor)."""
    out = images
    if t & 1:
        out = _mirror(out, -2)
    if t & 2:
        out = _mirror(out, -1)
    if t & 4:
        out = out.swapaxes(-1, -2)
    return out


def symmetric_part(image: Any, transforms: Sequence[int]) -> Any:
    """The mean of ``image`` under ``transforms``: unchanged by each of them when they form a group,
    as a probe's symmetries do. A probe learnt under the symmetries of the file's probe stays
    under them, so the symmetric training samples stay valid samples of it."""
    return sum(transform_images(image, t) for t in transforms) / len(transforms)


def inverse(t: int) -> int:
    """The transform that undoes ``t``: mirrors commute, and a transpose before them swaps which
    axis each mirrors."""
    return t if not t & 4 else 4 | (t & 1) << 1 | (t & 2) >> 1


def transform_offsets(offsets: np.ndarray, t: int) -> np.ndarray:
    """Apply transform ``t`` to offsets (..., 2) given as (dx, dy) = (column, row) shifts."""
    dx, dy = offsets[..., 0], offsets[..., 1]
    if t & 1:
        dy = -dy
    if t & 2:
        dx = -dx
    if t & 4:
        dx, dy = dy, dx
    return np.stack((dx, dy), axis=-1)


def probe_symmetries(probe: np.ndarray, valid_pixels: np.ndarray | None = None,
                     rtol: float = PROBE_RTOL) -> tuple[int, ...]:
    """The transforms that leave ``probe`` unchanged to ``rtol`` of its norm (always the identity)
    and, where the detector has unmeasured pixels, its mask ``valid_pixels`` exactly: a transformed
    pattern's blocked pixels must be those the likelihood leaves out."""
    p = np.asarray(probe, dtype=np.complex128)
    norm = float(np.linalg.norm(p))
    if norm == 0:
        return (0,)
    return tuple(t for t in TRANSFORMS
                 if float(np.linalg.norm(transform_images(p, t) - p)) <= rtol * norm
                 and (valid_pixels is None or np.array_equal(transform_images(valid_pixels, t), valid_pixels)))


# Which of the probe's symmetries an evaluation averages its predictions over
# (``eval.average_symmetries``, ``refine.average_symmetries``): none, the point reflection alone
# (transform 3: both mirrors, a half turn), or every one the probe has.
SYMMETRY_AVERAGES = ("none", "point", "all")
POINT_REFLECTION = 3


def symmetry_average(value: object) -> str:
    """``value`` as one of ``SYMMETRY_AVERAGES``. Before 2026-12-03 the setting was a bool that
    meant every symmetry, and config snapshots and bundles from then still say so: true reads as
    "all", false as "none" (also as the strings OmegaConf turns them into)."""
    legacy = {"true": "all", "false": "none"}
    average = legacy.get(str(value).lower(), str(value))
    _require_known(average, value)
    return average


def _require_known(average: str, given: object) -> None:
    if average not in SYMMETRY_AVERAGES:
        raise ValueError(f"expected one of {', '.join(SYMMETRY_AVERAGES)}, got {given!r}")


def averaged_transforms(probe: np.ndarray, average: str, valid_pixels: np.ndarray | None = None) -> tuple[int, ...]:
    """The transforms an ``average`` of ``SYMMETRY_AVERAGES`` predicts under for ``probe`` (and the
    detector's mask): always the identity, plus those of the symmetries it names. Old bools are
    read at the boundaries (config validation, bundle loading) by ``symmetry_average``, not here."""
    _require_known(average, average)
    if average == "none":
        return (0,)
    found = probe_symmetries(probe, valid_pixels)
    return found if average == "all" else tuple(t for t in found if t in (0, POINT_REFLECTION))
