"""train.py and reconstruct.py run as a user would, in subprocesses, on tiny data; a few jobs in
this process, where a subprocess would add only its start-up (about 10 s: torch and Lightning)."""

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ptylab.progress
from ptylab.bundle import load_bundle
from ptylab.config import cpu_precision
from ptylab.data import read_dataset, write_dataset
from ptylab.data_fit import DATA_FIT_FIGURE, DATA_FIT_FILE
from ptylab.evaluation import DATA_FIT, FIT_ALONE, REFERENCES_FROM
from ptylab.manifest import JobRecord
from ptylab.stages.train import run_job
from ptylab.stitching import reconstruct_from_bundle

from .conftest import PLUMBING, ROOT, SMALL_OVERRIDES, TINY_TRAIN, compose_config, run_script

SHA_LINE = re.compile(r"\[dose=1e3 view=dense gs=2 model=pinn\] bundle wts\.h5\.zip sha256 ([0-9a-f]{64})")


JOB = ["dose=1000", "view=dense", "gridsize=2", *SMALL_OVERRIDES, *TINY_TRAIN]


def _train(tmp_path: Path, *extra: str):
    return run_script(["train.py", f"paths.output_root={tmp_path}", *JOB, *extra], cwd=ROOT)


def _train_here(run_dir: Path, *extra: str) -> JobRecord:
    """The same job in this process (where a subprocess would add only its start-up)."""
    return run_job(compose_config([f"paths.output_root={run_dir.parent}", *JOB, *extra]), run_dir)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "runs").glob("*/*/training_manifest.json"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    res = _train(root)
    assert res.returncode == 0, res.stderr[-4000:]
    return root, res


def test_run_directory_has_everything_the_design_lists(trained):
    root, res = trained
    (run,) = _run_dirs(root)
    assert re.search(r"_dose1e3_dense_gs2_pinn$", run.name)
    for name in (".hydra/config.yaml", "checkpoints/last.ckpt", "wts.h5.zip", "wts.h5.zip.sha256", "params.json",
                 "training_manifest.json", "metrics.json", "reconstruction.npz", "reconstruction.png", "frc.png",
                 "patches.png", "object.npz", "refine/object.npz", "refine/patches.png", "logs/metrics.csv"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "training_manifest.json").read_text())
    job = manifest["jobs"][0]
    assert manifest["status"] == job["status"] == "succeeded"
    assert job["bundle_path"] == "wts.h5.zip" and re.fullmatch(r"[0-9a-f]{64}", job["bundle_sha256"])
    assert job["epochs"] == 2 and job["checkpoint_path"] == "checkpoints/last.ckpt"
    assert job["precision"] == cpu_precision()  # trainer=cpu's choice for this CPU, as it ran
    assert job["dataset"]["cache_key"] and job["dataset"]["files"]["train.npz"]["sha256"]
    assert manifest["skipped_count"] == 0 and manifest["skip_summary_path"] is None
    assert SHA_LINE.search(res.stdout).group(1) == job["bundle_sha256"]
    assert f"run directory {run}\n" in res.stdout  # where to look next, named on the console
    # Lightning's lines (one per Trainer: training, refinement) reach the console once each, as
    # the run's train.log has them.
    log_text = (run / "train.log").read_text()
    assert (res.stdout + res.stderr).count("GPU available:") == log_text.count("GPU available:") == 2
    assert "litlogger" not in res.stdout + res.stderr + log_text  # Lightning's advertisement, dropped
    assert load_bundle(run / "wts.h5.zip").sha256 == job["bundle_sha256"]
    params = json.loads((run / "params.json").read_text())
    assert params["nphotons"] == 1000.0 and params["gridsize"] == 2 and params["output_prefix"] == str(run)
    rec = np.load(run / "reconstruction.npz")
    assert rec["object"].dtype == np.complex64 and rec["object"].shape == rec["ground_truth"].shape
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mae", "mse", "psnr", "ssim", "ms_ssim", "frc_1_7", "frc_0_5"} <= set(metrics["phase"])


def test_each_arm_leaves_the_object_it_scored_unregistered(trained):
    from ptylab.config import run_config
    from ptylab.evaluation import headline, score_reconstruction
    from ptylab.stages.compare import rebuild_test_split
    from ptylab.stitching import read_object

    root, _ = trained
    (run,) = _run_dirs(root)
    cfg = run_config(run)
    test = rebuild_test_split(cfg)
    for arm in (run, run / "refine"):
        stitched = read_object(arm / "object.npz")  # in the data's frame, as LSQML can start from it
        assert stitched.obj.shape == stitched.weight.shape == test.obj.shape
        assert (stitched.obj[stitched.weight == 0] == 0).all() and (stitched.weight > 0).mean() > 0.3
        again = headline(score_reconstruction(stitched, test.obj, cfg.eval))
        scored = json.loads((arm / "metrics.json").read_text())["headline"]
        for key in ("amplitude_ssim", "amplitude_corr", "phase_ssim", "phase_corr", "phase_psnr"):
            assert again[key] == pytest.approx(scored[key], abs=1e-9), (arm.name, key)


