"""Reconstruction: predict each group's patches (``prediction``), place their central crops on the
object canvas (``placement``), make their phases agree (``phase_sync``), fit their offsets to
the measured patterns (``phase_offsets``) and stitch them into one object, tile by tile."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from . import heap
from .bundle import Bundle
from .data import PtychoData
from .errors import PtylabError
from .grouping import Groups, group_positions
from .models import PtychoModule
from .phase_offsets import FIT_COMPLEX, FIT_REAL, Evidence, OffsetFit, fit_offsets
from .phase_sync import SYNC_MAX_STEPS, SYNC_TOL, phase_sync, projected_power_steps
from .physics import effective_probe_radius
from .placement import MIN_WEIGHT_SHARE, central, patch_grid, place
from .prediction import model_from_weights, predict_crops, with_model_probe
from .progress import Progress
from .symmetries import averaged_transforms, symmetry_average

log = logging.getLogger(__name__)


# Patches phase-synchronised and placed together; bounds evaluation memory (~350 MB at crop 32).
DEFAULT_TILE_PATCHES = 4096
Region = tuple[int, int, int, int]  # row0, row1, col0, col1 (exclusive ends)


@dataclass
class Stitched:
    obj: np.ndarray  # (H, W) complex64; empty pixels: inside bbox their nearest stitched value, outside zero
    weight: np.ndarray  # (H, W) float32 accumulated bilinear weights
    bbox: Region  # the scanned area
    # When asked for (``stitch``'s ``also_unfitted``): the same patches synchronised but not fitted
    # to the data, a by-product of the fit's own start (the network-alone reference).
    unfitted: Stitched | None = None


def spatial_tiles(x: np.ndarray, y: np.ndarray, max_patches: int) -> list[np.ndarray]:
    """Split positions into compact tiles of at most about ``max_patches``: k strips of equal count
    along y, each cut into k blocks of equal count along x. One tile when everything fits."""
    m = len(x)
    if m <= max_patches:
        return [np.arange(m)]
    k = math.ceil(math.sqrt(m / max_patches))
    tiles = []
    for strip in np.array_split(np.argsort(y, kind="stable"), k):
        tiles += [np.sort(block) for block in np.array_split(strip[np.argsort(x[strip], kind="stable")], k)]
    return [t for t in tiles if len(t)]


@dataclass
class _Tile:
    """One tile's (phase-synchronised) value and weight sums on its own box of the canvas."""

    box: Region
    values: np.ndarray  # (rows, cols) complex128
    weights: np.ndarray  # (rows, cols) float64
    unfitted: np.ndarray | None = None  # the values before the offset fit, when kept


def _stitch_tile(crops: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], crop: int,
                 sync_phase: bool, illumination: np.ndarray | None, evidence: Evidence | None,
                 patch_index: np.ndarray, device: str | torch.device = "cpu", keep_unfitted: bool = False) -> _Tile:
    h, w = shape
    half = crop // 2
    r0, r1 = max(0, math.floor(y.min()) - half), min(h, math.floor(y.max()) - half + crop + 1)
    c0, c1 = max(0, math.floor(x.min()) - half), min(w, math.floor(x.max()) - half + crop + 1)
    # Integer box offsets keep every sub-pixel shift, so a tile places exactly as the whole canvas would.
    xs, ys = x - c0, y - r0  # the patches' positions on the tile's canvas
    placement = place(np.asarray(crops), xs, ys, (r1 - r0, c1 - c0), crop, illumination)
    phasors = phase_sync(placement) if sync_phase and len(x) > 1 else None
    unfitted = None
    if phasors is not None and evidence is not None and evidence.fit.active:
        if keep_unfitted:  # without a fit the values are the unfitted ones already
            unfitted = placement.value_sum(phasors).reshape(r1 - r0, c1 - c0).numpy()
        # The fit, an evaluation's largest cost, runs on ``device``; synchronisation (double
        # precision, an eigensolver) and the final sum stay on the CPU.
        inv_weight = placement.inverse_weight().to(device, FIT_REAL)  # the same at every step: computed once
        # The canvas in the fit's precision, on its device.
        fitted = replace(placement, values=placement.values.to(device, FIT_COMPLEX), index=placement.index.to(device))
        phasors = fit_offsets(lambda ph: (fitted.value_sum(ph) * inv_weight).reshape(r1 - r0, c1 - c0),
                              phasors.to(device), evidence, np.unique(evidence.pattern[patch_index]), (r0, c0),
                              patch_grid(xs, ys, crop).to(device), (xs, ys)).cpu()
    return _Tile((r0, r1, c0, c1), placement.value_sum(phasors).reshape(r1 - r0, c1 - c0).numpy(),
                 placement.weight_sum().reshape(r1 - r0, c1 - c0).numpy(), unfitted)


