"""Typed configuration schemas, registered with Hydra's ConfigStore.

Every YAML file under ``conf/`` is merged onto these dataclasses, so a misspelt key or a value of
the wrong type fails at composition (Hydra's own error) before any work starts. Library code takes
these objects (or plain values), never the legacy parameter dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, MissingMandatoryValue, OmegaConf, ValidationError
from omegaconf.errors import ConfigKeyError

from .errors import ConfigError
from .grouping import neighbours_needed
from .symmetries import SYMMETRY_AVERAGES, symmetry_average


class ObjectSupport(StrEnum):
    """Where the object is predicted: the illuminated central N/2 x N/2, or the whole patch."""

    center = "center"  # type: ignore[assignment]  # (shadows str.center; OmegaConf matches member names)
    full = "full"


class AmpActivation(StrEnum):
    sigmoid = "sigmoid"
    swish = "swish"


class Schedule(StrEnum):
    """Learning-rate schedule over the Trainer's step budget."""

    cosine = "cosine"  # linear warm-up, then cosine decay to min_lr
    constant = "constant"
    plateau = "plateau"  # the first design's reduce-on-plateau (ablations)


class Init(StrEnum):
    glorot = "glorot"
    kaiming = "kaiming"
    default = "default"  # PyTorch's own (ablations)


class DecoderLayout(StrEnum):
    upsample = "upsample"
    transposed = "transposed"


class GroupNorm(StrEnum):
    """Which of the network's blocks normalise their convolutions' outputs (ptylab.models.network)."""

    none = "none"
    phase_decoder = "phase_decoder"
    all = "all"


class BilinearUpsampling(StrEnum):
    """Which decoders upsample bilinearly instead of by nearest neighbour (ptylab.models.network)."""

    none = "none"
    phase_decoder = "phase_decoder"
    all = "all"


class MergeWeight(StrEnum):
    """How the PINN's overlap merge weights each group member's patch (ptylab.models.overlap)."""

    support = "support"  # uniformly over its support
    probe = "probe"  # by the probe's intensity |P|^2 over its support, as the stitch does


class OwnPatchRamps(StrEnum):
    """What the own-patch likelihood (model.own_patch_weight) sees of each patch's linear phase ramp."""

    kept = "kept"  # the patch as predicted
    removed = "removed"  # the patch less its ramp, which the group's merged likelihood alone decides


class ScanPattern(StrEnum):
    """How the simulated probe visits the object."""

    raster = "raster"  # rows top to bottom, each left to right (a fly scan; the embedded default)
    fermat = "fermat"  # a Fermat spiral from the centre outward, as many instruments scan


class ViewName(StrEnum):
    dense = "dense"
    sparse = "sparse"
    full = "full"
    custom = "custom"


class LoggerKind(StrEnum):
    csv = "csv"
    tensorboard = "tensorboard"


# The network pools its input once per level of model.base_filters (three) and its decoders double
# back to N/2 (or N): a pattern's side N must be a multiple of 2**3.
NETWORK_LEVELS = 3
PATTERN_MULTIPLE = 2**NETWORK_LEVELS


