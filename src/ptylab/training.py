"""Training one model on one dataset split: groups, loaders, the Lightning Trainer, the outcome.

The Trainer gets checkpoints (last and best by validation loss), optional early stopping, loggers
and a loss history; its arguments come verbatim from the config's ``trainer`` node, so any
Lightning argument works. The result is the best checkpoint's model and a ``TrainingOutcome``.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from .batches import GroupedPatterns, make_loader, split_train_val
from .config import ModelConfig, PinnConfig, SupervisedConfig
from .data import PtychoData
from .errors import PtylabError
from .grouping import Groups, group_positions
from .manifest import TrainingOutcome
from .models import PtychoModule, build_model, start_from_bundle
from .progress import Progress
from .rng import stage_rng
from .symmetries import probe_symmetries

log = logging.getLogger(__name__)
STALL_EPOCHS = 3
STALL_RTOL = 1e-6


def _no_advert(record: logging.LogRecord) -> bool:
    """A logging filter: drops the line Lightning 2.6 logs each time a Trainer starts without its
    cloud logger (twice per job here: training and refinement), an advertisement, nothing about the run."""
    return "litlogger" not in record.getMessage()

# Warnings Lightning 2.6 gives on every job that tell its user nothing: that a fit without
# validation patterns skips validation (the refined arm has none by design), and a deprecation
# inside Lightning's own use of torch 2.13's pytree API. Ignored while ``fit`` trains, nowhere else.
LIGHTNING_NOISE = ("You defined a `validation_step` but have no `val_dataloader`",
                   "`isinstance(treespec, LeafSpec)` is deprecated")


def batches_run(trainer_kwargs: dict[str, Any], batches_per_epoch: int) -> int:
    """The batches one epoch runs: the loader's length, cut by ``limit_train_batches``."""
    limit = trainer_kwargs.get("limit_train_batches")
    if isinstance(limit, float):
        return int(batches_per_epoch * limit)
    if isinstance(limit, int):
        return min(batches_per_epoch, limit)
    return batches_per_epoch


def logging_interval(trainer_kwargs: dict[str, Any], batches_per_epoch: int) -> int:
    """Lightning's ``log_every_n_steps`` (its default 50), capped at the steps one epoch runs: an
    epoch shorter than the interval (a small dataset, a short ``limit_train_batches``) would log
    none of its steps, and Lightning warns about it on every such job."""
    batches = batches_run(trainer_kwargs, batches_per_epoch)
    return max(1, min(int(trainer_kwargs.get("log_every_n_steps", 50)), batches))


def whole_epoch_budget(trainer_kwargs: dict[str, Any], batches_per_epoch: int) -> dict[str, Any]:
    """A step budget under an epoch cap (``max_steps`` and ``max_epochs`` both set), given to
    Lightning as the whole epochs that first reach it, with no ``max_steps``.

    Why: Lightning 2.6 resumes wrongly from an end-of-epoch checkpoint when ``max_steps`` is set
    (the resumed epoch runs one batch, measured with 2.6.6), which would break resuming a killed
    job to the uninterrupted digest. Whole epochs also give every epoch the same batches. The
    budget rounds up by less than an epoch (1800 steps are 22 epochs of 82 batches, 1804 steps).
    Passed as given: a pure step budget (``max_epochs`` -1, the refined arm's; it never resumes),
    and one shorter than an epoch (no end-of-epoch checkpoint precedes its end).
    """
    steps, cap = trainer_kwargs.get("max_steps"), trainer_kwargs.get("max_epochs")
    if steps is None or steps < 0 or cap is None or cap < 0:
        return trainer_kwargs
    per_epoch = math.ceil(batches_run(trainer_kwargs, batches_per_epoch)
                          / int(trainer_kwargs.get("accumulate_grad_batches", 1)))
    if steps < per_epoch:
        return trainer_kwargs
    epochs = min(cap, math.ceil(steps / max(per_epoch, 1)))
    return {**trainer_kwargs, "max_steps": -1, "max_epochs": epochs}


