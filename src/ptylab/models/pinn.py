"""The physics-informed network: predicted object -> overlap constraint -> probe -> far field -> counts.

The loss compares predicted and measured photon counts with the Poisson likelihood, so no ground
truth is needed. The far field is the simulator's own ``physics.far_field``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..phase_offsets import polynomials
from ..physics import far_field, masked_mean, poisson_nll
from ..symmetries import symmetric_part
from .base import PtychoModule
from .overlap import merge_overlaps


class PINN(PtychoModule):
    probe_support: torch.Tensor

    def __init__(
        self,
        N: int = 64,
        gridsize: int = 2,
        base_filters: tuple[int, ...] = (32, 64, 128),
        width: int = 1,
        object_support: str = "center",
        amp_activation: str = "sigmoid",
        input_scale: float = 1.0,
        intensity_scale: float = 1.0,
        probe_trainable: bool = False,
        probe_mask: bool = False,
        intensity_scale_trainable: bool = False,
        nll_weight: float = 1.0,
        mae_weight: float = 0.0,
        lr: float = 1e-3,
        schedule: str = "cosine",
        warmup_steps: int = 100,
        min_lr: float = 1e-5,
        lr_factor: float = 0.5,
        lr_patience: int = 2,
        init: str = "glorot",
        decoder: str = "upsample",
        separate_decoders: bool = False,
        per_pattern: bool = False,
        probe: torch.Tensor | None = None,
        decoder_width: float = 1.0,  # bundles written before it existed load with 1.0, as they were
        group_norm: str = "none",  # and without normalisation
        phase_tv: float = 0.0,  # and without the phase's total-variation term
        own_patch_weight: float = 0.0,  # and without the own patches' likelihood
        merge_weight: str = "support",  # and merged uniformly over the support
        own_patch_ramps: str = "kept",  # and with the own patches' ramps seen by their likelihood
        bilinear_upsampling: str = "none",  # and upsampled by nearest neighbour
        probe_symmetries: tuple[int, ...] = (0,),  # and a trainable probe learnt without constraint
        probe_lr: float | None = None,  # and at lr
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["probe"])
        self.build_network(gridsize**2)
        start = torch.zeros(2, N, N) if probe is None else torch.stack((probe.real, probe.imag)).float()
        self.probe_ri = nn.Parameter(start, requires_grad=probe_trainable)
        self.log_intensity_scale = nn.Parameter(torch.tensor(math.log(intensity_scale)),
                                                requires_grad=intensity_scale_trainable)
        yy, xx = torch.meshgrid(torch.arange(N) - N // 2, torch.arange(N) - N // 2, indexing="ij")
        disc = (torch.hypot(xx.float(), yy.float()) <= N / 4).float()
        self.register_buffer("probe_support", disc if probe_mask else torch.ones(N, N))

    @property
    def probe(self) -> torch.Tensor:
        """The probe the physics uses: the file's, or where it is trainable the one learnt from it,
        kept under ``probe_symmetries`` (those of the file's probe, under which training draws
        symmetric samples: ``symmetries.symmetric_part``)."""
        probe = torch.complex(self.probe_ri[0], self.probe_ri[1]) * self.probe_support
        transforms = self.hparams["probe_symmetries"]
        return symmetric_part(probe, transforms) if self.hparams["probe_trainable"] and len(transforms) > 1 else probe

    def parameter_groups(self) -> list[dict[str, Any]]:
        """A trainable probe in its own group, at ``probe_lr`` where given: its values are of order 1
        and a guess may be off by as much, which the network's rate moves too slowly."""
        rest = [p for name, p in self.named_parameters() if p.requires_grad and name != "probe_ri"]
        probe = [self.probe_ri] if self.probe_ri.requires_grad else []
        if not probe or self.hparams["probe_lr"] is None:
            return [{"params": rest + probe}]
        return [{"params": rest}, {"params": probe, "lr": self.hparams["probe_lr"]}]

    def learnt_probe(self) -> torch.Tensor | None:
        """(N, N) the probe training learnt, detached; None where the probe was the file's, fixed."""
        return self.probe.detach() if self.hparams["probe_trainable"] else None

    def objects_from(self, patches: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Each group's members' patches merged where they overlap (the object each member sees)."""
        return merge_overlaps(patches, self.merge_weights(), offsets)

    def merge_weights(self) -> torch.Tensor:
        """(N, N) weight of a member's patch in the merge: its support, or the probe's intensity on
        it (peak 1; a choice of average, so no gradient reaches a trainable probe through it)."""
        if self.hparams["merge_weight"] == "support":
            return self.support
        intensity = self.illumination()
        return intensity / intensity.max().clamp_min(torch.finfo(intensity.dtype).tiny)

    def illumination(self) -> torch.Tensor:
        """(N, N) the probe's intensity on the support: where a pattern sees its patch (no gradient
        reaches a trainable probe through the weights made of it)."""
        return self.probe.detach().abs().square() * self.support

    def without_ramps(self, phase: torch.Tensor) -> torch.Tensor:
        """phase (B, C, N, N) less each patch's linear ramp: the slopes of a plane fitted by least
        squares weighted by the probe's intensity on the support, where the pattern sees the phase.
        A loss of the result is the same for any ramp added to ``phase``: it neither makes nor
        removes one."""
        n = phase.shape[-1]
        w = self.illumination().float()
        c = torch.arange(n, device=phase.device, dtype=torch.float32) - n // 2
        basis = polynomials(c.expand(n, n), c[:, None].expand(n, n), 1)
        gram = torch.einsum("ixy,jxy,xy->ij", basis, basis, w)
        moments = torch.einsum("ixy,bcxy,xy->bci", basis, phase.float(), w)
        coef = torch.linalg.solve(gram, moments.unsqueeze(-1)).squeeze(-1)
        return phase.float() - torch.einsum("bci,ixy->bcxy", coef[..., 1:], basis[1:])

    def predicted_counts(self, obj: torch.Tensor) -> torch.Tensor:
        return torch.exp(2 * self.log_intensity_scale) * far_field(self.probe * obj).abs().square()

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        diff = batch["diff"]
        amp, phase = self.predict_amp_phase(diff)
        patches = self.patches_from(amp, phase)
        pred = self.predicted_counts(self.objects_from(patches, batch["offsets"]))
        counts = diff.square()
        valid = batch.get("valid")
        nll = poisson_nll(pred, counts, valid)
        out = {"nll": nll}
        loss = self.hparams["nll_weight"] * nll
        if self.hparams["own_patch_weight"] > 0 and patches.shape[1] > 1:
            # Each member's pattern from its own patch as well: what the merge averages away
            # (model.own_patch_weight) is then measured too.
            own_patches = patches
            if self.hparams["own_patch_ramps"] == "removed":
                own_patches = self.patches_from(amp, self.without_ramps(phase))
            own = poisson_nll(self.predicted_counts(own_patches), counts, valid)
            out["own_nll"] = own
            loss = loss + self.hparams["own_patch_weight"] * own
        if self.hparams["phase_tv"] > 0:
            # Weighted by the batch's mean counts per pixel, as the likelihood scales with them, so
            # one weight balances the two at any dose.
            tv = total_variation(phase, self.support)
            out["phase_tv"] = tv
            loss = loss + self.hparams["phase_tv"] * counts.mean() * tv
        if self.hparams["mae_weight"] > 0:
            mae = masked_mean((pred.sqrt() - diff).abs(), valid)
            out["mae"] = mae
            loss = loss + self.hparams["mae_weight"] * mae
        out["loss"] = loss
        return out


def total_variation(image: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontally and vertically adjacent pixels of ``image``
    (..., N, N) that both lie on ``support`` (N, N), the two directions summed: the anisotropic
    total variation per pixel, a prior that favours flat regions with sharp edges."""
    across = support[:, 1:] * support[:, :-1]
    down = support[1:, :] * support[:-1, :]
    dx = ((image[..., :, 1:] - image[..., :, :-1]).abs() * across).sum((-2, -1)) / across.sum()
    dy = ((image[..., 1:, :] - image[..., :-1, :]).abs() * down).sum((-2, -1)) / down.sum()
    return (dx + dy).mean()