def _check(ok: bool, key: str, value: Any, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: must be {expectation}")


def _symmetry_average(key: str, value: Any) -> str:
    try:
        return symmetry_average(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(SYMMETRY_AVERAGES)}") from None


@dataclass
class EmbeddedDatasetConfig:
    """The embedded simulation: object from bundled images, a focused probe, a dense raster."""

    name: str = "embedded"
    N: int = 64
    # 384 (256 before 2026-12-04): each half holds 1458 dense-view positions instead of 528, and in
    # the same 1800 training steps the extra positions raised the unseen half's amplitude SSIM by
    # 0.04 at 1e4 (docs/quality.md, "A larger embedded object").
    object_size: int = 384
    amplitude_image: str = "camera"
    phase_image: str = "astronaut"
    amplitude_min: float = 0.3
    amplitude_max: float = 1.0
    phase_range: float = 2.0  # radians, peak to peak
    probe_file: str | None = None
    probe_diameter: float = 22.0
    probe_blur: float = 1.5
    # Quadratic (defocus-like) probe phase in radians at the disc edge. A real, point-symmetric probe
    # (0.0, the first design) makes an object and its conjugate twin give identical diffraction.
    probe_defocus: float = 3.0
    # A raster's step, or a spiral's mean spacing (one position per scan_step**2 of area, as a
    # raster of that step has): the same dose per area and about as many positions either way.
    scan_step: float = 3.0
    scan_jitter: float = 0.0  # uniform sub-pixel jitter along a raster's fast axis, in pixels
    # A raster prints its step into what the scan cannot pin down (the "raster grid pathology");
    # a spiral has no period to print. The embedded default stays the raster its references use.
    scan_pattern: ScanPattern = ScanPattern.raster
    # A beamstop over the direct beam: the detector measures nothing closer than this many pixels to
    # the patterns' centre (0: none). Its patterns hold 0 there and carry the mask (valid_pixels);
    # the dose counts the photons before it.
    beamstop_radius: float = 0.0

    def __post_init__(self) -> None:
        _check(self.N >= PATTERN_MULTIPLE and self.N % PATTERN_MULTIPLE == 0, "dataset.N", self.N,
               f"a multiple of {PATTERN_MULTIPLE}, at least {PATTERN_MULTIPLE}")
        _check(self.object_size > self.N, "dataset.object_size", self.object_size, f"larger than N={self.N}")
        _check(0 <= self.amplitude_min < self.amplitude_max, "dataset.amplitude_min", self.amplitude_min,
               f">= 0 and below amplitude_max={self.amplitude_max}")
        _check(self.probe_diameter > 0, "dataset.probe_diameter", self.probe_diameter, "> 0")
        _check(self.scan_step > 0, "dataset.scan_step", self.scan_step, "> 0")
        _check(self.scan_jitter >= 0, "dataset.scan_jitter", self.scan_jitter, ">= 0")
        _check(0 <= self.beamstop_radius <= self.N / 4, "dataset.beamstop_radius", self.beamstop_radius,
               f">= 0 and at most N/4 = {self.N / 4:g} px (0: no beamstop)")
        _check(self.scan_jitter == 0 or self.scan_pattern == ScanPattern.raster, "dataset.scan_jitter",
               self.scan_jitter, "0 with dataset.scan_pattern=fermat (a spiral has no fast axis to jitter along)")


@dataclass
class FileDatasetConfig:
    """The user's own contract-conforming files (NPZ or HDF5, detected from the bytes)."""

    name: str = "file"
    train_file: str = MISSING
    test_file: str = MISSING


DatasetConfig = EmbeddedDatasetConfig | FileDatasetConfig


@dataclass
class ViewConfig:
    """An overlap view: thin the scan so neighbours overlap by ``target_overlap`` (None: keep all)."""

    name: ViewName = ViewName.dense
    target_overlap: float | None = 0.7
    min_train_positions: int = 64
    probe_radius: float | None = None  # None: effective radius measured from the probe

    def __post_init__(self) -> None:
        if self.target_overlap is not None:
            _check(0 < self.target_overlap < 1, "view.target_overlap", self.target_overlap,
                   "in (0, 1), or null for no thinning")
        _check(self.min_train_positions >= 1, "view.min_train_positions", self.min_train_positions, ">= 1")


SUPPORTED_GRIDSIZES = (1, 2, 3)
# K when model.neighbours is null. A group is its anchor and C - 1 = g^2 - 1 of the anchor's K
# nearest positions. 7 up to gridsize 2 (DESIGN section 6); 11 at gridsize 3, the value its study
# measured (docs/quality.md, "gs3 training"), since 7 positions cannot supply the 8 others a group of nine needs.
DEFAULT_NEIGHBOURS = {1: 7, 2: 7, 3: 11}


@dataclass
class ModelConfig:
    """Settings every model kind shares: network, optimisation, batching, validation share."""

    name: str = MISSING
    base_filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    width: int = 1
    # K of the KD-tree grouping (reconstruction uses it too); null: the gridsize's own
    # (DEFAULT_NEIGHBOURS), so that a sweep over gridsizes needs no second key.
    neighbours: int | None = None
    object_support: ObjectSupport = ObjectSupport.center
    amp_activation: AmpActivation = AmpActivation.sigmoid
    init: Init = Init.glorot
    decoder: DecoderLayout = DecoderLayout.upsample
    separate_decoders: bool = False
    decoder_width: float = 1.0  # the decoders' filters as a fraction of the encoder's
    group_norm: GroupNorm = GroupNorm.none
    # Which decoders upsample bilinearly (``model.decoder=upsample`` only): none, the phase decoder, or both.
    bilinear_upsampling: BilinearUpsampling = BilinearUpsampling.none
    lr: float = 1e-3
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 100
    min_lr: float = 1e-5
    lr_factor: float = 0.5  # plateau only
    lr_patience: int = 2  # plateau only
    early_stop_patience: int = 0  # 0: off (the whole budget is spent; the best checkpoint is still kept)
    batch_size: int = 16
    val_fraction: float = 0.1
    max_train_groups: int | None = None  # cap on training samples (None: all)
    # Train also on the groups mirrored and rotated, under each symmetry the probe has
    # (ptylab.symmetries): valid samples of the same probe, none for a probe without symmetry.
    # PINN: amplitude gained at 1e3 and 1e4 on two seeds each (SSIM +0.014 to +0.020), at no cost
    # per step; phase SSIM gained at 1e3 and fell at 1e4, still above LSQML's (docs/quality.md).
    # The supervised baseline (Y transformed alike) uses them too: methods compared on one sample set.
    augment_symmetries: bool = True
    # A model bundle (wts.h5.zip) whose network weights training starts from, instead of the
    # initialisation: a network trained longer, on a GPU or on other data, fine-tuned on this data
    # within this job's budget. Its architecture must match this config's; the physics (probe,
    # intensity and input scales) are this data's. Not checked here: a finished run's config must stay
    # readable (compare, study reports) after its start has moved; the job refuses a missing file.
    init_weights: str | None = None

    def __post_init__(self) -> None:
        _check(len(self.base_filters) == NETWORK_LEVELS and all(f > 0 for f in self.base_filters),
               "model.base_filters", self.base_filters, f"{NETWORK_LEVELS} positive filter counts")
        _check(self.width >= 1, "model.width", self.width, ">= 1")
        _check(0 < self.decoder_width <= 4, "model.decoder_width", self.decoder_width, "in (0, 4]")
        _check(self.group_norm != GroupNorm.phase_decoder or self.separate_decoders, "model.group_norm",
               str(self.group_norm), "none or all with a shared decoder (phase_decoder needs separate_decoders=true)")
        _check(self.bilinear_upsampling != BilinearUpsampling.phase_decoder or self.separate_decoders,
               "model.bilinear_upsampling", str(self.bilinear_upsampling),
               "none or all with a shared decoder (phase_decoder needs separate_decoders=true)")
        _check(self.bilinear_upsampling == BilinearUpsampling.none or self.decoder == DecoderLayout.upsample,
               "model.bilinear_upsampling", str(self.bilinear_upsampling),
               "none with model.decoder=transposed (it chooses how the upsample layout upsamples)")
        _check(self.lr > 0, "model.lr", self.lr, "> 0")
        _check(0 < self.min_lr <= self.lr, "model.min_lr", self.min_lr, f"in (0, lr={self.lr}]")
        _check(self.warmup_steps >= 0, "model.warmup_steps", self.warmup_steps, ">= 0")
        _check(0 < self.lr_factor < 1, "model.lr_factor", self.lr_factor, "in (0, 1)")
        _check(self.batch_size >= 1, "model.batch_size", self.batch_size, ">= 1")
        _check(0 <= self.val_fraction < 1, "model.val_fraction", self.val_fraction, "in [0, 1)")
        _check(self.early_stop_patience >= 0, "model.early_stop_patience", self.early_stop_patience, ">= 0")
        _check(self.neighbours is None or self.neighbours >= 1, "model.neighbours", self.neighbours,
               ">= 1, or null for the gridsize's default")
        if self.max_train_groups is not None:
            _check(self.max_train_groups >= 1, "model.max_train_groups", self.max_train_groups, ">= 1 or null")

    def neighbours_at(self, gridsize: int) -> int:
        """K at ``gridsize``: ``neighbours`` where set, else the gridsize's default."""
        return DEFAULT_NEIGHBOURS[gridsize] if self.neighbours is None else self.neighbours


@dataclass
class PinnConfig(ModelConfig):
    """The self-supervised PINN: physics layer, overlap constraint, group sampling."""

    name: str = "pinn"
    # Amplitude and phase from their own decoders, each at half width (cheaper than one shared
    # decoder at full width): on user-style files the shared decoder leaked the amplitude's edges
    # into the phase (phase correlation 0.59 -> 0.75); the embedded data gained at 1e4; at 1e3 (two
    # seeds) amplitude SSIM -0.01, phase SSIM +0.02 (docs/quality.md). Bundles written before keep
    # their shared decoder.
    separate_decoders: bool = True
    decoder_width: float = 0.5
    # Group normalisation in the phase decoder's blocks (2026-12-03): phase SSIM +0.045 and PSNR
    # +1.1 dB at 1e4 over two seeds, every score but the amplitude FRC50 up at 1e3 (refined: all),
    # phase FRC50 0.8-1.1 px finer on user-style files, whose amplitude SSIM fell by 0.01; about 10%
    # more per training step. Everywhere (``all``): more phase, less amplitude, 35% more per step
    # (docs/quality.md). Bundles written before load without it.
    group_norm: GroupNorm = GroupNorm.phase_decoder
    # The phase decoder upsamples bilinearly (2026-12-06): with nearest-neighbour upsampling the
    # phase carried a fine grid at the scan step, which gs2's merge averaged in. Bilinear, the
    # single pass's phase SSIM rose on every seed (1e4: +0.05 embedded, +0.06 user-style; 1e3:
    # +0.035) for 0.004-0.024 of amplitude SSIM, and gs2 beat gs1 on every score at 1e4 and 1e3.
    # Both decoders: finer embedded phase, less user-style phase, and at 1e3 a coarser amplitude.
    # The supervised baseline keeps nearest (level there). Bundles written before load with
    # nearest (docs/quality.md, "Bilinear upsampling in the phase decoder").
    bilinear_upsampling: BilinearUpsampling = BilinearUpsampling.phase_decoder
    oversample: int = 0  # extra random groups per anchor (gridsize > 1 and K >= C only)
    # One network per pattern (shared weights) instead of the group's patterns as input channels;
    # batch_size then counts patterns and an epoch is one pass over the patterns (training.batch_plan).
    per_pattern: bool = True
    # Learn the probe from the file's as a start, for data whose probe is a guess; every evaluation
    # then runs under the probe learnt, under the file's probe's symmetries (docs/quality.md, "A probe
    # guess that is off"). probe_lr: its Adam rate (null: model.lr), on the same schedule.
    probe_trainable: bool = False
    probe_lr: float | None = None
    probe_mask: bool = False
    intensity_scale_trainable: bool = False
    # For data without an intensity_scale: the RMS object amplitude the derived scale assumes. 0.5
    # puts a typical object mid-range of the sigmoid, with room for amplitudes twice the RMS.
    reference_amplitude: float = 0.5
    nll_weight: float = 1.0
    mae_weight: float = 0.0
    # Weight of the predicted phase's total variation (per pixel, over the support) in the training
    # and refinement loss, relative to the likelihood (times the data's mean counts per pixel): a
    # prior for flat regions with sharp edges. Off by default: 0.045 (about 0.1 per count at 1e4)
    # lifted the user-style phase SSIM by 0.09 and, in scratch runs, the 1e4 amplitude, but the
    # default job with it lost 0.03 of amplitude SSIM on the same region (docs/quality.md).
    phase_tv: float = 0.0
    # Weight of a second likelihood, on each group member's own patch before the overlap merge
    # (gridsize > 1; a gs1 group has nothing to merge). The merge averages the members' patches, so
    # a fine error every patch makes alike (exactly cancelled when periodic at twice the members'
    # spacing) is nearly invisible to the merged likelihood: the scan-step grid in gs2's phase. Off
    # by default while it is measured (docs/quality.md, "Each member's own patch in the loss").
    own_patch_weight: float = 0.0
    # A phase ramp across one patch barely moves its own pattern when the probe is a defocused disc
    # (a ramp shifts the pattern, much as moving the patch does); the group's merge pins it, as the
    # members disagree by the ramp times their spacing where they overlap. With the own term the
    # network put such ramps into its patches (3 of 6 runs at 1e4 with the probe's merge);
    # ``removed`` takes each patch's ramp (a |P|^2-weighted plane fit) out of what the own term
    # sees, so only the merge decides it: no ramps on 9 of 9 runs (docs/quality.md, "Where the
    # pair's phase ramps come from"). ``kept`` is the behaviour measured before it existed.
    own_patch_ramps: OwnPatchRamps = OwnPatchRamps.kept
    # How the overlap merge averages a group's patches where they overlap: uniformly over each
    # patch's support, or by the probe's intensity there, so that where a member's probe is weak
    # (its pattern says little about the object) its patch counts for little (docs/quality.md,
    # "The overlap merge weighted by the probe's intensity"). null (the default): from the training
    # patterns' mean counts (ptylab.models.factory.merge_weight_for_counts): the probe's weight from
    # 2.7e3 to 2.7e4 counts per pattern (dose 1e4 here), where it was measured to help; elsewhere the
    # support's, whose uniform average of the members' noise low counts need.
    merge_weight: MergeWeight | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.phase_tv >= 0, "model.phase_tv", self.phase_tv, ">= 0")
        _check(self.probe_lr is None or self.probe_lr > 0, "model.probe_lr", self.probe_lr, "> 0, or null for model.lr")
        _check(self.own_patch_weight >= 0, "model.own_patch_weight", self.own_patch_weight, ">= 0")
        _check(self.oversample >= 0, "model.oversample", self.oversample, ">= 0")
        _check(self.reference_amplitude > 0, "model.reference_amplitude", self.reference_amplitude, "> 0")
        _check(self.nll_weight >= 0 and self.mae_weight >= 0 and self.nll_weight + self.mae_weight > 0,
               "model.nll_weight", self.nll_weight, "non-negative, with mae_weight, and not both zero")


