"""scripts/compare.py on real (tiny) runs, a failed run and a missing one; LSQML where pty-chi exists."""

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from ptylab.config import EvalConfig, LsqmlConfig
from ptylab.errors import ConfigError
from ptylab.evaluation import score_reconstruction
from ptylab.lsqml import ptychi_available
from ptylab.stages.compare import compare
from ptylab.stages.train import run_job
from ptylab.stitching import Stitched, illuminated_bbox

from .conftest import PLUMBING, ROOT, SMALL_OVERRIDES, TINY_TRAIN, behind_beamstop, compose_config, run_script


def test_compare_lists_every_run_with_numbers_or_reasons(tmp_path):
    ok = run_script(["train.py", "dose=1000", "gridsize=1", f"paths.output_root={tmp_path}", *SMALL_OVERRIDES,
                     *TINY_TRAIN, *PLUMBING], cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-3000:]
    # The failed run in this process: train.py's exit status on bad data is test_train_cli's concern.
    failed_run = tmp_path / "failed"
    cfg = compose_config(["dataset=npz", f"dataset.train_file={tmp_path / 'absent.npz'}",
                          f"dataset.test_file={tmp_path / 'absent.npz'}", f"paths.output_root={tmp_path}", *TINY_TRAIN])
    assert run_job(cfg, failed_run).status == "failed"
    (good_run,) = (p.parent for p in (tmp_path / "runs").glob("*/*/training_manifest.json"))
    missing = tmp_path / "never_ran"
    # The same run as if trained at seed 2 (its snapshot and manifest say so): compare decides a run's
    # test split from those two files alone, so it must give this one a reference of its own.
    other_seed = tmp_path / "other_seed"
    shutil.copytree(good_run, other_seed)
    snap = other_seed / ".hydra" / "config.yaml"
    snap.write_text(snap.read_text().replace("seed: 1\n", "seed: 2\n"))
    man = json.loads((other_seed / "training_manifest.json").read_text())
    man["jobs"][0]["context"]["seed"] = 2
    (other_seed / "training_manifest.json").write_text(json.dumps(man))
    res = run_script(["scripts/compare.py", f"runs=[{good_run},{failed_run},{missing},{other_seed}]",
                      f"output_dir={tmp_path / 'cmp'}", "lsqml.epochs=5", "lsqml.from_networks_epochs=3"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").read_text().splitlines()))
    by_source = {r["source"]: r for r in rows}
    assert by_source[str(good_run)]["status"] == "succeeded"
    assert float(by_source[str(good_run)]["phase_ssim"]) <= 1.0
    # the network's own patches scored (evaluation.PATCH_CORR); LSQML has none, its cells blank
    assert all(-1 <= float(by_source[str(good_run)][f"{p}_patch_corr"]) <= 1 for p in ("amplitude", "phase"))
    assert by_source[str(failed_run)]["status"] == "failed" and "absent.npz" in by_source[str(failed_run)]["reason"]
    assert by_source[str(missing)]["status"] == "missing" and "no training_manifest.json" in by_source[str(missing)][
        "reason"]
    lsqml = [r for r in rows if r["method"] == "LSQML"]  # one flat-start reference per test split
    assert [r["seed"] for r in lsqml] == ["1", "2"] and lsqml[0]["status"] in ("succeeded", "not run")
    if lsqml[0]["status"] == "succeeded":  # files named by seed, neither replacing the other
        assert {p.name for p in (tmp_path / "cmp").glob("lsqml_dense_1e3_seed_*.json")} == {
            "lsqml_dense_1e3_seed_1.json", "lsqml_dense_1e3_seed_2.json"}
        # comparison.json names each LSQML row's reconstruction, for the study report's gallery
        recorded = [r for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())
                    if r["method"].startswith("LSQML")]
        assert all((tmp_path / "cmp" / r["reconstruction"]).is_file() for r in recorded)
        _again_reads_what_it_computed(tmp_path / "cmp", [good_run, failed_run, missing, other_seed], recorded)
    if lsqml[0]["status"] == "not run":
        assert "make ptychi" in lsqml[0]["reason"]
    # LSQML also from each network's own reconstruction (here the single pass: PLUMBING skips refinement)
    networks = [r["method"] for r in rows if r["source"] == str(good_run)]
    assert networks == ["PINN gs1"]
    started = [r for r in rows if r["method"].startswith("LSQML from ")]
    assert [(r["method"], r["seed"]) for r in started] == [(f"LSQML from {m}", s) for s in "12" for m in networks]
    for row in started:
        assert row["status"] == lsqml[0]["status"] and row["phase_patch_corr"] == ""
        assert row["iterations"] == ("3" if row["status"] == "succeeded" else "")
    # The study report averages rows of one variant over seeds: a network's is its overrides but the
    # seed, an LSQML row's from a start that run's, a flat start's the test data but the seed.
    variant = by_source[str(good_run)]["variant"]
    assert "dose=1000" in variant and "gridsize=1" in variant and "seed" not in variant
    assert {r["variant"] for r in started} == {f"{variant} lsqml.from_networks_epochs=3"}
    assert lsqml[0]["variant"] == lsqml[1]["variant"] and lsqml[0]["variant"].startswith("test data embedded dense ")
    assert lsqml[0]["variant"].endswith(" lsqml.epochs=5")  # rows of other epochs are never averaged with these
    # every LSQML row names the data it ran on (the study's gallery puts it under that data's truth)
    assert {r["data"] for r in [*lsqml, *started]} == {lsqml[0]["variant"].split()[4]}
    for row in rows:  # never an empty row: numbers or a reason
        assert row["phase_ssim"] or row["reason"]
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("\n") == len(rows) + 2
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def _again_reads_what_it_computed(out_dir, runs, recorded):
    """A comparison run again into the same directory (after an interruption, or with more runs)
    reads each LSQML row computed from the same inputs instead of running it, and runs again only
    the rows whose inputs changed (here the flat starts' epochs)."""
    files = {p.name: p.read_bytes() for p in out_dir.glob("lsqml_*")}
    again = compare([str(r) for r in runs], out_dir, LsqmlConfig(epochs=5, from_networks_epochs=3))
    assert [r for r in again if r["method"].startswith("LSQML")] == recorded
    assert {p.name: p.read_bytes() for p in out_dir.glob("lsqml_*")} == files  # nothing rewritten
    longer = compare([str(r) for r in runs], out_dir, LsqmlConfig(epochs=6, from_networks_epochs=3))
    iterations = {r["method"]: r["iterations"] for r in longer if r["method"].startswith("LSQML")}
    assert iterations == {"LSQML": 6, "LSQML from PINN gs1": 3}
    changed = {p.name for p in out_dir.glob("lsqml_*") if p.read_bytes() != files[p.name]}
    assert changed and all(name.startswith("lsqml_dense_") for name in changed)  # the flat starts' files only


def test_runs_share_a_reference_only_when_they_share_the_test_split():
    from ptylab.config import data_key, validate
    from ptylab.stages.compare import data_variant, split_key

    def cfg(*overrides):
        return validate(compose_config(list(overrides)))

    base = cfg("dose=1000")
    same = cfg("dose=1000", "gridsize=1", "model=supervised", "model.lr=0.01")  # same positions and counts
    assert split_key(same) == split_key(base) and data_variant(same) == data_variant(base)
    for other in (["dose=10000"], ["seed=2"], ["view=sparse"], ["view.min_train_positions=8"],
                  ["dataset=user_style"], ["dataset.scan_step=4.0"]):
        changed = cfg("dose=1000", *other)
        assert split_key(changed) != split_key(base), other
        # the flat-start reference's variant: its data but the seed and dose, averaged over seeds in
        # the report and drawn as one line across doses
        assert (data_variant(changed) == data_variant(base)) == (other in (["seed=2"], ["dose=10000"])), other
    # the data's key, by which the study's gallery puts a row under its truth, is one for one data
    # however it is spelled (a default written out) and for every dose and seed, else another
    assert data_key(cfg("dose=1000", "dataset.scan_step=3.0", "seed=4")) == data_key(base) == data_variant(base)[-8:]
    assert data_key(cfg("dose=1000", "dataset.scan_step=4.0")) != data_key(base)


def test_labels_name_the_seed_when_there_are_several_and_never_repeat():
    from ptylab.stages.compare import Labels

    row = {"view": "dense", "dose": 1e4, "seed": 1}
    one = Labels({1})
    assert [one("PINN gs2", row), one("PINN gs2", row), one("LSQML", row)] == [
        "PINN gs2 dense 1e4", "PINN gs2 dense 1e4 #2", "LSQML dense 1e4"]  # two ablations on one split
    several = Labels({1, 2})
    assert [several("PINN gs2", row), several("PINN gs2", {**row, "seed": 2})] == [
        "PINN gs2 dense 1e4 seed 1", "PINN gs2 dense 1e4 seed 2"]


def test_lsqml_rows_name_the_noise_model_and_carry_their_epochs():
    """The Poisson likelihood is another method: its rows are named apart from the Gaussian
    reference's, and rows of other epochs carry another variant, so a sweep compared twice (two
    noise models, or two lengths) is never averaged or plotted as one method over seeds."""
    from ptylab.config import LsqmlConfig
    from ptylab.stages.compare import lsqml_method, lsqml_variant

    start = ("PINN gs2", None)
    assert [lsqml_method(None), lsqml_method(start)] == ["LSQML", "LSQML from PINN gs2"]  # the reference's names
    assert [lsqml_method(None, "poisson"), lsqml_method(start, "poisson")] == [
        "LSQML (Poisson)", "LSQML (Poisson) from PINN gs2"]
    # a refined probe is another unknown solved for, so another method too, and another variant
    assert [lsqml_method(None, probe="refined"), lsqml_method(start, "poisson", "refined")] == [
        "LSQML (probe refined)", "LSQML (Poisson, probe refined) from PINN gs2"]
    assert lsqml_variant("data", LsqmlConfig(probe="refined"), False) == "data lsqml.epochs=200 lsqml.probe=refined"
    with pytest.raises(ConfigError, match=r"^lsqml\.probe=.learnt.: must be .fixed. or .refined."):
        LsqmlConfig(probe="learnt")
    short, long = LsqmlConfig(epochs=50, from_networks_epochs=5), LsqmlConfig()
    assert lsqml_variant("data", short, False) != lsqml_variant("data", long, False)
    assert lsqml_variant("run", short, True) != lsqml_variant("run", long, True)
    assert lsqml_variant("", long, False) == "lsqml.epochs=200"


def test_the_study_report_takes_every_lsqml_row_compare_wrote(tmp_path):
    from ptylab.stages.compare import COLUMNS
    from ptylab.stages.study_report import lsqml_rows, seed_means

    rows = []
    for i, method in enumerate(("PINN gs2", "LSQML", "LSQML from PINN gs2 refined")):
        row = {c: None for c in COLUMNS}
        row.update(method=method, dose=1e4, view="dense", seed=1, status="succeeded", phase_ssim=0.5 + i / 10,
                   reconstruct_s=float(i), variant=f"v{i}")
        rows.append(row)
    # Flat-start references on another seed of the same data and on other data, at the same dose and view
    rows += [{**rows[1], "seed": 2, "phase_ssim": 0.8}, {**rows[1], "variant": "other data", "phase_ssim": 0.1}]
    rows[1]["reconstruction"] = "lsqml_dense_1e4.npz"  # compare.py names its file since 2026-12-06
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.json").write_text(json.dumps(rows))
    got = lsqml_rows(tmp_path)  # the network rows come from the jobs' own manifests, not from here
    assert [(r["method"], r["phase_ssim"], r["duration_s"], r["variant"]) for r in got] == [
        ("LSQML", 0.6, 1.0, "v1"), ("LSQML from PINN gs2 refined", 0.7, 2.0, "v2"), ("LSQML", 0.8, 1.0, "v1"),
        ("LSQML", 0.1, 1.0, "other data")]
    assert got[0]["image"] == tmp_path / "cmp" / "lsqml_dense_1e4.npz" and "image" not in got[1]  # for the gallery
    # averaged over the seeds of one test data only (with the first grouping, over both datasets too)
    means = seed_means(got)
    assert [(m["method"], m["runs"], m["variant"]) for m in means] == [
        ("LSQML", 2, "v1"), ("LSQML from PINN gs2 refined", 1, "v2"), ("LSQML", 1, "other data")]
    assert means[0]["phase_ssim_mean"] == pytest.approx(0.7)


def test_a_start_in_any_units_is_matched_to_the_measured_counts(small_dataset_cfg, tmp_path):
    from ptylab.datasets import load_or_simulate
    from ptylab.lsqml import matched_start

    test = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path).test
    weight = np.ones(test.obj.shape, np.float32)
    weight[:, :3] = 0  # never stitched: starts at the stitched part's mean amplitude
    weight[:, 3] = 1e-6  # touched by a rim, below the empty share: left empty by the stitch, the same
    inside = weight > 1e-3
    # The truth in other units (a network's, with its own intensity scale) and a global phase.
    start = Stitched((0.3 * np.exp(0.7j) * test.obj * inside).astype(np.complex64), weight, illuminated_bbox(test))
    got = matched_start(start, test)
    # Back in the units the data's intensity scale implies, to Poisson noise on the total counts.
    np.testing.assert_allclose(np.abs(got[inside]), np.abs(test.obj[inside]), rtol=0.01)
    np.testing.assert_allclose(np.angle(got[inside] / test.obj[inside]), 0.7, atol=1e-5)
    np.testing.assert_allclose(np.abs(got[~inside]), np.abs(got[inside]).mean(), rtol=1e-5)


