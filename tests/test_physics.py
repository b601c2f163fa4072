from dataclasses import replace

import numpy as np
import pytest
import torch

from ptylab.data import read_dataset, write_dataset
from ptylab.datasets import load_or_simulate
from ptylab.physics import (
    dose_scale,
    effective_probe_radius,
    exit_wave_intensity,
    extract_patches,
    far_field,
    fermat_scan,
    make_probe,
    poisson_nll,
    raster_scan,
    uncentred_intensity,
    window_taps,
)
from ptylab.simulate import simulate
from ptylab.symmetries import TRANSFORMS, probe_symmetries


def test_far_field_conserves_energy():
    gen = torch.Generator().manual_seed(0)
    psi = torch.complex(torch.randn(5, 32, 32, generator=gen), torch.randn(5, 32, 32, generator=gen))
    spectrum = far_field(psi)
    torch.testing.assert_close(spectrum.abs().square().sum(dim=(-2, -1)), psi.abs().square().sum(dim=(-2, -1)),
                               rtol=1e-5, atol=1e-4)
    # zero frequency at the array centre: a flat field puts all energy in pixel (N/2, N/2)
    flat = far_field(torch.ones(1, 32, 32, dtype=torch.complex64))
    assert flat.abs().argmax().item() == 16 * 32 + 16


def test_dose_scale_makes_mean_intensity_equal_nphotons():
    probe = make_probe(32, 11, 1.0)
    obj = torch.from_numpy((0.5 + np.random.default_rng(0).random((80, 80))).astype(np.complex64))
    x = torch.tensor([20.0, 40.0, 55.5])
    y = torch.tensor([30.0, 41.25, 50.0])
    patches = extract_patches(obj, x, y, 32)
    s = dose_scale(probe, patches, 1234.0)
    mean_total = (exit_wave_intensity(torch.from_numpy(probe), patches) * s**2).sum(dim=(-2, -1)).mean()
    assert mean_total.item() == pytest.approx(1234.0, rel=1e-5)


def test_extract_patches_integer_positions_match_slicing_and_subpixel_interpolates():
    rng = np.random.default_rng(1)
    obj = (rng.random((64, 64)) + 1j * rng.random((64, 64))).astype(np.complex64)
    t = torch.from_numpy(obj)
    p = extract_patches(t, torch.tensor([20.0]), torch.tensor([30.0]), 16)[0].numpy()
    np.testing.assert_allclose(p, obj[30 - 8 : 30 + 8, 20 - 8 : 20 + 8], atol=1e-6)
    half = extract_patches(t, torch.tensor([20.5]), torch.tensor([30.0]), 16)[0].numpy()
    expected = 0.5 * (obj[22:38, 12:28] + obj[22:38, 13:29])
    np.testing.assert_allclose(half, expected, atol=1e-6)


def test_gathered_windows_are_the_simulators_bilinear_windows_exact_at_whole_pixels():
    """The offset fit cuts windows by gathering: the simulator's bilinear windows, values and
    gradients, zero outside the image, and whole-pixel positions cut exactly."""
    rng = np.random.default_rng(2)
    obj = torch.from_numpy((rng.random((40, 50)) + 1j * rng.random((40, 50))).astype(np.complex64))
    whole = (torch.tensor([20.0, 5.0, 41.0]), torch.tensor([25.0, 3.0, 30.0]))
    cases = [whole, (torch.tensor([20.5, 9.25, 41.0]), torch.tensor([25.0, 8.0, 30.75])),
             (torch.tensor([-3.5, 2.0, 60.2]), torch.tensor([1.0, -9.7, 45.0]))]  # partly or wholly outside
    weights = torch.from_numpy(rng.random((3, 16, 16)).astype(np.float32))
    def gather_windows(image, x, y, n):
        return window_taps(image.shape, x, y, n, image.real.dtype).cut(image)

    for x, y in cases:
        grads = []
        for cut in (gather_windows, extract_patches):
            image = obj.clone().requires_grad_(True)
            windows = cut(image, x, y, 16)
            (windows.abs() * weights).sum().backward()
            grads.append((windows.detach(), image.grad))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-4)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=1e-4)
    exact = gather_windows(obj, *whole, 16)
    assert torch.equal(exact[0], obj[25 - 8 : 25 + 8, 20 - 8 : 20 + 8])
    # the second window starts 5 rows above and 3 columns left of the image
    assert not exact[1, :5].any() and not exact[1, :, :3].any()
    assert torch.equal(exact[1, 5:, 3:], obj[:11, :13])


@pytest.mark.parametrize("n", [32, 31])
def test_uncentred_intensity_is_the_far_field_intensity_with_zero_frequency_first(n):
    gen = torch.Generator().manual_seed(3)
    psi = torch.complex(torch.randn(4, n, n, generator=gen), torch.randn(4, n, n, generator=gen))
    torch.testing.assert_close(uncentred_intensity(psi),
                               torch.fft.ifftshift(far_field(psi).abs().square(), dim=(-2, -1)))


