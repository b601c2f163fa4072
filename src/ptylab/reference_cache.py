"""The test split's references, kept between jobs that evaluate the same split the same way.

Every evaluation reads its scores against references no model changes
(``evaluation.SplitReferences``): the offset fit on flat patches (the fit-alone reference, about a
tenth of the default job's time) and the data fit of a flat object and of the truth. Jobs that
differ only in their model or its training (a learning-rate scan, the seeds of a network on one
dataset, the supervised baseline beside the PINN at gridsize 1, a re-run from a snapshot) evaluate
the same split with the same settings: the first computes the references, the rest read them.

The key hashes everything that enters them: the split's arrays and metadata, its grouping
(gridsize, neighbours), every evaluation setting, the device, torch's version and the package's own
source, so that any edit to ptylab starts afresh (a reference computed by other code is not this
code's). An entry that cannot be read, or that was written under another key, is recomputed and
written again; a cache that cannot be written costs the next job the time, never the job itself.
Each metrics.json says where its references came from (``evaluation.REFERENCES_FROM``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import EvalConfig
from .data import PtychoData
from .evaluation import FitAlone, SplitReferences
from .fileio import atomic_write_json, sha256_bytes
from .stitching import Region

log = logging.getLogger(__name__)
SUBDIR = "references"
_ROWS = 1024  # patterns hashed at a time: a memory-mapped file is never read whole


def split_digest(data: PtychoData) -> str:
    """SHA-256 of a split's content: every array (by name, shape and bytes) and its metadata."""
    h = hashlib.sha256()
    arrays = {"diff3d": data.diff3d, "xcoords": data.xcoords, "ycoords": data.ycoords, "probe": data.probe,
              "obj": data.obj, "Y": data.Y, "scan_index": data.scan_index, "valid_pixels": data.valid_pixels}
    for name, array in arrays.items():
        if array is None:
            continue
        h.update(f"{name}{array.shape}{array.dtype}".encode())
        for start in range(0, max(len(array), 1), _ROWS):
            h.update(np.ascontiguousarray(array[start:start + _ROWS]).tobytes())
    h.update(json.dumps(data.metadata, sort_keys=True, default=str).encode())
    return h.hexdigest()


@lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of the package's Python source, read once per process."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def inputs_key(test: PtychoData, **settings: Any) -> str:
    """SHA-256 of what a result computed on ``test`` depends on: the split's content, ``settings``,
    torch's version and ptylab's source (any edit to ptylab gives another key). The test split's
    references and compare's LSQML rows are kept under such keys."""
    inputs = {"split": split_digest(test), **settings, "torch": torch.__version__, "ptylab": source_digest()}
    return sha256_bytes(json.dumps(inputs, sort_keys=True, default=str).encode())


def references_key(test: PtychoData, gridsize: int, neighbours: int, cfg: EvalConfig, device: str,
                   region: Region | None = None) -> str:
    """The cache key of ``test``'s references as an evaluation with these settings computes them
    (on ``region`` where it is not ``test``'s own: a learnt probe's data, scored on the file's area)."""
    area = {} if region is None else {"region": list(region)}
    return inputs_key(test, gridsize=gridsize, neighbours=neighbours, eval=asdict(cfg), device=device, **area)


def entry_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / SUBDIR / f"{key[:24]}.json"


def load_references(cache_dir: str | Path, key: str) -> SplitReferences | None:
    """The references stored under ``key``; None where there are none or the entry is unusable
    (said in the log: it is then recomputed and written again)."""
    path = entry_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        if entry["key"] != key:
            raise ValueError(f"it holds the references of key {entry['key'][:24]}...")
        alone = entry["fit_alone"]
        fit_alone = None if alone is None else FitAlone(
            {part: {k: _score(v) for k, v in scores.items()} for part, scores in alone["scores"].items()},
            float(alone["data_fit"]))
        data_fit = {k: float(v) for k, v in entry["data_fit"].items()}
        source = f"{path} (computed by the job in {entry['computed_by']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("the references cached in %s are unusable (%s); computing them again", path, exc)
        return None
    log.info("the test split's references (the fit alone, the flat object's and the truth's data fits) read "
             "from %s", source)
    return SplitReferences(data_fit, fit_alone, source)


def _score(value: Any) -> Any:
    """A stored score: a number, or null where it has none (an FRC50 that never falls below 0.5)."""
    return None if value is None else float(value)


def store_references(cache_dir: str | Path, key: str, references: SplitReferences, computed_by: Path) -> None:
    """Keep ``references`` under ``key`` for the next job (atomically; a failure is logged, not raised)."""
    alone = references.fit_alone
    entry: dict[str, Any] = {
        "key": key, "computed_by": str(computed_by), "data_fit": references.data_fit,
        "fit_alone": None if alone is None else {"scores": alone.scores, "data_fit": alone.data_fit}}
    path = entry_path(cache_dir, key)
    try:
        atomic_write_json(path, entry)
    except OSError as exc:
        log.warning("could not keep the test split's references in %s (%s); the next job computes them again",
                    path, exc)