@dataclass
class SupervisedConfig(ModelConfig):
    """The supervised baseline: MAE against ground-truth patches Y, gridsize 1."""

    name: str = "supervised"
    separate_decoders: bool = True
    # As the PINN's: at 1e4 (seed 1) every score but the FRC50s rose with it (docs/quality.md), and
    # the baseline keeps the network the PINN is compared with.
    group_norm: GroupNorm = GroupNorm.phase_decoder
    # Not the PINN's bilinear phase decoder: with it the baseline was level at 1e4 (seed 1; amplitude
    # SSIM -0.006, phase +0.003, phase FRC50 0.37 px coarser), so it keeps its own better setting,
    # nearest (ModelConfig's; docs/quality.md).


@dataclass
class PathsConfig:
    output_root: str = "outputs"
    cache_dir: str = "${paths.output_root}/cache"


# Polynomial orders of the offset fit's per-patch shape terms (ptylab.phase_offsets.shape_basis).
OFFSET_FIT_ORDERS = (0, 1, 2, 3, 4)


def _check_offset_fit(prefix: str, null: str, steps: int | None, order: int | None, average: float | None) -> None:
    """The offset fit's length, order and averaged share, each optional (``null`` says what None
    means), as evaluation and the reconstruct command take them."""
    _check(steps is None or steps >= 0, f"{prefix}offset_fit_steps", steps, f">= 0, or null ({null})")
    _check(order is None or order in OFFSET_FIT_ORDERS, f"{prefix}offset_fit_order", order,
           f"one of {OFFSET_FIT_ORDERS}, or null ({null})")
    _check(average is None or 0 <= average < 1, f"{prefix}offset_fit_average", average, f"in [0, 1), or null ({null})")


