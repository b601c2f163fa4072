"""Metrics on cases with known answers."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import fourier_shift
from torchmetrics.functional.image import structural_similarity_index_measure

from ptylab.config import EvalConfig
from ptylab.evaluation import flat_image_flags, headline, register, score_reconstruction
from ptylab.metrics import PSNR_CAP_DB, frc_curve, frc_resolution, ms_ssim_scales, psnr, score_image, ssim
from ptylab.physics import make_object
from ptylab.stitching import Stitched


@pytest.fixture(scope="module")
def obj():
    return make_object(128, "camera", "astronaut", 0.3, 2.0)


def test_identical_images_score_perfectly(obj):
    amp = np.abs(obj)
    s = score_image(amp, amp)
    assert s["mae"] == 0 and s["mse"] == 0
    assert s["ssim"] == pytest.approx(1.0) and s["ms_ssim"] == pytest.approx(1.0)
    assert s["psnr"] == PSNR_CAP_DB  # infinite PSNR is capped (and documented) at 100 dB
    assert s["frc_0_5"]["reached_nyquist"] and s["frc_1_7"]["period_px"] == pytest.approx(2.0, rel=0.02)


def test_psnr_textbook_value_and_dependence_on_data_range():
    target = np.linspace(0, 1, 400).reshape(20, 20)
    pred = target + 0.1  # MSE = 0.01
    assert psnr(pred, target, 1.0) == pytest.approx(20.0, abs=1e-5)
    assert psnr(pred, target, 2.0) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-5)
    # score_image takes the range from the ground truth itself, never 255
    assert score_image(pred * 3, target * 3)["psnr"] == pytest.approx(20.0, abs=1e-5)
    assert score_image(pred * 3, target * 3)["data_range"] == pytest.approx(3.0)


def test_registration_recovers_a_known_subpixel_shift(obj):
    gt = obj[20:100, 10:110]
    shifted = np.fft.ifft2(fourier_shift(np.fft.fft2(gt), (1.3, -0.7))).astype(np.complex64)
    moved, shift, margin, applied = register(shifted, gt, upsample_factor=20, max_shift=4)
    assert applied and shift == pytest.approx((-1.3, 0.7), abs=0.05)
    inner = (slice(margin, -margin), slice(margin, -margin))
    assert np.abs(moved[inner] - gt[inner]).mean() < 0.02 * np.abs(gt).mean()


def test_registration_trims_the_same_rim_at_a_zero_shift_as_at_a_subpixel_one(obj):
    """The scored area must not depend on whether a method lands on the correlation's zero step:
    an exact reconstruction and one 0.05 px off are scored on the same pixels."""
    gt = obj[20:100, 10:110]
    nudged = np.fft.ifft2(fourier_shift(np.fft.fft2(gt), (0.0, 0.05))).astype(np.complex64)
    _, zero, zero_margin, applied = register(gt.astype(np.complex64), gt, upsample_factor=20, max_shift=4)
    _, small, small_margin, _ = register(nudged, gt, upsample_factor=20, max_shift=4)
    assert applied and zero == (0.0, 0.0) and small != (0.0, 0.0)
    assert zero_margin == small_margin == 2


def test_scores_ignore_global_phase_and_amplitude_scale(obj):
    stitched = Stitched((0.5 * obj * np.exp(1j * 0.8)).astype(np.complex64), np.ones(obj.shape, np.float32),
                        (10, 100, 10, 120))
    s = score_reconstruction(stitched, obj, EvalConfig())
    assert s["phase"]["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert s["amplitude"]["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert s["alignment"]["phase_offset"] == pytest.approx(0.8, abs=1e-4)
    assert s["alignment"]["amplitude_scale"] == pytest.approx(2.0, rel=1e-4)


def test_frc_of_an_image_with_itself_is_one_and_of_independent_noise_about_zero(obj):
    amp = np.abs(obj)
    _, same = frc_curve(amp, amp)
    np.testing.assert_allclose(same, 1.0, atol=1e-9)
    rng = np.random.default_rng(0)
    freq, noise = frc_curve(rng.normal(size=(128, 128)), rng.normal(size=(128, 128)))
    # a ring of n pixels scatters by about 1/sqrt(n): loose at the centre, tight further out
    assert abs(noise.mean()) < 0.03 and np.abs(noise[10:]).mean() < 0.08 and np.abs(noise[10:]).max() < 0.3
    res = frc_resolution(freq, noise, 0.5)
    assert not res["reached_nyquist"] and res["frequency"] == pytest.approx(freq[0])


def test_frc_threshold_crossing_is_interpolated():
    freq = np.array([0.1, 0.2, 0.3, 0.4])
    curve = np.array([0.9, 0.7, 0.3, 0.1])
    res = frc_resolution(freq, curve, 0.5)
    assert res["frequency"] == pytest.approx(0.25) and res["period_px"] == pytest.approx(4.0)


def test_ms_ssim_scales_fit_the_image():
    assert ms_ssim_scales((512, 512)) == 5
    assert ms_ssim_scales((112, 224)) == 4
    assert ms_ssim_scales((30, 30)) == 2
    assert ms_ssim_scales((20, 20)) < 2
    s = score_image(np.ones((20, 20)), np.ones((20, 20)) * 0.5)
    assert s["ms_ssim"] is None and s["ms_ssim_scales"] < 2


def test_ssim_in_row_strips_is_the_one_pass_ssim(obj):
    """Strips bound the memory of SSIM on large objects; they must not change the score."""
    truth = np.abs(obj[:77, :90]).astype(np.float64)
    noisy = truth + np.random.default_rng(0).normal(0, 0.1, truth.shape)
    one_pass = float(structural_similarity_index_measure(
        torch.from_numpy(noisy)[None, None], torch.from_numpy(truth)[None, None], data_range=1.5))
    for strip_bytes in (1, 500_000, 10**9):  # 12-row strips (77 is not a multiple), a few, one
        assert ssim(noisy, truth, 1.5, strip_bytes) == pytest.approx(one_pass, rel=1e-12, abs=1e-12)


def test_a_constant_truth_is_reported_as_not_scored_and_never_flagged(obj):
    """The phase of an amplitude-only object (the upstream parity preset's) is one value: a flat
    image matches it exactly, so against it every reconstruction would be flagged, and SSIM or
    correlation would measure nothing. The amplitude is scored as always."""
    truth = np.abs(obj).astype(np.complex64)
    noise = np.random.default_rng(0).normal(0, 0.2, obj.shape)
    stitched = Stitched((np.abs(obj) * np.exp(1j * noise)).astype(np.complex64), np.ones(obj.shape, np.float32),
                        (10, 100, 10, 120))
    scores = score_reconstruction(stitched, truth, EvalConfig())
    assert scores["phase"]["constant_truth"] and not scores["amplitude"]["constant_truth"]
    assert scores["phase"]["mse"] > 0.01  # how far the phase strays is still recorded
    head = headline(scores)
    assert head["phase_ssim"] is None and head["phase_corr"] is None and head["phase_frc50_px"] is None
    assert head["amplitude_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert flat_image_flags(scores) == []
    scores["amplitude"]["ssim"] = 0.0  # a failed amplitude is still flagged
    assert flat_image_flags(scores) == [f"amplitude ssim 0.000 does not beat a flat image "
                                        f"({scores['amplitude']['flat']['ssim']:.3f})"]


def test_stopwatch_counts_each_section_its_own_time_only():
    from ptylab.timing import Stopwatch

    now = [0.0]
    watch = Stopwatch(clock=lambda: now[0])
    with watch("outer"):
        now[0] += 1.0
        with watch("inner"):  # nested: its 2 s are the inner section's, not the outer's
            now[0] += 2.0
        now[0] += 4.0
    with watch("inner"):  # a key timed twice sums its sections
        now[0] += 8.0
    now[0] += 16.0  # outside every section: nobody's
    assert watch.seconds("outer") == 5.0
    assert watch.seconds("inner") == 10.0
    assert watch.seconds("outer", "inner") == 15.0
    assert watch.seconds("never") is None
    assert watch.seconds("outer", "never") == 5.0
