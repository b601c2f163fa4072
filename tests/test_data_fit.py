"""The score that needs no truth: the test patterns' Poisson deviance over its noise floor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ptylab.config import EmbeddedDatasetConfig
from ptylab.data_fit import FLOOR_TABLE, data_fit, deviance, expected_deviance, reference_ratios
from ptylab.evaluation import DATA_FIT, fit_alone_flags, flat_image_flags
from ptylab.simulate import simulate

from .conftest import SMALL_DATASET, behind_beamstop


@pytest.mark.parametrize("mean", [3e-4, 0.05, 0.7, 3.0, 40.0, 2500.0])
def test_the_noise_floor_is_the_deviance_poisson_counts_have(mean):
    """Seeded Poisson counts drawn from a mean score, on average, the floor at that mean."""
    counts = np.random.default_rng(7).poisson(mean, 400_000).astype(np.float64)
    scored = deviance(counts, np.full_like(counts, mean))
    standard_error = scored.std() / np.sqrt(scored.size)
    assert abs(scored.mean() - expected_deviance(np.array([mean]))[0]) < 4 * standard_error


def test_the_noise_floor_meets_its_asymptotes_at_the_tables_ends():
    """Tabulated between FLOOR_TABLE's ends, asymptotic beyond: no step where one takes over."""
    low, high, _ = FLOOR_TABLE
    for end in (low, high):
        below, above = expected_deviance(np.array([end * (1 - 1e-9), end * (1 + 1e-9)]))
        assert below == pytest.approx(above, rel=1e-6)
    tiny, large = 1e-14, 1e5
    assert expected_deviance(np.array([tiny]))[0] == pytest.approx(-2 * tiny * np.log(tiny), rel=1e-9)
    assert expected_deviance(np.array([large]))[0] == pytest.approx(1 + 1 / (6 * large), rel=1e-12)


@pytest.fixture(scope="module")
def simulated():
    _, test, _ = simulate(EmbeddedDatasetConfig(**SMALL_DATASET), 1e4, 3)
    return test


def test_the_truth_explains_its_own_patterns_to_the_noise_and_a_flat_object_does_not(simulated):
    truth = data_fit(simulated.obj, simulated)
    assert truth.ratio == pytest.approx(1.0, abs=0.03)
    assert truth.per_position.shape == (simulated.n_positions,)
    assert np.median(truth.per_position) == pytest.approx(1.0, abs=0.05)
    flat = data_fit(np.ones_like(simulated.obj), simulated)
    assert flat.ratio > 3 * truth.ratio
    # Detail lost: a blurred truth explains the patterns worse than the truth, better than a flat object.
    blurred = gaussian_filter(simulated.obj.real, 1.5) + 1j * gaussian_filter(simulated.obj.imag, 1.5)
    assert truth.ratio < data_fit(blurred, simulated).ratio < flat.ratio


def test_the_data_fit_does_not_depend_on_the_objects_units(simulated):
    """One intensity scale is fitted, so a reconstruction in its own units scores as in the truth's."""
    once, scaled = data_fit(simulated.obj, simulated), data_fit(simulated.obj * np.float32(5.3), simulated)
    assert scaled.deviance == pytest.approx(once.deviance, rel=1e-5)
    assert scaled.ratio == pytest.approx(once.ratio, rel=1e-5)


def test_a_file_without_an_object_has_no_truth_to_explain_its_patterns(simulated):
    """Measured data may come with zeros for objectGuess: the flat reference stays, the truth's goes."""
    blank = replace(simulated, obj=np.zeros_like(simulated.obj))
    assert list(reference_ratios(blank)) == ["flat"]
    assert reference_ratios(blank)["flat"] == pytest.approx(reference_ratios(simulated)["flat"])
    with pytest.raises(ValueError, match="predicts no counts"):
        data_fit(blank.obj, blank)


def test_an_object_dark_where_photons_were_counted_scores_finite_and_worse(simulated):
    """Counts where a reconstruction predicts none (a hole in it) cost a large, finite deviance."""
    holed = simulated.obj.copy()
    holed[40:56, 40:56] = 0  # the middle of the scan
    fit = data_fit(holed, simulated)
    assert np.isfinite(fit.ratio) and fit.ratio > data_fit(simulated.obj, simulated).ratio + 0.5


def test_a_data_fit_no_better_than_a_reference_is_flagged():
    scores = {"amplitude": {}, "phase": {}, DATA_FIT: {"ratio": 2.4, "flat": 8.0, "fit_alone": 2.3}}
    assert flat_image_flags(scores) == []
    assert fit_alone_flags(scores) == ["data fit 2.400 x the noise floor does not beat the offset fit on flat "
                                       "patches (2.300)"]


def test_pixels_the_detector_did_not_measure_are_left_out_of_the_data_fit(simulated):
    """Behind a beamstop the counts are zero, not measured zeros: with the mask the truth explains
    what was measured to the noise; without it the blocked direct beam is read as missing photons."""
    blocked = behind_beamstop(simulated, 2.9)  # the central 5 x 5 pixels
    assert data_fit(blocked.obj, blocked).ratio == pytest.approx(1.0, abs=0.03)
    assert data_fit(blocked.obj, replace(blocked, valid_pixels=None)).ratio > 5
    flat = data_fit(np.ones_like(blocked.obj), blocked)
    assert flat.ratio > 3 * data_fit(blocked.obj, blocked).ratio