def _sync_tiles(tiles: list[_Tile], values: list[np.ndarray], weight: np.ndarray) -> np.ndarray:
    """Phase factors that make the tiles agree where they overlap: the same objective, and the
    same power steps to a fixed point, as ``phase_sync`` with whole tiles in place of patches,
    A[s, t] = sum conj(V_s) V_t / W, V being each tile's ``values`` (fitted or unfitted)."""
    inv_w = np.where(weight > 1e-6, 1.0 / np.maximum(weight, 1e-6), 0.0)
    a = np.zeros((len(tiles), len(tiles)), np.complex128)
    for s, ts in enumerate(tiles):
        for t in range(s, len(tiles)):
            tt = tiles[t]
            r0, r1 = max(ts.box[0], tt.box[0]), min(ts.box[1], tt.box[1])
            c0, c1 = max(ts.box[2], tt.box[2]), min(ts.box[3], tt.box[3])
            if r0 >= r1 or c0 >= c1:
                continue
            vs = values[s][r0 - ts.box[0] : r1 - ts.box[0], c0 - ts.box[2] : c1 - ts.box[2]]
            vt = values[t][r0 - tt.box[0] : r1 - tt.box[0], c0 - tt.box[2] : c1 - tt.box[2]]
            a[s, t] = np.sum(np.conj(vs) * vt * inv_w[r0:r1, c0:c1])
            a[t, s] = np.conj(a[s, t])
    matrix = torch.from_numpy(a)
    return projected_power_steps(lambda u: matrix @ u, torch.from_numpy(np.linalg.eigh(a)[1][:, -1]),
                                  SYNC_MAX_STEPS, SYNC_TOL, f"{len(tiles)} tiles").numpy()


