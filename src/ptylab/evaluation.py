"""Score a stitched reconstruction against the ground truth (DESIGN section 10).

Steps: crop both to the scanned area of the test split, register sub-pixel (phase
cross-correlation), match the amplitude's mean to the ground truth's, remove the phase's global
offset (and optionally a plane), then score amplitude and phase separately. The aligned pair is
saved so anyone can recompute the scores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import fourier_shift
from skimage.registration import phase_cross_correlation

from .config import EvalConfig
from .data import PtychoData
from .data_fit import DATA_FIT_FIGURE, REFERENCES, data_fit, reference_ratios
from .figures import DATA_FIT_REFERENCES, complex_panels, data_fit_map, frc_curves, patch_map
from .fileio import atomic_write_json, atomic_write_with
from .manifest import RECONSTRUCTION_FILE
from .metrics import PARTS, PSNR_CAP_DB, beats, frc_curve, frc_resolution, reference_scores, score_image
from .models import PtychoModule
from .patch_scores import median_crops, patch_agreement
from .phase_offsets import OffsetFit, ResolvedFit
from .phase_plane import keep_plane
from .stitching import OBJECT_FILE, Region, Stitched, reconstruct, reconstruct_flat, write_object
from .timing import Stopwatch

log = logging.getLogger(__name__)

# Key, beside "flat" in each part's scores, of the offset fit's own scores on flat patches.
FIT_ALONE = "fit_alone"
# Key, beside it, of the network's own scores: its predictions stitched without the offset fit
# (phase-synchronised only). With the fit a score is the network's and the fit's together; the
# fit-alone reference says what the fit makes of flat patches, this what the network makes without
# the fit. On the default job the network alone resolves about 18 px in amplitude where the two
# together resolve 4.4 (docs/quality.md, "What the network and the fit each give"). Reported, not
# flagged: the fit is tuned as an early stop and may trade a little of one score for others.
NETWORK_ALONE = "network_alone"
UNFITTED_LABEL = "network alone (no offset fit)"
# Every evaluation's figure of where the network's patches carry the truth's structure.
PATCH_FIGURE = "patches.png"
# Key, beside them, of the network's crops scored against the truth's crops at the same positions,
# each relative to its own level (``patch_scores``): what the network predicts inside a patch, taken
# before the offset fit, so none of the fit's per-patch terms enter it. A flat network scores 0
# there, whatever its stitched scores (the user-style phase: the fit alone reaches correlation 0.75).
PATCH_CORR = "patch_corr"
# Below this the log warns that the network's patches carry next to none of the truth's structure
# in a part (not a flag: no reference is beaten or not; docs/decisions.md). An untrained network
# scores about 0; the user-style files' phase 0.06 (single) and 0.006 (refined), the embedded
# object's 0.73 and the coins' amplitude 0.87.
PATCH_CORR_WARN = 0.1
# Key, beside the parts, of how well the reconstruction explains the test patterns (``data_fit``:
# the Poisson deviance over its noise floor, needing no truth), with the same ratio for the flat
# object, the truth (the data's own object), the fit alone and the network alone beside it.
DATA_FIT = "data_fit"
# Key, in the refined arm's metrics.json, of the field-wide phase plane it took from the single
# pass (``phase_plane``): the span of its own plane replaced, in rad, and its data fit before,
# which the replacement leaves in the fourth digit or better (the patterns cannot see the plane).
KEPT_PLANE = "single_pass_plane"
# metrics.json keys that are wall-clock times.
TIMING_KEYS = ("inference_s", "evaluate_s", "fit_alone_s", "network_alone_s", "patch_scores_s", "data_fit_s")
# Key, in metrics.json, of where the test split's references were computed: null for this
# evaluation, else the evaluation or cache entry (``reference_cache``) that computed them.
REFERENCES_FROM = "references_from"
# metrics.json keys a faithful re-run may change: its times, and where its references came from.
RUN_DEPENDENT_KEYS = (*TIMING_KEYS, REFERENCES_FROM)


# The rim every registered image loses at least (``register``): what a sub-pixel shift trims.
MIN_TRIM_PX = 2


def register(rec: np.ndarray, gt: np.ndarray, upsample_factor: int,
             max_shift: float) -> tuple[np.ndarray, tuple[float, float], int, bool]:
    """Shift ``rec`` onto ``gt`` (sub-pixel); return it, the shift (dy, dx), the margin to trim, and
    whether the shift was applied.

    Positions are known, so a correct reconstruction is off by a pixel or two at most; a larger
    peak means the cross-correlation found nothing real, and the shift is refused rather than
    letting a failed reconstruction be cropped into a flattering corner.

    The margin is the rim the Fourier shift wraps around, ``ceil(|shift|) + 1`` px, and at least
    ``MIN_TRIM_PX`` (what any sub-pixel shift trims) when the shift is exactly zero: a zero is one
    of the upsampled correlation's 1/``upsample_factor`` steps, and trimming nothing then scored
    that method on a wider, poorly lit rim than one registered 0.05 px away (before 2026-12-04).
    """
    shift, _, _ = phase_cross_correlation(gt, rec, upsample_factor=upsample_factor, normalization=None)
    found, largest = (float(shift[0]), float(shift[1])), float(np.max(np.abs(shift)))
    if largest > max_shift:
        return rec, found, 0, False
    moved = np.fft.ifft2(fourier_shift(np.fft.fft2(rec), shift)) if largest > 0 else rec
    return moved.astype(np.complex64), found, max(MIN_TRIM_PX, math.ceil(largest) + 1), True


def align(rec: np.ndarray, gt: np.ndarray, remove_plane: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Amplitude scaled to the ground truth's mean; phase offset (and plane) removed.

    Returns aligned amplitude and phase images and what was removed.
    """
    amp = np.abs(rec).astype(np.float64)
    scale = float(np.abs(gt).mean() / max(amp.mean(), 1e-12))
    amp *= scale
    offset = float(np.angle(np.sum(rec * np.conj(gt))))
    rel = rec * np.exp(-1j * offset)
    info: dict[str, Any] = {"amplitude_scale": scale, "phase_offset": offset, "phase_plane": None}
    if remove_plane:
        diff = np.angle(rel * np.conj(gt))
        yy, xx = np.mgrid[0 : gt.shape[0], 0 : gt.shape[1]]
        design = np.column_stack((xx.ravel(), yy.ravel(), np.ones(xx.size)))
        coef, *_ = np.linalg.lstsq(design, diff.ravel(), rcond=None)
        rel = rel * np.exp(-1j * (design @ coef).reshape(gt.shape))
        info["phase_plane"] = {"per_px_x": float(coef[0]), "per_px_y": float(coef[1]), "offset": float(coef[2])}
    return amp, np.angle(rel), info


