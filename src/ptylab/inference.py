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
from .physics import sample_windows

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


def stitch(patches: np.ndarray, x: np.ndarray, y: np.ndarray, shape: tuple[int, int], crop: int,
           chunk: int = 512) -> Stitched:
    """Average the central ``crop`` x ``crop`` region of each patch into an object of ``shape``.

    Sub-pixel positions: each crop is shifted by its fractional offset with the bilinear sampler
    (the same one the simulator uses) and added with matching bilinear weights.
    """
    h, w = shape
    n = patches.shape[-1]
    lo = n // 2 - crop // 2
    crops = torch.from_numpy(np.ascontiguousarray(patches[:, lo : lo + crop, lo : lo + crop]))
    acc = torch.zeros(3, h * w, dtype=torch.float64)
    span = crop + 1
    steps = torch.arange(span)
    for s in range(0, crops.shape[0], chunk):
        c = crops[s : s + chunk]
        xs = torch.from_numpy(x[s : s + chunk]).double()
        ys = torch.from_numpy(y[s : s + chunk]).double()
        col0 = torch.floor(xs).long() - crop // 2
        row0 = torch.floor(ys).long() - crop // 2
        fx, fy = (xs - torch.floor(xs)).float(), (ys - torch.floor(ys)).float()
        src = torch.stack((c.real, c.imag, torch.ones_like(c.real)), dim=1)
        win = sample_windows(src, span // 2 - fx, span // 2 - fy, span, span)  # (b, 3, span, span)
        rows = row0[:, None, None] + steps[None, :, None]
        cols = col0[:, None, None] + steps[None, None, :]
        ok = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).expand(-1, span, span)
        flat = (rows * w + cols).expand(-1, span, span)[ok]
        for k in range(3):
            acc[k].index_add_(0, flat, win[:, k][ok].double())
    weight = acc[2].reshape(h, w)
    valid = weight > 1e-3
    obj = torch.zeros(h, w, dtype=torch.complex128)
    obj[valid] = torch.complex(acc[0].reshape(h, w)[valid], acc[1].reshape(h, w)[valid]) / weight[valid]
    return Stitched(obj.numpy().astype(np.complex64), weight.numpy().astype(np.float32),
                    scanned_bbox(x, y, crop, shape))


def scanned_bbox(x: np.ndarray, y: np.ndarray, crop: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows and columns covered by the central ``crop`` region of patches at (x, y): the evaluated area."""
    h, w = shape
    half = crop / 2
    return (max(0, math.floor(y.min() - half + 1)), min(h, math.ceil(y.max() + half)),
            max(0, math.floor(x.min() - half + 1)), min(w, math.ceil(x.max() + half)))


def reconstruct(model: PtychoModule, data: PtychoData, gridsize: int, neighbours: int, crop: int | None,
                batch_size: int = 64, device: str | torch.device = "cpu") -> Stitched:
    """Group the dataset's positions as in training (one group per anchor), predict, stitch."""
    groups = group_positions(data.xcoords, data.ycoords, gridsize, neighbours)
    patches = predict_groups(model, data.diff3d, groups, batch_size, device)
    flat = groups.indices.ravel()
    crop = crop or data.N // 2
    return stitch(patches.reshape(-1, data.N, data.N), data.xcoords[flat], data.ycoords[flat], data.obj.shape,
                  crop)


def reconstruct_from_bundle(bundle: Bundle, data: PtychoData, batch_size: int = 64,
                            device: str | torch.device = "cpu") -> Stitched:
    info = bundle.inference
    if info["N"] != data.N:
        raise ValueError(f"{bundle.path}: model expects {info['N']}x{info['N']} patterns, data has {data.N}")
    model = model_from_weights(bundle.models[info["model"]])
    return reconstruct(model, data, info["gridsize"], info["neighbours"], info.get("stitch_crop"), batch_size,
                       device)


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
