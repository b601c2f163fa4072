"""The probe's symmetries as training samples: the identity they rest on, and the loader's use of them."""

import numpy as np
import pytest
import torch

from ptylab import prediction
from ptylab.batches import EpochShuffle, GroupedPatterns
from ptylab.config import PinnConfig
from ptylab.datasets import load_or_simulate
from ptylab.grouping import Groups, group_positions
from ptylab.models import build_model
from ptylab.physics import exit_wave_intensity, extract_patches, make_probe
from ptylab.placement import central
from ptylab.prediction import predict_crops
from ptylab.symmetries import (
    TRANSFORMS,
    averaged_transforms,
    inverse,
    probe_symmetries,
    symmetry_average,
    transform_images,
    transform_offsets,
)

N = 32


def _measure(obj: np.ndarray, x: np.ndarray, y: np.ndarray, probe: np.ndarray) -> np.ndarray:
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(x), torch.from_numpy(y), N)
    return exit_wave_intensity(torch.from_numpy(probe), patches).numpy()


def _transform_scene(obj: np.ndarray, x: np.ndarray, y: np.ndarray, t: int):
    """Transform t applied to the whole object and its scan (rows mirrored, columns mirrored, transposed)."""
    size = obj.shape[0]
    if t & 1:
        obj, y = obj[::-1], size - 1 - y
    if t & 2:
        obj, x = obj[:, ::-1], size - 1 - x
    if t & 4:
        obj, x, y = obj.T, y, x
    return np.ascontiguousarray(obj), x, y


@pytest.mark.parametrize("t", TRANSFORMS)
def test_a_probe_symmetry_turns_a_measured_group_into_the_group_of_the_transformed_object(t):
    rng = np.random.default_rng(t)
    obj = ((0.4 + rng.random((72, 72))) * np.exp(1j * rng.random((72, 72)))).astype(np.complex64)
    probe = make_probe(N, 12, 1.0, defocus=2.0)  # complex, not point-symmetric as a conjugate: no twin
    x = np.array([30.0, 33.5, 30.25, 36.0])
    y = np.array([31.0, 30.0, 35.75, 34.5])
    counts = _measure(obj, x, y, probe)
    obj_t, x_t, y_t = _transform_scene(obj, x, y, t)
    # what the same probe measures on the transformed object is the transformed measurement ...
    np.testing.assert_allclose(_measure(obj_t, x_t, y_t, probe), transform_images(counts, t),
                               rtol=0, atol=1e-5 * counts.max())
    # ... and the group's offsets about its centroid transform with it
    offsets = np.column_stack((x - x.mean(), y - y.mean()))
    np.testing.assert_allclose(np.column_stack((x_t - x_t.mean(), y_t - y_t.mean())), transform_offsets(offsets, t),
                               atol=1e-12)


def test_each_transform_is_undone_by_its_inverse():
    images = np.random.default_rng(0).random((2, 6, 6))
    offsets = np.random.default_rng(1).random((5, 2))
    for t in TRANSFORMS:
        np.testing.assert_array_equal(transform_images(transform_images(images, t), inverse(t)), images)
        np.testing.assert_array_equal(transform_offsets(transform_offsets(offsets, t), inverse(t)), offsets)
    assert [inverse(t) for t in TRANSFORMS] != list(TRANSFORMS)  # the turns are not their own inverses


def test_only_the_symmetries_the_probe_has_are_used():
    disc = make_probe(N, 12, 1.0, defocus=3.0)
    assert probe_symmetries(disc) == TRANSFORMS
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    tilted = disc * np.exp(1j * 0.3 * xx)  # a phase ramp along x: the row mirror keeps it, nothing else
    assert probe_symmetries(tilted) == (0, 1)
    lopsided = disc * (1 + 0.2 * (xx > 0) + 0.1 * (yy > 0))
    assert probe_symmetries(lopsided) == (0,)


