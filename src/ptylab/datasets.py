"""Content-addressed cache of generated datasets.

The key hashes every input that changes the bytes (dataset settings, dose, seed, cache format).
An entry is trusted only if its ``complete.json`` marker exists and the digests it records match
the files; anything else is rebuilt. Every file is written atomically, the marker last.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import DatasetConfig, EmbeddedDatasetConfig, FileDatasetConfig, ViewConfig
from .data import PtychoData, read_dataset, require_pattern_sizes, write_dataset
from .fileio import atomic_write_json, sha256_bytes, sha256_file
from .simulate import simulate
from .views import ViewSelection, select_view_for

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
FILES = ("train.npz", "test.npz")


@dataclass
class DatasetSource:
    """A dataset's two splits with their identity, as recorded in manifests."""

    train: PtychoData
    test: PtychoData
    identity: dict[str, Any]
    summary: dict[str, Any]


def cache_key(cfg: EmbeddedDatasetConfig, dose: float, seed: int) -> str:
    inputs = {k: v for k, v in asdict(cfg).items() if k != "name"}
    if cfg.probe_file is not None:
        inputs["probe_file_sha256"] = sha256_file(cfg.probe_file)
    blob = json.dumps({"format": CACHE_FORMAT, "dataset": inputs, "dose": float(dose), "seed": int(seed)},
                      sort_keys=True)
    return sha256_bytes(blob.encode())


def load_or_simulate(cfg: EmbeddedDatasetConfig, dose: float, seed: int, cache_dir: str | Path) -> DatasetSource:
    key = cache_key(cfg, dose, seed)
    entry = Path(cache_dir) / f"embedded-{key[:24]}"
    marker = entry / "complete.json"
    info = _valid_entry(entry, marker, key)
    if info is None:
        train, test, summary = simulate(cfg, dose, seed)
        info = _publish_entry(entry, key, train, test, summary)
        cached = False
    else:
        train, test = (read_dataset(entry / name) for name in FILES)
        summary = json.loads((entry / "summary.json").read_text())
        cached = True
    identity = {
        "source": "embedded",
        "cache_key": key,
        "cache_entry": str(entry),
        "from_cache": cached,
        "files": {name: {"path": str(entry / name), "sha256": info["files"][name]} for name in FILES},
    }
    return DatasetSource(train, test, identity, summary)


def _publish_entry(entry: Path, key: str, train: PtychoData, test: PtychoData,
                   summary: dict[str, Any]) -> dict[str, Any]:
    """Write a cache entry in a private directory and rename it into place whole. Jobs of a
    parallel sweep that share a dataset (the study's arms at one dose) simulate it at once: an
    entry built in place was seen half-written by another job, which removed it as corrupt under
    its writer. The simulation is seeded, so whichever job publishes first, the entry is the same;
    a later one keeps what it simulated and drops its copy."""
    summary["cache_key"] = key
    entry.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        for name, split in zip(FILES, (train, test), strict=True):
            split.metadata["cache_key"] = key
            write_dataset(private / name, split)
        atomic_write_json(private / "summary.json", summary)
        info = {"key": key, "files": {name: sha256_file(private / name) for name in FILES}}
        atomic_write_json(private / "complete.json", info)
        if entry.exists() and _valid_entry(entry, entry / "complete.json", key) is None:
            log.warning("cache entry %s is incomplete or corrupt; rebuilding it", entry)
            shutil.rmtree(entry, ignore_errors=True)
        try:
            private.rename(entry)
        except OSError:  # another job published the same entry first
            log.info("cache entry %s was written by another job meanwhile; keeping it", entry)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return info


def _valid_entry(entry: Path, marker: Path, key: str) -> dict[str, Any] | None:
    try:
        info = json.loads(marker.read_text())
        if info.get("key") != key or not (entry / "summary.json").is_file():
            return None
        for name in FILES:
            if sha256_file(entry / name) != info["files"][name]:
                return None
        return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_files(train_file: str, test_file: str) -> DatasetSource:
    """The user's own contract-conforming files."""
    train, test = read_dataset(train_file), read_dataset(test_file)
    require_pattern_sizes(train_file, train.N, test_file, test.N)
    identity = {
        "source": "file",
        "files": {role: {"path": str(Path(p).resolve()), "sha256": sha256_file(p)}
                  for role, p in (("train", train_file), ("test", test_file))},
    }
    summary = {"positions": train.n_positions + test.n_positions,
               "splits": {"train": {"positions": train.n_positions}, "test": {"positions": test.n_positions}}}
    return DatasetSource(train, test, identity, summary)


def load_job_data(dataset_cfg: DatasetConfig, view_cfg: ViewConfig, dose: float, seed: int,
                  cache_dir: str | Path) -> tuple[DatasetSource, ViewSelection]:
    """A job's dataset and its overlap view: training, DDP ranks and the LSQML reference all see the
    same positions."""
    source = load_dataset(dataset_cfg, dose, seed, cache_dir)
    return source, select_view_for(view_cfg, source.train, source.test)


def load_dataset(cfg: DatasetConfig, dose: float, seed: int, cache_dir: str | Path) -> DatasetSource:
    """Dispatch on the dataset's kind: the embedded simulation (cached) or the user's files."""
    if isinstance(cfg, FileDatasetConfig):
        return load_files(cfg.train_file, cfg.test_file)
    return load_or_simulate(cfg, dose, seed, cache_dir)


def note_file_dose(cfg: DatasetConfig, source: DatasetSource, dose: float) -> None:
    """File data keep the counts they hold: the ``dose`` setting only labels the run (its directory,
    manifest and table rows). Say so, with the counts the files hold, and warn when their metadata
    record another dose (``nphotons``), so a mislabelled run is not mistaken for that dose.

    The training job calls it once, on rank zero; the embedded simulation needs no note (its dose
    is the simulated one)."""
    if not isinstance(cfg, FileDatasetConfig):
        return
    path, train = cfg.train_file, source.train
    recorded = train.metadata.get("nphotons")
    if isinstance(recorded, int | float) and not math.isclose(float(recorded), dose, rel_tol=1e-6):
        log.warning("%s: its metadata record dose %g (nphotons) and this run is labelled dose=%g: the dose "
                    "setting does not change file data, it only labels the run; set dose=%g to label it as "
                    "recorded", path, recorded, dose, recorded)
        return
    log.info("file data: dose=%g labels this run and does not change the data (%s: %.0f counts per pattern%s)",
             dose, path, train.mean_counts, "" if recorded is not None else "; no dose in its metadata")
