"""Reconstruction quality cannot silently drop: small real jobs whose test scores must stay above
floors taken from real runs (docs/quality.md), on the embedded data and on user-style files.

The floors sit a little below what the current defaults measured (CPU training is deterministic,
so a drop below them is a change in the method, not noise). Correlation with the truth and the
flat-image comparison are the scores a flat or collapsed reconstruction cannot reach.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from ptylab.data import read_dataset, write_dataset
from ptylab.data_fit import DATA_FIT_FIGURE
from ptylab.evaluation import DATA_FIT, KEPT_PLANE
from ptylab.phase_plane import keep_plane
from ptylab.stages.simulate import run_simulate
from ptylab.stages.train import run_job, summary_line
from ptylab.stitching import OBJECT_FILE, read_object

from .conftest import SMALL_OVERRIDES, behind_beamstop, compose_config

# Separate decoders as by default, but at the encoder's width: at half the width of these tiny
# filters (4 to 16) the embedded job's amplitude fell below the flat image (SSIM 0.461 vs 0.483,
# seed 1), a starved network rather than the method; at full size half width wins (docs/quality.md).
# 15 epochs: with the probe's symmetries as samples (model.augment_symmetries, default) 10 left
# the embedded job's phase, seed 1, below the fit alone (corr 0.956 vs 0.962; seed 2 0.982).
# 20 since the stitch fills the evaluated area's empty corner pixels from their nearest stitched
# pixel (2026-12-04, seventeenth session): the fit alone's phase PSNR rose more than the network's
# there, and at 15 epochs seed 1's single pass fell below it (23.0 vs 23.6 dB; seeds 2/3 27.5/27.1);
# at 20, seeds 1/2/3: 24.8/27.5/27.0 dB and no flag, about 1.5 s more per job.
# The refined arm without its default point-reflection average (refine.average_symmetries): at this
# size the average is erratic. After 60 steps it took the embedded job's refined phase below the fit
# alone (PSNR 22.1 vs 23.5 dB; 27.0 without it); after 300 steps it cost nothing on the machine
# where that was measured (26.9 vs 27.1 dB) and lost again on another machine type (22.2 vs 23.5 dB,
# 2026-12-02), as on seed 3 of the first (27.7 -> 23.5). At full size it lost in 0 of 6 runs
# (docs/quality.md); the average itself is tested in test_symmetries and test_train_cli.
TINY_NET = ["model.base_filters=[8,16,32]", "model.decoder_width=1.0", "model.batch_size=8",
            "trainer.max_epochs=20", "refine.steps=60", "refine.average_symmetries=none",
            "trainer.enable_progress_bar=false", "view.min_train_positions=16"]
# The user-style preset (another object, amplitude 0.5 to 2, a larger defocused probe) at test size.
SMALL_USER = ["dataset=user_style", "dataset.N=32", "dataset.object_size=96", "dataset.probe_diameter=13",
              "dataset.probe_blur=1.0", "dataset.scan_step=3.0"]



def _check_floors(scores, floors):
    for key, floor in floors.items():
        assert scores[key] >= floor, f"{key} = {scores[key]:.3f} fell below its floor {floor}"


def test_embedded_job_stays_above_its_quality_floors(tmp_path):
    record = run_job(compose_config([f"paths.output_root={tmp_path}", "dose=10000", *SMALL_OVERRIDES, *TINY_NET]),
                     tmp_path / "job")
    assert record.status == "succeeded", record.error
    head = record.headline_metrics
    # measured, seeds 1/2/3: amplitude corr 0.969/0.969/0.967, phase corr 0.949/0.965/0.933, amplitude
    # PSNR 21.7/21.7/21.4 dB (per-pattern network, separate decoders; offsets, gains and order-2 shape
    # terms fitted to the data at lr 0.02; shared decoder, seed 1: 0.970, 0.957, 21.8 dB; with offsets
    # and gains only: 0.956, 0.759, 20.3 dB; synchronised offsets only: 0.935, 0.333, 14.0 dB). With
    # the fit's rate from the counts (0.06 at these 1e4), seed 1: 0.979, 0.979, 23.4 dB; with the
    # offsets' ramp terms too: 0.963, 0.974, 22.7 dB (refined 0.962 -> 0.980 amplitude corr). With
    # the probe's symmetries as samples and 15 epochs: 0.981, 0.984, 23.8 dB. On another machine type
    # (2026-12-02), seeds 1/2/3: 0.965/0.980/0.978, 0.975/0.986/0.981, 23.0/23.6/23.2 dB. With the
    # corner pixels filled and 20 epochs (2026-12-04): 0.966/0.980/0.981, 0.974/0.984/0.982,
    # 23.1/23.5/23.8 dB.
    # The network's own patches against the truth's (evaluation.PATCH_CORR, which the offset fit
    # cannot make), seeds 1/2/3 (2026-12-06, AMD EPYC): amplitude 0.481/0.559/0.453 (refined
    # 0.586/0.551/0.541), phase -0.029/0.511/0.425 (refined -0.019/0.413/0.476). At this size seed
    # 1's phase inside a patch is the fit's alone, so only the amplitude has a floor; at full size
    # the default job's are 0.520 / 0.731 (docs/quality.md).
    # Since the offset fit's total-variation priors (2026-12-06 and 07), seeds 1/2/3 (2026-12-07, AMD
    # EPYC, bf16; fp32 seeds 1/2 within 0.01 of them): amplitude SSIM 0.711/0.721/0.724, corr
    # 0.991/0.992/0.993, PSNR 27.3/27.8/27.9 dB, patch corr 0.500/0.571/0.466; phase SSIM
    # 0.869/0.872/0.908, corr 0.993 on all three, PSNR 30.9/31.2/31.2 dB. Floors raised to about
    # 0.015 of correlation, 0.05 of SSIM and 1.8 dB below the lowest, for other machine types.
    _check_floors(head, {"amplitude_ssim": 0.66, "amplitude_corr": 0.975, "amplitude_psnr": 25.5,
                         "amplitude_patch_corr": 0.38, "phase_ssim": 0.8, "phase_corr": 0.975, "phase_psnr": 28.5})
    # Every score beats a flat image, amplitude SSIM included (0.491/0.486/0.480 vs 0.419; with
    # offsets and gains only it did just: 0.424).
    assert record.flat_image_flags == []
    # ...and the offset fit applied to flat patches (amplitude SSIM 0.400, phase SSIM 0.479 against
    # 0.491 and 0.627, seed 1; at the rate from the counts 0.444 and 0.643 against 0.565 and 0.746;
    # with the ramp terms 0.447 and 0.677 against 0.543 and 0.797):
    # the network, not the fit, made these scores.
    assert record.fit_alone_flags == [] and record.refined["fit_alone_flags"] == []
    refined = record.refined["headline_metrics"]
    # measured after 60 refinement steps, seeds 1/2/3: amplitude corr 0.970/0.971/0.967, phase corr
    # 0.954/0.951/0.959 (at this size the refined arm no longer gains on the single pass; at full
    # size it does, docs/quality.md); with the ramp terms and refine.lr 1e-3, seed 1: 0.981, 0.982;
    # with the symmetries and 15 epochs 0.980, 0.983; after 300 steps with the point-reflection
    # average 0.979, 0.983 (without it 0.980, 0.983). Since 2026-12-02 60 steps without the average
    # (TINY_NET); on the other machine type, seeds 1/2/3: 0.961/0.981/0.979 and 0.966/0.985/0.984
    # (corner pixels filled, 20 epochs: 0.966/0.978/0.981 and 0.972/0.985/0.982)
    # (2026-12-07, seeds 1/2/3, bf16: amplitude SSIM 0.711/0.729/0.729, corr 0.991/0.992/0.993, patch
    # corr 0.573/0.560/0.525; phase SSIM 0.869/0.879/0.910, corr 0.993; floors as the single pass's)
    _check_floors(refined, {"amplitude_ssim": 0.66, "amplitude_corr": 0.975, "amplitude_patch_corr": 0.38,
                            "phase_ssim": 0.8, "phase_corr": 0.975})
    _check_data_fit(tmp_path / "job")
    _check_kept_plane(tmp_path / "job")


def _check_data_fit(run_dir):
    """Both arms explain the test patterns better than the fit on flat patches and a flat object
    do, and the truth explains them to the noise (the score that needs no truth, ptylab.data_fit).
    Measured (seed 1, AMD EPYC): the embedded job 1.012, refined 1.006, against the fit alone's
    1.22, a flat object's 9.04 and the truth's 0.998; the user-style job 1.024 and 1.016 against
    1.24, 8.02 and 0.998 (at full size 1.12 and 1.08, docs/quality.md)."""
    arms = []
    for metrics in (run_dir / "metrics.json", run_dir / "refine" / "metrics.json"):
        fit = json.loads(metrics.read_text())[DATA_FIT]
        assert fit["truth"] == pytest.approx(1.0, abs=0.05), fit
        assert fit["ratio"] < fit["fit_alone"] < fit["flat"], fit
        assert (metrics.parent / DATA_FIT_FIGURE).is_file()
        arms.append(fit)
    # The test split's own yardsticks are the same for both arms: computed once, given to the refined arm.
    assert all(arms[0][key] == arms[1][key] for key in ("truth", "flat", "fit_alone"))


def _check_kept_plane(run_dir):
    """The refined arm took the single pass's field-wide phase plane, which its patterns cannot see:
    its data fit as good with it as with its own (measured, seed 1, AMD EPYC: a plane of 0.009 rad
    replaced, data fit 1.01495 -> 1.01495; user-style files 0.012 rad, 1.02221 -> 1.02220)."""
    metrics = json.loads((run_dir / "refine" / "metrics.json").read_text())
    kept = metrics[KEPT_PLANE]
    assert kept["data_fit_ratio_before"] == pytest.approx(metrics[DATA_FIT]["ratio"], rel=1e-3)
    _, left = keep_plane(read_object(run_dir / "refine" / OBJECT_FILE), read_object(run_dir / OBJECT_FILE))
    assert left < 1e-3 < kept["span_rad"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    run_simulate(compose_config([f"output_dir={root}", f"paths.output_root={root}", "dose=10000", "as_user_files=true",
                           "view=dense", *SMALL_USER], name="simulate"))
    return root / "train_dense.npz", root / "test_dense.npz"


def test_user_style_files_reconstruct_structure_not_a_flat_image(user_files, tmp_path):
    train_file, test_file = user_files
    train = read_dataset(train_file)
    assert "intensity_scale" not in train.metadata  # the scale must come from the data alone
    assert np.abs(train.obj).max() > 1.9  # brighter than an amplitude-1 object
    record = run_job(compose_config([f"paths.output_root={tmp_path}", "dose=10000", "dataset=npz", "view=full",
                               f"dataset.train_file={train_file}", f"dataset.test_file={test_file}", *TINY_NET,
                               "trainer.max_epochs=30"]),
                     tmp_path / "job")
    assert record.status == "succeeded", record.error
    # Measured at 30 epochs, seeds 1/2/3: amplitude corr 0.969/0.969/0.969, phase corr
    # 0.676/0.668/0.660 (refined 0.970/0.971/0.970 and 0.661/0.655/0.648; shared decoder, seed 1:
    # 0.969 and 0.668); with offsets and gains only, seed 1: 0.886 and 0.428. 10 epochs sit on the
    # edge (amplitude corr 0.29 to 0.70 with the seed and library versions before the fit), hence 30
    # here. The first design scored -0.12 here, a flat image. At the fit's rate from the counts (0.06),
    # seed 1: 0.973 and 0.683; with the offsets' ramp terms 0.973 and 0.669 (refined at lr 1e-3 0.973
    # and 0.631); with the probe's symmetries as samples 0.975 and 0.649 (refined 0.973 and 0.667;
    # after 300 steps with the point-reflection average 0.973 and 0.665, without it 0.972 and 0.676).
    # With the evaluated area's empty corner pixels filled from their nearest stitched pixel
    # (2026-12-04; at this size they are a larger share of the area), seeds 1/2/3: 0.976/0.976/0.979
    # and 0.799/0.815/0.799 (refined 0.976/0.976/0.976 and 0.806/0.824/0.765); floors raised.
    # The network's own amplitude inside each patch (evaluation.PATCH_CORR), seeds 1/2/3: 0.774/
    # 0.793/0.745 (refined 0.771/0.811/0.717); its phase there -0.047/-0.029/-0.026 (refined
    # -0.061/0.042/-0.070): the phase correlation above is the offset fit's, as at full size
    # (0.063 single, 0.006 refined; docs/quality.md), so only the amplitude has a floor.
    # Since the offset fit's total-variation priors, seeds 1/2/3 (2026-12-07, AMD EPYC, bf16; fp32
    # seeds 1/2 within 0.01): amplitude SSIM 0.915/0.919/0.918 (refined 0.920/0.917/0.919), corr
    # 0.988/0.989/0.989 (0.988 each), PSNR 27.5/27.7/27.7 dB, patch corr 0.749/0.801/0.746 (refined
    # 0.731/0.822/0.727); phase corr 0.887/0.884/0.880 (refined 0.887/0.884/0.888; fp32 seed 2 0.875).
    # Floors raised to about 0.02 of correlation (0.05 for the phase's), 0.05 of SSIM and 2 dB below.
    floors = {"amplitude_ssim": 0.87, "amplitude_corr": 0.97, "amplitude_psnr": 25.5, "amplitude_patch_corr": 0.65,
              "phase_corr": 0.82}
    _check_floors(record.headline_metrics, floors)
    _check_floors(record.refined["headline_metrics"], floors)
    assert not [f for f in record.flat_image_flags if f.startswith("amplitude")]
    assert record.fit_alone_flags == []  # measured: amplitude SSIM 0.844 vs 0.726 for the fit on flat patches
    _check_data_fit(tmp_path / "job")
    _check_kept_plane(tmp_path / "job")


def test_user_style_files_behind_a_beamstop_reconstruct_when_the_detector_mask_says_so(user_files, tmp_path):
    """A beamstop over the direct beam (the central 3 x 3 pixels, 27% of these patterns' counts):
    with ``valid_pixels`` marking it the job reconstructs the object; read as measured zeros, the
    blocked beam is what every likelihood tries to explain. Measured (seed 1, AMD EPYC), amplitude
    SSIM / corr / PSNR, phase corr: masked 0.903 / 0.984 / 26.3, 0.884 (the same files unblocked
    0.913 / 0.987 / 27.2, 0.882); blocked and unmasked 0.475 / 0.803 / 14.4, 0.224, below every
    floor (at full size docs/quality.md, "A beamstop and the detector's mask")."""
    files = []
    for path in user_files:
        write_dataset(tmp_path / path.name, behind_beamstop(read_dataset(path), 1.5))  # the central 3 x 3 pixels
        files.append(tmp_path / path.name)
    record = run_job(compose_config([f"paths.output_root={tmp_path}", "dose=10000", "dataset=npz", "view=full",
                                     f"dataset.train_file={files[0]}", f"dataset.test_file={files[1]}", *TINY_NET,
                                     "trainer.max_epochs=30", "refine.enabled=false"]), tmp_path / "job")
    assert record.status == "succeeded", record.error
    floors = {"amplitude_ssim": 0.85, "amplitude_corr": 0.96, "amplitude_psnr": 24.0, "phase_corr": 0.82}
    _check_floors(record.headline_metrics, floors)
    fit = json.loads((tmp_path / "job" / "metrics.json").read_text())[DATA_FIT]
    assert fit["truth"] == pytest.approx(1.0, abs=0.05) and fit["ratio"] < fit["fit_alone"] < fit["flat"], fit


def test_upstream_parity_preset_reconstructs_its_amplitude_and_does_not_score_a_constant_phase(tmp_path):
    """The published regime (amplitude-only lines, 1e9 photons, compact 2x2 groups, width 2) at
    test size: the amplitude must come out near-exact, as it does at full size (docs/quality.md,
    "Upstream parity preset"), and the phase, zero everywhere in the truth, is reported as not
    scored rather than flagged against a flat image that matches it exactly."""
    record = run_job(compose_config([f"paths.output_root={tmp_path}", "experiment=upstream_parity", *SMALL_OVERRIDES,
                               *TINY_NET, "trainer.max_epochs=4"]), tmp_path / "job")
    assert record.status == "succeeded", record.error
    head = record.headline_metrics
    # measured (64 steps), seeds 1/2: amplitude SSIM 0.974/0.973, corr 0.993/0.993, PSNR 32.6/32.5 dB
    _check_floors(head, {"amplitude_ssim": 0.93, "amplitude_corr": 0.98, "amplitude_psnr": 30.0})
    assert head["phase_ssim"] is None and head["phase_corr"] is None
    assert record.flat_image_flags == [] and record.refined is None
    assert "(phase not scored: its truth is constant)" in summary_line(record)


def test_user_style_files_with_a_probe_guess_that_is_off_reconstruct_when_the_network_learns_the_probe(
        user_files, tmp_path):
    """The files' probe replaced by a guess whose defocus is off by a third (2 rad at its edge where
    the patterns were measured with 3: half the probe's norm off). With the probe fixed the job
    fails (measured, seed 1, AMD EPYC: amplitude SSIM / corr / PSNR 0.686 / 0.920 / 16.5, phase corr
    0.206, data fit 3.89, under every floor here); learnt from the guess at probe_lr 0.01 it scores
    as with the true probe (0.913 / 0.985 / 26.6 and 0.883, data fit 1.01, against 0.915 / 0.988 /
    27.5 and 0.887). Every evaluation runs under the learnt probe, and a reconstruction from the
    bundle alone does too (at full size docs/quality.md, "A probe guess that is off")."""
    from ptylab.bundle import load_bundle
    from ptylab.physics import make_probe
    from ptylab.prediction import LEARNT_PROBE_FILE, model_from_weights
    from ptylab.simulate import read_probe_file
    from ptylab.stitching import reconstruct_from_bundle

    truth = read_dataset(user_files[0]).probe
    guess = make_probe(truth.shape[0], 13, 1.0, defocus=2.0)  # SMALL_USER's probe but its defocus
    files = []
    for path in user_files:
        write_dataset(tmp_path / path.name, replace(read_dataset(path), probe=guess))
        files.append(tmp_path / path.name)
    record = run_job(compose_config([f"paths.output_root={tmp_path}", "dose=10000", "dataset=npz", "view=full",
                                     f"dataset.train_file={files[0]}", f"dataset.test_file={files[1]}", *TINY_NET,
                                     "trainer.max_epochs=30", "refine.enabled=false", "model.probe_trainable=true",
                                     "model.probe_lr=0.01"]), tmp_path / "job")
    assert record.status == "succeeded", record.error
    _check_floors(record.headline_metrics,
                  {"amplitude_ssim": 0.87, "amplitude_corr": 0.97, "amplitude_psnr": 24.5, "phase_corr": 0.82})

    def off(probe):  # from the true probe, up to the factor no pattern can tell (the object takes it)
        c = np.vdot(probe, truth) / np.vdot(probe, probe)
        return float(np.linalg.norm(c * probe - truth) / np.linalg.norm(truth))

    bundle = load_bundle(tmp_path / "job" / "wts.h5.zip")
    learnt = model_from_weights(bundle.models["pinn"]).learnt_probe().numpy()
    assert off(learnt) < 0.5 * off(guess)  # measured 0.084 against 0.291
    # beside the run, as a data file's probe is read: the next scan's probeGuess
    np.testing.assert_array_equal(read_probe_file(str(tmp_path / "job" / LEARNT_PROBE_FILE)), learnt)
    assert record.learnt_probe["single_pass_relative_change"] == pytest.approx(
        np.linalg.norm(learnt - guess) / np.linalg.norm(guess), rel=1e-3)
    fit = json.loads((tmp_path / "job" / "metrics.json").read_text())[DATA_FIT]
    assert fit["ratio"] < 1.1 and fit["truth"] == pytest.approx(1.0, abs=0.05), fit  # under the learnt probe
    # The bundle alone reconstructs as the job did: under its learnt probe, on the file's area.
    again = reconstruct_from_bundle(bundle, read_dataset(files[1]))
    job = read_object(tmp_path / "job" / OBJECT_FILE)
    assert again.bbox == job.bbox
    np.testing.assert_allclose(again.obj, job.obj, atol=1e-3 * np.abs(job.obj).max())