@pytest.mark.skipif(not ptychi_available(), reason="pty-chi is not installed here (make ptychi builds .venv-ptychi)")
def test_lsqml_beats_its_flat_start(small_dataset_cfg, tmp_path):
    from ptylab.datasets import load_or_simulate
    from ptylab.lsqml import run_lsqml

    test = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path).test
    obj, probe, info = run_lsqml(test, epochs=30)
    assert info["start"] == "flat" and info["iterations"] == 30 and probe is test.probe  # fixed
    bbox = illuminated_bbox(test)
    ones = np.ones(obj.shape, np.float32)
    flat = score_reconstruction(Stitched(np.ones_like(obj), ones, bbox), test.obj, EvalConfig())
    got = score_reconstruction(Stitched(obj, ones, bbox), test.obj, EvalConfig())
    assert got["phase"]["ssim"] > flat["phase"]["ssim"] + 0.1
    assert got["amplitude"]["ssim"] > flat["amplitude"]["ssim"] + 0.1
    # positions passed in pty-chi's convention: the object lands where it belongs
    assert max(abs(s) for s in got["registration"]["shift_yx"]) < 0.5
    json.dumps(info)


@pytest.mark.skipif(not ptychi_available(), reason="pty-chi is not installed here (make ptychi builds .venv-ptychi)")
def test_lsqml_keeps_the_lead_of_a_good_start(small_dataset_cfg, tmp_path):
    from ptylab.datasets import load_or_simulate
    from ptylab.lsqml import matched_start, run_lsqml

    test = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path).test
    bbox, ones = illuminated_bbox(test), np.ones(test.obj.shape, np.float32)
    start = matched_start(Stitched((0.3 * test.obj).astype(np.complex64), ones, bbox), test)  # other units
    obj, _, info = run_lsqml(test, epochs=5, start=start, start_name="the truth")
    flat, _, _ = run_lsqml(test, epochs=5)
    assert info["start"] == "the truth" and info["iterations"] == 5
    got = score_reconstruction(Stitched(obj, ones, bbox), test.obj, EvalConfig())
    ref = score_reconstruction(Stitched(flat, ones, bbox), test.obj, EvalConfig())
    assert got["phase"]["ssim"] > ref["phase"]["ssim"] + 0.1
    assert got["amplitude"]["pearson"] > ref["amplitude"]["pearson"]


