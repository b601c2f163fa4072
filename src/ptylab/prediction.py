"""Prediction: a trained network's object patches for a dataset's groups, as central crops.

Only the crops are kept, since stitching uses nothing else; a model is rebuilt from a bundle's
weights here too, so that every path to a prediction (a job's evaluation, a bundle's
reconstruction, compare) runs the same code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import IO

import numpy as np
import torch

from .bundle import ModelWeights
from .data import PtychoData
from .fileio import atomic_write_with
from .grouping import Groups
from .models import MODEL_CLASSES, PtychoModule
from .placement import central
from .progress import Progress
from .symmetries import inverse, transform_images, transform_offsets

# Groups whose distinct patterns a per-pattern network predicts together (``predict_crops``).
SHARED_SPAN_GROUPS = 1024


def model_from_weights(weights: ModelWeights) -> PtychoModule:
    """The model a bundle's weights describe (its kind's class, rebuilt from its saved
    hyperparameters, every tensor loaded strictly), ready to predict."""
    cls = MODEL_CLASSES.get(weights.kind)
    if cls is None:
        raise ValueError(f"unknown model kind '{weights.kind}' (known: {sorted(MODEL_CLASSES)})")
    model = cls(**weights.hparams)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


def with_model_probe(data: PtychoData, model: PtychoModule) -> PtychoData:
    """``data`` with the probe ``model`` reconstructs under: the one it learnt where its probe was
    trainable (``model.probe_trainable``), else ``data`` as it is. What models the patterns from
    the reconstruction (the offset fit, the data fit, the stitch's weights) must use the probe the
    network was trained with: under the file's probe guess a learnt probe's network fits nothing."""
    probe = model.learnt_probe()
    if probe is None:
        return data
    return replace(data, probe=probe.cpu().numpy().astype(np.complex64))


LEARNT_PROBE_FILE = "probe.npz"


def write_probe(path: Path, probe: np.ndarray) -> None:
    """A probe as an NPZ holding ``probeGuess`` (complex64), atomically: what a data file's probe
    is read from (``simulate.read_probe_file``, ``dataset.probe_file``)."""
    def _npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, probeGuess=np.asarray(probe, np.complex64))

    atomic_write_with(path, _npz)


@torch.no_grad()
def predict_crops(model: PtychoModule, diff: np.ndarray, groups: Groups, crop: int, batch_size: int = 64,
                  device: str | torch.device = "cpu", scratch: IO[bytes] | None = None,
                  transforms: tuple[int, ...] = (0,)) -> np.ndarray:
    """(G * C, crop, crop) complex64: the central crop of every member's predicted object patch.

    Only the crops are kept, because stitching uses nothing else; with a ``scratch`` file they go
    to a memory map on it, so a scan of any size is predicted span by span without holding its
    patches in memory (the page cache holds them, and can drop them). A per-pattern network
    predicts each distinct pattern of a span of ``SHARED_SPAN_GROUPS`` groups once, and each group
    merges its members' patches from those (``PtychoModule.objects_from``).

    With several ``transforms`` (symmetries of the probe, ``ptylab.symmetries``) each group is
    also predicted as its mirrored or turned measurement, each prediction is turned back, and the
    crops are averaged: an average the network's own orientation preferences cancel out of. A
    patch's absolute phase is arbitrary, so each prediction of a group is first turned to make the
    sum of its members' crops real, a reference that does not depend on the order of the transforms.
    One factor per group, not per member: the members keep the relative phases the network gave
    them, which training's group merge (a complex average) relied on (slightly better at 1e4 than a
    factor per member, equal at 1e3; docs/quality.md).
    """
    model = model.to(device).eval()
    c = groups.indices.shape[1]
    shape = (groups.n_groups * c, crop, crop)
    out = np.memmap(scratch, np.complex64, "w+", shape=shape) if scratch is not None else np.empty(shape, np.complex64)
    # A per-pattern network's patch does not depend on its group, and with one group per anchor a
    # pattern is a member of about C groups, most of them close in the anchors' order: each distinct
    # pattern of a span of groups is predicted once (about a third of the network's work at gridsize 2).
    shared = model.per_pattern and c > 1
    span = max(batch_size, SHARED_SPAN_GROUPS) if shared else batch_size
    progress = Progress(f"predicting groups ({len(transforms)} orientation(s) each)", groups.n_groups * len(transforms))
    done = 0
    for first in range(0, groups.n_groups, span):
        idx = groups.indices[first : first + span]
        offsets = groups.offsets[first : first + span].astype(np.float32)
        if shared:
            distinct, inverse_index = np.unique(idx, return_inverse=True)
            member = torch.from_numpy(inverse_index.reshape(idx.shape))  # each member's row in ``patterns``
            patterns = np.asarray(diff[distinct], dtype=np.float32)
        else:
            patterns = np.asarray(diff[idx.ravel()], dtype=np.float32).reshape(*idx.shape, *diff.shape[1:])
        total = np.zeros((*idx.shape, crop, crop), np.complex128)
        for t in transforms:
            turned = transform_images(patterns, t)
            turned_offsets = torch.from_numpy(transform_offsets(offsets, t)).to(device)
            patches = _predict_patterns(model, turned, batch_size * c, device) if shared else None
            for b in range(0, len(idx), batch_size):
                part = slice(b, b + batch_size)
                pred = (model.objects_from(patches[member[part]], turned_offsets[part])
                        if patches is not None else
                        model.predict_object(torch.from_numpy(np.ascontiguousarray(turned[part])).to(device),
                                             turned_offsets[part]))
                crops = central(transform_images(pred.cpu().numpy(), inverse(t)), crop)
                if len(transforms) > 1:  # phase reference: the group's crops summed without their first row
                    # and column (the part every transform maps onto itself); one factor for the whole group
                    ref = crops[..., 1:, 1:].sum(axis=(-3, -2, -1), keepdims=True)
                    crops = crops * np.conj(ref) / np.maximum(np.abs(ref), 1e-30)
                total[part] += crops
                done += len(crops)
                progress.update(done)
        out[first * c : (first + len(idx)) * c] = (total / len(transforms)).reshape(-1, crop, crop)
    return out


def _predict_patterns(model: PtychoModule, patterns: np.ndarray, batch_size: int,
                      device: str | torch.device) -> torch.Tensor:
    """(P, N, N) complex patches of a per-pattern network, predicted ``batch_size`` patterns at a time."""
    return torch.cat([model.predict_patches(torch.from_numpy(np.ascontiguousarray(patterns[s : s + batch_size, None]))
                                            .to(device))[:, 0] for s in range(0, len(patterns), batch_size)])
