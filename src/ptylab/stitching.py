"""Reconstruction: predict the object patches of a dataset's groups and stitch them into one object."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .bundle import Bundle, ModelWeights
from .data import PtychoData
from .grouping import Groups, group_positions
from .models import MODEL_CLASSES, PtychoModule
from .physics import effective_probe_radius, sample_windows

log = logging.getLogger(__name__)


def model_from_weights(weights: ModelWeights) -> PtychoModule:
    cls = MODEL_CLASSES.get(weights.kind)
    if cls is None:
        raise ValueError(f"unknown model kind '{weights.kind}' (known: {sorted(MODEL_CLASSES)})")
    model = cls(**weights.hparams)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


@torch.no_grad()
def predict_groups(model: PtychoModule, diff: np.ndarray, groups: Groups, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """(G, C, N, N) complex64 object patches, one per member of each group."""
    model = model.to(device).eval()
    out = []
    offsets = torch.from_numpy(groups.offsets.astype(np.float32))
    for start in range(0, groups.n_groups, batch_size):
        idx = groups.indices[start : start + batch_size]
        batch = torch.from_numpy(np.asarray(diff[idx.ravel()], dtype=np.float32)).reshape(*idx.shape, *diff.shape[1:])
        pred = model.predict_object(batch.to(device), offsets[start : start + batch_size].to(device))
        out.append(pred.cpu().numpy().astype(np.complex64))
    return np.concatenate(out, axis=0)


@dataclass
class Stitched:
    obj: np.ndarray  # (H, W) complex64, zero where nothing was stitched
    weight: np.ndarray  # (H, W) float32 accumulated bilinear weights
    bbox: tuple[int, int, int, int]  # row0, row1, col0, col1 of the scanned area (exclusive ends)


@dataclass
class Placement:
    """Where each patch's central crop lands on the object canvas, with its bilinear weights.

    ``values`` (M, S) are the crops shifted by their fractional offsets, ``weights`` (M, S) the
    matching interpolation weights and ``index`` (M, S) the flat canvas pixels (S = (crop+1)^2;
    entries outside the canvas carry weight zero).
    """

    values: torch.Tensor
    weights: torch.Tensor
    index: torch.Tensor
    size: int

    def weight_sum(self) -> torch.Tensor:
        """Accumulated weights per canvas pixel."""
        return torch.zeros(self.size, dtype=torch.float64).index_add_(0, self.index.ravel(), self.weights.ravel())

    def value_sum(self, phasors: torch.Tensor | None = None) -> torch.Tensor:
        """Accumulated (phase-adjusted) values per canvas pixel."""
        vals = self.values if phasors is None else self.values * phasors[:, None]
        return torch.zeros(self.size, dtype=torch.complex128).index_add_(0, self.index.ravel(), vals.ravel())


def place(patches: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], crop: int,
          illumination: np.ndarray | None = None) -> Placement:
    h, w = shape
    n = patches.shape[-1]
    lo = n // 2 - crop // 2
    c = torch.from_numpy(np.ascontiguousarray(patches[:, lo : lo + crop, lo : lo + crop]))
    if illumination is None:
        weight_map = torch.ones(crop, crop)
    else:
        weight_map = torch.from_numpy(np.asarray(illumination, np.float32)[lo : lo + crop, lo : lo + crop])
    span = crop + 1
    steps = torch.arange(span)
    xs, ys = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    col0 = torch.floor(xs).long() - crop // 2
    row0 = torch.floor(ys).long() - crop // 2
    fx, fy = (xs - torch.floor(xs)).float(), (ys - torch.floor(ys)).float()
    src = torch.stack((c.real * weight_map, c.imag * weight_map, weight_map.expand_as(c.real)), dim=1)
    win = sample_windows(src, span // 2 - fx, span // 2 - fy, span, span).double()  # (M, 3, span, span)
    rows = row0[:, None, None] + steps[None, :, None]
    cols = col0[:, None, None] + steps[None, None, :]
    ok = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).expand(-1, span, span)
    flat = rows * w + cols
    index = torch.where(ok, flat, torch.zeros_like(flat)).reshape(len(xs), -1)
    weights = (win[:, 2] * ok).reshape(len(xs), -1)
    values = (torch.complex(win[:, 0], win[:, 1]) * ok).reshape(len(xs), -1)
    return Placement(values, weights, index, h * w)


def phase_sync(placement: Placement, refine: int = 20) -> torch.Tensor:
    """Per-patch phase factors that make overlapping predictions agree (spectral synchronisation).

    Diffraction is blind to a patch's absolute phase, so independently predicted patches carry
    arbitrary phase offsets; averaged as they are, large-scale phase is lost. The offsets that
    best agree on the overlaps maximise v^H A v with A = V^H W^-1 V (V places patches on the
    canvas, W the accumulated weights); its leading eigenvector, projected to unit modulus and
    refined by a few generalised power steps, gives them. Uses the predictions only.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    m = placement.values.shape[0]
    weight = placement.weight_sum()
    inv_w = torch.where(weight > 1e-6, 1.0 / weight.clamp_min(1e-6), torch.zeros_like(weight))
    conj_vals = placement.values.conj()

    def apply(v: torch.Tensor) -> torch.Tensor:
        canvas = torch.zeros(placement.size, dtype=torch.complex128).index_add_(
            0, placement.index.ravel(), (placement.values * v[:, None]).ravel()) * inv_w
        return (conj_vals * canvas[placement.index]).sum(dim=1)

    op = LinearOperator((m, m), matvec=lambda v: apply(torch.from_numpy(np.asarray(v).ravel())).numpy(),
                        dtype=np.complex128)
    _, vec = eigsh(op, k=1, which="LA", v0=np.ones(m, np.complex128), tol=1e-6)
    v = torch.from_numpy(vec[:, 0])
    v = v / v.abs().clamp_min(1e-12)
    for _ in range(refine):
        z = apply(v)
        v = z / z.abs().clamp_min(1e-12)
    return v * (v[0].conj() / v[0].abs())  # fix the global gauge: the first patch keeps its phase