@dataclass
class EvalConfig:
    """Reconstruction of the test split and its scoring."""

    enabled: bool = True
    stitch_crop: int | None = None  # central region of each patch used for stitching (None: N/2)
    sync_phase: bool = True  # make per-patch phase offsets consistent before stitching
    # Then fit them, a gain per patch and low-order shape terms, to the test patterns (Poisson
    # likelihood of the stitched object; 0 steps: off). A few smooth terms per patch, so no detail
    # is added: see ptylab.phase_offsets and docs/quality.md.
    # None: from the data's counts per pattern (100, 200 from 6.7e3, 800 from 1.7e4;
    # phase_offsets.AUTO_REGIMES)
    offset_fit_steps: int | None = None
    # None: from the data's counts per pattern (0.02 at 1e3, 0.06 from 9e3; phase_offsets.auto_lr)
    offset_fit_lr: float | None = None
    offset_fit_gains: bool = True  # with one amplitude gain per patch (at a fifth of the lr)
    # Per-patch polynomial: 0 offset only, 1 + ramps, 2 + curvature and astigmatism, 3 + coma and
    # trefoil, 4 + spherical, secondary astigmatism and tetrafoil. None: from the data's counts per
    # pattern (4 from 1.7e4, 3 from 5e3, else 2; phase_offsets.AUTO_REGIMES)
    offset_fit_order: int | None = None
    offset_fit_ramp: bool = True  # offsets also move together along a ramp across the scan (faster, same result space)
    # The share of the fit's last steps whose parameters are averaged into its result, in [0, 1)
    # (0: the last step's). None: from the data's counts per pattern (0.5 from 6.7e3 to 1.7e4, else
    # 0; phase_offsets.AUTO_REGIMES): at 1e4 it lets 200 steps sharpen without the last step's wander.
    offset_fit_average: float | None = None
    # Weight of the stitched phase's total variation in the fit's loss, per object pixel against the
    # Poisson NLL per pattern pixel (0: the likelihood alone; phase_offsets.phase_variation): it
    # removes the scan-step texture that overlapping patches leave in flat phase, which the patterns
    # do not pin down (docs/quality.md).
    offset_fit_phase_tv: float = 2.0
    # The same for the stitched amplitude's relative total variation (phase_offsets.amplitude_variation):
    # it removes the grain and rings the complex average of disagreeing patches leaves in the
    # amplitude (at 1e3 the single pass's amplitude SSIM rose from below a flat image's; docs/quality.md).
    offset_fit_amplitude_tv: float = 2.0
    # Also score the fit on flat patches (no network), the reference a network must beat; it costs
    # about one more stitching and fit (off for scans so large that this matters).
    fit_alone: bool = True
    # Also score the network's predictions stitched without the fit (the fit's synchronised start,
    # kept on the way): what the network gives on its own, beside what the fit gives on its own.
    network_alone: bool = True
    # Predict each group also mirrored and turned under the probe's symmetries, and average
    # (prediction.predict_crops): none, the point reflection alone, or all the probe has (true and
    # false in older snapshots read as all and none). None: for the single pass every average
    # raised phase SSIM by 0.01-0.13 and lowered amplitude SSIM at 1e4 by 0.01-0.03, for about 6 s
    # more per symmetry there (docs/quality.md). The refined arm has its own setting.
    average_symmetries: str = "none"
    upsample_factor: int = 20  # sub-pixel registration precision: 1/upsample_factor px
    max_shift_px: float = 4.0  # larger registration shifts are refused (the reconstruction is not trusted)
    remove_phase_plane: bool = False
    batch_size: int = 64
    tile_patches: int = 4096  # patches stitched (and phase-synchronised) together; bounds memory

    def __post_init__(self) -> None:
        _check(self.tile_patches >= 16, "eval.tile_patches", self.tile_patches, ">= 16")
        self.average_symmetries = _symmetry_average("eval.average_symmetries", self.average_symmetries)
        _check(self.upsample_factor >= 1, "eval.upsample_factor", self.upsample_factor, ">= 1")
        _check(self.max_shift_px > 0, "eval.max_shift_px", self.max_shift_px, "> 0")
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")
        _check_offset_fit("eval.", "from the data's counts", self.offset_fit_steps, self.offset_fit_order,
                          self.offset_fit_average)
        _check(self.offset_fit_lr is None or self.offset_fit_lr > 0, "eval.offset_fit_lr", self.offset_fit_lr,
               "> 0, or null (from the data's counts)")
        _check(self.offset_fit_phase_tv >= 0, "eval.offset_fit_phase_tv", self.offset_fit_phase_tv, ">= 0")
        _check(self.offset_fit_amplitude_tv >= 0, "eval.offset_fit_amplitude_tv", self.offset_fit_amplitude_tv,
               ">= 0")
        if self.stitch_crop is not None:
            _check(self.stitch_crop >= 1, "eval.stitch_crop", self.stitch_crop, ">= 1 or null")


