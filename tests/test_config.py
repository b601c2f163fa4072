"""Real Hydra composition of the config tree, and scripts/simulate.py run as a user would."""

import json

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

import ptylab.config  # noqa: F401
from ptylab.config import validate
from ptylab.data import read_dataset
from ptylab.errors import ConfigError

from .conftest import ROOT, SMALL_OVERRIDES, compose_config, run_script


def test_defaults_compose_to_typed_config():
    cfg = compose_config(["dose=1000", "view=sparse", "gridsize=1"])
    assert cfg.dose == 1000.0 and isinstance(cfg.dose, float)
    assert cfg.view.name == "sparse" and cfg.view.target_overlap == 0.2
    assert cfg.model.name == "pinn" and cfg.trainer.accelerator == "cpu"
    assert cfg.paths.cache_dir == "outputs/cache"


def test_symmetry_averages_default_per_arm_and_read_old_booleans():
    tc = validate(compose_config([]))
    assert (tc.eval.average_symmetries, tc.refine.average_symmetries) == ("none", "point")
    old = validate(compose_config(["eval.average_symmetries=true", "refine.average_symmetries=false"]))
    assert (old.eval.average_symmetries, old.refine.average_symmetries) == ("all", "none")


def test_trainer_accepts_any_lightning_argument():
    cfg = compose_config(["++trainer.limit_train_batches=5", "trainer.max_epochs=3"])
    assert cfg.trainer.limit_train_batches == 5 and cfg.trainer.max_epochs == 3


@pytest.mark.parametrize("override", ["model.widht=2", "dataset.nphotns=3", "typo=1"])
def test_misspelt_key_fails_at_composition(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config([override])


@pytest.mark.parametrize("override", ["dose=lots", "gridsize=2.5", "model.probe_trainable=maybe"])
def test_wrong_type_fails_at_composition(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config([override])


def test_user_files_need_both_paths():
    cfg = compose_config(["dataset=npz"])
    with pytest.raises(ConfigError, match=r"dataset.train_file: a value is required"):
        validate(cfg)
    cfg = compose_config(["dataset=npz", "dataset.train_file=a.npz", "dataset.test_file=b.npz"])
    assert cfg.dataset.name == "file" and cfg.dataset.train_file == "a.npz"
    assert compose_config(["dataset=hdf5", "dataset.train_file=a.h5", "dataset.test_file=b.h5"]).dataset.name == "file"


def test_simulate_config_has_no_view_unless_asked():
    assert compose_config(["output_dir=x"], name="simulate").view is None
    assert compose_config(["output_dir=x", "view=dense"], name="simulate").view.name == "dense"


def test_simulate_script_writes_contract_files_summary_and_preview(tmp_path):
    out = tmp_path / "sim"
    res = run_script(["scripts/simulate.py", "dose=1000", "view=dense", f"output_dir={out}",
                      f"paths.output_root={tmp_path}", *SMALL_OVERRIDES], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("train.npz", "test.npz", "summary.json", "preview.png", "train_dense.npz", "test_dense.npz"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["splits"]["train"]["counts_per_pattern"]
    assert counts["min"] <= counts["mean"] <= counts["max"]
    assert len(summary["cache_key"]) == 64 and summary["seed"] == 1 and summary["intensity_scale"] > 0
    assert summary["view"]["train"]["kept"] <= summary["view"]["train"]["available"]
    train = read_dataset(out / "train.npz")
    assert train.metadata["nphotons"] == 1000.0 and train.Y is not None
    assert read_dataset(out / "train_dense.npz").n_positions == summary["view"]["train"]["kept"]
    assert "view dense train: kept" in res.stdout


def test_simulate_script_reports_a_skipped_view_plainly(tmp_path):
    out = tmp_path / "sim"
    res = run_script(["scripts/simulate.py", "dose=1000", "view=sparse", "view.min_train_positions=5000",
                      f"output_dir={out}", f"paths.output_root={tmp_path}", *SMALL_OVERRIDES], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SKIPPED view sparse" in res.stdout and "Traceback" not in res.stderr
    skip = json.loads((out / "skip_summary.json").read_text())
    assert skip["skipped_count"] == 1 and "fewer than the 5000" in skip["skipped_views"][0]["reason"]
    assert not (out / "train_sparse.npz").exists()