@pytest.mark.parametrize("dose", [1e3, 1e4, 1e5])
def test_mean_counts_per_pattern_within_one_percent_of_dose(small_dataset_cfg, dose):
    train, test, summary = simulate(small_dataset_cfg, dose, seed=3)
    counts = np.concatenate([train.diff3d, test.diff3d]).astype(np.float64) ** 2
    mean_total = counts.sum(axis=(1, 2)).mean()
    assert mean_total == pytest.approx(dose, rel=0.01)
    assert train.metadata["nphotons"] == dose
    assert summary["intensity_scale"] == train.metadata["intensity_scale"]
    # counts are integers: amplitudes are exact square roots of them
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3 * max(1.0, dose / 1e3))


@pytest.mark.parametrize("pattern", ["raster", "fermat"])
def test_split_is_by_position(small_dataset_cfg, pattern):
    cfg = replace(small_dataset_cfg, scan_pattern=pattern)
    train, test, _ = simulate(cfg, 1e3, seed=0)
    mid = cfg.object_size / 2
    assert np.all(train.ycoords < mid) and np.all(test.ycoords >= mid)
    assert train.n_positions > 0 and test.n_positions > 0
    # the scan the simulator ran is the pattern asked for, every position in one split or the other
    x = np.concatenate([train.xcoords, test.xcoords])[np.argsort(np.concatenate([train.scan_index, test.scan_index]))]
    shape, n, step = (cfg.object_size, cfg.object_size), cfg.N, cfg.scan_step
    expected = fermat_scan(shape, n, step)[0] if pattern == "fermat" else raster_scan(shape, n, step, 0.0, None)[0]
    np.testing.assert_array_equal(x, expected)


def test_a_simulated_beamstop_blocks_its_disc_and_the_data_carry_the_mask(small_dataset_cfg, tmp_path):
    """``dataset.beamstop_radius``: the patterns hold 0 inside the disc and the same counts as
    without it outside (one noise draw), the mask travels with both splits and through the cache,
    and a centred disc keeps every symmetry the probe has."""
    open_train, _, _ = simulate(small_dataset_cfg, 1e3, seed=3)
    train, test, _ = simulate(replace(small_dataset_cfg, beamstop_radius=2.5), 1e3, seed=3)
    valid = train.valid_pixels
    assert valid is not None and int((~valid).sum()) == 21  # the pixels closer than 2.5 px to the centre
    np.testing.assert_array_equal(test.valid_pixels, valid)
    assert not train.diff3d[:, ~valid].any()
    np.testing.assert_array_equal(train.diff3d[:, valid], open_train.diff3d[:, valid])
    assert open_train.valid_pixels is None
    assert probe_symmetries(train.probe, valid) == probe_symmetries(train.probe) == TRANSFORMS
    cached = load_or_simulate(replace(small_dataset_cfg, beamstop_radius=2.5), 1e3, 3, tmp_path)
    np.testing.assert_array_equal(cached.train.valid_pixels, valid)
    (entry,) = tmp_path.glob("*/train.npz")
    np.testing.assert_array_equal(read_dataset(entry).valid_pixels, valid)


def test_same_seed_gives_identical_bytes_other_seed_other_noise(small_dataset_cfg, tmp_path):
    a_train, _, _ = simulate(small_dataset_cfg, 1e3, seed=7)
    b_train, _, _ = simulate(small_dataset_cfg, 1e3, seed=7)
    c_train, _, _ = simulate(small_dataset_cfg, 1e3, seed=8)
    for name, data in (("a", a_train), ("b", b_train)):
        write_dataset(tmp_path / f"{name}.npz", data)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert not np.array_equal(a_train.diff3d, c_train.diff3d)
    # same noiseless physics: the expected counts agree, only the noise differs
    assert abs(float((a_train.diff3d**2).mean()) - float((c_train.diff3d**2).mean())) < 0.05 * float(
        (a_train.diff3d**2).mean())
    np.testing.assert_array_equal(read_dataset(tmp_path / "a.npz").diff3d, a_train.diff3d)


def test_effective_radius_of_a_sharp_disc_is_its_radius():
    assert effective_probe_radius(make_probe(64, 22, 0.0)) == pytest.approx(11, rel=0.03)


def test_the_likelihood_leaves_out_the_pixels_the_detector_did_not_measure():
    """Masked pixels carry no observation: whatever they hold or are predicted to hold, the masked
    NLL is the mean over the measured pixels alone; an all-true mask is no mask."""
    rng = np.random.default_rng(3)
    pred = torch.from_numpy(rng.uniform(0.5, 5, (4, 2, 8, 8)))
    obs = torch.from_numpy(rng.poisson(2.0, (4, 2, 8, 8)).astype(np.float64))
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[3:6, 3:6] = False
    masked = poisson_nll(pred, obs, valid)
    changed_obs, changed_pred = obs.clone(), pred.clone()
    changed_obs[..., 3:6, 3:6] = 1e4
    changed_pred[..., 3:6, 3:6] = 1e-3
    assert poisson_nll(changed_pred, changed_obs, valid) == pytest.approx(float(masked), rel=1e-12)
    terms = pred - obs * torch.log(pred + 1e-6)  # physics.EPS
    assert float(masked) == pytest.approx(float(terms[..., valid].mean()), rel=1e-9)
    assert float(poisson_nll(pred, obs, torch.ones(8, 8, dtype=torch.bool))) == pytest.approx(
        float(poisson_nll(pred, obs)), rel=1e-12)