@dataclass
class RefineConfig:
    """The refined arm: fine-tune the trained PINN on the test diffraction alone (no ground truth)."""

    enabled: bool = True  # PINN jobs only; reported beside the single-pass network
    # 1000: with the separate decoders every score rose from 300, on the embedded data and on
    # user-style files (docs/quality.md), for about 60 s more on the default job, which stays
    # within its 10 minutes on two cores. 1500 still gained at 1e4 (2026-12-03), for about 50 s
    # more than the slower machine types leave in that budget.
    steps: int = 1000
    # 1e-3 (3e-4 before 2026-12-02): a lower Poisson NLL on the test patterns in the same 1000
    # steps on all three jobs tried, and better scores (docs/quality.md). Measured again after the
    # refined arm stopped using the symmetries: 2e-3 gained at 1e4 but fitted the noise at 1e3.
    lr: float = 1e-3
    warmup_steps: int = 20
    batch_size: int | None = None  # None: the model's
    # The refined arm's eval.average_symmetries. Point: unlike the single pass, the refined network
    # lost no amplitude to it and gained on nearly every score at 1e3, 1e4 and on user-style files,
    # two seeds each (phase SSIM +0.01 to +0.08), for about 6 s at 1e4 (docs/quality.md,
    # "Predictions averaged over the probe's symmetries").
    average_symmetries: str = "point"
    # Refine on the test groups as measured, not also mirrored and rotated (model.augment_symmetries
    # is for training, where the symmetries are more samples of the same probe to generalise from).
    # Refinement fits the test patterns themselves, and the transformed copies took steps from them:
    # without them the scores rose on two seeds at 1e3, 1e4 and on user-style files, all but one
    # FRC50 on each seed (amplitude SSIM +0.019 and +0.021 at 1e4; docs/quality.md).
    augment_symmetries: bool = False
    # Keep the single pass's field-wide phase plane, which the test patterns cannot see
    # (``phase_plane``): refinement drifted along it (0.28 rad across the 1e3 job's scan against
    # the single pass's 0.05) for up to 0.08 of phase SSIM, its data fit the same to 5e-5.
    single_pass_plane: bool = True
    # Fine-tune the decoders only, the encoder kept as trained: a step skips the encoder's backward
    # pass (two thirds of the network's multiply-adds), so the default job's arm takes 54 s instead
    # of 89 s. Off by default (thirty-ninth session): over six jobs the SSIMs stayed level and the
    # amplitude FRC50 sharpened, but on the user-style seed-1 network, over three refinement seeds,
    # the phase's correlation fell 0.867 -> 0.823 and its PSNR 26.5 -> 24.9 dB (every seed), below
    # LSQML's; the refined arm is where the data's last detail is asked for, so its quality decides
    # (docs/quality.md, "The refined arm's encoder kept as trained").
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "refine.steps", self.steps, ">= 1")
        _check(self.lr > 0, "refine.lr", self.lr, "> 0")
        self.average_symmetries = _symmetry_average("refine.average_symmetries", self.average_symmetries)


