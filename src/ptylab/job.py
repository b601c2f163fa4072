"""One training job, start to finish: data -> view -> groups -> train -> bundle -> evaluate -> manifest.

Every outcome is recorded truthfully: the manifest says ``running`` while the job works, then
``succeeded``, ``skipped`` (the view was too small, with its reason) or ``failed`` (with the error).
A job never raises for its own failures; the entrypoint turns ``failed`` into a non-zero exit.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .bundle import ModelWeights, write_bundle
from .cache import DatasetSource, load_dataset
from .config import DatasetConfig, EvalConfig, ModelConfig, PinnConfig, SupervisedConfig, ViewConfig, validate
from .data import PtychoData
from .datamodule import GroupedPatterns, input_scale, make_loader, split_train_val
from .errors import ConfigError, PtylabError
from .fileio import atomic_write_json, atomic_write_text
from .grouping import Groups, group_positions
from .legacy_params import bridged, location_free
from .manifest import SKIP_SUMMARY_NAME, JobContext, finished_status, new_record, read_manifest, write_manifest
from .models import MODEL_CLASSES, PtychoModule
from .rng import stage_rng
from .training import build_trainer
from .views import ViewSelection, select_view_for

log = logging.getLogger(__name__)
BUNDLE_NAME = "wts.h5.zip"
# Config nodes that say where things live, not what is computed: kept out of the bundle.
LOCATION_NODES = ("paths", "ckpt_path", "redo")


def context_of(cfg: DictConfig) -> JobContext:
    return JobContext(float(cfg.dose), str(cfg.view.name), int(cfg.gridsize), str(cfg.model.name), int(cfg.seed))


def bundle_config_yaml(cfg: DictConfig) -> str:
    """Resolved config without location-only nodes, so that the bundle identifies the model alone."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    for key in LOCATION_NODES:
        container.pop(key, None)
    return OmegaConf.to_yaml(OmegaConf.create(container), sort_keys=True)


def build_model(model_cfg: ModelConfig, gridsize: int, train: PtychoData) -> PtychoModule:
    common = {
        "N": train.N, "gridsize": gridsize, "base_filters": list(model_cfg.base_filters), "width": model_cfg.width,
        # Choices go in as plain strings: hyperparameters are saved in checkpoints and bundles.
        "object_support": str(model_cfg.object_support), "amp_activation": str(model_cfg.amp_activation),
        "input_scale": input_scale(train.diff3d), "lr": model_cfg.lr, "schedule": str(model_cfg.schedule),
        "warmup_steps": model_cfg.warmup_steps, "min_lr": model_cfg.min_lr, "lr_factor": model_cfg.lr_factor,
        "lr_patience": model_cfg.lr_patience, "init": str(model_cfg.init), "decoder": str(model_cfg.decoder),
        "separate_decoders": model_cfg.separate_decoders,
    }
    if isinstance(model_cfg, PinnConfig):
        scale = train.metadata.get("intensity_scale")
        if scale is None:  # user data: match mean counts to a flat unit object under the probe (Parseval)
            mean_counts = float((train.diff3d.astype(np.float64) ** 2).sum(axis=(1, 2)).mean())
            scale = float(np.sqrt(mean_counts / (np.abs(train.probe) ** 2).sum()))
        return MODEL_CLASSES["pinn"](
            **common, intensity_scale=float(scale), probe_trainable=model_cfg.probe_trainable,
            probe_mask=model_cfg.probe_mask, intensity_scale_trainable=model_cfg.intensity_scale_trainable,
            nll_weight=model_cfg.nll_weight, mae_weight=model_cfg.mae_weight, probe=torch.from_numpy(train.probe),
        )
    if isinstance(model_cfg, SupervisedConfig):
        if gridsize != 1:
            raise ValueError(f"the supervised baseline trains at gridsize 1 (got gridsize={gridsize}); "
                             "run it with gridsize=1")
        if train.Y is None:
            raise ValueError("the supervised baseline needs ground-truth patches 'Y' in the training data, and "
                             "this dataset has none (key 'Y' missing)")
        return MODEL_CLASSES["supervised"](**common)
    raise ConfigError(f"model.name must be one of {sorted(MODEL_CLASSES)}, got '{model_cfg.name}'")


def _subset_groups(groups: Groups, sel: np.ndarray) -> Groups:
    return Groups(groups.indices[sel], groups.offsets[sel])


