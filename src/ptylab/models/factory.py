"""Build a model from its typed config and the training data's statistics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..batches import input_scale
from ..bundle import BundleError, load_bundle
from ..config import MergeWeight, ModelConfig, PinnConfig, SupervisedConfig
from ..data import PtychoData
from ..errors import ConfigError, PtylabError
from ..physics import far_field
from ..symmetries import probe_symmetries
from .base import PtychoModule
from .pinn import PINN
from .supervised import Supervised

log = logging.getLogger(__name__)


def derived_intensity_scale(train: PtychoData, reference_amplitude: float = 1.0) -> float:
    """Intensity scale for data that do not state one: match the mean counts to a flat object of
    amplitude ``reference_amplitude`` under the probe (Parseval: sum |F(P O)|^2 = sum |P|^2 |O|^2;
    where the detector has unmeasured pixels, the flat object's far field on the measured ones).

    The model's amplitudes then come out as the true ones times reference / (the object's RMS
    amplitude), whatever the user's units. Computed in chunks.
    """
    if train.valid_pixels is None:
        energy = float((np.abs(train.probe) ** 2).sum())
    else:
        probe = torch.from_numpy(np.asarray(train.probe, np.complex128))
        energy = float(far_field(probe).abs().square()[torch.from_numpy(np.asarray(train.valid_pixels, bool))].sum())
    return float(np.sqrt(train.mean_counts / energy)) / reference_amplitude


# The overlap merge weighted by the probe's intensity between these counts per pattern, when
# model.merge_weight is null; the support's uniform weight outside. Measured with the bilinear phase
# decoder (twenty-eighth session): at 1e4 (1.1e4 counts per training pattern) the probe's weight lifted
# the user-style refined arm on every score but the phase's FRC50 (phase SSIM 0.451 -> 0.509, three
# seeds) and sharpened the embedded FRC50s for 0.005-0.012 of amplitude SSIM; at 1e3 (1.1e3) it
# coarsened the amplitude's FRC50 past LSQML's on both seeds (the uniform merge averages the members'
# noise, which low counts need); at 1e5 (1.1e5, two seeds) the single pass was level and the refined
# arm lost (every score on one seed, all but the amplitude's FRC50 on the other). The bounds lie
# between those, near their geometric middles (3.5e3, 3.5e4). At 3e4 (3.4e4, twenty-ninth session, two
# seeds per data) neither weight won on both data: the probe's lost the embedded object's scores and
# traded the user-style phase's correlation for its SSIM, so the support stays there (docs/quality.md,
# "The gs2 options and gs1 on top of the bilinear phase decoder", "The overlap merge at 3e4").
PROBE_MERGE_COUNTS = (2.7e3, 2.7e4)


def merge_weight_for_counts(choice: MergeWeight | None, mean_counts: float) -> MergeWeight:
    """The overlap merge's weight: ``choice`` if set, else from the training patterns' mean counts."""
    if choice is not None:
        return choice
    low, high = PROBE_MERGE_COUNTS
    return MergeWeight.probe if low <= mean_counts < high else MergeWeight.support


def build_model(model_cfg: ModelConfig, gridsize: int, train: PtychoData) -> PtychoModule:
    common: dict[str, Any] = {
        "N": train.N, "gridsize": gridsize, "base_filters": list(model_cfg.base_filters), "width": model_cfg.width,
        # Choices go in as plain strings: hyperparameters are saved in checkpoints and bundles.
        "object_support": str(model_cfg.object_support), "amp_activation": str(model_cfg.amp_activation),
        "input_scale": input_scale(train.diff3d), "lr": model_cfg.lr, "schedule": str(model_cfg.schedule),
        "warmup_steps": model_cfg.warmup_steps, "min_lr": model_cfg.min_lr, "lr_factor": model_cfg.lr_factor,
        "lr_patience": model_cfg.lr_patience, "init": str(model_cfg.init), "decoder": str(model_cfg.decoder),
        "separate_decoders": model_cfg.separate_decoders, "decoder_width": model_cfg.decoder_width,
        "group_norm": str(model_cfg.group_norm), "bilinear_upsampling": str(model_cfg.bilinear_upsampling),
    }
    if isinstance(model_cfg, PinnConfig):
        scale = train.metadata.get("intensity_scale")
        merge_weight = merge_weight_for_counts(model_cfg.merge_weight, train.mean_counts)
        if model_cfg.merge_weight is None and gridsize > 1:
            log.info("overlap merge weighted by the %s (%.0f counts per pattern; the probe's from %.0f to %.0f)",
                     "probe's intensity" if merge_weight == MergeWeight.probe else "support",
                     train.mean_counts, *PROBE_MERGE_COUNTS)
        return PINN(
            **common, intensity_scale=float(scale if scale is not None
                                            else derived_intensity_scale(train, model_cfg.reference_amplitude)),
            probe_trainable=model_cfg.probe_trainable, probe_lr=model_cfg.probe_lr, probe_mask=model_cfg.probe_mask,
            intensity_scale_trainable=model_cfg.intensity_scale_trainable, nll_weight=model_cfg.nll_weight,
            mae_weight=model_cfg.mae_weight, phase_tv=model_cfg.phase_tv, own_patch_weight=model_cfg.own_patch_weight,
            own_patch_ramps=str(model_cfg.own_patch_ramps),
            merge_weight=str(merge_weight), per_pattern=model_cfg.per_pattern,
            probe=torch.from_numpy(np.asarray(train.probe)),
            # A learnt probe keeps the symmetries training draws samples under (none without them).
            probe_symmetries=(probe_symmetries(train.probe, train.valid_pixels)
                              if model_cfg.probe_trainable and model_cfg.augment_symmetries else (0,)),
        )
    if isinstance(model_cfg, SupervisedConfig):
        if gridsize != 1:
            raise ConfigError(f"gridsize={gridsize}: the supervised baseline trains at gridsize 1")
        if train.Y is None:
            raise PtylabError("the supervised baseline needs ground-truth patches 'Y' in the training data, and "
                              "this dataset has none (key 'Y' missing)")
        return Supervised(**common)
    raise ConfigError(f"model.name={model_cfg.name!r}: not a known model kind (pinn, supervised)")


def start_from_bundle(model: PtychoModule, path: str) -> str:
    """Copy the network weights of the bundle at ``path`` into ``model``; return its digest.

    Only the network moves: the probe, the intensity and input scales stay the ones ``model`` was
    built with from this data, so a network trained elsewhere starts on this data's physics. The
    bundle may hold either model kind; every network tensor must be there with the same shape.
    """
    bundle = load_bundle(path)
    if len(bundle.models) != 1:
        raise BundleError(f"{path}: model.init_weights: the bundle holds {len(bundle.models)} models "
                          f"({', '.join(sorted(bundle.models))}); a start needs exactly one")
    (weights,) = bundle.models.values()
    mine = {k: v for k, v in model.state_dict().items() if k.startswith("net.")}
    for key, tensor in mine.items():
        theirs = weights.state_dict.get(key)
        if theirs is None or theirs.shape != tensor.shape:
            found = "missing" if theirs is None else f"of shape {tuple(theirs.shape)}"
            raise BundleError(
                f"{path}: model.init_weights: network tensor '{key}' is {found}, this config's network needs "
                f"shape {tuple(tensor.shape)} (base_filters, width, the decoders, group_norm and the input "
                f"channels, i.e. per_pattern or gridsize, must match the bundle's {weights.kind} network)")
    model.load_state_dict({k: weights.state_dict[k] for k in mine}, strict=False)
    return bundle.sha256
