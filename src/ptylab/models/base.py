"""Shared LightningModule machinery: network, object prediction, optimiser, logging."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from ..errors import ConfigError
from .network import EncoderDecoder, NetworkSpec, initialise

SCHEDULES = ("cosine", "constant", "plateau")
AMP_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sigmoid": torch.sigmoid,
                                                                      "swish": nn.functional.silu}


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def support_mask(n: int, kind: str) -> torch.Tensor:
    """Where the object is predicted: the central N/2 x N/2 (illuminated) region, or everything."""
    if kind == "full":
        return torch.ones(n, n)
    if kind != "center":
        raise ValueError(f"model.object_support must be 'center' or 'full', got '{kind}'")
    mask = torch.zeros(n, n)
    q = n // 4
    mask[q : n - q, q : n - q] = 1.0
    return mask


class PtychoModule(L.LightningModule):
    """Base of both models. Subclasses define ``training_loss``; the object prediction is shared.

    Hyperparameters are plain values saved in checkpoints, so ``Model.load_from_checkpoint(path)``
    works in a notebook without Hydra; the network is built from them alone (``build_network``).
    """

    support: torch.Tensor
    input_scale: torch.Tensor

    def build_network(self, channels: int) -> None:
        """The network, its support and its input scale, from the hyperparameters alone (each model's
        ``__init__`` calls it after ``save_hyperparameters``), so a checkpoint or a bundle rebuilds
        exactly this module. ``channels``: the patterns of a group."""
        hp = self.hparams
        if hp["amp_activation"] not in AMP_ACTIVATIONS:
            raise ValueError(f"model.amp_activation must be one of {sorted(AMP_ACTIVATIONS)}, "
                             f"got '{hp['amp_activation']}'")
        if hp["schedule"] not in SCHEDULES:
            raise ValueError(f"model.schedule must be one of {SCHEDULES}, got '{hp['schedule']}'")
        spec = NetworkSpec.from_hparams(hp)
        n = int(hp["N"])
        if n % spec.pattern_multiple:
            raise ConfigError(f"N={n}: the network halves its input at each of its {len(spec.base_filters)} "
                              f"levels (base_filters), so N must be a multiple of {spec.pattern_multiple}")
        # per_pattern: one network applied to each pattern of a group alone (shared weights); the
        # group is coupled only through the loss (overlap constraint). Otherwise the group's
        # patterns are the input channels of one network (upstream's layout).
        self.per_pattern = spec.per_pattern
        net = EncoderDecoder(1 if spec.per_pattern else channels, spec)
        initialise(net, spec.init)
        # channels-last convolutions run 10-25% faster on these CPUs (docs/performance.md).
        self.net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.register_buffer("support", support_mask(n, spec.object_support))
        self.pad = (n - n // 2) // 2 if spec.object_support == "center" else 0
        self.register_buffer("input_scale", torch.tensor(float(hp["input_scale"])))

    def predict_amp_phase(self, diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes (B, C, N, N) -> (amplitude, phase) of the object patches, before the support."""
        x = diff * self.input_scale
        if self.per_pattern:
            x = x.reshape(-1, 1, *x.shape[-2:])
        amp_logit, phase_logit = self.net(x.contiguous(memory_format=torch.channels_last))
        if self.per_pattern:
            amp_logit = amp_logit.reshape(diff.shape[0], -1, *amp_logit.shape[-2:])
            phase_logit = phase_logit.reshape(diff.shape[0], -1, *phase_logit.shape[-2:])
        if self.pad:  # the central N/2 x N/2 prediction, zero-padded to N (amplitude 0 off-support)
            amp_logit = nn.functional.pad(amp_logit, (self.pad,) * 4)
            phase_logit = nn.functional.pad(phase_logit, (self.pad,) * 4)
        amp = AMP_ACTIVATIONS[self.hparams["amp_activation"]](amp_logit)
        # pi * tanh(x), written with the sigmoid: torch's CPU tanh gave a result 1 ulp off, now and then,
        # on its first call in a process on a busy machine (3 of 28 seeded jobs), so the same job
        # could end with another bundle digest; the sigmoid never did (docs/decisions.md).
        return amp, math.pi * (2 * torch.sigmoid(2 * phase_logit) - 1)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Adam's parameter groups: every trainable parameter at ``lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def learnt_probe(self) -> torch.Tensor | None:
        """(N, N) the probe this model learnt in training; None where it learnt none (the data's
        probe stands: ``prediction.with_model_probe``)."""
        return None

    def predict_patches(self, diff: torch.Tensor) -> torch.Tensor:
        """Object patches (B, C, N, N) complex, zero off the support."""
        return self.patches_from(*self.predict_amp_phase(diff))

    def patches_from(self, amp: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Complex patches from ``predict_amp_phase``'s amplitude and phase, zero off the support."""
        return torch.polar(amp * self.support, phase)

    def predict_object(self, diff: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The model's object estimate for each member of each group (used for reconstruction)."""
        return self.objects_from(self.predict_patches(diff), offsets)

    def objects_from(self, patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Each member's object estimate from its group's predicted patches (B, C, N, N) and
        offsets (B, C, 2): the patches themselves here; a model with an overlap constraint merges
        them. With ``per_pattern`` the patches may come from one prediction per distinct pattern
        (``prediction.predict_crops``), since a pattern's patch does not depend on its group."""
        return patches

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.training_loss(batch)
        bs = batch["diff"].shape[0]
        self.log("train_loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self.training_loss(batch)
        self.log("val_loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["diff"].shape[0])

    def configure_optimizers(self) -> Any:
        """Adam with a step-budget schedule (default: warm-up, then cosine decay to ``min_lr``).

        The budget is the Trainer's own (``max_steps`` or ``max_epochs``), so the schedule ends
        exactly when training does. ``plateau`` is the first design's reduce-on-plateau, kept for
        ablations: on short noisy epochs it reached its floor after about 100 steps.
        """
        hp = self.hparams
        opt = torch.optim.Adam(self.parameter_groups(), lr=hp["lr"])
        if hp["schedule"] == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=hp["lr_factor"], patience=hp["lr_patience"], min_lr=hp["min_lr"])
            # Not strict: a training without a validation share simply keeps its learning rate.
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "strict": False}}
        if hp["schedule"] == "constant":
            return {"optimizer": opt}
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(int(hp["warmup_steps"]), max(1, total // 10))
        floor = hp["min_lr"] / hp["lr"]
        lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": lam, "interval": "step"}}
