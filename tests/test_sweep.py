"""Sweeps through Hydra's launchers, for real, on tiny data; reproduce and the study report."""

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import ptylab.config  # noqa: F401
from ptylab.bundle import load_bundle
from ptylab.commands import reproduce as reproduce_command
from ptylab.data import write_dataset
from ptylab.datasets import load_or_simulate
from ptylab.figures import series_style

from .conftest import CONF, PLUMBING, ROOT, SMALL_OVERRIDES, TINY_TRAIN, run_script

SWEEP_TINY = [*SMALL_OVERRIDES, *TINY_TRAIN, "trainer.max_epochs=1"]


def _sweep(sweep_dir, *overrides):
    return run_script(["train.py", "-m", f"hydra.sweep.dir={sweep_dir}", f"paths.output_root={sweep_dir.parent}",
                       *SWEEP_TINY, *overrides], cwd=ROOT)


def _manifest(sweep_dir):
    return json.loads((sweep_dir / "sweep_manifest.json").read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "study"
    res = _sweep(sweep_dir, "dose=1000,10000", "view=dense,sparse", "view.min_train_positions=8")
    assert res.returncode == 0, res.stderr[-4000:]
    return sweep_dir, res


def test_multirun_writes_one_directory_per_job_and_a_sweep_manifest(sweep):
    sweep_dir, res = sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / "training_manifest.json").is_file())
    assert len(jobs) == 4
    assert {j.rsplit("_job", 1)[0] for j in jobs} == {f"dose{d}_{v}_gs2_pinn" for d in ("1e3", "1e4")
                                                       for v in ("dense", "sparse")}
    manifest = _manifest(sweep_dir)
    assert manifest["status"] == "succeeded" and manifest["counts"]["succeeded"] == 4
    for job in manifest["jobs"]:
        assert len(job["bundle_sha256"]) == 64 and job["headline_metrics"]["phase_ssim"] is not None
    assert res.stdout.count("bundle wts.h5.zip sha256") == 4


def test_rerunning_a_sweep_skips_finished_jobs_and_redoes_half_finished(sweep, tmp_path):
    sweep_dir, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy)
    half = next(p for p in sorted(copy.iterdir()) if (p / "training_manifest.json").is_file())
    m = json.loads((half / "training_manifest.json").read_text())
    m["jobs"][0]["status"] = m["status"] = "running"  # as if killed mid-job
    (half / "training_manifest.json").write_text(json.dumps(m))
    res = _sweep(copy, "dose=1000,10000", "view=dense,sparse", "view.min_train_positions=8")
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("(already finished; reused)") == 3
    assert json.loads((half / "training_manifest.json").read_text())["status"] == "succeeded"


