"""The field-wide phase plane: invisible to the patterns, so the refined arm keeps the single pass's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ptylab.config import EmbeddedDatasetConfig
from ptylab.data_fit import data_fit
from ptylab.phase_plane import keep_plane
from ptylab.physics import make_object
from ptylab.simulate import simulate
from ptylab.stitching import Stitched

from .conftest import SMALL_DATASET


def test_the_patterns_cannot_see_a_field_wide_phase_plane():
    """A phase ramp of 0.3 rad across the object moves the test patterns' deviance by a hundredth of
    what a local phase error of the same size does: the patterns do not decide the plane."""
    _, test, _ = simulate(EmbeddedDatasetConfig(**SMALL_DATASET), 1e4, 3)
    cols = np.arange(test.obj.shape[1])[None, :] * np.ones((test.obj.shape[0], 1))
    ramp = 0.3 * cols / test.obj.shape[1]
    local = gaussian_filter(np.random.default_rng(0).normal(size=test.obj.shape), 3)
    local *= ramp.std() / local.std()
    base = data_fit(test.obj, test).ratio
    seen = {name: data_fit(test.obj * np.exp(1j * phase), test).ratio - base
            for name, phase in (("plane", ramp), ("local", local))}
    assert seen["local"] > 0.02
    assert abs(seen["plane"]) < seen["local"] / 50


def _stitched(obj: np.ndarray) -> Stitched:
    weight = np.zeros(obj.shape, np.float32)
    weight[8:-8, 8:-8] = 1.0
    return Stitched(obj.astype(np.complex64), weight, (8, obj.shape[0] - 8, 8, obj.shape[1] - 8))


def test_keeping_a_reference_plane_undoes_a_ramp_and_a_global_phase_near_pi():
    """The plane and constant of the difference go, whatever the global phase (2.9 rad would wrap
    a fit of the raw difference), the amplitude untouched, and the span is the ramp's over the box."""
    truth = make_object(96, "camera", "astronaut", 0.3, 2.0)
    rows, cols = np.mgrid[:96, :96]
    drift = 0.004 * cols - 0.003 * rows + 2.9
    reference, drifted = _stitched(truth), _stitched(truth * np.exp(1j * drift))
    kept, span = keep_plane(drifted, reference)
    np.testing.assert_allclose(np.abs(kept.obj), np.abs(drifted.obj), rtol=1e-6)
    inside = np.s_[8:-8, 8:-8]
    assert np.abs(np.angle(kept.obj * np.conj(reference.obj))[inside]).max() < 1e-4
    assert span == pytest.approx((0.004 + 0.003) * 79, rel=1e-4)
    # structure of the object's own (not a plane) stays: only the difference's plane is taken out
    bump = np.exp(1j * 0.5 * np.exp(-((rows - 48) ** 2 + (cols - 48) ** 2) / 50))
    kept, _ = keep_plane(_stitched(truth * bump * np.exp(1j * drift)), reference)
    left = np.angle(kept.obj * np.conj(reference.obj) * np.conj(bump))[inside]
    assert np.abs(left).max() < 0.05  # at most the bump's own mean and tilt over the box, not the bump


def test_objects_on_different_canvases_are_refused():
    with pytest.raises(ValueError, match="not on one canvas"):
        keep_plane(_stitched(np.ones((96, 96))), _stitched(np.ones((80, 80))))
