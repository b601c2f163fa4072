import logging
from dataclasses import replace

import numpy as np

from ptylab.config import EmbeddedDatasetConfig as DatasetConfig
from ptylab.config import EvalConfig, FileDatasetConfig
from ptylab.data import write_dataset
from ptylab.data_fit import reference_ratios
from ptylab.datasets import cache_key, load_dataset, load_or_simulate, note_file_dose
from ptylab.evaluation import FitAlone, SplitReferences
from ptylab.reference_cache import entry_path, load_references, references_key, store_references


def test_cache_hit_returns_identical_data(small_dataset_cfg, tmp_path):
    first = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path)
    second = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path)
    assert not first.identity["from_cache"] and second.identity["from_cache"]
    np.testing.assert_array_equal(first.train.diff3d, second.train.diff3d)
    np.testing.assert_array_equal(first.test.Y, second.test.Y)
    assert first.identity["files"] == second.identity["files"]


def test_corrupt_or_incomplete_entries_are_rebuilt(small_dataset_cfg, tmp_path):
    first = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path)
    entry = tmp_path / next(p.name for p in tmp_path.iterdir())
    data = bytearray((entry / "train.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "train.npz").write_bytes(bytes(data))
    rebuilt = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path)
    assert not rebuilt.identity["from_cache"]
    np.testing.assert_array_equal(rebuilt.train.diff3d, first.train.diff3d)
    (entry / "complete.json").unlink()  # as if killed before the marker was written
    assert not load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path).identity["from_cache"]


def test_key_covers_every_input_that_changes_the_bytes(small_dataset_cfg):
    base = cache_key(small_dataset_cfg, 1e3, 1)
    assert cache_key(small_dataset_cfg, 1e4, 1) != base
    assert cache_key(small_dataset_cfg, 1e3, 2) != base
    other = DatasetConfig(**{**small_dataset_cfg.__dict__, "scan_step": 5.0})
    assert cache_key(other, 1e3, 1) != base
    brighter = DatasetConfig(**{**small_dataset_cfg.__dict__, "amplitude_max": 2.0})
    assert cache_key(brighter, 1e3, 1) != base
    assert cache_key(replace(small_dataset_cfg, scan_pattern="fermat"), 1e3, 1) != base


def test_file_data_say_that_dose_only_labels_the_run(small_dataset_cfg, tmp_path, caplog):
    """A file's counts are its own: a run labelled with another dose than its metadata record is
    warned about, naming the file and both doses; files without one are told what they hold."""
    sim = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path / "cache")
    write_dataset(tmp_path / "train.npz", sim.train)
    write_dataset(tmp_path / "test.npz", sim.test)
    files = FileDatasetConfig(train_file=str(tmp_path / "train.npz"), test_file=str(tmp_path / "test.npz"))
    with caplog.at_level(logging.INFO, logger="ptylab.datasets"):
        note_file_dose(small_dataset_cfg, sim, 1e4)  # the simulation's dose is its own: nothing to say
        assert not caplog.records
        source = load_dataset(files, 1e3, 1, tmp_path)
        note_file_dose(files, source, 1e3)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        note_file_dose(files, source, 1e4)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "train.npz" in warning and "dose 1000 (nphotons)" in warning and "labelled dose=10000" in warning
    write_dataset(tmp_path / "user.npz", replace(sim.train, metadata={}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptylab.datasets"):
        user = FileDatasetConfig(train_file=str(tmp_path / "user.npz"), test_file=str(tmp_path / "test.npz"))
        note_file_dose(user, load_dataset(user, 1e4, 1, tmp_path), 1e4)
    (info,) = [r.getMessage() for r in caplog.records]
    assert "dose=10000 labels this run" in info and "no dose in its metadata" in info
    assert f"{sim.train.mean_counts:.0f} counts per pattern" in info


def test_reference_key_follows_the_split_its_grouping_and_every_evaluation_setting(small_dataset_cfg, tmp_path):
    test = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path).test
    cfg = EvalConfig()
    base = references_key(test, 2, 8, cfg, "cpu")
    same = replace(test, metadata=dict(test.metadata))
    assert references_key(same, 2, 8, cfg, "cpu") == base  # the content, not the object
    one_count_more = test.diff3d.copy()
    one_count_more[7, 3, 5] += 1.0
    assert references_key(replace(test, diff3d=one_count_more), 2, 8, cfg, "cpu") != base
    assert references_key(test.subset(np.arange(test.n_positions - 1)), 2, 8, cfg, "cpu") != base  # another view
    assert references_key(test, 1, 8, cfg, "cpu") != base
    assert references_key(test, 2, 8, replace(cfg, offset_fit_phase_tv=0.0), "cpu") != base
    assert references_key(test, 2, 8, cfg, "cuda") != base


def test_cached_references_round_trip_and_an_unusable_entry_is_recomputed(small_dataset_cfg, tmp_path, caplog):
    test = load_or_simulate(small_dataset_cfg, 1e3, 1, tmp_path / "data").test
    key = references_key(test, 2, 8, EvalConfig(), "cpu")
    cache = tmp_path / "cache"
    assert load_references(cache, key) is None  # nothing kept yet
    alone = FitAlone({"amplitude": {"ssim": 0.25, "frc50_px": 4.5}, "phase": {"ssim": 0.5, "frc50_px": None}}, 2.0)
    kept = SplitReferences(reference_ratios(test), alone, "this test")  # an FRC50 may be null: it never fell
    store_references(cache, key, kept, tmp_path / "run")
    again = load_references(cache, key)
    assert again is not None and (again.data_fit, again.fit_alone) == (kept.data_fit, kept.fit_alone)
    assert str(entry_path(cache, key)) in again.source and str(tmp_path / "run") in again.source
    other = references_key(test, 1, 8, EvalConfig(), "cpu")
    entry_path(cache, other).write_text(entry_path(cache, key).read_text())  # another key's entry in its place
    with caplog.at_level(logging.WARNING):
        assert load_references(cache, other) is None
    assert "unusable" in caplog.text and str(entry_path(cache, other)) in caplog.text
    entry_path(cache, key).write_text(entry_path(cache, key).read_text()[:40])  # cut short
    assert load_references(cache, key) is None