def build_trainer(trainer_kwargs: dict[str, Any], run_dir: Path, early_stop_patience: int, batches_per_epoch: int,
                  logger: str = "csv", monitor: str = "val_loss",
                  what: str = "training") -> tuple[L.Trainer, ModelCheckpoint]:
    """``trainer_kwargs`` go to ``lightning.Trainer`` as given, but for ``log_every_n_steps``, which
    is capped at ``batches_per_epoch`` (the train loader's length); callbacks and loggers are added here.

    ``monitor`` picks the best checkpoint and drives early stopping (train_loss when there is no
    validation share). Without a progress bar the steps done go to the log as ``what``.
    """
    kwargs = {**trainer_kwargs, "log_every_n_steps": logging_interval(trainer_kwargs, batches_per_epoch),
              "enable_progress_bar": progress_bar_shown(trainer_kwargs)}
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_advert)  # once: addFilter dedups
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-{epoch:03d}", monitor=monitor, mode="min",
        save_top_k=1, save_last=True,
    )
    callbacks: list[Any] = [checkpoint, LearningRateMonitor(logging_interval="epoch")]
    if early_stop_patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=early_stop_patience))
    if not kwargs.get("enable_progress_bar", True):
        callbacks.append(StepProgress(what))
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs", version="")]
    if logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    kwargs.setdefault("default_root_dir", str(run_dir))
    trainer = L.Trainer(callbacks=callbacks, logger=loggers, **kwargs)
    return trainer, checkpoint


def progress_bar_shown(trainer_kwargs: dict[str, Any]) -> bool:
    """Lightning's bar where it is asked for and stdout is a terminal. Written to a file (a sweep's
    job, a cluster's log, CI, ``make run > log``) the bar draws nothing until training ends, so
    there the steps go to the log instead (``StepProgress``), as they do when the bar is off."""
    return bool(trainer_kwargs.get("enable_progress_bar", True)) and sys.stdout.isatty()