def stitch(patches: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], crop: int,
           sync_phase: bool = False, illumination: np.ndarray | None = None,
           bbox: Region | None = None, tile_patches: int = DEFAULT_TILE_PATCHES,
           evidence: Evidence | None = None, device: str | torch.device = "cpu",
           also_unfitted: bool = False) -> Stitched:
    """Average the central ``crop`` x ``crop`` region of each patch into an object of ``shape``.

    Sub-pixel positions: each crop is shifted by its fractional offset with the bilinear sampler
    (the same one the simulator uses) and added with matching bilinear weights. ``illumination``
    (N, N), typically |P|^2, weights each patch pixel by how strongly the data constrain it:
    the object is sum(|P|^2 o) / sum(|P|^2), the usual ptychographic average, so pixels the probe
    barely lit do not blur the result. With ``sync_phase`` each patch's phase offset is first
    made consistent with its neighbours, and with ``evidence`` (the measured patterns behind the
    patches) then fitted to the data (``phase_offsets``, on ``device``). ``bbox`` is the area to
    evaluate (default: the area the crops cover).

    Memory does not grow with the number of patches: they are placed (and synchronised) in
    spatial tiles of at most ``tile_patches``, read from ``patches`` one tile at a time (it may be
    a memory map), and the tiles' phases are then synchronised with each other on their overlaps.
    A scan that fits in one tile is stitched exactly as a whole.

    With ``also_unfitted`` the result's ``unfitted`` is the same patches synchronised but not
    fitted: the fit's start, kept on the way, so nothing is placed or synchronised twice (None
    when no fit ran: the object itself is then unfitted).
    """
    h, w = shape
    patches = central(patches, crop)
    if illumination is not None:
        illumination = central(illumination, crop)
    tiles: list[_Tile] = []
    tile_index = spatial_tiles(np.asarray(x), np.asarray(y), tile_patches)
    progress = Progress(f"stitching tiles of {tile_patches} patches", len(tile_index))
    for idx in tile_index:
        progress.update(len(tiles))
        tiles.append(_stitch_tile(patches[idx], x[idx], y[idx], shape, crop, sync_phase, illumination, evidence,
                                  idx, device, also_unfitted))
        heap.trim()  # the next tile reuses none of this tile's temporaries' fragmented heap
    weight = np.zeros(shape, np.float64)
    for t in tiles:
        weight[t.box[0] : t.box[1], t.box[2] : t.box[3]] += t.weights
    box = bbox or scanned_bbox(x, y, crop, (h, w))

    def assemble(values: list[np.ndarray]) -> Stitched:
        """The tiles' ``values``, synchronised with each other, as one object."""
        phasors = (_sync_tiles(tiles, values, weight) if sync_phase and len(tiles) > 1
                   else np.ones(len(tiles), np.complex128))
        total = np.zeros(shape, np.complex128)
        for t, v, phasor in zip(tiles, values, phasors, strict=True):
            total[t.box[0] : t.box[1], t.box[2] : t.box[3]] += phasor * v
        valid = weight > MIN_WEIGHT_SHARE * float(weight.max())
        obj = np.zeros(shape, np.complex64)
        obj[valid] = total[valid] / weight[valid]
        fill_from_nearest(obj, valid, box)
        return Stitched(obj, weight.astype(np.float32), box)

    stitched = assemble([t.values for t in tiles])
    if any(t.unfitted is not None for t in tiles):  # asked for, and a fit ran
        stitched.unfitted = assemble([t.values if t.unfitted is None else t.unfitted for t in tiles])
    return stitched


def fill_from_nearest(obj: np.ndarray, valid: np.ndarray, box: Region) -> None:
    """Give each pixel of ``box`` outside ``valid`` the value of its nearest ``valid`` pixel, in place.

    The evaluated area (the scan widened by the probe's effective radius) reaches corners that only
    the rims of corner patches touch, below ``MIN_WEIGHT_SHARE`` of the largest weight: left as
    zeros they score as amplitude 0 and an arbitrary phase (on the user-style files 6 such pixels
    past registration's trimmed margin cost the phase 0.03 of correlation), and admitted they are
    rim values divided by a tiny weight, noise at low dose (1e3 lost 0.7 dB). The nearest stitched
    value is the plain edge extension; it changes no pixel the stitch constrains (docs/quality.md,
    "Empty pixels filled from their nearest stitched pixel").
    """
    r0, r1, c0, c1 = box
    inside = valid[r0:r1, c0:c1]
    if inside.all() or not inside.any():
        return
    rows, cols = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
    region = obj[r0:r1, c0:c1]
    region[...] = region[rows, cols]


def illuminated_bbox(data: PtychoData) -> Region:
    """The evaluated area, the same for every method: the scan widened by the probe's effective radius."""
    return scanned_bbox(data.xcoords, data.ycoords, 2 * effective_probe_radius(data.probe), data.obj.shape)


def scanned_bbox(x: np.ndarray, y: np.ndarray, crop: float, shape: tuple[int, int]) -> Region:
    """Rows and columns covered by a ``crop``-wide region around each position (x, y)."""
    h, w = shape
    half = crop / 2
    return (max(0, math.floor(y.min() - half + 1)), min(h, math.ceil(y.max() + half)),
            max(0, math.floor(x.min() - half + 1)), min(w, math.ceil(x.max() + half)))


