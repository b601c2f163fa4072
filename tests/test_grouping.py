import numpy as np
import pytest

from ptylab.grouping import GroupingError, group_positions
from ptylab.rng import stage_rng


def _scatter(m=60):
    rng = np.random.default_rng(2)
    return rng.uniform(0, 100, m), rng.uniform(0, 100, m)


def test_groups_are_anchor_plus_true_nearest_neighbours_with_zero_sum_offsets():
    x, y = _scatter()
    g = group_positions(x, y, gridsize=2, neighbours=7)
    assert g.indices.shape == (60, 4)
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(60))
    for anchor, members in enumerate(g.indices):
        d = np.hypot(x - x[anchor], y - y[anchor])
        nearest = set(np.argsort(d)[:4].tolist())
        assert set(members.tolist()) == nearest
    np.testing.assert_allclose(g.offsets.sum(axis=1), 0.0, atol=1e-9)
    centroid = np.column_stack([x, y])[g.indices].mean(axis=1)
    np.testing.assert_allclose(g.offsets[:, 0] + centroid, np.column_stack([x, y]))


def test_gridsize_one_is_single_patterns():
    x, y = _scatter(10)
    g = group_positions(x, y, gridsize=1)
    assert g.indices.shape == (10, 1) and np.all(g.offsets == 0)


def test_oversampling_only_when_valid():
    x, y = _scatter()
    with pytest.raises(GroupingError, match="needs gridsize > 1"):
        group_positions(x, y, gridsize=1, oversample=2, rng=stage_rng(0, "o"))
    with pytest.raises(GroupingError, match="K >= C"):
        group_positions(x, y, gridsize=2, neighbours=3, oversample=1, rng=stage_rng(0, "o"))
    a = group_positions(x, y, gridsize=2, neighbours=7, oversample=2, rng=stage_rng(0, "o"))
    b = group_positions(x, y, gridsize=2, neighbours=7, oversample=2, rng=stage_rng(0, "o"))
    assert a.n_groups == 180
    np.testing.assert_array_equal(a.indices, b.indices)
    # every extra group is the anchor plus distinct members of its K nearest
    for row in a.indices[60:]:
        assert len(set(row.tolist())) == 4
    np.testing.assert_allclose(a.offsets.sum(axis=1), 0.0, atol=1e-9)


def test_too_few_positions_is_a_clear_error():
    with pytest.raises(GroupingError, match="cannot form groups of 4"):
        group_positions(np.array([1.0, 2.0]), np.array([1.0, 2.0]), gridsize=2)


def test_coincident_positions_keep_each_anchor_first():
    x = np.array([0.0, 0.0, 5.0, 5.0, 10.0, 0.0])
    y = np.array([0.0, 0.0, 0.0, 5.0, 0.0, 0.0])
    g = group_positions(x, y, gridsize=2, neighbours=4)
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(6))
    assert all(len(set(row.tolist())) == 4 for row in g.indices)
