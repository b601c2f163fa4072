"""Supervised baseline: the same encoder, two decoders, MAE against ground-truth patches ``Y``."""

from __future__ import annotations

import torch

from .base import PtychoModule


class Supervised(PtychoModule):
    def __init__(
        self,
        N: int = 64,
        gridsize: int = 1,
        base_filters: tuple[int, ...] = (32, 64, 128),
        width: int = 1,
        object_support: str = "center",
        amp_activation: str = "sigmoid",
        input_scale: float = 1.0,
        lr: float = 1e-3,
        schedule: str = "cosine",
        warmup_steps: int = 100,
        min_lr: float = 1e-5,
        lr_factor: float = 0.5,
        lr_patience: int = 2,
        init: str = "glorot",
        decoder: str = "upsample",
        separate_decoders: bool = True,
        decoder_width: float = 1.0,
        group_norm: str = "none",
        bilinear_upsampling: str = "none",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.build_network(gridsize**2)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        amp, phase = self.predict_amp_phase(batch["diff"])
        target = batch["Y"]
        w = self.support
        area = w.sum() * amp.shape[0] * amp.shape[1]
        amp_mae = ((amp - target.abs()).abs() * w).sum() / area
        delta = phase - torch.angle(target)
        phase_err = torch.atan2(torch.sin(delta), torch.cos(delta))  # wrapped, differentiable
        phase_mae = (phase_err.abs() * w).sum() / area
        return {"loss": amp_mae + phase_mae, "amp_mae": amp_mae, "phase_mae": phase_mae}