def aligned_pair(stitched: Stitched, gt_object: np.ndarray,
                 cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The scored region of a reconstruction, registered and aligned: amplitude and phase images,
    the ground truth on the same pixels, and what was done to get there."""
    r0, r1, c0, c1 = stitched.bbox
    rec = stitched.obj[r0:r1, c0:c1]
    gt = gt_object[r0:r1, c0:c1]
    moved, shift, margin, applied = register(rec, gt, cfg.upsample_factor, cfg.max_shift_px)
    if margin:
        moved, gt = moved[margin:-margin, margin:-margin], gt[margin:-margin, margin:-margin]
    amp, phase, removed = align(moved, gt, cfg.remove_phase_plane)
    info = {"registration": {"shift_yx": shift, "applied": applied, "max_shift_px": cfg.max_shift_px,
                             "upsample_factor": cfg.upsample_factor, "trimmed_margin_px": margin},
            "alignment": {**removed, "remove_phase_plane": cfg.remove_phase_plane},
            "region": {"bbox_rows_cols": [r0, r1, c0, c1], "shape": list(gt.shape)}}
    return amp, phase, gt, info


def score_reconstruction(stitched: Stitched, gt_object: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    amp, phase, gt, info = aligned_pair(stitched, gt_object, cfg)
    return {
        "amplitude": score_image(amp, np.abs(gt)),
        "phase": score_image(phase, np.angle(gt)),
        **info,
        "psnr_cap_db": PSNR_CAP_DB,
        "aligned": (amp * np.exp(1j * phase)).astype(np.complex64),
        "ground_truth": gt.astype(np.complex64),
    }


# Said of a part whose truth is constant, where its headline scores are None (``headline``).
NOT_SCORED = "not scored: its truth is constant"


def headline(scores: dict[str, Any]) -> dict[str, float | None]:
    """The scores a summary line and a table show; None for a part whose truth is constant (the
    phase of an amplitude-only object), where they would measure nothing (``metrics.score_image``)."""
    out: dict[str, float | None] = {}
    for part in PARTS:
        s = scores[part]
        if s.get("constant_truth"):
            out.update({f"{part}_{key}": None for key in ("ssim", "corr", "psnr", "frc50_px")})
            continue
        out[f"{part}_ssim"] = s["ssim"]
        out[f"{part}_corr"] = s.get("pearson")
        out[f"{part}_psnr"] = s["psnr"]
        out[f"{part}_frc50_px"] = s["frc_0_5"]["period_px"]
        if "flat" in s:
            out[f"{part}_flat_ssim"] = s["flat"]["ssim"]
        if FIT_ALONE in s:
            out[f"{part}_fit_alone_ssim"] = s[FIT_ALONE]["ssim"]
        if NETWORK_ALONE in s:
            out[f"{part}_network_alone_ssim"] = s[NETWORK_ALONE]["ssim"]
        if PATCH_CORR in s:
            out[f"{part}_{PATCH_CORR}"] = s[PATCH_CORR]
    if DATA_FIT in scores:
        out["data_fit_ratio"] = scores[DATA_FIT]["ratio"]
    return out


def _patch_note(head: dict[str, Any], part: str) -> str:
    value = head.get(f"{part}_{PATCH_CORR}")
    return "" if value is None else f" (its patches against the truth's: corr {value:.3f})"


def unscored_parts(head: dict[str, Any]) -> list[str]:
    """The parts ``headline`` left unscored (None): their truth is constant."""
    return [part for part in PARTS if f"{part}_ssim" in head and head[f"{part}_ssim"] is None]


def _flags(scores: dict[str, Any], reference: str, what: str) -> list[str]:
    flags = []
    for part in PARTS:
        s = scores[part]
        if reference not in s or s.get("constant_truth"):  # a flat image matches a constant truth exactly
            continue
        for key, better in beats(s, reference).items():
            if not better:
                flags.append(f"{part} {key} {s[key]:.3f} does not beat {what} ({s[reference][key]:.3f})")
    fit = scores.get(DATA_FIT, {})
    if reference in fit and not fit["ratio"] < fit[reference]:  # the patterns' deviance: lower is better
        flags.append(f"data fit {fit['ratio']:.3f} x the noise floor does not beat {what} ({fit[reference]:.3f})")
    return flags


def flat_image_flags(scores: dict[str, Any]) -> list[str]:
    """Plain-language flags for every score where the reconstruction does not beat a flat image,
    the truth's scores and the test patterns' data fit alike."""
    return _flags(scores, "flat", "a flat image")


def fit_alone_flags(scores: dict[str, Any]) -> list[str]:
    """Flags for every score where the network's reconstruction does not beat the offset fit on
    flat patches: there the fit, not the network, made the scores. The data fit's flag needs no
    truth: on measured data it is the one that says the network added nothing the data show."""
    return _flags(scores, FIT_ALONE, "the offset fit on flat patches")


@dataclass(frozen=True)
class FitAlone:
    """The offset fit's own scores on flat patches, per part, and its data-fit ratio: computed once
    per job and given to the refined arm's evaluation (the same test patterns and fit)."""

    scores: dict[str, dict[str, float]]
    data_fit: float


@dataclass(frozen=True)
class SplitReferences:
    """What every evaluation of one test split is read against and no model changes: the data fit
    of a flat object and of the truth (``data_fit.reference_ratios``) and, where the offset fit
    runs, that fit on flat patches. A job's first evaluation computes them (or reads them from the
    cache of an earlier job's, ``reference_cache``); its refined arm is given them
    (``split_references`` of the first's metrics). ``source`` says where they were computed."""

    data_fit: dict[str, float]
    fit_alone: FitAlone | None
    source: str


def split_references(metrics: dict[str, Any], source: str) -> SplitReferences:
    """The references an evaluation's ``metrics`` hold, for the next evaluation of its test split;
    ``source`` names that evaluation, unless its own were given (then theirs is kept)."""
    fit = metrics[DATA_FIT]
    alone = FitAlone({part: metrics[part][FIT_ALONE] for part in PARTS}, fit[FIT_ALONE]) if FIT_ALONE in fit else None
    return SplitReferences({key: fit[key] for key in REFERENCES if key in fit}, alone,
                           metrics.get(REFERENCES_FROM) or source)


def fit_alone_scores(test: PtychoData, gridsize: int, neighbours: int, cfg: EvalConfig,
                     fit: OffsetFit, device: str = "cpu", region: Region | None = None) -> FitAlone:
    """SSIM, PSNR, correlation and FRC50 of the offset fit ``fit`` (the network's settings)
    applied to flat patches (no network), and how well that object explains the test patterns.

    The fit (offsets, gains and shape terms per patch, ``phase_offsets``) is itself a small
    iterative solve on the test patterns: on the default job it reaches phase correlation 0.91
    from flat patches (docs/quality.md). Scoring it beside every network shows what the network
    adds, as the flat image shows what any reconstruction adds.
    """
    stitched = reconstruct_flat(test, gridsize, neighbours, cfg.stitch_crop, cfg.sync_phase, cfg.tile_patches, fit,
                                device, region)
    return FitAlone(reference_of(stitched, test.obj, cfg).scores, data_fit(stitched.obj, test).ratio)


@dataclass
class Reference:
    """A reference reconstruction, scored: per part the scores flags compare (``beats``: SSIM,
    PSNR, correlation) and the FRC50; its registered, aligned image and the truth on its pixels
    (for figures); the FRC curves (frequency, FRC) per part."""

    scores: dict[str, dict[str, float]]
    image: np.ndarray
    truth: np.ndarray
    curves: dict[str, tuple[np.ndarray, np.ndarray]]


def reference_of(stitched: Stitched, gt_object: np.ndarray, cfg: EvalConfig) -> Reference:
    """A reference reconstruction (the fit on flat patches, or the network without the fit),
    registered and aligned as a method's own is (``aligned_pair``), and scored."""
    amp, phase, gt, _ = aligned_pair(stitched, gt_object, cfg)
    scores, curves = {}, {}
    for part, pred, truth in (("amplitude", amp, np.abs(gt)), ("phase", phase, np.angle(gt))):
        curves[part] = frc_curve(pred, truth)
        scores[part] = {**reference_scores(pred, truth), "frc50_px": frc_resolution(*curves[part], 0.5)["period_px"]}
    return Reference(scores, (amp * np.exp(1j * phase)).astype(np.complex64), gt.astype(np.complex64), curves)


def write_evaluation(run_dir: Path, scores: dict[str, Any], title: str, extra: dict[str, Any],
                     unfitted: Reference | None = None) -> dict[str, Any]:
    """metrics.json, reconstruction.npz and figures for one method's scores; with ``unfitted`` (the
    network alone) its image and FRC curves beside the reconstruction's in the figures."""
    aligned, gt = scores.pop("aligned"), scores.pop("ground_truth")
    metrics = {**scores, **extra, "headline": headline(scores), "flat_image_flags": flat_image_flags(scores),
               "fit_alone_flags": fit_alone_flags(scores)}
    atomic_write_json(run_dir / "metrics.json", metrics)

    def _npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, object=aligned, ground_truth=gt)

    atomic_write_with(run_dir / RECONSTRUCTION_FILE, _npz)
    panels = {"ground truth": (gt, None), "reconstruction": (aligned, gt)}
    curves = {part: (np.asarray(scores[part]["frc_curve"]["frequency"]), np.asarray(scores[part]["frc_curve"]["frc"]))
              for part in PARTS}
    if unfitted is not None:
        panels[UNFITTED_LABEL] = (unfitted.image, unfitted.truth)
        curves.update({f"{part}, {UNFITTED_LABEL}": unfitted.curves[part] for part in PARTS})
    complex_panels(run_dir / "reconstruction.png", panels, title)
    frc_curves(run_dir / "frc.png", curves, f"FRC against ground truth {title}")
    return metrics


