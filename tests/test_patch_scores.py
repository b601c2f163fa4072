"""The network's patches against the truth's: each crop's structure relative to its own level, so
that a crop's own phase offset and gain do not count (the offset fit's terms never enter: the
crops are scored before it, test_stitching holds it to that)."""

import numpy as np
import pytest
import torch

from ptylab.patch_scores import patch_agreement
from ptylab.physics import extract_patches, make_probe
from ptylab.placement import central
from ptylab.rng import stage_rng

N, CROP = 32, 16


@pytest.fixture(scope="module")
def crops(scan):
    """The shared scan's truth cut to the stitching's central crop, and a probe for the weights."""
    obj, x, y, patches = scan
    return obj, x, y, central(patches, CROP), make_probe(N, N / 2, 1.0, 1.0)


def test_the_truths_own_crops_agree_fully_whatever_each_crops_level(crops):
    """The truth's crops score 1 in both parts, and still 1 after each crop gets its own gain and
    phase offset: the score reads each crop's structure, never the level the offset fit could set."""
    obj, x, y, truth, probe = crops
    rng = stage_rng(1, "levels")
    levels = rng.uniform(0.5, 2.0, len(x)) * np.exp(1j * rng.uniform(-np.pi, np.pi, len(x)))
    for predicted in (truth, truth * levels[:, None, None].astype(np.complex64)):
        scores = patch_agreement(predicted, np.arange(len(x)), x, y, obj, probe).pooled
        assert scores["amplitude"] == pytest.approx(1.0, abs=1e-6)
        assert scores["phase"] == pytest.approx(1.0, abs=1e-6)


def test_flat_and_misplaced_crops_do_not_agree(crops):
    """Flat crops (a network that learnt nothing) score 0; the truth's structure placed at the
    wrong positions scores far below 1: the score asks for the right structure in the right patch."""
    obj, x, y, truth, probe = crops
    own = np.arange(len(x))  # crop i at position i
    flat = patch_agreement(np.ones_like(truth), own, x, y, obj, probe)
    assert flat.pooled == {"amplitude": 0.0, "phase": 0.0}
    assert all(np.isnan(r).all() for r in flat.per_crop.values())  # no structure, no correlation of its own
    misplaced = patch_agreement(np.roll(truth, 7, axis=0), own, x, y, obj, probe).pooled  # another position's crop
    assert misplaced["amplitude"] < 0.5 and misplaced["phase"] < 0.5


def test_a_truth_without_phase_structure_leaves_the_phase_unscored(crops):
    """An amplitude-only object's phase has nothing to agree with: None, not a number, while its
    amplitude is scored as before."""
    obj, x, y, _, probe = crops
    amplitude_only = np.abs(obj).astype(np.complex64)
    truth = central(extract_patches(torch.from_numpy(amplitude_only), torch.from_numpy(x), torch.from_numpy(y),
                                    N).numpy(), CROP)
    agreement = patch_agreement(truth, np.arange(len(x)), x, y, amplitude_only, probe)
    assert agreement.pooled["phase"] is None
    assert agreement.pooled["amplitude"] == pytest.approx(1.0, abs=1e-6)
    # nor has any crop a phase correlation of its own (the patch figure then leaves the phase out)
    assert np.isnan(agreement.per_crop["phase"]).all() and np.isfinite(agreement.per_crop["amplitude"]).all()


def test_each_position_is_scored_by_its_own_crops(crops):
    """The map of where the network learnt: each position's crops (several at gridsize 2, one
    per group it is a member of) averaged into its own correlation. Right crops at half the
    positions and other positions' crops at the rest: 1 where right, well below it where not,
    NaN at a position no crop covers; the pooled score lies between."""
    obj, x, y, truth, probe = crops
    n = len(x)
    covered = np.arange(n - 1)  # the last position has no crop
    wrong = covered % 2 == 1
    predicted = np.where(wrong[:, None, None], np.roll(truth[covered], 7, axis=0), truth[covered])
    twice = np.concatenate([covered, covered])  # every covered position a member of two groups
    agreement = patch_agreement(np.concatenate([predicted, predicted]), twice, x, y, obj, probe)
    for part, r in agreement.per_position(twice, n).items():
        assert np.isnan(r[-1])
        np.testing.assert_allclose(r[covered[~wrong]], 1.0, atol=1e-6)
        assert np.nanmean(r[covered[wrong]]) < 0.5, part
        assert np.nanmean(r[covered[wrong]]) < agreement.pooled[part] < 1.0