def reconstruct(model: PtychoModule, data: PtychoData, gridsize: int, neighbours: int, crop: int | None,
                batch_size: int = 64, device: str | torch.device = "cpu", sync_phase: bool = True,
                tile_patches: int = DEFAULT_TILE_PATCHES, scratch_dir: Path | None = None,
                offset_fit: OffsetFit | None = None, average_symmetries: str = "none",
                also_unfitted: bool = False,
                inspect_crops: Callable[[np.ndarray, np.ndarray], None] | None = None,
                region: Region | None = None) -> Stitched:
    """Group the dataset's positions as in training (one group per anchor), predict, stitch.

    With ``average_symmetries`` ("point" or "all", ``symmetries.averaged_transforms``) each
    group's prediction is averaged over those of the data's probe's symmetries
    (``predict_crops``; none found: the prediction as it is).

    With ``offset_fit`` (and ``sync_phase``) the synchronised per-patch phase offsets (and gains,
    and shape terms) are then fitted to the dataset's own patterns (``phase_offsets``): the same
    patterns the network saw, nothing else. With ``also_unfitted`` the result's ``unfitted`` is the
    same predictions synchronised but not fitted (``stitch``): what the network alone gives, for
    ``evaluation``'s network-alone reference. ``inspect_crops``, if given, is called with the
    predicted crops (G * C, crop, crop) and each crop's pattern index before they are stitched,
    while they exist (``evaluation`` scores them against the truth's, ``patch_scores``).
    ``region``: the evaluated area (default ``illuminated_bbox(data)``; a job whose network learnt
    its probe passes the file's, so every method is scored on the same pixels).

    Streams: patterns are read batch by batch, predicted crops wait in an unlinked scratch file in
    ``scratch_dir`` (default: the system's temporary directory; the job passes its run directory,
    since /tmp may be memory-backed), and stitching works tile by tile.
    """
    groups = group_positions(data.xcoords, data.ycoords, gridsize, neighbours)
    crop = crop or data.N // 2
    with tempfile.TemporaryFile(prefix=".ptylab-crops-", dir=scratch_dir) as scratch:
        transforms = averaged_transforms(data.probe, average_symmetries, data.valid_pixels)
        if average_symmetries != "none":
            log.info("averaging each prediction over %d of the probe's symmetries (%s)%s", len(transforms),
                     average_symmetries,
                     "" if len(transforms) > 1 else ": none but the identity, the predictions as they are")
        crops = predict_crops(model, data.diff3d, groups, crop, batch_size, device, scratch, transforms)
        if inspect_crops is not None:
            inspect_crops(crops, groups.indices.ravel())
        return _stitch_groups(crops, groups, data, crop, sync_phase, tile_patches, offset_fit, device, also_unfitted,
                              region)


def reconstruct_flat(data: PtychoData, gridsize: int, neighbours: int, crop: int | None, sync_phase: bool = True,
                     tile_patches: int = DEFAULT_TILE_PATCHES, offset_fit: OffsetFit | None = None,
                     device: str | torch.device = "cpu", region: Region | None = None) -> Stitched:
    """``reconstruct`` with every patch flat (amplitude 1, phase 0) instead of a network's: what
    the offset fit reconstructs on its own, the reference a network must beat
    (``evaluation.fit_alone_scores``)."""
    groups = group_positions(data.xcoords, data.ycoords, gridsize, neighbours)
    crop = crop or data.N // 2
    # A read-only view: no memory per patch, as with the network's scratch file.
    crops = np.broadcast_to(np.ones((1, crop, crop), np.complex64), (groups.indices.size, crop, crop))
    return _stitch_groups(crops, groups, data, crop, sync_phase, tile_patches, offset_fit, device, region=region)