@dataclass
class TrainConfig:
    dataset: Any = MISSING  # one of the dataset schemas, chosen by the dataset group
    view: ViewConfig = field(default_factory=ViewConfig)
    model: Any = MISSING  # one of the model schemas, chosen by the model group
    # Passed verbatim to lightning.Trainer, so any Trainer argument works (``++trainer.x=...``).
    trainer: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    dose: float = 1e4
    gridsize: int = 2
    seed: int = 1
    ckpt_path: str | None = None
    redo: bool = False  # re-run a job whose directory already holds a finished manifest
    resume: bool = True  # continue a job left running/interrupted in the same directory from its last checkpoint
    logger: LoggerKind = LoggerKind.csv  # tensorboard needs the tensorboard extra
    experiment: str | None = None

    def __post_init__(self) -> None:
        _check(self.dose > 0, "dose", self.dose, "positive (photons per pattern)")
        _check(self.gridsize in SUPPORTED_GRIDSIZES, "gridsize", self.gridsize, f"one of {SUPPORTED_GRIDSIZES}")
        if isinstance(self.model, SupervisedConfig):
            _check(self.gridsize == 1, "gridsize", self.gridsize, "1 for model=supervised (it trains on single "
                   "patterns)")
        oversample = self.model.oversample if isinstance(self.model, PinnConfig) else 0
        if oversample:
            _check(self.gridsize > 1, "model.oversample", oversample,
                   "0 at gridsize 1 (a single pattern has no alternative neighbours)")
        needed = neighbours_needed(self.gridsize, oversample)
        _check(self.model.neighbours_at(self.gridsize) >= needed, "model.neighbours", self.model.neighbours,
               f">= {needed} at gridsize {self.gridsize}{' with oversampling' if oversample else ''} (a group's "
               "other members come from the anchor's K nearest positions), or null for the gridsize's default")
        require_trainer_arguments(self.trainer)
        # PyTorch has no deterministic CUDA backward for bilinear interpolation: with
        # deterministic=True such a job would stop at its first training step, after its data were made.
        on_gpu = trainer_device(self.trainer) == "cuda"
        _check(not (on_gpu and self.trainer.get("deterministic") is True
                    and self.model.bilinear_upsampling != BilinearUpsampling.none),
               "trainer.deterministic", self.trainer.get("deterministic"),
               f"false or 'warn' on a GPU with model.bilinear_upsampling={self.model.bilinear_upsampling} (PyTorch "
               "has no deterministic CUDA backward for bilinear upsampling), or set model.bilinear_upsampling=none")


@dataclass
class SimulateConfig:
    dataset: Any = MISSING
    view: ViewConfig | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    dose: float = 1e4
    seed: int = 1
    output_dir: str = MISSING
    as_user_files: bool = False  # drop intensity_scale and simulation settings from the files' metadata

    def __post_init__(self) -> None:
        _check(self.dose > 0, "dose", self.dose, "positive (photons per pattern)")
        _check(isinstance(self.dataset, EmbeddedDatasetConfig), "dataset", getattr(self.dataset, "name", None),
               "a simulated dataset (dataset=embedded or a preset built on it)")


LSQML_PROBES = ("fixed", "refined")


@dataclass
class LsqmlConfig:
    enabled: bool = True
    epochs: int = 200
    noise_model: str = "gaussian"  # scored better than poisson on Poisson data in our trials
    device: str = "cpu"
    # "fixed": the data's probe, as known (the reference's default); "refined": pty-chi refines it
    # with the object, for data whose probe is a guess (as model.probe_trainable does for the PINN).
    probe: str = "fixed"
    # LSQML also started from each network's reconstruction (its object.npz), for this many epochs
    # (0: off): what the data hold beyond the network, in a fraction of a flat start's epochs
    # (docs/quality.md, "LSQML started from the networks' objects").
    from_networks_epochs: int = 20
    # Read a row's result from output_dir where an earlier comparison there computed it from the
    # same inputs (a re-run after an interruption, or with more runs), instead of running it again.
    reuse: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "lsqml.epochs", self.epochs, ">= 1")
        _check(self.from_networks_epochs >= 0, "lsqml.from_networks_epochs", self.from_networks_epochs, ">= 0")
        _check(self.noise_model in ("gaussian", "poisson"), "lsqml.noise_model", self.noise_model,
               "'gaussian' or 'poisson'")
        _check(self.probe in LSQML_PROBES, "lsqml.probe", self.probe, "'fixed' or 'refined'")


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)
    # a sweep directory: every job directory in it is compared (after ``runs``), as study_report reads it
    sweep: str | None = None
    output_dir: str = MISSING
    lsqml: LsqmlConfig = field(default_factory=LsqmlConfig)

    def __post_init__(self) -> None:
        _check(bool(self.runs) or self.sweep is not None, "runs", self.runs,
               "a list of run directories (runs=[RUN_A,RUN_B]), or give a sweep directory (sweep=DIR)")