def offset_fit(cfg: EvalConfig) -> OffsetFit:
    """The offset fit these settings ask for: none (0 steps) without phase synchronisation, which
    it starts from. Evaluations, metrics and bundles all read it from here."""
    return OffsetFit(cfg.offset_fit_steps if cfg.sync_phase else 0, cfg.offset_fit_lr, cfg.offset_fit_gains,
                     cfg.offset_fit_order, cfg.offset_fit_ramp, cfg.offset_fit_average, cfg.offset_fit_phase_tv,
                     cfg.offset_fit_amplitude_tv)


@dataclass
class _PatchScorer:
    """The ``inspect_crops`` callback of ``reconstruct``: scores the network's crops against the
    truth's as the stitching receives them (``patch_agreement``), and keeps what the patch figure
    needs (each position's correlation and, per part, the crop of median correlation and the
    truth's at its position); timed under ``patch_scores_s`` on ``watch``, so that the method's time,
    inside which it runs, stays the method's."""

    test: PtychoData
    watch: Stopwatch
    scores: dict[str, float | None] = field(default_factory=dict)
    per_position: dict[str, np.ndarray] = field(default_factory=dict)
    example: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)

    def __call__(self, crops: np.ndarray, members: np.ndarray) -> None:
        with self.watch("patch_scores_s"):
            test = self.test
            agreement = patch_agreement(crops, members, test.xcoords, test.ycoords, test.obj, test.probe)
            self.scores = agreement.pooled
            self.per_position = agreement.per_position(members, test.n_positions)
            self.example = median_crops(agreement, crops, members, test.xcoords, test.ycoords, test.obj, test.probe)

    def draw(self, path: Path, title: str) -> None:
        """The patch figure (``figures.patch_map``) of the parts that have an example."""
        with self.watch("patch_scores_s"):
            parts = [part for part in PARTS if part in self.example]
            if parts:
                patch_map(path, self.test.obj, self.test.xcoords, self.test.ycoords,
                          {part: self.per_position[part] for part in parts}, self.scores, self.example, title)