class LossHistory(L.Callback):
    """Per-epoch train and validation losses, for the manifest and the loss figure."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "train_loss" in metrics:
            self.train.append(float(metrics["train_loss"]))
        if "val_loss" in metrics:
            self.val.append(float(metrics["val_loss"]))


def train_model(cfg: DictConfig, run_dir: Path, train: PtychoData, record: dict[str, Any]) -> PtychoModule:
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model)  # type: ignore[assignment]
    gridsize = int(cfg.gridsize)
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_model(model_cfg, gridsize, train)
    oversample = model_cfg.oversample if isinstance(model_cfg, PinnConfig) else 0
    groups = group_positions(train.xcoords, train.ycoords, gridsize, model_cfg.neighbours, oversample,
                             stage_rng(seed, "oversample"))
    if model_cfg.max_train_groups is not None and groups.n_groups > model_cfg.max_train_groups:
        keep = np.sort(stage_rng(seed, "cap").permutation(groups.n_groups)[: model_cfg.max_train_groups])
        groups = _subset_groups(groups, keep)
    tr, va = split_train_val(groups.n_groups, model_cfg.val_fraction, stage_rng(seed, "val_split"))
    y = train.Y if model_cfg.name == "supervised" else None
    train_loader = make_loader(GroupedPatterns(train.diff3d, _subset_groups(groups, tr), y),
                               model_cfg.batch_size, True, seed)
    val_loader = (make_loader(GroupedPatterns(train.diff3d, _subset_groups(groups, va), y),
                              model_cfg.batch_size, False, seed) if va.size else None)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_kwargs, dict)
    trainer, checkpoint = build_trainer(trainer_kwargs, run_dir, model_cfg.early_stop_patience,
                                        str(cfg.logger), "val_loss" if va.size else "train_loss")
    history = LossHistory()
    trainer.callbacks.append(history)
    record["groups"] = {"train": int(tr.size), "val": int(va.size), "patterns_per_group": gridsize**2}
    t0 = time.perf_counter()
    trainer.fit(model, train_loader, val_loader, ckpt_path=cfg.ckpt_path)
    record["train_s"] = round(time.perf_counter() - t0, 2)
    best = checkpoint.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    record.update({
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "best_val_loss": None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
        "loss_history": {"train": history.train, "val": history.val},
        "checkpoint_path": _relative(checkpoint.last_model_path, run_dir),
        "best_checkpoint_path": _relative(best, run_dir),
    })
    if history.train and trainer.is_global_zero:
        from .figures import loss_curve

        loss_curve(run_dir / "loss.png", list(range(len(history.train))),
                   {"train": history.train, "val": history.val}, context_of(cfg).label())
    return model.cpu().eval()


def _relative(path: str | None, run_dir: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def save_bundle(cfg: DictConfig, run_dir: Path, model: PtychoModule, params: dict[str, Any]) -> str:
    eval_cfg: EvalConfig = OmegaConf.to_object(cfg.eval)  # type: ignore[assignment]
    kind = str(cfg.model.name)
    hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.hparams).items()}
    weights = ModelWeights(kind, hparams, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    inference = {
        "model": kind, "N": int(hparams["N"]), "gridsize": int(cfg.gridsize),
        "neighbours": int(cfg.model.neighbours), "stitch_crop": eval_cfg.stitch_crop,
        "sync_phase": eval_cfg.sync_phase,
        "input_scale": float(model.input_scale), "dose": float(cfg.dose),
    }
    return write_bundle(run_dir / BUNDLE_NAME, {kind: weights}, location_free(params), bundle_config_yaml(cfg),
                        inference)


def load_job_data(cfg: DictConfig) -> tuple[DatasetSource, ViewSelection]:
    """The job's dataset (cached simulation or the user's files) and its overlap view, from the config.

    Training, non-zero DDP ranks and the comparison's LSQML reference all see the same positions.
    """
    dataset_cfg: DatasetConfig = OmegaConf.to_object(cfg.dataset)  # type: ignore[assignment]
    view_cfg: ViewConfig = OmegaConf.to_object(cfg.view)  # type: ignore[assignment]
    source = load_dataset(dataset_cfg, float(cfg.dose), int(cfg.seed), cfg.paths.cache_dir)
    return source, select_view_for(view_cfg, source.train, source.test)


def write_skip_summary(run_dir: Path, sel: ViewSelection, context: dict[str, Any]) -> None:
    atomic_write_json(run_dir / SKIP_SUMMARY_NAME, {
        "skipped_views": [{"view": sel.name, "reason": sel.skip_reason, "stats": sel.stats}],
        "skipped_count": 1, "context": context})


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one job into ``run_dir`` and return its manifest record (never raises for job failures).

    Under DDP every rank trains, but only rank zero writes params, bundle, metrics and manifest.
    """
    if rank_zero_only.rank != 0:
        return _train_only(cfg, Path(run_dir))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = context_of(cfg)
    done = finished_status(run_dir)
    if done and not cfg.get("redo", False):
        manifest = read_manifest(run_dir)
        assert manifest is not None
        record = manifest["jobs"][0]
        record["reused"] = True
        log.info("%s already %s in %s; not re-running (redo=true to force)", ctx.label(), done, run_dir)
        return record
    record = new_record(ctx, run_dir)
    write_manifest(run_dir, record)
    t0 = time.perf_counter()
    try:
        validate(cfg)  # every range and kind check, before any data are touched
        with bridged(cfg, str(run_dir)) as params:
            atomic_write_json(run_dir / "params.json", dict(params))
            source, sel = load_job_data(cfg)
            record["dataset"] = source.identity
            record["view"] = {**sel.stats, "skip_reason": sel.skip_reason}
            if sel.skipped:
                write_skip_summary(run_dir, sel, record["context"])
                record["status"] = "skipped"
                record["error"] = sel.skip_reason
                log.warning("%s skipped: %s", ctx.label(), record["error"])
            else:
                train, test = sel.apply(source.train, source.test)
                model = train_model(cfg, run_dir, train, record)
                record["bundle_sha256"] = save_bundle(cfg, run_dir, model, dict(params))
                record["bundle_path"] = BUNDLE_NAME
                evaluate_job(cfg, run_dir, model, test, record)
                record["status"] = "succeeded"
    except Exception as exc:  # the job's failure is data, recorded and reported, not a crash
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["user_error"] = isinstance(exc, PtylabError)
        atomic_write_text(run_dir / "error.log", traceback.format_exc())
        log.error("%s failed: %s", ctx.label(), record["error"])
    finally:
        record["duration_s"] = round(time.perf_counter() - t0, 2)
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_manifest(run_dir, record)
    return record


