"""Build the Lightning Trainer for a job: checkpoints (last and best), early stopping, loggers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger


def build_trainer(trainer_kwargs: dict[str, Any], run_dir: Path, early_stop_patience: int,
                  logger: str = "csv", monitor: str = "val_loss") -> tuple[L.Trainer, ModelCheckpoint]:
    """``trainer_kwargs`` go verbatim to ``lightning.Trainer``; callbacks and loggers are added here.

    ``monitor`` picks the best checkpoint and drives early stopping (train_loss when there is no
    validation share).
    """
    kwargs = dict(trainer_kwargs)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-{epoch:03d}", monitor=monitor, mode="min",
        save_top_k=1, save_last=True,
    )
    callbacks: list[Any] = [checkpoint, LearningRateMonitor(logging_interval="epoch")]
    if early_stop_patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=early_stop_patience))
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs", version="")]
    if logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    elif logger != "csv":
        raise ValueError(f"logger must be 'csv' or 'tensorboard', got '{logger}'")
    kwargs.setdefault("default_root_dir", str(run_dir))
    trainer = L.Trainer(callbacks=callbacks, logger=loggers, **kwargs)
    return trainer, checkpoint