@dataclass
class ReconstructConfig:
    bundle: str = MISSING
    data: str = MISSING
    output_dir: str = MISSING
    batch_size: int = 64
    device: str = "cpu"
    tile_patches: int = 4096  # as eval.tile_patches
    offset_fit_steps: int | None = None  # as eval.offset_fit_steps; None: the bundle's setting
    offset_fit_order: int | None = None  # as eval.offset_fit_order; None: the bundle's setting
    offset_fit_average: float | None = None  # as eval.offset_fit_average; None: the bundle's setting
    offset_fit_phase_tv: float | None = None  # as eval.offset_fit_phase_tv; None: the bundle's setting
    offset_fit_amplitude_tv: float | None = None  # as eval.offset_fit_amplitude_tv; None: the bundle's setting

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.tile_patches >= 16, "tile_patches", self.tile_patches, ">= 16")
        _check_offset_fit("", "the bundle's setting", self.offset_fit_steps, self.offset_fit_order,
                          self.offset_fit_average)
        for key in ("offset_fit_phase_tv", "offset_fit_amplitude_tv"):
            value = getattr(self, key)
            _check(value is None or value >= 0, key, value, ">= 0, or null (the bundle's setting)")

    def fit_overrides(self) -> dict[str, Any]:
        """The ``offset_fit_*`` settings under ``OffsetFit``'s field names (None: the bundle's), as
        ``stitching.reconstruct_from_bundle`` takes them: a new fit setting is one field here."""
        prefix = "offset_fit_"
        return {f.name.removeprefix(prefix): getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.startswith(prefix)}


MODEL_SCHEMAS: dict[str, type] = {"pinn": PinnConfig, "supervised": SupervisedConfig}
DATASET_SCHEMAS: dict[str, type] = {"embedded": EmbeddedDatasetConfig, "file": FileDatasetConfig}


def load_run_config(path: str | Path) -> DictConfig:
    """A run's ``.hydra/config.yaml`` snapshot, typed against the schemas of its model and dataset kinds.

    Hydra stores it unresolved; the result keeps interpolations (``${now:...}``) for the caller.
    """
    try:
        snapshot = OmegaConf.load(path)
        base = OmegaConf.structured(TrainConfig)
        for node, schemas in (("model", MODEL_SCHEMAS), ("dataset", DATASET_SCHEMAS)):
            kind = OmegaConf.select(snapshot, f"{node}.name")
            if kind not in schemas:
                raise ConfigError(f"{path}: {node}.name={kind!r} is not one of {sorted(schemas)}")
            base[node] = OmegaConf.structured(schemas[kind])
        cfg = OmegaConf.merge(base, snapshot)
    except (OSError, ValidationError, ConfigKeyError) as exc:
        raise ConfigError(f"{path}: not a config snapshot this ptylab can read ({str(exc).splitlines()[0]})") from None
    assert isinstance(cfg, DictConfig)
    return cfg


def run_config(run_dir: Path) -> TrainConfig:
    """A run's typed config, from its snapshot (Hydra's resolvers set up for ``${now:...}``)."""
    from hydra.core.utils import setup_globals

    setup_globals()
    cfg: TrainConfig = validate(load_run_config(run_dir / ".hydra" / "config.yaml"))
    return cfg


def data_settings(cfg: TrainConfig) -> dict[str, Any]:
    """A run's dataset and view settings: the object, the probe and the positions it reconstructs."""
    return {"dataset": dataclasses.asdict(cfg.dataset), "view": dataclasses.asdict(cfg.view)}