def test_same_config_again_gives_the_same_digest_and_logs_its_progress(trained, tmp_path, monkeypatch, caplog):
    """The fixture's job again, in this process after whatever tests ran in it: the digest depends on
    the config alone. Its log says what long work it starts and, every EVERY_S, how far it is: no
    progress bar shows evaluation, the offset fit or refinement (nor training when its bar is off,
    as in sweeps)."""
    _, first = trained
    monkeypatch.setattr(ptylab.progress, "EVERY_S", 0.0)  # a line at every step
    with caplog.at_level(logging.INFO):
        again = _train_here(tmp_path / "again")
    assert again.status == "succeeded", again.error
    assert again.bundle_sha256 == SHA_LINE.search(first.stdout).group(1)
    text = caplog.text
    assert "training, step: 1 / 8 (12%), about" in text and "training, step: 7 / 8" in text  # 2 epochs of 4
    assert "refining on the test diffraction, step: 2 / 3" in text
    assert re.search(r"fitting offsets to \d+ patterns, step: 9 / 10", text)
    # both arms, each saying how the fit ran: at dose 1e3 the counts choose the order-2 terms
    assert len(re.findall(r"test positions \(predicted, stitched, their offsets fitted to the data: 10 steps at lr "
                          r"[0-9.]+, shape terms of order 2, phase total variation 2, amplitude total variation 2 "
                          r"\(\d+ counts per pattern\)\)",
                          text)) == 2
    assert text.count("refined: evaluating") == 1 and text.count("the fit-alone reference") == 1  # once, for both


def test_a_job_on_the_same_split_reads_the_references_an_earlier_job_computed(trained, tmp_path, caplog):
    """Another network on the fixture's split, evaluated the same way (another learning rate, as
    in a scan): the fit-alone reference and the yardsticks' data fits come from the fixture job's
    cache entry, equal to what that job computed, and its metrics say where they came from."""
    root, res = trained
    (first_run,) = _run_dirs(root)
    with caplog.at_level(logging.INFO):
        other = _train_here(tmp_path / "other", f"paths.cache_dir={root / 'cache'}", "model.lr=2e-3",
                            "refine.enabled=false")
    assert other.status == "succeeded", other.error
    assert other.bundle_sha256 != SHA_LINE.search(res.stdout).group(1)  # another network
    first, again = (json.loads((run / "metrics.json").read_text()) for run in (first_run, tmp_path / "other"))
    assert first[REFERENCES_FROM] is None and again["fit_alone_s"] is None
    assert "the fit-alone reference" not in caplog.text  # not computed again
    assert str(first_run) in again[REFERENCES_FROM] and str(root / "cache") in again[REFERENCES_FROM]
    for part in ("amplitude", "phase"):
        assert again[part][FIT_ALONE] == first[part][FIT_ALONE]
    assert {k: again[DATA_FIT][k] for k in ("flat", "truth", FIT_ALONE)} == \
        {k: first[DATA_FIT][k] for k in ("flat", "truth", FIT_ALONE)}
    assert again[DATA_FIT]["ratio"] != first[DATA_FIT]["ratio"]  # its own reconstruction's, computed