@pytest.mark.skipif(not ptychi_available(), reason="pty-chi is not installed here (make ptychi builds .venv-ptychi)")
def test_lsqml_leaves_out_the_pixels_the_detector_did_not_measure(small_dataset_cfg, tmp_path):
    """Behind a beamstop: LSQML given the mask reconstructs about as from the whole patterns; read
    as measured zeros, the blocked direct beam spoils it (pty-chi's valid_pixel_mask)."""
    from ptylab.datasets import load_or_simulate
    from ptylab.lsqml import run_lsqml

    test = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path).test
    masked = behind_beamstop(test, 1.5)  # the central 3 x 3 pixels
    bbox, ones = illuminated_bbox(test), np.ones(test.obj.shape, np.float32)
    scores, infos = {}, {}
    for name, data in (("whole", test), ("masked", masked), ("unmasked", replace(masked, valid_pixels=None))):
        obj, _, infos[name] = run_lsqml(data, epochs=30)
        scores[name] = score_reconstruction(Stitched(obj, ones, bbox), test.obj, EvalConfig())["amplitude"]["pearson"]
    assert infos["masked"]["valid_pixels"] == test.N**2 - 9 and infos["whole"]["valid_pixels"] == "all"
    assert scores["masked"] > scores["whole"] - 0.05 and scores["masked"] > scores["unmasked"] + 0.1, scores