def data_key(cfg: TrainConfig) -> str:
    """Which data a run's reconstructions are of: a short digest of ``data_settings`` (not the dose
    or the seed, which change only the counts). Runs and LSQML rows with one key share their truth
    however their overrides spell it (a default written out is the same key), so the study's
    gallery groups by this key, never by override strings."""
    return hashlib.sha256(json.dumps(data_settings(cfg), sort_keys=True, default=str).encode()).hexdigest()[:8]


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+model.lr=1e-3`` -> ``model.lr`` (Hydra's ``+``,
    ``++`` and ``~`` prefixes dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def flat_start_variant(dataset: str, view: str, key: str) -> str:
    """A flat-start LSQML row's variant: its test data (dataset and view names, ``data_key``), no
    overrides, since no job's command line made it (``compare.data_variant``)."""
    return f"test data {dataset} {view} {key}"


def is_flat_start(variant: str) -> bool:
    """Whether a variant is a flat-start LSQML row's (``flat_start_variant``), not a job's overrides."""
    return variant.split()[:2] == ["test", "data"]


def data_overrides(variant: str) -> tuple[str, ...]:
    """The overrides of a variant that change the data (``dataset=...``, ``dataset.<key>=...``),
    sorted: how the study's gallery names a data (``data_key`` tells data apart)."""
    return tuple(sorted(t for t in variant.split() if override_key(t).startswith("dataset")))


def run_variant(run_dir: Path) -> str:
    """A run's command-line overrides but its seed (Hydra's ``.hydra/overrides.yaml``), sorted: runs
    with the same variant differ only in their seed, so only they are averaged over seeds."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    overrides = [str(o) for o in OmegaConf.load(path)]
    return " ".join(sorted(o for o in overrides if override_key(o) != "seed"))


def validate(cfg: Any) -> Any:
    """Instantiate a composed config as its schema, running every range check before any work.

    Returns the typed object; a missing required value or a value out of range raises
    ``ConfigError`` naming the key and the value.
    """
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as exc:
        key = exc.full_key or "?"
        hint = " (dataset=npz needs dataset.train_file=PATH and dataset.test_file=PATH)" if "_file" in key else ""
        raise ConfigError(f"{key}: a value is required{hint}") from None
    except ValidationError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


def trainer_device(trainer: Mapping[str, Any]) -> str:
    """Where a job with these Trainer settings trains, and so evaluates: "cuda" for a GPU accelerator
    (or ``auto`` where CUDA is available), else "cpu". One decision for the config's checks and the
    job's evaluation: on the CPU the offset fit is most of an evaluation, and left there after GPU
    training it made three quarters of the default job's time (docs/performance.md)."""
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator == "auto":
        import torch  # only here: the config itself needs no torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator in ("gpu", "cuda") else "cpu"


# Trainer arguments the job sets itself (``training.build_trainer``): a second value would reach
# lightning.Trainer twice.
JOB_TRAINER_ARGUMENTS = {"callbacks": "it adds its own checkpoint, learning-rate and progress callbacks",
                         "logger": "choose it with the top-level key, logger=csv or logger=tensorboard"}


def require_trainer_arguments(trainer: Mapping[str, Any]) -> None:
    """Refuse a ``trainer`` key that ``lightning.Trainer`` does not take, or one the job sets itself.
    ``++trainer.<name>=`` passes any key through, so a misspelt one used to fail each job at its
    Trainer, after the data were made (in a sweep, once per job). Values stay Lightning's to check:
    only the names are known without building a Trainer, whose flags are process-wide."""
    import inspect

    import lightning

    accepted = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key in JOB_TRAINER_ARGUMENTS:
            raise ConfigError(f"trainer.{key}: expected no such key; the job sets it: {JOB_TRAINER_ARGUMENTS[key]}")
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f"; did you mean trainer.{close[0]}?" if close else ""
            raise ConfigError(f"trainer.{key}={trainer[key]!r}: expected an argument of lightning.Trainer "
                              f"{lightning.__version__}{hint}")


def require_trainer_device(trainer: Mapping[str, Any]) -> None:
    """Refuse Trainer settings that ask for a CUDA GPU where torch finds none. Lightning's own
    answer ("No supported gpu backend found!") came after the job's data were made, and in a
    sweep once per job. Checked where a job is about to run (the command line's preflight, a
    job's start), not in ``validate``: a config is valid on any machine, and a study may be
    composed on one machine and run on another."""
    if trainer_device(trainer) != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={trainer.get('accelerator')}: asks for a CUDA GPU and torch "
                          f"{torch.__version__} finds none on this machine (CUDA "
                          f"{torch.version.cuda or 'not built into this torch'}); use trainer=cpu")


def format_dose(dose: float) -> str:
    """Short, readable dose tag for directory names: 1000 -> '1e3', 1500 -> '1.5e3'."""
    if dose <= 0:
        return str(dose)
    exponent = math.floor(math.log10(dose))
    mantissa = round(dose / 10**exponent, 3)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    text = f"{mantissa:g}"
    return f"{text}e{exponent}"


def run_tag(dose: float, view: str, gridsize: int, model: str) -> str:
    return f"dose{format_dose(float(dose))}_{view}_gs{gridsize}_{model}"


def cpu_precision() -> str:
    """Lightning's ``precision`` for ``trainer=cpu``: bf16 autocast on a CPU with bf16 instructions
    (AVX512-BF16, with or without AMX tiles), full fp32 elsewhere.

    The network's convolutions are the cost of a step on CPU. bf16 autocast ran the default job's
    training steps 1.8x faster on an AMX machine type and 1.47x faster on an AVX512-BF16 one without
    AMX (AMD EPYC), at the same scores (docs/decisions.md); without such instructions oneDNN
    emulates bf16 and would be slower than fp32. Weights, optimiser, physics and evaluation stay
    fp32 either way.
    """
    import torch

    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return "bf16-mixed" if bf16 is not None and bf16() else "32-true"


def register_configs() -> None:
    """Register schemas and resolvers once per process (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="simulate_schema", node=SimulateConfig)
    cs.store(name="compare_schema", node=CompareConfig)
    cs.store(name="reconstruct_schema", node=ReconstructConfig)
    # One schema per kind, which each YAML of its group extends (``/schema/<group>/<kind>@_here_``): a
    # key of another kind fails at composition. Kept in groups of their own, not in model/ and
    # dataset/, so that the choices a user sees (``--help``, a misspelt choice's list) are configs.
    cs.store(group="schema/model", name="pinn", node=PinnConfig)
    cs.store(group="schema/model", name="supervised", node=SupervisedConfig)
    cs.store(group="schema/dataset", name="embedded", node=EmbeddedDatasetConfig)
    cs.store(group="schema/dataset", name="file", node=FileDatasetConfig)
    if not OmegaConf.has_resolver("ptylab_tag"):
        OmegaConf.register_new_resolver("ptylab_tag", run_tag)
    if not OmegaConf.has_resolver("ptylab_cpu_precision"):
        OmegaConf.register_new_resolver("ptylab_cpu_precision", cpu_precision)


register_configs()
