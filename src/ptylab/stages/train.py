"""The train stage: one job, start to finish.

    data -> view -> train (groups, Trainer) -> bundle -> evaluate -> manifest

Every outcome is recorded truthfully: the manifest says ``running`` while the job works, then
``succeeded``, ``skipped`` (the view was too small, with its reason) or ``failed`` (with the error).
A job never raises for its own failures; the entry point turns ``failed`` into a non-zero exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ..bundle import BUNDLE_NAME, bundle_config_yaml, save_model_bundle
from ..config import PinnConfig, TrainConfig, require_trainer_device, trainer_device, validate
from ..data import PtychoData
from ..datasets import load_job_data, note_file_dose
from ..errors import PtylabError
from ..evaluation import (
    NOT_SCORED,
    SplitReferences,
    evaluate_reconstruction,
    offset_fit,
    split_references,
    unscored_parts,
)
from ..figures import loss_curve
from ..fileio import atomic_write_json, atomic_write_text
from ..legacy_params import bridged, location_free
from ..manifest import SKIP_SUMMARY_NAME, JobContext, JobRecord, Status, finished_status, read_record, write_manifest
from ..models import PtychoModule
from ..prediction import LEARNT_PROBE_FILE, with_model_probe, write_probe
from ..reference_cache import load_references, references_key, store_references
from ..refine import REFINE_DIR, refine
from ..runlock import run_dir_lock
from ..stitching import OBJECT_FILE, Region, illuminated_bbox, read_object
from ..training import fit
from ..views import ViewSelection

log = logging.getLogger(__name__)


def context_of(cfg: DictConfig | TrainConfig) -> JobContext:
    return JobContext(float(cfg.dose), str(cfg.view.name), int(cfg.gridsize), str(cfg.model.name), int(cfg.seed))


def train(tc: TrainConfig, run_dir: Path, data: PtychoData,
          record: JobRecord | None = None) -> PtychoModule:
    """Train the configured model on ``data``; record the outcome and draw the loss curve."""
    model, outcome = fit(tc.model, tc.gridsize, tc.seed, data, tc.trainer, run_dir, str(tc.logger),
                         tc.ckpt_path)
    if record is not None:
        record.add_training(outcome)
        if outcome.loss_history["train"]:
            loss_curve(run_dir / "loss.png", list(range(len(outcome.loss_history["train"]))),
                       outcome.loss_history, record.label)
    return model


def inference_record(tc: TrainConfig, model: PtychoModule) -> dict[str, Any]:
    """What a bundle needs to reconstruct as the job did: model, grouping and stitching settings."""
    return {
        "model": tc.model.name, "N": int(model.hparams["N"]), "gridsize": tc.gridsize,
        "neighbours": tc.model.neighbours_at(tc.gridsize), "stitch_crop": tc.eval.stitch_crop,
        "sync_phase": tc.eval.sync_phase, "average_symmetries": tc.eval.average_symmetries,
        **offset_fit(tc.eval).inference(), "input_scale": float(model.input_scale.item()), "dose": tc.dose,
    }


def save_bundle(cfg: DictConfig, tc: TrainConfig, run_dir: Path, model: PtychoModule, params: dict[str, Any]) -> str:
    return save_model_bundle(run_dir / BUNDLE_NAME, model, tc.model.name, inference_record(tc, model),
                             location_free(params), bundle_config_yaml(cfg))


def under_model_probe(test: PtychoData, model: PtychoModule, record: JobRecord, arm: str,
                      out_dir: Path) -> tuple[PtychoData, Region | None]:
    """``test`` under the probe ``model`` learnt (``prediction.with_model_probe``) and the area to
    score it on: the file's probe's, so that every method is scored on the same pixels (None:
    ``test`` as it is). The learnt probe goes to ``out_dir``/probe.npz under the data contract's
    key, ready to be the next scan's ``probeGuess``; the manifest records how far it moved."""
    data = with_model_probe(test, model)
    if data is test:
        return test, None
    write_probe(out_dir / LEARNT_PROBE_FILE, data.probe)
    change = float(np.linalg.norm(data.probe - test.probe) / np.linalg.norm(test.probe))
    record.learnt_probe = {**(record.learnt_probe or {}), f"{arm}_relative_change": round(change, 5)}
    log.info("%s: scored under the probe the network learnt (%s; %.3f of the file's probe's norm from it)",
             record.label, arm.replace("_", " "), change)
    return data, illuminated_bbox(test)