def stitch(patches: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], crop: int,
           sync_phase: bool = False, illumination: np.ndarray | None = None,
           bbox: tuple[int, int, int, int] | None = None) -> Stitched:
    """Average the central ``crop`` x ``crop`` region of each patch into an object of ``shape``.

    Sub-pixel positions: each crop is shifted by its fractional offset with the bilinear sampler
    (the same one the simulator uses) and added with matching bilinear weights. ``illumination``
    (N, N), typically |P|^2, weights each patch pixel by how strongly the data constrain it:
    the object is sum(|P|^2 o) / sum(|P|^2), the usual ptychographic average, so pixels the probe
    barely lit do not blur the result. With ``sync_phase`` each patch's phase offset is first
    made consistent with its neighbours. ``bbox`` is the area to evaluate (default: the area the
    crops cover).
    """
    placement = place(patches, x, y, shape, crop, illumination)
    phasors = phase_sync(placement) if sync_phase and len(x) > 1 else None
    total, weight = placement.value_sum(phasors), placement.weight_sum()
    valid = weight > 1e-3 * float(weight.max())
    obj = torch.zeros_like(total)
    obj[valid] = total[valid] / weight[valid]
    h, w = shape
    return Stitched(obj.reshape(h, w).numpy().astype(np.complex64), weight.reshape(h, w).numpy().astype(np.float32),
                    bbox or scanned_bbox(x, y, crop, shape))


def illuminated_bbox(data: PtychoData) -> tuple[int, int, int, int]:
    """The evaluated area, the same for every method: the scan widened by the probe's effective radius."""
    return scanned_bbox(data.xcoords, data.ycoords, 2 * effective_probe_radius(data.probe), data.obj.shape)


def scanned_bbox(x: np.ndarray, y: np.ndarray, crop: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows and columns covered by a ``crop``-wide region around each position (x, y)."""
    h, w = shape
    half = crop / 2
    return (max(0, math.floor(y.min() - half + 1)), min(h, math.ceil(y.max() + half)),
            max(0, math.floor(x.min() - half + 1)), min(w, math.ceil(x.max() + half)))


def reconstruct(model: PtychoModule, data: PtychoData, gridsize: int, neighbours: int, crop: int | None,
                batch_size: int = 64, device: str | torch.device = "cpu", sync_phase: bool = True) -> Stitched:
    """Group the dataset's positions as in training (one group per anchor), predict, stitch."""
    groups = group_positions(data.xcoords, data.ycoords, gridsize, neighbours)
    patches = predict_groups(model, data.diff3d, groups, batch_size, device)
    flat = groups.indices.ravel()
    crop = crop or data.N // 2
    illumination = np.abs(data.probe) ** 2
    return stitch(patches.reshape(-1, data.N, data.N), data.xcoords[flat], data.ycoords[flat], data.obj.shape,
                  crop, sync_phase, illumination / illumination.max(), illuminated_bbox(data))


def reconstruct_from_bundle(bundle: Bundle, data: PtychoData, batch_size: int = 64,
                            device: str | torch.device = "cpu") -> Stitched:
    info = bundle.inference
    if info["N"] != data.N:
        raise ValueError(f"{bundle.path}: model expects {info['N']}x{info['N']} patterns, data has {data.N}")
    model = model_from_weights(bundle.models[info["model"]])
    return reconstruct(model, data, info["gridsize"], info["neighbours"], info.get("stitch_crop"), batch_size,
                       device, info.get("sync_phase", True))


def write_reconstruction(out_dir: Path, stitched: Stitched, title: str) -> Path:
    """``object.npz`` (complex ``object``, stitching ``weight``) and amplitude/phase PNGs."""
    from .figures import complex_panels
    from .fileio import atomic_write_with

    out_dir.mkdir(parents=True, exist_ok=True)
    r0, r1, c0, c1 = stitched.bbox

    def _npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, object=stitched.obj, weight=stitched.weight, bbox=np.asarray(stitched.bbox))

    path = out_dir / "object.npz"
    atomic_write_with(path, _npz)
    complex_panels(out_dir / "object.png", {"reconstruction": (stitched.obj[r0:r1, c0:c1], None)}, title)
    return path
