"""Stitching: exact for consistent patches; phase synchronisation undoes per-patch phase offsets."""

import numpy as np
import pytest
import torch

from ptylab.physics import extract_patches, make_object, raster_scan
from ptylab.rng import stage_rng
from ptylab.stitching import stitch


@pytest.fixture(scope="module")
def scan():
    obj = make_object(96, "camera", "astronaut", 0.3, 2.0)
    x, y = raster_scan(obj.shape, 32, 5.0, 0.4, stage_rng(0, "scan"))  # sub-pixel positions
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(x), torch.from_numpy(y), 32).numpy()
    return obj, x, y, patches


def _inner(result, obj, margin=18):
    sl = (slice(margin, -margin), slice(margin, -margin))
    return result.obj[sl], obj[sl]


def test_consistent_patches_stitch_back_to_the_object(scan):
    obj, x, y, patches = scan
    rec, truth = _inner(stitch(patches, x, y, obj.shape, 16), obj)
    # bilinear placement of bilinear extractions: close, not bit-exact, at sub-pixel positions
    assert np.abs(rec - truth).mean() < 0.02


def test_phase_sync_removes_arbitrary_per_patch_phase_offsets(scan):
    obj, x, y, patches = scan
    offsets = np.exp(1j * stage_rng(1, "offsets").uniform(-np.pi, np.pi, len(x))).astype(np.complex64)
    scrambled = patches * offsets[:, None, None]
    plain, truth = _inner(stitch(scrambled, x, y, obj.shape, 16), obj)
    synced, _ = _inner(stitch(scrambled, x, y, obj.shape, 16, sync_phase=True), obj)

    def phase_error(rec):
        rel = rec * np.conj(truth)
        rel *= np.exp(-1j * np.angle(rel.sum()))  # one global phase is undetermined
        return np.abs(np.angle(rel)).mean()

    floor, _ = _inner(stitch(patches, x, y, obj.shape, 16), obj)  # interpolation error of consistent patches
    assert phase_error(plain) > 0.5
    assert phase_error(synced) < phase_error(floor) + 0.01
    assert np.abs(np.abs(synced) - np.abs(truth)).mean() < 0.02