def evaluate(tc: TrainConfig, run_dir: Path, model: PtychoModule, test: PtychoData,
             record: JobRecord) -> SplitReferences | None:
    """Reconstruct the test split and score it (skipped when ``eval.enabled`` is false); the
    split's references (the offset fit on flat patches, the flat object's and the truth's data
    fits), for the refined arm to reuse. They come from the cache where an earlier job evaluated
    the same split the same way, and are kept there for the next where they do not."""
    if not tc.eval.enabled:
        return None
    device = trainer_device(tc.trainer)
    data, region = under_model_probe(test, model, record, "single_pass", run_dir)
    key = references_key(data, tc.gridsize, tc.model.neighbours_at(tc.gridsize), tc.eval, device, region)
    cached = load_references(tc.paths.cache_dir, key)
    metrics = evaluate_reconstruction(model, data, tc.gridsize, tc.model.neighbours_at(tc.gridsize), tc.eval, run_dir,
                                      record.label, cached, device, region=region)
    record.metrics_path = "metrics.json"
    record.headline_metrics = metrics["headline"]
    record.flat_image_flags = metrics["flat_image_flags"]
    record.fit_alone_flags = metrics["fit_alone_flags"]
    references = split_references(metrics, f"{run_dir / 'metrics.json'} (this job's single pass)")
    if cached is None:
        store_references(tc.paths.cache_dir, key, references, run_dir)
    return references


def evaluate_refined(tc: TrainConfig, run_dir: Path, model: PtychoModule, test: PtychoData,
                     record: JobRecord, references: SplitReferences | None) -> None:
    """The refined arm (PINN only): fine-tune on the test diffraction, score it under its own name."""
    if not (tc.refine.enabled and tc.eval.enabled and isinstance(tc.model, PinnConfig)):
        return
    tuned, outcome = refine(model, tc.model, tc.refine, tc.gridsize, tc.seed, test, tc.trainer, run_dir)
    out = run_dir / REFINE_DIR
    eval_cfg = replace(tc.eval, average_symmetries=tc.refine.average_symmetries)
    plane_from = read_object(run_dir / OBJECT_FILE) if tc.refine.single_pass_plane else None
    data, region = under_model_probe(test, tuned, record, "refined", out)
    if region is not None:  # the single pass's references hold its own probe; refinement moved it
        references = None
    metrics = evaluate_reconstruction(tuned, data, tc.gridsize, tc.model.neighbours_at(tc.gridsize), eval_cfg, out,
                                      f"{record.label} refined", references, trainer_device(tc.trainer), plane_from,
                                      region)
    record.refined = {"metrics_path": f"{REFINE_DIR}/metrics.json", "steps": outcome.steps,
                      "refine_s": outcome.train_s, "loss_history": outcome.loss_history,
                      "headline_metrics": metrics["headline"], "flat_image_flags": metrics["flat_image_flags"],
                      "fit_alone_flags": metrics["fit_alone_flags"]}


def write_skip_summary(run_dir: Path, sel: ViewSelection, context: dict[str, Any]) -> None:
    atomic_write_json(run_dir / SKIP_SUMMARY_NAME, {
        "skipped_views": [{"view": sel.name, "reason": sel.skip_reason, "stats": sel.stats}],
        "skipped_count": 1, "context": context})