def test_an_average_predicts_under_the_symmetries_it_names_that_the_probe_has():
    disc = make_probe(N, 12, 1.0, defocus=3.0)
    assert averaged_transforms(disc, "none") == (0,)
    assert averaged_transforms(disc, "point") == (0, 3)  # both mirrors: the half turn
    assert averaged_transforms(disc, "all") == TRANSFORMS
    tilted = disc * np.exp(1j * 0.3 * (np.arange(N) - N // 2))  # keeps the row mirror only
    assert averaged_transforms(tilted, "point") == (0,)
    assert averaged_transforms(tilted, "all") == (0, 1)
    # the setting was a bool before 2026-12-03, and old snapshots and bundles still say so
    assert [symmetry_average(v) for v in (True, False, "True", "false", "point")] == ["all", "none", "all", "none",
                                                                                     "point"]
    with pytest.raises(ValueError, match="none, point, all"):
        symmetry_average("mirror")


def test_loader_items_carry_their_transform_and_the_epoch_order_stays_the_same(small_dataset_cfg, tmp_path):
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    groups = group_positions(train.xcoords, train.ycoords, 2, 7)
    ds = GroupedPatterns(train.diff3d, groups, train.Y)
    n = len(ds)
    plain = ds.__getitems__([3, 5])
    for t in TRANSFORMS:
        moved = ds.__getitems__([3 + n * t, 5])
        np.testing.assert_array_equal(moved["diff"][0].numpy(), transform_images(plain["diff"][0].numpy(), t))
        np.testing.assert_array_equal(moved["Y"][0].numpy(), transform_images(plain["Y"][0].numpy(), t))
        np.testing.assert_array_equal(moved["offsets"][0].numpy(), transform_offsets(plain["offsets"][0].numpy(), t))
        np.testing.assert_array_equal(moved["diff"][1].numpy(), plain["diff"][1].numpy())  # the other sample as it was
        assert moved["index"].tolist() == [3, 5]
    sampler = EpochShuffle(n, seed=4, fraction=0.5, transforms=TRANSFORMS)
    sampler.set_epoch(2)
    items = np.array(list(sampler))
    as_measured = EpochShuffle(n, seed=4, fraction=0.5)
    as_measured.set_epoch(2)
    np.testing.assert_array_equal(items % n, list(as_measured))
    assert len(set((items // n).tolist())) > 4  # transforms drawn, not one for all


@pytest.mark.parametrize("t", [1, 4, 6])
def test_a_prediction_averaged_over_the_symmetries_turns_with_the_data(small_dataset_cfg, tmp_path, t):
    """Turn the measurement and the averaged prediction turns with it (equivariance), which the
    network alone does not give: a check that each transform is undone on the right axes."""
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    torch.manual_seed(0)
    model = build_model(PinnConfig(base_filters=[8, 16, 32], width=1), 2, train)
    groups = group_positions(train.xcoords, train.ycoords, 2, 7)
    groups = Groups(groups.indices[:6], groups.offsets[:6])
    turned = Groups(groups.indices, transform_offsets(groups.offsets, t))
    diff, diff_t = train.diff3d, transform_images(train.diff3d, t)
    crop = N // 2

    def turned_back_error(transforms: tuple[int, ...]) -> float:
        mine = predict_crops(model, diff, groups, crop, transforms=transforms)
        theirs = transform_images(predict_crops(model, diff_t, turned, crop, transforms=transforms), inverse(t))
        # the crop's first row and column come from outside it once turned: compared without them
        mine, theirs = mine[..., 1:, 1:], theirs[..., 1:, 1:]
        match = np.sum(np.conj(mine) * theirs, axis=(-2, -1), keepdims=True)  # absolute phase is arbitrary
        theirs = theirs * np.conj(match) / np.abs(match)
        return float(np.abs(theirs - mine).max() / np.abs(mine).max())

    assert turned_back_error(TRANSFORMS) < 1e-4
    assert turned_back_error((0,)) > 1e-2


def test_each_distinct_pattern_predicted_once_gives_every_groups_own_prediction(small_dataset_cfg, tmp_path,
                                                                                monkeypatch):
    """A per-pattern network predicts each distinct pattern of a span of groups once and merges
    each group from those patches: the crops must be the group-by-group prediction's, across
    span and batch boundaries (spans of 7 groups, batches of 3)."""
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    torch.manual_seed(0)
    model = build_model(PinnConfig(base_filters=[8, 16, 32], width=1), 2, train).eval()
    assert model.per_pattern
    groups = group_positions(train.xcoords, train.ycoords, 2, 7)
    groups = Groups(groups.indices[:20], groups.offsets[:20])
    monkeypatch.setattr(prediction, "SHARED_SPAN_GROUPS", 7)
    crop = N // 2
    shared = predict_crops(model, train.diff3d, groups, crop, batch_size=3)
    with torch.no_grad():
        own = np.concatenate([central(model.predict_object(
            torch.from_numpy(np.asarray(train.diff3d[idx], np.float32))[None],
            torch.from_numpy(off.astype(np.float32))[None]).numpy()[0], crop)
            for idx, off in zip(groups.indices, groups.offsets, strict=True)])
    assert len(np.unique(groups.indices)) < groups.indices.size  # patterns are shared between groups
    np.testing.assert_allclose(shared, own, rtol=0, atol=1e-5 * float(np.abs(own).max()))


def test_the_symmetries_used_keep_the_detectors_mask_too():
    """A transformed pattern's unmeasured pixels must be those its likelihood leaves out: a centred
    beamstop keeps every symmetry of a disc probe, a dead column off the centre only those that
    leave its column where it is."""
    n = 16
    yy, xx = np.mgrid[:n, :n] - n // 2
    disc = (np.hypot(yy, xx) < 4).astype(np.complex64)
    beamstop = np.ones((n, n), bool)
    beamstop[n // 2 - 1 : n // 2 + 2, n // 2 - 1 : n // 2 + 2] = False
    assert probe_symmetries(disc, beamstop) == TRANSFORMS
    dead_column = np.ones((n, n), bool)
    dead_column[:, 11] = False
    assert probe_symmetries(disc, dead_column) == (0, 1)  # the row mirror alone
    assert averaged_transforms(disc, "all", dead_column) == (0, 1)
    assert averaged_transforms(disc, "point", dead_column) == (0,)


def test_a_learnt_probe_keeps_the_files_probes_symmetries_through_training_steps():
    """A trainable probe is learnt under the symmetries of the file's probe (``PINN.probe``): the
    symmetric samples training draws stay valid samples of the probe being learnt. Its gradient
    steps move it, and every one of those transforms still leaves it unchanged; a probe with none
    of them (a lopsided guess) is learnt freely."""
    from ptylab.models.pinn import PINN
    from ptylab.symmetries import symmetric_part

    disc = make_probe(N, 12, 1.0, defocus=3.0)
    yy, xx = np.mgrid[0:N, 0:N] - N // 2
    lopsided = (disc * (1 + 0.2 * (xx > 0) + 0.1 * (yy > 0))).astype(np.complex64)
    for guess, expected in ((disc, TRANSFORMS), (lopsided, (0,))):
        found = probe_symmetries(guess)
        assert found == expected
        model = PINN(N=N, base_filters=(4, 8, 16), probe=torch.from_numpy(guess), probe_trainable=True,
                     probe_symmetries=found)
        # the symmetrised image agrees with numpy's transforms, and is unchanged by each of them
        p = model.probe.detach()
        np.testing.assert_allclose(p.numpy(), symmetric_part(guess.astype(np.complex64), found), atol=1e-6)
        opt = torch.optim.Adam([model.probe_ri], lr=0.05)
        rng = np.random.default_rng(0)
        target = torch.from_numpy(rng.random((N, N)) + 1j * rng.random((N, N))).to(torch.complex64)
        for _ in range(3):  # steps towards an image with no symmetry at all
            opt.zero_grad()
            (model.probe - target).abs().square().sum().backward()
            opt.step()
        learnt = model.learnt_probe().numpy()
        assert np.linalg.norm(learnt - p.numpy()) > 0.1 * np.linalg.norm(p.numpy())  # it moved
        assert probe_symmetries(learnt) == expected
    fixed = PINN(N=N, base_filters=(4, 8, 16), probe=torch.from_numpy(disc))
    assert fixed.learnt_probe() is None  # the file's probe stands


def test_a_job_learns_its_probe_under_the_symmetries_it_trains_with(small_dataset_cfg, tmp_path):
    """The constraint exists for the symmetric samples: without them (augment_symmetries=false) the
    probe is learnt freely, and a fixed probe needs none."""
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    for augment, expected in ((True, TRANSFORMS), (False, (0,))):
        model = build_model(PinnConfig(probe_trainable=True, augment_symmetries=augment), 2, train)
        assert tuple(model.hparams["probe_symmetries"]) == expected
    assert tuple(build_model(PinnConfig(), 2, train).hparams["probe_symmetries"]) == (0,)