def _log_start(title: str, test: PtychoData, fit: ResolvedFit) -> None:
    fitted = (f", their offsets fitted to the data: {fit.steps} steps at lr {fit.lr:.3g}"
              f"{f', the last {fit.average:.0%} averaged' if fit.average else ''}, shape terms of order "
              f"{fit.order}{f', phase total variation {fit.phase_tv:g}' if fit.phase_tv else ''}"
              f"{f', amplitude total variation {fit.amplitude_tv:g}' if fit.amplitude_tv else ''} "
              f"({test.mean_counts:.0f} counts per pattern)") if fit.active else ""
    log.info("%s: evaluating %d test positions (predicted, stitched%s)", title, test.n_positions, fitted)


def _data_fit_note(fit: dict[str, float]) -> str:
    beside = ", ".join(f"{name} {fit[key]:.2f}" for key, name in DATA_FIT_REFERENCES.items() if key in fit)
    return f"; the test patterns' deviance {fit['ratio']:.3f} x its noise floor ({beside})"


def _log_outcome(title: str, metrics: dict[str, Any]) -> None:
    """The summary line, then a warning per flag and per part whose patches carry next to nothing."""
    head, unscored = metrics["headline"], unscored_parts(metrics["headline"])
    log.info("%s %s%s", title, ", ".join(
        f"{part} {NOT_SCORED}" if part in unscored else
        f"{part} SSIM {head[f'{part}_ssim']:.3f} corr {head[f'{part}_corr']:.3f}{_patch_note(head, part)}"
        for part in PARTS), _data_fit_note(metrics[DATA_FIT]))
    for flag in metrics["flat_image_flags"] + metrics["fit_alone_flags"]:
        log.warning("%s: %s", title, flag)
    for part in PARTS:
        value = head.get(f"{part}_{PATCH_CORR}")
        if value is not None and value < PATCH_CORR_WARN:
            log.warning("%s: the network's %s patches carry next to none of the truth's structure (corr %.3f "
                        "against the truth's patches): its %s scores come from the offset fit and the other part",
                        title, part, value, part)


