"""Truthful job manifests (DESIGN section 9), always written atomically.

A job's record starts as ``running`` and ends as ``succeeded``, ``failed`` (with its error) or
``skipped`` (with its reason); nothing reports success for a job that did not finish.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import format_dose
from .fileio import atomic_write_json

MANIFEST_NAME = "training_manifest.json"
SKIP_SUMMARY_NAME = "skip_summary.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class JobContext:
    dose: float
    view: str
    gridsize: int
    model: str
    seed: int

    def label(self) -> str:
        return f"[dose={format_dose(self.dose)} view={self.view} gs={self.gridsize} model={self.model}]"

    def as_dict(self) -> dict[str, Any]:
        return {"dose": self.dose, "view": self.view, "gridsize": self.gridsize, "model": self.model,
                "seed": self.seed}


def new_record(ctx: JobContext, run_dir: Path) -> dict[str, Any]:
    return {
        "context": ctx.as_dict(),
        "label": ctx.label(),
        "run_dir": str(run_dir),
        "status": "running",
        "error": None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished_at": None,
        "duration_s": None,
        "bundle_path": None,
        "bundle_sha256": None,
        "checkpoint_path": None,
        "best_checkpoint_path": None,
        "epochs": None,
        "best_val_loss": None,
        "dataset": None,
        "view": None,
        "metrics_path": None,
        "headline_metrics": None,
        "flat_image_flags": None,
        "steps": None,
    }


def write_manifest(run_dir: Path, record: dict[str, Any]) -> Path:
    """One job per invocation directory; skipped views are summarised at the top level too."""
    skipped = [record["view"]] if record["status"] == "skipped" and record.get("view") else []
    skip_path = run_dir / SKIP_SUMMARY_NAME
    manifest = {
        "format_version": FORMAT_VERSION,
        "ptylab_version": __version__,
        "status": record["status"],
        "jobs": [record],
        "skipped_views": skipped,
        "skipped_count": len(skipped),
        "skip_summary_path": SKIP_SUMMARY_NAME if skip_path.is_file() else None,
    }
    path = run_dir / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def finished_status(run_dir: Path) -> str | None:
    """'succeeded' or 'skipped' if the directory holds a finished job, else None (redo it)."""
    manifest = read_manifest(run_dir)
    if not manifest or not manifest.get("jobs"):
        return None
    status = manifest["jobs"][0].get("status")
    if status == "succeeded" and not (Path(run_dir) / (manifest["jobs"][0].get("bundle_path") or "")).is_file():
        return None
    return status if status in ("succeeded", "skipped") else None
