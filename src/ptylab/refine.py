"""The refined arm: fine-tune a trained PINN on the test diffraction alone, with the same
self-supervised Poisson loss (the ground truth is never read).

It answers "how good can this data get" beside the single-pass network: the trained network is
the starting point and prior, the test patterns are the only evidence, as for an iterative solver
such as LSQML. Its scores are reported under their own method name, with the time spent.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import PinnConfig, RefineConfig, Schedule
from .data import PtychoData
from .manifest import TrainingOutcome
from .models import PtychoModule
from .training import fit

REFINE_DIR = "refine"


def freeze_encoder(model: PtychoModule) -> None:
    """Keep ``model``'s encoder as it is: its weights get no gradient, so an optimizer step moves the
    decoders alone and the backward pass stops at the encoder's output (``refine.freeze_encoder``)."""
    for weight in model.net.encoder_parameters():
        weight.requires_grad_(False)


def refine(model: PtychoModule, model_cfg: PinnConfig, cfg: RefineConfig, gridsize: int, seed: int,
           test: PtychoData, trainer_kwargs: dict[str, Any], run_dir: Path) -> tuple[PtychoModule, TrainingOutcome]:
    """A copy of ``model`` fine-tuned for ``cfg.steps`` steps on ``test``'s patterns (no ``Y``, no validation;
    the probe's symmetries as samples only with ``cfg.augment_symmetries``; with ``cfg.freeze_encoder``
    only the decoders move, and a step skips the encoder's backward pass)."""
    tuned = copy.deepcopy(model).train()
    if cfg.freeze_encoder:
        freeze_encoder(tuned)
    tuned.hparams.update(lr=cfg.lr, schedule=str(Schedule.cosine), warmup_steps=cfg.warmup_steps,
                         min_lr=min(model_cfg.min_lr, cfg.lr))
    refine_cfg = replace(model_cfg, val_fraction=0.0, early_stop_patience=0, max_train_groups=None,
                         batch_size=cfg.batch_size or model_cfg.batch_size, augment_symmetries=cfg.augment_symmetries)
    kwargs = {**trainer_kwargs, "max_steps": cfg.steps, "max_epochs": -1, "enable_progress_bar": False}
    t0 = time.perf_counter()
    tuned, outcome = fit(refine_cfg, gridsize, seed, replace(test, Y=None), kwargs, run_dir / REFINE_DIR,
                         model=tuned, what="refining on the test diffraction")
    outcome.train_s = round(time.perf_counter() - t0, 2)
    return tuned, outcome