class StepProgress(L.Callback):
    """Steps done and the time left, in the log (``progress.Progress``), where no progress bar shows them."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.progress: Progress | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if trainer.is_global_zero and math.isfinite(total):
            self.progress = Progress(f"{self.what}, step", int(total))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.progress is not None:
            self.progress.update(trainer.global_step)


class LossHistory(L.Callback):
    """Per-epoch train and validation losses; warns once when the training loss stops moving.

    A loss frozen to six significant digits for several epochs is how a collapsed network (a flat
    object at a saturated activation) looks from outside; saying so in the log beats finding out
    from the scores.
    """

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []
        self.stalled = False

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint, so a resumed run keeps the whole history."""
        return {"train": list(self.train), "val": list(self.val), "stalled": self.stalled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train, self.val, self.stalled = list(state["train"]), list(state["val"]), bool(state["stalled"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "train_loss" in metrics:
            self.train.append(float(metrics["train_loss"]))
        if "val_loss" in metrics:
            self.val.append(float(metrics["val_loss"]))
        recent = self.train[-STALL_EPOCHS - 1:]
        if not self.stalled and len(recent) > STALL_EPOCHS:
            spread = max(recent) - min(recent)
            if spread <= STALL_RTOL * max(abs(float(np.mean(recent))), 1e-12):
                self.stalled = True
                log.warning("training loss has not moved for %d epochs (%.7g): the network may have collapsed "
                            "to a constant output; check the reconstruction against the flat-image scores",
                            STALL_EPOCHS, recent[-1])


def _subset(groups: Groups, sel: np.ndarray) -> Groups:
    return Groups(groups.indices[sel], groups.offsets[sel])


def training_groups(train: PtychoData, model_cfg: ModelConfig, gridsize: int, seed: int) -> Groups:
    """The job's training samples: one group per anchor, plus random neighbour combinations when
    oversampling, capped at ``max_train_groups``."""
    oversample = model_cfg.oversample if isinstance(model_cfg, PinnConfig) else 0
    groups = group_positions(train.xcoords, train.ycoords, gridsize, model_cfg.neighbours_at(gridsize), oversample,
                             stage_rng(seed, "oversample"))
    if model_cfg.max_train_groups is not None and groups.n_groups > model_cfg.max_train_groups:
        keep = np.sort(stage_rng(seed, "cap").permutation(groups.n_groups)[: model_cfg.max_train_groups])
        groups = _subset(groups, keep)
    return groups


def augmentation(model_cfg: ModelConfig, train: PtychoData) -> tuple[int, ...]:
    """The symmetry transforms training draws from: the probe's, when the model asks for them."""
    if not model_cfg.augment_symmetries:
        return (0,)
    transforms = probe_symmetries(train.probe, train.valid_pixels)
    if len(transforms) == 1:
        log.warning("model.augment_symmetries: the probe%s has no mirror or rotation symmetry; training on the "
                    "groups as measured", "" if train.valid_pixels is None else " with the detector's mask")
    else:
        log.info("training on the groups under %d symmetries of the probe", len(transforms))
    return transforms


class CheckpointError(PtylabError):
    """A checkpoint that is missing, truncated or not a Lightning checkpoint."""


def check_checkpoint(path: str | Path) -> Path:
    """Refuse a checkpoint that cannot be resumed from, naming the file and what is wrong.

    PyTorch checkpoints are zip archives; a truncated or foreign file would otherwise fail deep
    inside ``torch.load`` with an internal zip error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a complete checkpoint (truncated or not a PyTorch file: {exc})") from None
    if bad is not None or not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{path}: not a complete checkpoint (entry {bad or 'data.pkl'} is damaged or missing)")
    return path


def batch_plan(model: PtychoModule, batch_size: int, gridsize: int) -> tuple[int, float]:
    """Groups per step and the share of the training groups drawn per epoch, for ``model``'s layout.

    A per-pattern network does its work per pattern, so ``batch_size`` then counts patterns (C per
    group) and an epoch is one pass over the patterns, a fresh 1/C of the groups (each pattern is a
    member of about C groups): steps, patterns per step and time per step match a gridsize-1 job
    with the same settings, and the group's members still meet in the loss. Whole groups only: the
    number nearest ``batch_size`` patterns (16 gives gridsize 3 two groups, 18 patterns; rounding
    down gave it one, 9), halves rounded up (10 gives gridsize 2 three groups, as 6 gives it two;
    Python's ``round`` rounded 2.5 to the even 2). The model, not the config, decides: a network
    fine-tuned from a bundle keeps the layout it was trained with.
    """
    channels = gridsize**2
    if model.per_pattern and channels > 1:
        return max(1, (2 * batch_size + channels) // (2 * channels)), 1.0 / channels
    return batch_size, 1.0


def fit(model_cfg: ModelConfig, gridsize: int, seed: int, train: PtychoData, trainer_kwargs: dict[str, Any],
        run_dir: Path, logger: str = "csv", ckpt_path: str | None = None,
        model: PtychoModule | None = None, what: str = "training") -> tuple[PtychoModule, TrainingOutcome]:
    """Train (a new model, or ``model`` to fine-tune it) and return the best checkpoint's model;
    ``what`` names the work in the log."""
    L.seed_everything(seed, workers=True, verbose=False)
    started_from = None
    if model is None:
        model = build_model(model_cfg, gridsize, train)
        if model_cfg.init_weights:
            started_from = start_from_bundle(model, model_cfg.init_weights)
            log.info("%s starts from the network of %s (sha256 %s)", what, model_cfg.init_weights, started_from)
    groups = training_groups(train, model_cfg, gridsize, seed)
    tr, va = split_train_val(groups.n_groups, model_cfg.val_fraction, stage_rng(seed, "val_split"))
    y = train.Y if isinstance(model_cfg, SupervisedConfig) else None
    per_step, per_epoch = batch_plan(model, model_cfg.batch_size, gridsize)
    transforms = augmentation(model_cfg, train)
    valid = train.valid_pixels
    train_loader = make_loader(GroupedPatterns(train.diff3d, _subset(groups, tr), y, valid), per_step, True, seed,
                               per_epoch, transforms)
    val_loader = (make_loader(GroupedPatterns(train.diff3d, _subset(groups, va), y, valid), per_step, False, seed)
                  if va.size else None)
    trainer_kwargs = whole_epoch_budget(trainer_kwargs, len(train_loader))
    trainer, checkpoint = build_trainer(trainer_kwargs, run_dir, model_cfg.early_stop_patience, len(train_loader),
                                        logger, "val_loss" if va.size else "train_loss", what)
    history = LossHistory()
    trainer.callbacks.append(history)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        for text in LIGHTNING_NOISE:
            warnings.filterwarnings("ignore", message=re.escape(text))
        trainer.fit(model, train_loader, val_loader,
                    ckpt_path=str(check_checkpoint(ckpt_path)) if ckpt_path else None)
    train_s = round(time.perf_counter() - t0, 2)
    best = checkpoint.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    outcome = TrainingOutcome(
        epochs=int(trainer.current_epoch), steps=int(trainer.global_step), train_s=train_s,
        best_val_loss=None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
        loss_history={"train": history.train, "val": history.val},
        checkpoint_path=_relative(checkpoint.last_model_path, run_dir), best_checkpoint_path=_relative(best, run_dir),
        groups={"train": int(tr.size), "val": int(va.size), "patterns_per_group": gridsize**2,
                "symmetries": len(transforms)},
        stalled=history.stalled, precision=str(trainer.precision), init_weights_sha256=started_from,
    )
    return model.cpu().eval(), outcome


def _relative(path: str | None, run_dir: Path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)