def test_a_failing_job_does_not_stop_the_others_and_the_sweep_exits_nonzero(tmp_path, small_dataset_cfg):
    source = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path / "cache")
    write_dataset(tmp_path / "train.npz", source.train)
    write_dataset(tmp_path / "test.npz", source.test)
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "train.npz").read_bytes()[:1000])  # exists: passes preflight
    sweep_dir = tmp_path / "study"
    res = run_script(["train.py", "-m", f"hydra.sweep.dir={sweep_dir}", f"paths.output_root={tmp_path}", *TINY_TRAIN,
                      *PLUMBING, "trainer.max_epochs=1", "dataset=npz", "view=full",
                      f"dataset.train_file={tmp_path / 'train.npz'},{tmp_path / 'truncated.npz'}",
                      f"dataset.test_file={tmp_path / 'test.npz'}"], cwd=ROOT)
    assert res.returncode != 0
    manifest = _manifest(sweep_dir)
    statuses = sorted(j["status"] for j in manifest["jobs"])
    assert statuses == ["failed", "succeeded"] and manifest["status"] == "failed"
    failed = next(j for j in manifest["jobs"] if j["status"] == "failed")
    assert "truncated.npz" in failed["error"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_and_submitit_launchers_run_a_tiny_sweep_over_gridsizes(tmp_path, launcher):
    """A sweep over gridsizes needs no second key: each job groups with its gridsize's own K
    (gs3 groups of nine need more than gs2's seven nearest), and its bundle records the K it used."""
    sweep_dir = tmp_path / "study"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    res = _sweep(sweep_dir, f"hydra/launcher={launcher}", *extra, "gridsize=1,3", *PLUMBING)
    assert res.returncode == 0, res.stderr[-4000:]
    manifest = _manifest(sweep_dir)
    assert manifest["counts"]["succeeded"] == 2
    neighbours = {job["context"]["gridsize"]: load_bundle(sweep_dir / job["run_dir"] / "wts.h5.zip")
                  .inference["neighbours"] for job in manifest["jobs"]}
    assert set(neighbours) == {1, 3} and neighbours[3] >= 3**2 - 1
    # each job bridged its own legacy params, in its own process
    params = sorted(json.loads((p / "params.json").read_text())["gridsize"]
                    for p in sweep_dir.iterdir() if (p / "params.json").is_file())
    assert params == [1, 3]


def test_slurm_launcher_composes_with_submitit_parameters():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu-a100",
                                          "hydra.launcher.gpus_per_node=4", "hydra.launcher.mem_gb=64",
                                          "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu-a100" and launcher.gpus_per_node == 4 and launcher.mem_gb == 64
    assert launcher.timeout_min == 120 and launcher.cpus_per_task == 8
    assert cfg.trainer.strategy == "ddp"


def test_study_preset_expands_to_the_whole_matrix():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=dose_overlap_study"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert params["dose"] == "1000,10000,100000"
        arms = params["+arm"].split(",")
        seen = set()
        for arm in arms:
            job = compose("train", overrides=["experiment=dose_overlap_study", f"+arm={arm}"])
            seen.add((job.model.name, job.gridsize, job.view.name))
    assert seen == {("pinn", 2, "dense"), ("pinn", 2, "sparse"), ("pinn", 1, "dense"), ("supervised", 1, "dense")}


def test_reproduce_reports_identical_and_then_the_edit(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    run = next(p for p in sorted(sweep_dir.iterdir()) if (p / "wts.h5.zip").is_file())
    same = run_script(["scripts/reproduce.py", str(run), f"output_dir={tmp_path / 'again'}"], cwd=ROOT)
    assert same.returncode == 0, same.stdout[-2000:] + same.stderr[-3000:]
    assert "IDENTICAL" in same.stdout
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    snap = edited / ".hydra" / "config.yaml"
    snap.write_text(snap.read_text().replace("seed: 1", "seed: 2"))
    # The same command in-process (its subprocess path is the one above): exit status 1, each difference listed.
    assert reproduce_command([str(edited), f"output_dir={tmp_path / 'other'}"]) == 1
    out = capsys.readouterr().out
    assert "bundle sha256" in out and "config seed: 1 -> 2" in out


def test_study_report_has_one_row_per_job_plots_and_html(sweep, tmp_path):
    sweep_dir, _ = sweep
    res = run_script(["scripts/study_report.py", str(sweep_dir), f"output_dir={tmp_path / 'rep'}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = tmp_path / "rep"
    rows = (rep / "study.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 4  # each PINN job: the single-pass network and its refined arm
    # methods named as compare names them, so the two tables read alike
    assert sum(re.search(r",PINN gs\d refined,", r) is not None for r in rows) == 4
    assert (rep / "phase_ssim_vs_dose.png").is_file() and (rep / "amplitude_psnr_vs_dose.png").is_file()
    assert (rep / "phase_patch_corr_vs_dose.png").is_file()  # the networks' own patches (LSQML has none)
    page = (rep / "study.html").read_text()
    assert page.count("<tr>") == 1 + 2 * 4 and "data:image/png;base64," in page
    assert "below_flat" in (rep / "study.md").read_text() and "below_fit_alone" in (rep / "study.md").read_text()
    table = list(csv.DictReader(rows))  # every network row, single pass and refined, has its patch scores
    assert all(-1 <= float(r[f"{p}_patch_corr"]) <= 1 for r in table for p in ("amplitude", "phase"))
    # ...and how well it explains the test patterns, against dose too (the score that needs no truth)
    assert all(0 < float(r["data_fit_ratio"]) < math.inf for r in table)
    assert (rep / "data_fit_ratio_vs_dose.png").is_file()
    assert "dense" in (rep / "study.md").read_text() and "sparse" in (rep / "study.md").read_text()
    # every reconstruction at a glance, by method and dose, one figure per part, on the page too
    assert (rep / "gallery_amplitude.png").is_file() and (rep / "gallery_phase.png").is_file()
    assert "Reconstructions by method and dose" in page


def test_the_gallery_has_each_views_truth_then_its_methods_by_dose_and_the_lowest_seed(sweep, tmp_path):
    from ptylab.stages.study_report import gallery_rows, job_rows

    sweep_dir, _ = sweep
    rows = job_rows(sweep_dir)
    cells = gallery_rows(rows)
    assert list(cells) == ["ground truth dense", "PINN gs2 dense", "PINN gs2 refined dense",
                           "ground truth sparse", "PINN gs2 sparse", "PINN gs2 refined sparse"]
    assert all(set(by_dose) == {1000.0, 10000.0} for by_dose in cells.values())
    job = next(r for r in rows if r["method"] == "PINN gs2" and r["view"] == "dense" and r["dose"] == 1000)
    with np.load(job["image"]) as f:  # the job's own registered reconstruction, beside its truth
        np.testing.assert_array_equal(cells["PINN gs2 dense"][1000.0][0], f["object"])
        np.testing.assert_array_equal(cells["ground truth dense"][1000.0][0], f["ground_truth"])
    # the same job at a higher seed with another reconstruction: the lowest seed's is shown
    again = [{**r, "seed": 2, "image": tmp_path / "absent.npz"} for r in rows]
    assert gallery_rows(rows + again).keys() == cells.keys()
    # a view over several data (a sweep over datasets): each data's truth, then its methods
    assert len({r["data"] for r in rows if r["view"] == "sparse"}) == 1  # each run's data, from its snapshot
    other = [{**r, "variant": f"{r['variant']} dataset.object_size=128", "data": "0bject12"}
             if r["view"] == "sparse" and r["dose"] == 1000 else r for r in rows]
    names = list(gallery_rows(other))
    truths = [name for name in names if name.startswith("ground truth")]
    assert truths[:2] == ["ground truth dense", "ground truth sparse [dataset.object_size=128]"]  # what sets it apart
    assert len(truths) == 3 and truths[2].startswith("ground truth sparse [dataset.N=32 ")  # the rest: all of its data
    small, rest = names.index(truths[1]), names.index(truths[2])
    assert all("object_size=128" in name for name in names[small + 1 : rest])  # its methods follow it
    assert rest < len(names) - 1 and not any("object_size=128" in name for name in names[rest + 1 :])
    # a flat-start LSQML row goes under the truth of the data it names (however its variant reads)...
    lsqml = {**job, "view": "sparse", "model": "lsqml", "method": "LSQML",
             "variant": "test data embedded sparse 0bject12 lsqml.epochs=5", "data": "0bject12"}
    names = list(gallery_rows([*other, lsqml]))
    assert names.index(truths[1]) < names.index("LSQML sparse") < names.index(truths[2])
    # ...and one that names none (written before compare.py recorded it) is left out where the view
    # holds several data, and joins the view's one data where it holds one
    unnamed = {**lsqml, "data": None}
    assert "LSQML sparse" not in gallery_rows([*other, unnamed])
    assert list(gallery_rows([*other, unnamed]))[:2] == names[:2]
    assert list(gallery_rows([*rows, unnamed]))[-1] == "LSQML sparse"
    # a job without its file (deleted, or written before 2026-12-03) leaves its cell empty
    partial = [{**r, "image": tmp_path / "absent.npz"} if r is job else r for r in rows]
    assert 1000.0 not in gallery_rows(partial)["PINN gs2 dense"]


def test_compare_takes_a_whole_sweep_and_the_study_report_shows_its_figures(sweep, tmp_path):
    """``compare.py sweep=DIR`` compares every job of a sweep (``run_list``), as the study report reads it; with
    its output inside the sweep, the report's page shows its figures (every method's
    reconstruction side by side, their FRC curves) under their paths, and without it has no such
    section."""
    from ptylab.config import LsqmlConfig
    from ptylab.stages.compare import compare, run_list
    from ptylab.stages.study_report import write_report

    sweep_dir, _ = sweep
    study = tmp_path / "study"
    shutil.copytree(sweep_dir, study)
    write_report(study, tmp_path / "before")
    assert "side by side" not in (tmp_path / "before" / "study.html").read_text()
    # in-process, as compare.py sweep=STUDY output_dir=STUDY/compare runs it (its refusals go through
    # the command in test_config_refusals)
    first = sorted(study.glob("*/training_manifest.json"))[0].parent
    runs = run_list([str(first), f"{first}/"], study)  # named twice and in the sweep: compared once
    assert len(runs) == 4 and runs[0] == str(first)
    compare(runs, study / "compare", LsqmlConfig(enabled=False))
    rows = list(csv.DictReader((study / "compare" / "comparison.csv").read_text().splitlines()))
    jobs = {p.parent for p in study.glob("*/training_manifest.json")}
    assert {Path(r["source"]) for r in rows} == jobs and len(rows) == 2 * 4  # each job's single pass and refined arm
    write_report(study, tmp_path / "after")
    page = (tmp_path / "after" / "study.html").read_text()
    assert "Reconstructions side by side" in page
    assert 'alt="compare/comparison.png"' in page and 'alt="compare/comparison_frc.png"' in page


def test_study_report_over_seeds_gives_each_methods_mean_and_spread(sweep, tmp_path):
    from ptylab.stages.study_report import job_rows, seed_means, write_report

    sweep_dir, _ = sweep
    study = tmp_path / "study"
    shutil.copytree(sweep_dir, study)
    assert seed_means(job_rows(study)) == []  # one seed: no means table
    # Each job again as seed 2 (its manifest and metrics edited: the report reads nothing else).
    first = {}
    for job in [p for p in sorted(study.iterdir()) if (p / "training_manifest.json").is_file()]:
        again = study / f"{job.name}_seed2"
        shutil.copytree(job, again)
        m = json.loads((again / "training_manifest.json").read_text())
        m["jobs"][0]["context"]["seed"] = 2
        (again / "training_manifest.json").write_text(json.dumps(m))
        metrics = json.loads((again / "metrics.json").read_text())
        first[job.name] = metrics["headline"]["phase_ssim"]
        metrics["headline"]["phase_ssim"] += 0.1
        (again / "metrics.json").write_text(json.dumps(metrics))
    # One job once more at seed 3 with another learning rate: a variant of its own, never averaged in.
    job = next(iter(first))
    lr = study / f"{job}_seed3_lr"
    shutil.copytree(study / job, lr)
    m = json.loads((lr / "training_manifest.json").read_text())
    m["jobs"][0]["context"]["seed"] = 3
    (lr / "training_manifest.json").write_text(json.dumps(m))
    overrides = lr / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + "- model.lr=0.002\n")
    got = write_report(study, tmp_path / "rep")
    rep = tmp_path / "rep"
    assert got["rows"] == 2 * (2 * 4 + 1) and got["seed_means"] == 2 * (4 + 1)  # single pass and refined arm
    rows = list(csv.DictReader((rep / "study_seed_means.csv").read_text().splitlines()))
    pairs = [r for r in rows if r["runs"] == "2"]
    single = sorted(float(r["phase_ssim_mean"]) for r in pairs if not r["method"].endswith("refined"))
    assert single == pytest.approx(sorted(v + 0.05 for v in first.values()))
    assert all(float(r["phase_ssim_std"]) == pytest.approx(0.05) for r in pairs if not r["method"].endswith("refined"))
    alone = [r for r in rows if r["runs"] == "1"]
    assert len(pairs) == 2 * 4 and len(alone) == 2 and all("model.lr=0.002" in r["variant"] for r in alone)
    assert all("seed" not in r["variant"] and "dose=" in r["variant"] for r in rows)
    assert "±" in (rep / "study.md").read_text() and "Over seeds" in (rep / "study.html").read_text()
    assert {r["seed"] for r in csv.DictReader((rep / "study.csv").read_text().splitlines())} == {"1", "2", "3"}


def test_optuna_search_minimises_the_validation_objective(tmp_path):
    sweep_dir = tmp_path / "search"
    res = _sweep(sweep_dir, "hparams_search=pinn_optuna", "hydra.sweeper.n_trials=2", *PLUMBING)
    assert res.returncode == 0, res.stderr[-4000:]
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model.lr" in results
    trials = [json.loads(p.read_text())["jobs"][0] for p in sweep_dir.glob("*/training_manifest.json")]
    assert len(trials) == 2 and all(t["status"] == "succeeded" for t in trials)
    best = min(t["best_val_loss"] for t in trials)  # the objective is the validation loss, not a test score
    assert f"best_value: {best}"[:18] in results
    # a trial never scores the test half: no evaluation, no refined arm (the preset turns both off)
    assert not list(sweep_dir.glob("*/metrics.json")) and not list(sweep_dir.glob("*/refine"))
    assert all(t["refined"] is None for t in trials)


def test_study_plots_give_related_methods_one_colour_and_no_two_series_one_style():
    """A network, its refined arm and the LSQML runs started from either share a colour and differ
    in marker or dashes; LSQML from a flat start is black. Seventeen series, no two drawn alike (the
    default colour cycle repeats after ten)."""
    names = ["LSQML dense", *(f"{prefix}{net}{arm} dense" for net in ("PINN gs1", "PINN gs2", "supervised")
                              for arm in ("", " refined") for prefix in ("", "LSQML from "))]
    names += ["PINN gs2 sparse", "LSQML (Poisson) dense", "LSQML (Poisson) from PINN gs2 dense",
              "LSQML (probe refined) dense"]
    colours: dict = {}
    styles = {name: series_style(name, colours) for name in sorted(names)}
    drawn = {(tuple(s["color"]) if not isinstance(s["color"], str) else s["color"], s["marker"], s["linestyle"])
             for s in styles.values()}
    assert len(drawn) == len(names)
    assert styles["LSQML dense"]["color"] == "black"
    gs2 = styles["PINN gs2 dense"]
    for related in ("PINN gs2 refined dense", "LSQML from PINN gs2 dense", "LSQML from PINN gs2 refined dense"):
        assert styles[related]["color"] == gs2["color"]
    assert styles["LSQML from PINN gs2 refined dense"] == {**gs2, "marker": "^", "linestyle": "--"}
    assert styles["PINN gs2 sparse"]["color"] != gs2["color"] != styles["PINN gs1 dense"]["color"]
    # pty-chi's Poisson model: LSQML all the same, drawn apart from the Gaussian reference
    assert styles["LSQML (Poisson) dense"]["color"] != "black"
    assert styles["LSQML (Poisson) from PINN gs2 dense"] == {**gs2, "linestyle": ":"}
    assert styles["LSQML (probe refined) dense"] == {**styles["LSQML dense"], "linestyle": "-."}  # its probe refined


def test_study_plots_draw_one_line_per_variant_and_never_average_variants_at_a_dose():
    """A line's points at one dose are drawn as their mean and spread, so they must be seeds of one
    variant: a method run in two variants (two widths) gets two lines, named by what differs; the
    dose itself, which every job of a study sets, never splits a line."""
    from ptylab.stages.study_report import plot_lines

    def row(method, dose, variant, seed=1):
        return {"method": method, "view": "dense", "dose": dose, "variant": variant, "seed": seed,
                "status": "succeeded"}

    rows = [row("PINN gs2", d, f"dose={d} view=dense", seed) for d in (1000, 10000) for seed in (1, 2)]
    rows += [row("LSQML", d, "test data embedded dense 1a2b3c4d lsqml.epochs=200") for d in (1000, 10000)]
    assert set(plot_lines(rows)) == {"PINN gs2 dense", "LSQML dense"}  # one variant each
    # comparisons written before 2026-12-06: a digest per dose, no epochs; still one line
    legacy = [row("LSQML", d, f"test data embedded dense {digest}")
              for d, digest in ((1000, "0a0a0a0a"), (1e4, "1b1b1b1b"))]
    assert set(plot_lines(legacy)) == {"LSQML dense"}
    rows += [row("PINN gs2", d, f"dose={d} view=dense model.width=2") for d in (1000, 10000)]
    rows += [{**row("PINN gs2", 1000, "dose=1000"), "status": "failed"}]  # not drawn: no line of its own
    lines = plot_lines(rows)
    drawn = set(lines[:-1]) - {"LSQML dense"}  # the failed job's line is never drawn
    # named by what differs: the override both variants share would only lengthen the names
    assert drawn == {"PINN gs2 dense [defaults]", "PINN gs2 dense [model.width=2]"}
    assert lines[:4] == ["PINN gs2 dense [defaults]"] * 4
    # a sweep's common overrides (here a short training) stay out of every name
    common = "++trainer.max_steps=20 model.batch_size=8"
    scans = [row("PINN gs2", 1e4, f"dose=10000 {common} dataset.scan_pattern={p}") for p in ("raster", "fermat")]
    assert plot_lines(scans) == ["PINN gs2 dense [dataset.scan_pattern=raster]",
                                 "PINN gs2 dense [dataset.scan_pattern=fermat]"]
    # a flat-start LSQML row names its data by a digest: named instead by the data's overrides, as
    # a job on the same data spells them (the job's other overrides are not the data's)
    for scan, digest in zip(scans, ("0a0a0a0a", "1b1b1b1b"), strict=True):
        scan["data"] = digest
    flat = [{**row("LSQML", 1e4, f"test data embedded dense {digest} lsqml.epochs=200"), "data": digest}
            for digest in ("1b1b1b1b", "0a0a0a0a")]
    assert plot_lines(scans + flat)[2:] == ["LSQML dense [dataset.scan_pattern=fermat]",
                                           "LSQML dense [dataset.scan_pattern=raster]"]
