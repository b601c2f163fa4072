import numpy as np
import pytest
from scipy.spatial.distance import pdist

from ptylab.config import EmbeddedDatasetConfig as DatasetConfig
from ptylab.config import ViewConfig
from ptylab.physics import effective_probe_radius, fermat_scan, make_probe, raster_scan
from ptylab.rng import stage_rng
from ptylab.simulate import scan_positions
from ptylab.views import greedy_thin, median_nn_distance, overlap_fraction, select_view, spacing_for_overlap


@pytest.mark.parametrize(("d", "f"), [(5.2, 0.7), (8.9, 0.5), (15.1, 0.2)])
def test_overlap_formula_matches_design_values(d, f):
    assert overlap_fraction(d, 11.0) == pytest.approx(f, abs=0.01)
    assert spacing_for_overlap(f, 11.0) == pytest.approx(d, abs=0.15)


def test_overlap_limits():
    assert overlap_fraction(0.0, 5.0) == pytest.approx(1.0)
    assert overlap_fraction(10.0, 5.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="target_overlap"):
        spacing_for_overlap(1.2, 5.0)


def _embedded_scan(pattern="raster"):
    cfg = DatasetConfig(scan_pattern=pattern)
    x, y = scan_positions(cfg, seed=1)
    train = y < cfg.object_size / 2
    radius = effective_probe_radius(make_probe(cfg.N, cfg.probe_diameter, cfg.probe_blur))
    return (x[train], y[train]), (x[~train], y[~train]), radius


@pytest.mark.parametrize("pattern", ["raster", "fermat"])
@pytest.mark.parametrize(("name", "target"), [("dense", 0.7), ("sparse", 0.2)])
def test_views_reach_their_target_overlap_on_the_embedded_scan(name, target, pattern):
    train, test, radius = _embedded_scan(pattern)
    sel = select_view(ViewConfig(name=name, target_overlap=target), train, test, radius)
    assert not sel.skipped, sel.skip_reason
    for split in ("train", "test"):
        assert sel.stats[split]["achieved_overlap"] == pytest.approx(target, abs=0.1)
    kept = np.column_stack([train[0][sel.train_index], train[1][sel.train_index]])
    assert pdist(kept).min() >= sel.stats["spacing"] - 1e-9
    # the legacy system kept 42 of 5088 in dense and none in sparse: both views must have real data
    assert sel.stats["train"]["kept"] >= 64


def test_a_fermat_spiral_covers_a_rasters_area_at_its_density_without_a_period():
    """The spiral stands in for the scans many instruments run: the same area and about the same
    number of positions as the raster of its step (so a dose per area compares), and no lattice."""
    shape, n, step = (384, 384), 64, 3.0
    x, y = fermat_scan(shape, n, step)
    xr, yr = raster_scan(shape, n, step, 0.0, stage_rng(1, "scan"))
    assert x.size == pytest.approx(xr.size, rel=0.02)
    assert (x.min(), y.min()) >= (n // 2, n // 2) and (x.max(), y.max()) <= (shape[1] - n // 2, shape[0] - n // 2)
    assert (x.min(), x.max(), y.min(), y.max()) == pytest.approx((xr.min(), xr.max(), yr.min(), yr.max()), abs=step)
    nn = median_nn_distance(x, y)
    assert 0.8 * step < nn < 1.2 * step
    # a raster's positions share a handful of distinct x coordinates; a spiral's are all distinct
    assert np.unique(np.round(xr, 6)).size < xr.size / 50 and np.unique(np.round(x, 6)).size == x.size
    np.testing.assert_array_equal(x, fermat_scan(shape, n, step)[0])


def test_full_view_keeps_everything_and_small_views_are_skipped_with_numbers():
    train, test, radius = _embedded_scan()
    full = select_view(ViewConfig(name="full", target_overlap=None), train, test, radius)
    assert full.train_index.size == train[0].size
    tiny = select_view(ViewConfig(name="sparse", target_overlap=0.2, min_train_positions=10_000), train, test, radius)
    assert tiny.skipped
    assert "fewer than the 10000" in tiny.skip_reason and "view.min_train_positions" in tiny.skip_reason


def test_greedy_thinning_is_deterministic_and_in_scan_order():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 50, 300), rng.uniform(0, 50, 300)
    a = greedy_thin(x, y, 6.0)
    np.testing.assert_array_equal(a, greedy_thin(x, y, 6.0))
    assert a[0] == 0 and np.all(np.diff(a) > 0)
    assert pdist(np.column_stack([x[a], y[a]])).min() >= 6.0