def _train_only(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """A non-zero DDP rank: same data and training, no files of its own."""
    with bridged(cfg, str(run_dir)):
        source, sel = load_job_data(cfg)
        if not sel.skipped:
            train_model(cfg, run_dir, sel.apply(source.train, source.test)[0], {})
    return {"status": "rank-nonzero", "label": context_of(cfg).label()}


def evaluate_job(cfg: DictConfig, run_dir: Path, model: PtychoModule, test: PtychoData,
                 record: dict[str, Any]) -> None:
    """Reconstruct the test split and score it (skipped when ``eval.enabled`` is false)."""
    if not cfg.eval.enabled:
        return
    from .evaluation import evaluate_reconstruction

    eval_cfg: EvalConfig = OmegaConf.to_object(cfg.eval)  # type: ignore[assignment]
    metrics = evaluate_reconstruction(model, test, int(cfg.gridsize), int(cfg.model.neighbours), eval_cfg, run_dir,
                                      context_of(cfg).label())
    record["metrics_path"] = "metrics.json"
    record["headline_metrics"] = metrics["headline"]
    record["flat_image_flags"] = metrics["flat_image_flags"]


def summary_line(record: dict[str, Any]) -> str:
    """The one stdout line per finished job."""
    if record["status"] == "succeeded":
        extra = ""
        head = record.get("headline_metrics") or {}
        if head:
            extra = " " + " ".join(f"{k}={v:.3f}" for k, v in head.items() if isinstance(v, float))
        reused = " (already finished; reused)" if record.get("reused") else ""
        flags = record.get("flat_image_flags") or []
        warn = f" WARNING: {len(flags)} score(s) do not beat a flat image ({'; '.join(flags)})" if flags else ""
        return (f"{record['label']} bundle {record['bundle_path']} sha256 {record['bundle_sha256']}{extra}{reused}"
                f"{warn}")
    return f"{record['label']} {record['status'].upper()}: {record['error']}"
