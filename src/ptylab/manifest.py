"""Truthful job manifests (DESIGN section 9), always written atomically.

A job's record starts as ``running`` and ends as ``succeeded``, ``failed`` (with its error) or
``skipped`` (with its reason); nothing reports success for a job that did not finish.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from . import __version__
from .config import format_dose
from .errors import PtylabError
from .fileio import atomic_write_json, check_format_version

MANIFEST_NAME = "training_manifest.json"
# Each evaluation's registered, aligned reconstruction and the truth on its pixels (``object``,
# ``ground_truth``; ``evaluation.write_evaluation``), beside the manifest: what comparisons and the
# study report's gallery draw. Named here, with the manifest, so that reading a run directory needs
# no import of the modules that wrote it.
RECONSTRUCTION_FILE = "reconstruction.npz"
SKIP_SUMMARY_NAME = "skip_summary.json"
FORMAT_VERSION = "2.0"  # major.minor; a newer major is refused


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


class Status(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    interrupted = "interrupted"


@dataclass
class TrainingOutcome:
    """What a training run did: its budget spent, losses and checkpoints."""

    epochs: int
    steps: int
    train_s: float
    best_val_loss: float | None
    loss_history: dict[str, list[float]]
    checkpoint_path: str | None
    best_checkpoint_path: str | None
    groups: dict[str, int]
    stalled: bool = False  # the training loss stopped moving (logged as a warning)
    precision: str | None = None  # Lightning's precision as it ran (trainer=cpu chooses by CPU)
    init_weights_sha256: str | None = None  # the bundle whose network training started from


@dataclass
class JobRecord:
    """One job's entry in ``training_manifest.json``; its JSON keeps the first format's fields."""

    context: dict[str, Any]
    label: str
    run_dir: str
    status: Status = Status.running
    error: str | None = None
    user_error: bool = False  # bad input (config, files) rather than a bug
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    duration_s: float | None = None
    bundle_path: str | None = None
    bundle_sha256: str | None = None
    checkpoint_path: str | None = None
    best_checkpoint_path: str | None = None
    epochs: int | None = None
    steps: int | None = None
    train_s: float | None = None
    best_val_loss: float | None = None
    loss_history: dict[str, list[float]] | None = None
    groups: dict[str, int] | None = None
    stalled: bool = False
    precision: str | None = None
    init_weights_sha256: str | None = None
    dataset: dict[str, Any] | None = None
    view: dict[str, Any] | None = None
    metrics_path: str | None = None
    headline_metrics: dict[str, Any] | None = None
    flat_image_flags: list[str] | None = None
    fit_alone_flags: list[str] | None = None  # scores the offset fit on flat patches reaches too
    refined: dict[str, Any] | None = None  # the refined arm: steps, time, headline scores, flags
    # where the network learnt its probe (model.probe_trainable): how far each arm's moved from the
    # file's (relative norm of the difference); its evaluations ran under it
    learnt_probe: dict[str, float] | None = None
    resumed_from: str | None = None  # the checkpoint this run continued from
    signal: str | None = None  # what interrupted the job (SIGTERM, SIGINT), where one did
    reused: bool = False

    @classmethod
    def start(cls, ctx: JobContext, run_dir: Path) -> JobRecord:
        return cls(context=ctx.as_dict(), label=ctx.label(), run_dir=str(run_dir))

    def add_training(self, outcome: TrainingOutcome) -> None:
        for f in fields(outcome):
            setattr(self, f.name, getattr(outcome, f.name))

    def finish(self, status: Status, error: str | None = None, duration_s: float | None = None) -> None:
        self.status, self.error = status, error
        self.duration_s = duration_s
        self.finished_at = _now()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        record.status = Status(record.status)
        return record


def method_name(context: dict[str, Any], refined: bool = False) -> str:
    """The name comparison and study tables give a job's method: ``PINN gs2``, ``PINN gs2 refined``,
    ``supervised``."""
    name = f"PINN gs{context['gridsize']}" if context["model"] == "pinn" else str(context["model"])
    return f"{name} refined" if refined else name


def write_manifest(run_dir: Path, record: JobRecord) -> Path:
    """One job per invocation directory; skipped views are summarised at the top level too."""
    skipped = [record.view] if record.status == Status.skipped and record.view else []
    skip_path = run_dir / SKIP_SUMMARY_NAME
    manifest = {
        "format_version": FORMAT_VERSION,
        "ptylab_version": __version__,
        "status": str(record.status),
        "jobs": [record.to_json()],
        "skipped_views": skipped,
        "skipped_count": len(skipped),
        "skip_summary_path": SKIP_SUMMARY_NAME if skip_path.is_file() else None,
    }
    path = run_dir / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


class ManifestError(PtylabError):
    """A manifest written by a newer, incompatible ptylab."""


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, in name order: each holds a manifest, whatever its status."""
    return sorted(path.parent for path in Path(sweep_dir).glob(f"*/{MANIFEST_NAME}"))


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest as JSON, or None when absent or unreadable; a newer major format is refused."""
    path = Path(run_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    check_format_version(path, manifest.get("format_version"), FORMAT_VERSION, ManifestError)
    return manifest


def read_record(run_dir: Path) -> JobRecord | None:
    manifest = read_manifest(run_dir)
    if not manifest or not manifest.get("jobs"):
        return None
    return JobRecord.from_json(manifest["jobs"][0])


def finished_status(run_dir: Path) -> str | None:
    """'succeeded' or 'skipped' if the directory holds a finished job, else None (run it)."""
    manifest = read_manifest(run_dir)
    if not manifest or not manifest.get("jobs"):
        return None
    status = manifest["jobs"][0].get("status")
    if status == "succeeded" and not (Path(run_dir) / (manifest["jobs"][0].get("bundle_path") or "")).is_file():
        return None
    return status if status in ("succeeded", "skipped") else None