class JobInterrupted(BaseException):
    """SIGTERM (a scheduler's pre-emption notice) or SIGINT (Ctrl-C) arrived: stop, record, exit non-zero."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(f"received signal {signum} ({self.signal})")


@contextlib.contextmanager
def interrupts_end_the_job() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``JobInterrupted`` for the job's duration, so that either ends
    it as ``interrupted``, resumable from its last checkpoint. Lightning adds its own SIGTERM
    handler during ``fit`` and calls this one too; its own answer to Ctrl-C (``KeyboardInterrupt``)
    was ``sys.exit(1)``, which left the manifest saying ``failed`` with no error and no way back.
    A SIGINT ignored when the job starts (a job started in the background) stays ignored; a second
    signal while the job records the first is ignored, so the record is written whole."""
    def handler(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)  # until the job's end restores the previous handler
        raise JobInterrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    caught = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {signum: signal.signal(signum, handler) for signum in caught}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def resume_point(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue from: ``ckpt_path`` if given, else the last checkpoint of a job
    that this directory's manifest shows was left running or interrupted (unless ``resume=false``)."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    previous = read_record(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.get("resume", True) and previous and previous.status in (Status.running, Status.interrupted) \
            and last.is_file():
        return str(last)
    return None


def run_job(cfg: DictConfig, run_dir: str | Path) -> JobRecord | None:
    """Run one job into ``run_dir`` and return its record (never raises for the job's own failures).

    The directory is locked for the job's life (a second job into it is refused). A job left
    ``running`` or ``interrupted`` there resumes from its last checkpoint. SIGTERM or SIGINT (Ctrl-C)
    marks the job ``interrupted``. Under DDP every rank trains, but only rank zero writes params, bundle, metrics
    and manifest (and returns a record; the other ranks return None).
    """
    run_dir = Path(run_dir)
    if getattr(rank_zero_only, "rank", 0) != 0:
        _train_only(cfg, run_dir)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return _run_locked(cfg, run_dir)


def _run_locked(cfg: DictConfig, run_dir: Path) -> JobRecord:
    ctx = context_of(cfg)
    done = finished_status(run_dir)
    if done and not cfg.get("redo", False):
        previous = read_record(run_dir)
        assert previous is not None
        previous.reused = True
        log.info("%s already %s in %s; not re-running (redo=true to force)", ctx.label(), done, run_dir)
        return previous
    resume_from = resume_point(cfg, run_dir)
    record = JobRecord.start(ctx, run_dir)
    record.resumed_from = _relative_to(resume_from, run_dir)
    write_manifest(run_dir, record)
    t0 = time.perf_counter()
    status, error = Status.failed, None
    try:
        with interrupts_end_the_job():
            tc: TrainConfig = validate(cfg)  # every range and kind check, before any data are touched
            require_trainer_device(tc.trainer)
            if resume_from:
                log.info("%s resuming from %s", ctx.label(), resume_from)
                tc.ckpt_path = resume_from
            with bridged(cfg, str(run_dir)) as params:
                atomic_write_json(run_dir / "params.json", dict(params))
                source, sel = load_job_data(tc.dataset, tc.view, tc.dose, tc.seed, tc.paths.cache_dir)
                note_file_dose(tc.dataset, source, tc.dose)
                record.dataset = source.identity
                record.view = {**sel.stats, "skip_reason": sel.skip_reason}
                if sel.skipped:
                    write_skip_summary(run_dir, sel, record.context)
                    status, error = Status.skipped, sel.skip_reason
                    log.warning("%s skipped: %s", ctx.label(), error)
                else:
                    train_data, test_data = sel.apply(source.train, source.test)
                    model = train(tc, run_dir, train_data, record)
                    record.bundle_sha256 = save_bundle(cfg, tc, run_dir, model, dict(params))
                    record.bundle_path = BUNDLE_NAME
                    references = evaluate(tc, run_dir, model, test_data, record)
                    evaluate_refined(tc, run_dir, model, test_data, record, references)
                    status = Status.succeeded
    except (JobInterrupted, SIGTERMException) as exc:
        record.signal = exc.signal if isinstance(exc, JobInterrupted) else "SIGTERM"
        status, error = Status.interrupted, f"{exc or 'received SIGTERM'}; re-run the same command to resume"
        log.error("%s interrupted: %s", ctx.label(), error)
    except Exception as exc:  # the job's failure is data, recorded and reported, not a crash
        error = f"{type(exc).__name__}: {exc}"
        record.user_error = isinstance(exc, PtylabError)
        atomic_write_text(run_dir / "error.log", traceback.format_exc())
        log.error("%s failed: %s", ctx.label(), error)
    finally:
        record.finish(status, error, round(time.perf_counter() - t0, 2))
        write_manifest(run_dir, record)
    return record


def _relative_to(path: str | None, run_dir: Path) -> str | None:
    if path is None:
        return None
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    return path


def _train_only(cfg: DictConfig, run_dir: Path) -> None:
    """A non-zero DDP rank: same data and training, no files of its own."""
    tc: TrainConfig = validate(cfg)
    with bridged(cfg, str(run_dir)):
        source, sel = load_job_data(tc.dataset, tc.view, tc.dose, tc.seed, tc.paths.cache_dir)
        if not sel.skipped:
            train(tc, run_dir, sel.apply(source.train, source.test)[0])


def _warning(flags: list[str] | None, reference: str) -> str:
    """The summary line's clause for scores that do not beat a reference ('' when all do)."""
    return f" WARNING: {len(flags)} score(s) do not beat {reference} ({'; '.join(flags)})" if flags else ""


def _scores_text(head: dict[str, Any]) -> str:
    """Headline scores as key=value, and which parts were not scored (a constant truth: None)."""
    scored = " ".join(f"{k}={v:.3f}" for k, v in head.items() if isinstance(v, float))
    return scored + "".join(f" ({part} {NOT_SCORED})" for part in unscored_parts(head))


def summary_line(record: JobRecord) -> str:
    """The one stdout line per finished job."""
    if record.status != Status.succeeded:
        return f"{record.label} {str(record.status).upper()}: {record.error}"
    head = record.headline_metrics or {}
    extra = f" {_scores_text(head)}" if head else ""
    reused = " (already finished; reused)" if record.reused else ""
    warn = _warning(record.flat_image_flags, "a flat image") + _warning(
        record.fit_alone_flags, "the offset fit on flat patches, so the fit, not the network, made them")
    line = f"{record.label} bundle {record.bundle_path} sha256 {record.bundle_sha256}{extra}{reused}{warn}"
    if record.refined:
        ref = record.refined["headline_metrics"]
        line += (f"\n{record.label} refined ({record.refined['steps']} steps on the test diffraction, "
                 f"{record.refined['refine_s']:.0f} s): " + _scores_text(ref))
    return line