def evaluate_reconstruction(model: PtychoModule, test: PtychoData, gridsize: int, neighbours: int,
                            cfg: EvalConfig, run_dir: Path, title: str,
                            references: SplitReferences | None = None, device: str = "cpu",
                            plane_from: Stitched | None = None, region: Region | None = None) -> dict[str, Any]:
    """Reconstruct, score and write ``metrics.json`` with its figures, and the stitched object as
    reconstructed (``object.npz``, ``stitching.write_object``). With ``plane_from`` (the refined
    arm is given the single pass's object) the reconstruction takes that object's field-wide phase
    plane, a mode the patterns cannot see (``phase_plane``); ``metrics.json`` records the span
    replaced and the data fit before (``KEPT_PLANE``).

    Beside each part's scores go three references: the network's crops against the truth's
    (``PATCH_CORR``, every evaluation: no other score separates what the network predicts from
    what the fit adds); with the offset fit on, the network's predictions stitched without it
    (``NETWORK_ALONE``, from the same predictions; its image and FRC curves join the figures) and
    the fit's own scores on flat patches (``FIT_ALONE``). Beside the parts, ``DATA_FIT``: how well
    the reconstruction explains the test patterns, with the same for a flat object, the truth and
    those references. The test split's own references (the fit alone, the flat object's and the
    truth's data fits) are computed here unless given, as the refined arm is given the single
    pass's (``split_references``) and a job the cache's (``reference_cache``); ``REFERENCES_FROM``
    records where given ones were computed. ``region``: the evaluated area where it is not
    ``test``'s own (``stitching.reconstruct``).
    ``inference_s`` times this method's reconstruction and ``evaluate_s`` its scoring too; each
    reference computed here has its own time (``patch_scores_s``, ``network_alone_s``,
    ``fit_alone_s``, ``data_fit_s``; None where it was not computed), kept out of the method's. The
    network's predictions and the offset fit run on ``device`` (``stitching.reconstruct``)."""
    watch = Stopwatch()
    patches = _PatchScorer(test, watch)
    with watch("inference_s"):
        settings = offset_fit(cfg)
        fit = settings.for_counts(test.mean_counts)  # as reconstruct resolves it: for the log and metrics.json
        _log_start(title, test, fit)
        stitched = reconstruct(model, test, gridsize, neighbours, cfg.stitch_crop, cfg.batch_size,
                               sync_phase=cfg.sync_phase, tile_patches=cfg.tile_patches, scratch_dir=run_dir,
                               offset_fit=settings, average_symmetries=cfg.average_symmetries, device=device,
                               also_unfitted=cfg.network_alone, inspect_crops=patches, region=region)
    kept = None
    if plane_from is not None:
        with watch("data_fit_s"):  # the record that the patterns cannot see the plane, not the method's time
            before = data_fit(stitched.obj, test).ratio
        with watch("inference_s"):
            stitched, span = keep_plane(stitched, plane_from)
        kept = {"span_rad": span, "data_fit_ratio_before": before}
        log.info("%s: the phase plane kept from the given object (its own differed by %.3f rad across the scan; "
                 "data fit before %.5f)", title, span, before)
    with watch("scoring"):
        write_object(run_dir / OBJECT_FILE, stitched)
        scores = score_reconstruction(stitched, test.obj, cfg)

    with watch("data_fit_s"):
        fitted = data_fit(stitched.obj, test)
        yardsticks = reference_ratios(test) if references is None else references.data_fit
        scores[DATA_FIT] = {**fitted.summary(), **yardsticks}
    alone = None
    if stitched.unfitted is not None:
        with watch("network_alone_s"):
            alone = reference_of(stitched.unfitted, test.obj, cfg)
            scores[DATA_FIT][NETWORK_ALONE] = data_fit(stitched.unfitted.obj, test).ratio
    fit_alone = None
    if fit.active and cfg.fit_alone:
        fit_alone = None if references is None else references.fit_alone
        if fit_alone is None:
            log.info("%s: the fit-alone reference (the same offset fit on flat patches)", title)
            with watch("fit_alone_s"):
                fit_alone = fit_alone_scores(test, gridsize, neighbours, cfg, settings, device, region)  # the same fit
        scores[DATA_FIT][FIT_ALONE] = fit_alone.data_fit
    for part in PARTS:
        scores[part][PATCH_CORR] = patches.scores[part]
        if alone is not None:
            scores[part][NETWORK_ALONE] = alone.scores[part]
        if fit_alone is not None:
            scores[part][FIT_ALONE] = fit_alone.scores[part]

    patches.draw(run_dir / PATCH_FIGURE, f"The network's patches against the truth's: {title}")
    with watch("data_fit_s"):
        data_fit_map(run_dir / DATA_FIT_FIGURE, stitched.obj, test.xcoords, test.ycoords, fitted.per_position,
                     scores[DATA_FIT], f"How well the reconstruction explains each test pattern: {title}")
    times = {key: watch.seconds(key) for key in TIMING_KEYS} | {"evaluate_s": watch.seconds("inference_s", "scoring")}
    extra = {**times, "test_positions": test.n_positions, "stitch_crop": cfg.stitch_crop or test.N // 2,
             "sync_phase": cfg.sync_phase, **fit.inference(),  # the fit's settings as resolved for this data
             "average_symmetries": cfg.average_symmetries, "device": device,
             REFERENCES_FROM: None if references is None else references.source}
    if kept is not None:
        extra[KEPT_PLANE] = kept
    metrics = write_evaluation(run_dir, scores, title, extra, alone)
    _log_outcome(title, metrics)
    return metrics