def _stitch_groups(crops: np.ndarray, groups: Groups, data: PtychoData, crop: int, sync_phase: bool,
                   tile_patches: int, offset_fit: OffsetFit | None, device: str | torch.device,
                   also_unfitted: bool = False, region: Region | None = None) -> Stitched:
    """Stitch one crop per group member at its position, with the offset fit's evidence if asked
    (and the unfitted stitch beside it, ``stitch``'s ``also_unfitted``)."""
    flat = groups.indices.ravel()
    illumination = np.abs(data.probe) ** 2
    evidence = (Evidence(data.diff3d, flat, data.xcoords, data.ycoords, data.probe,
                         offset_fit.for_counts(data.mean_counts), data.valid_pixels)
                if offset_fit is not None and offset_fit.active else None)
    return stitch(crops, data.xcoords[flat], data.ycoords[flat], data.obj.shape, crop, sync_phase,
                  illumination / illumination.max(), region or illuminated_bbox(data), tile_patches, evidence, device,
                  also_unfitted)


def bundle_model(bundle: Bundle, data: PtychoData) -> PtychoModule:
    """The bundle's network, rebuilt, for ``data`` (refused where its patterns are of another size)."""
    info = bundle.inference
    if info["N"] != data.N:
        raise PtylabError(f"{bundle.path}: its network takes {info['N']} x {info['N']} patterns (the size it was "
                          f"trained on); the data's are {data.N} x {data.N}")
    return model_from_weights(bundle.models[info["model"]])


def reconstruct_from_bundle(bundle: Bundle, data: PtychoData, batch_size: int = 64,
                            device: str | torch.device = "cpu", tile_patches: int = DEFAULT_TILE_PATCHES,
                            fit_overrides: Mapping[str, Any] | None = None,
                            model: PtychoModule | None = None) -> Stitched:
    """Reconstruct ``data`` as the bundle's run did (under the probe its network learnt, if it
    learnt one, on the area the data's own probe gives); ``fit_overrides`` (``OffsetFit`` field
    names: steps, order, average, phase_tv, amplitude_tv, ...) replace its recorded fit's settings
    where not None. ``model``: the bundle's network where the caller has rebuilt it already
    (``bundle_model``)."""
    info = bundle.inference
    model = model or bundle_model(bundle, data)
    offset_fit = OffsetFit.from_inference(info).overridden(**(fit_overrides or {}))
    return reconstruct(model, with_model_probe(data, model), info["gridsize"], info["neighbours"],
                       info.get("stitch_crop"), batch_size, device, info.get("sync_phase", True), tile_patches,
                       offset_fit=offset_fit,
                       # a bundle from before 2026-12-03 records a bool
                       average_symmetries=symmetry_average(info.get("average_symmetries", "none")),
                       region=illuminated_bbox(data))


OBJECT_FILE = "object.npz"


def write_object(path: Path, stitched: Stitched) -> Path:
    """The stitched object in the data's frame, as it was reconstructed (not registered to any truth):
    complex ``object`` (empty pixels of the bbox filled from their nearest stitched one, zero
    outside it), stitching ``weight`` and the scanned ``bbox``.
    What another method can start from (``lsqml.matched_start``) or a user can read back."""
    from .fileio import atomic_write_with

    def _npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, object=stitched.obj, weight=stitched.weight, bbox=np.asarray(stitched.bbox))

    atomic_write_with(path, _npz)
    return path


def read_object(path: Path) -> Stitched:
    with np.load(path) as f:
        return Stitched(f["object"], f["weight"], tuple(int(v) for v in f["bbox"]))  # type: ignore[arg-type]


def write_reconstruction(out_dir: Path, stitched: Stitched, title: str) -> Path:
    """``object.npz`` (``write_object``) and amplitude/phase PNGs."""
    from .figures import complex_panels

    out_dir.mkdir(parents=True, exist_ok=True)
    r0, r1, c0, c1 = stitched.bbox
    path = write_object(out_dir / OBJECT_FILE, stitched)
    complex_panels(out_dir / "object.png", {"reconstruction": (stitched.obj[r0:r1, c0:c1], None)}, title)
    return path
