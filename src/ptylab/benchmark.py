"""Throughput measurements whose ratios are taken in one process, on the same batches.

Each function returns plain numbers; ``scripts/benchmark.py`` prints them and writes
``benchmark.json``. Nothing here asserts a time: the ratios are reported, not tested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from .data import PtychoData
from .datamodule import GroupedPatterns, make_loader
from .grouping import group_positions
from .job import build_model
from .models import PINN
from .physics import far_field, poisson_nll
from .training import build_trainer

log = logging.getLogger(__name__)


def _rate(fn: Callable[[], Any], items: float, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - t0)


def peak_matmul_flops(device: str, sizes: tuple[int, ...] = (1024, 2048, 3072), trials: int = 3) -> float:
    """Float32 FLOP/s of large matrix multiplies, best of several sizes and trials: the practical peak.

    A single short measurement under-reads it (turbo ramp-up, other work), which would inflate
    the utilisation derived from it.
    """
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)

        def mm(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            a @ b
            if device != "cpu":
                torch.cuda.synchronize()

        for _ in range(trials):
            best = max(best, _rate(mm, 2.0 * size**3, 2, 8))
    return best


def physics_bound(probe: torch.Tensor, batch: int, channels: int, device: str, repeats: int) -> float:
    """Patterns/s of probe multiply + far field + Poisson NLL, forward and backward: a step's ceiling."""
    n = probe.shape[-1]
    obj = torch.ones(batch, channels, n, n, dtype=torch.complex64, device=device, requires_grad=True)
    obs = torch.rand(batch, channels, n, n, device=device) * 10
    p = probe.to(device)

    def step() -> None:
        loss = poisson_nll(100.0 * far_field(p * obj).abs().square(), obs)
        loss.backward()
        if device != "cpu":
            torch.cuda.synchronize()

    return _rate(step, batch * channels, 3, repeats)


def training_setup(train: PtychoData, model_cfg: ModelConfig, gridsize: int,
                   seed: int = 0) -> tuple[PINN, GroupedPatterns]:
    L.seed_everything(seed, verbose=False)
    model = build_model(model_cfg, gridsize, train)
    groups = group_positions(train.xcoords, train.ycoords, gridsize, model_cfg.neighbours)
    return model, GroupedPatterns(train.diff3d, groups)  # type: ignore[return-value]


def bare_training(model: PINN, loader: Any, steps: int, device: str) -> float:
    """Patterns/s of a plain PyTorch loop (no Lightning) over the same batches."""
    model = model.to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = []
    for b in loader:
        batches.append({k: v.to(device) for k, v in b.items()})
        if len(batches) == steps + 2:
            break
    patterns = batches[0]["diff"].shape[0] * batches[0]["diff"].shape[1]

    def run(b: dict[str, torch.Tensor]) -> None:
        loss = model.training_loss(b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:2]:
        run(b)
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches[2:]:
        run(b)
    if device != "cpu":
        torch.cuda.synchronize()
    return patterns * (len(batches) - 2) / (time.perf_counter() - t0)


class _EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self.batches: list[int] = []
        self._t = 0.0
        self._n = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._n += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.durations.append(time.perf_counter() - self._t)
        self.batches.append(self._n)


def lightning_training(model: PINN, dataset: GroupedPatterns, batch_size: int, steps: int, run_dir: Path,
                       accelerator: str) -> float:
    """Patterns/s of the real training path (train.py's Trainer with checkpoints, logging and
    progress bar), in steady state: the first epoch is excluded."""
    trainer, _ = build_trainer(
        {"accelerator": accelerator, "devices": 1, "max_epochs": 3, "limit_train_batches": steps,
         "limit_val_batches": 0, "deterministic": accelerator == "cpu", "enable_progress_bar": True,
         "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 10},
        run_dir, early_stop_patience=0, monitor="train_loss")
    timer = _EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(model, make_loader(dataset, batch_size, True, 0))
    patterns = batch_size * dataset.indices.shape[1]
    return patterns * sum(timer.batches[1:]) / sum(timer.durations[1:])


def flops_per_step(model: PINN, batch: dict[str, torch.Tensor]) -> int:
    """Floating-point operations of one training step (forward and backward), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        loss = model.training_loss(batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())