def test_reconstruct_from_the_bundle_alone(trained, tmp_path):
    root, _ = trained
    (run,) = _run_dirs(root)
    data = next((root / "cache").glob("*/test.npz"))
    res = run_script(["scripts/reconstruct.py", f"bundle={run / 'wts.h5.zip'}", f"data={data}",
                      f"output_dir={tmp_path / 'rec'}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    obj = np.load(tmp_path / "rec" / "object.npz")["object"]
    assert obj.dtype == np.complex64 and obj.shape == read_dataset(data).obj.shape
    assert np.count_nonzero(obj) > 0 and (tmp_path / "rec" / "object.png").is_file()
    # How well it explains the file's patterns, the one score measured data allow (no truth needed).
    fit = json.loads((tmp_path / "rec" / DATA_FIT_FILE).read_text())
    assert fit["ratio"] < fit["flat"] and (tmp_path / "rec" / DATA_FIT_FIGURE).is_file()
    assert f"its patterns' deviance {fit['ratio']:.3f} x the noise floor" in res.stdout
    # A tampered bundle is refused in-process (test_bundle_and_params), and the script answers a bad
    # bundle with one error line and exit code 2 (test_config_refusals); so it answers data of
    # another pattern size than the bundle's network takes.
    small = read_dataset(data)
    n = small.N - 8
    write_dataset(tmp_path / "cropped.npz", replace(small, diff3d=small.diff3d[:, 4:-4, 4:-4],
                                                    probe=small.probe[4:-4, 4:-4], Y=None))
    res = run_script(["scripts/reconstruct.py", f"bundle={run / 'wts.h5.zip'}", f"data={tmp_path / 'cropped.npz'}",
                      f"output_dir={tmp_path / 'rec2'}"], cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-4000:]
    assert res.stderr.strip().splitlines()[-1] == (f"error: {run / 'wts.h5.zip'}: its network takes {small.N} x "
                                                   f"{small.N} patterns (the size it was trained on); the data's "
                                                   f"are {n} x {n}")


def test_a_bundle_that_says_true_averages_over_every_symmetry_as_before(trained):
    """Bundles written before 2026-12-03 record ``average_symmetries`` as a bool; true meant all."""
    root, _ = trained
    (run,) = _run_dirs(root)
    bundle = load_bundle(run / "wts.h5.zip")
    assert bundle.inference["average_symmetries"] == "none"
    test = read_dataset(next((root / "cache").glob("*/test.npz")))

    def rebuilt(average: object) -> np.ndarray:
        old = replace(bundle, inference={**bundle.inference, "average_symmetries": average})
        return reconstruct_from_bundle(old, test, fit_overrides={"steps": 0}).obj

    legacy = rebuilt(True)
    np.testing.assert_array_equal(legacy, rebuilt("all"))
    assert not np.array_equal(legacy, rebuilt(False))


# Resuming from another run's checkpoint into a new directory is what this test does on purpose.
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_from_last_checkpoint_continues_from_its_epoch(trained, tmp_path):
    root, _ = trained
    (run,) = _run_dirs(root)
    resumed = tmp_path / "resumed"
    record = _train_here(resumed, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=3", *PLUMBING)
    assert record.status == "succeeded", record.error
    job = json.loads((resumed / "training_manifest.json").read_text())["jobs"][0]
    first = json.loads((run / "training_manifest.json").read_text())["jobs"][0]
    # only epoch 2 ran; the history of epochs 0 and 1 came back with the checkpoint
    assert job["epochs"] == 3 and len(job["loss_history"]["train"]) == 3
    assert job["loss_history"]["train"][:2] == first["loss_history"]["train"]


def _failed_truthfully(run: Path, train_file: Path) -> None:
    manifest = json.loads((run / "training_manifest.json").read_text())
    job = manifest["jobs"][0]
    assert manifest["status"] == job["status"] == "failed" and job["bundle_sha256"] is None
    assert str(train_file) in job["error"]
    assert not (run / "wts.h5.zip").exists()


def test_malformed_data_file_fails_truthfully_with_nonzero_exit(tmp_path):
    """A file that exists but breaks the contract passes the command line's preflight (which
    checks that files exist) and fails the job, recorded as failed, with a non-zero exit."""
    train_file = tmp_path / "train.npz"
    np.savez(train_file, diffraction=np.ones((3, 4, 4), np.int32))
    res = run_script(["train.py", "dataset=npz", f"dataset.train_file={train_file}",
                      f"dataset.test_file={train_file}", f"paths.output_root={tmp_path}", *TINY_TRAIN], cwd=ROOT)
    assert res.returncode != 0 and "FAILED" in res.stdout
    (run,) = _run_dirs(tmp_path)
    _failed_truthfully(run, train_file)


def test_missing_data_file_fails_a_job_started_without_the_command_line_truthfully(tmp_path):
    """The command line refuses a missing file before any job (test_config_refusals); a job started
    another way (a reproduction, from Python) fails at its start and records why."""
    train_file = tmp_path / "train.npz"
    record = run_job(compose_config(["dataset=npz", f"dataset.train_file={train_file}",
                                     f"dataset.test_file={train_file}", f"paths.output_root={tmp_path}",
                                     *TINY_TRAIN]), tmp_path / "run")
    assert record.status == "failed"
    _failed_truthfully(tmp_path / "run", train_file)


def test_skipped_view_is_recorded_and_exits_zero(tmp_path):
    res = _train(tmp_path, "view=sparse", "view.min_train_positions=100000")
    assert res.returncode == 0, res.stderr[-4000:]
    (run,) = _run_dirs(tmp_path)
    manifest = json.loads((run / "training_manifest.json").read_text())
    assert manifest["status"] == "skipped" and manifest["skipped_count"] == 1
    assert manifest["skip_summary_path"] == "skip_summary.json" and (run / "skip_summary.json").is_file()
    assert "SKIPPED" in res.stdout and "fewer than the 100000" in res.stdout


def test_reconstruct_overrides_the_bundles_fit_averaging(trained):
    """``offset_fit_average`` given to the reconstruction replaces the bundle's, as its steps and
    order do: 0 stitches what a bundle that recorded 0 stitches, a half average something else."""
    root, _ = trained
    (run,) = _run_dirs(root)
    bundle = load_bundle(run / "wts.h5.zip")
    test = read_dataset(next((root / "cache").glob("*/test.npz")))
    recorded_zero = replace(bundle, inference={**bundle.inference, "offset_fit_average": 0.0})
    last = reconstruct_from_bundle(recorded_zero, test, fit_overrides={"steps": 6}).obj

    def averaged(share: float) -> np.ndarray:
        return reconstruct_from_bundle(bundle, test, fit_overrides={"steps": 6, "average": share}).obj

    np.testing.assert_array_equal(averaged(0.0), last)
    assert not np.array_equal(averaged(0.5), last)