@pytest.mark.skipif(not ptychi_available(), reason="pty-chi is not installed here (make ptychi builds .venv-ptychi)")
def test_lsqml_refines_a_probe_guess_that_is_off(small_dataset_cfg, tmp_path):
    """The data's probe replaced by a guess with the wrong defocus: LSQML with it fixed fits the
    patterns badly; with ``lsqml.probe=refined`` it ends with a probe nearer the true one, explains
    the patterns better under it, and its object scores higher (measured, 30 epochs: the probe
    0.119 of its norm from the true one against the guess's 0.433, data fit 2.10 against 8.31,
    phase corr 0.874 against 0.647)."""
    from ptylab.data_fit import data_fit
    from ptylab.datasets import load_or_simulate
    from ptylab.lsqml import run_lsqml
    from ptylab.physics import make_probe

    test = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path).test
    cfg = small_dataset_cfg
    guessed = replace(test, probe=make_probe(cfg.N, cfg.probe_diameter, cfg.probe_blur, cfg.probe_defocus - 1.5))
    bbox, ones = illuminated_bbox(test), np.ones(test.obj.shape, np.float32)

    def off(probe):  # up to the factor the object takes
        c = np.vdot(probe, test.probe) / np.vdot(probe, probe)
        return float(np.linalg.norm(c * probe - test.probe) / np.linalg.norm(test.probe))

    got = {}
    for refine in (False, True):
        obj, probe, info = run_lsqml(guessed, epochs=30, refine_probe=refine)
        got[refine] = (score_reconstruction(Stitched(obj, ones, bbox), test.obj, EvalConfig())["phase"]["pearson"],
                       data_fit(obj, replace(guessed, probe=probe)).ratio, off(probe), info["probe"])
    assert got[True][2] < 0.5 * got[False][2], got  # the probe it ended with is nearer the truth
    assert got[True][1] < got[False][1] and got[True][0] > got[False][0] + 0.1, got
    assert got[False][3].startswith("known, fixed") and got[True][3].startswith("the data's, refined"), got
