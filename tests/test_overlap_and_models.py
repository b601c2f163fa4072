"""Model-level identities: the overlap constraint, and real tiny trainings whose loss falls."""

import inspect
import warnings
from dataclasses import fields

import lightning as L
import numpy as np
import pytest
import torch

from ptylab.batches import EpochShuffle, GroupedPatterns, make_loader
from ptylab.bundle import BundleError, load_bundle, save_model_bundle, write_bundle
from ptylab.config import MergeWeight, PinnConfig, RefineConfig, SupervisedConfig
from ptylab.datasets import load_or_simulate
from ptylab.errors import ConfigError, PtylabError
from ptylab.grouping import group_positions
from ptylab.models import PINN, Supervised, build_model, start_from_bundle
from ptylab.models.base import support_mask
from ptylab.models.factory import PROBE_MERGE_COUNTS, merge_weight_for_counts
from ptylab.models.network import NetworkSpec
from ptylab.models.overlap import merge_overlaps
from ptylab.models.pinn import total_variation
from ptylab.physics import extract_patches, poisson_nll
from ptylab.refine import refine
from ptylab.symmetries import probe_symmetries
from ptylab.training import (
    LIGHTNING_NOISE,
    StepProgress,
    batch_plan,
    build_trainer,
    fit,
    logging_interval,
    whole_epoch_budget,
)


def test_merge_is_identity_for_patches_cut_from_one_object():
    rng = np.random.default_rng(0)
    obj = torch.from_numpy((0.5 + rng.random((64, 64)) + 1j * rng.random((64, 64))).astype(np.complex64))
    n = 16
    centres = torch.tensor([[30.0, 30.0], [33.0, 30.0], [30.0, 34.0], [35.0, 35.0]])  # (x, y)
    patches = extract_patches(obj, centres[:, 0], centres[:, 1], n)
    support = support_mask(n, "full")
    offsets = (centres - centres.mean(dim=0))[None]  # centroid (32, 32.25) is fractional
    merged = merge_overlaps(patches[None], support, offsets)
    # patches cut from one object agree where they overlap, so averaging gives them back exactly
    torch.testing.assert_close(merged[0], patches, atol=1e-5, rtol=0)


def test_merge_averages_inconsistent_patches_and_gridsize_one_is_identity():
    p = torch.ones(1, 2, 8, 8, dtype=torch.complex64)
    p[0, 1] *= 3
    zero = torch.zeros(1, 2, 2)
    out = merge_overlaps(p, torch.ones(8, 8), zero)
    torch.testing.assert_close(out, torch.full_like(p, 2.0))
    single = torch.randn(3, 1, 8, 8, dtype=torch.complex64)
    assert merge_overlaps(single, torch.ones(8, 8), torch.zeros(3, 1, 2)) is single


def test_merge_weights_each_member_by_its_own_map_and_keeps_agreeing_patches():
    """With a weight map (the probe's intensity), each canvas pixel is the members' values averaged
    with the weights each member's map has there; patches that agree come back unchanged."""
    n = 8
    weight = (torch.arange(n, dtype=torch.float32) + 1).expand(n, n)  # grows along x
    p = torch.ones(1, 2, n, n, dtype=torch.complex64)
    p[0, 1] *= 3
    offsets = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # member 1 two pixels along x
    out = merge_overlaps(p, weight, offsets)
    # member 0's pixel x is member 1's pixel x - 2, where its weight is that of x - 2
    w0, w1 = weight[0, 2:], weight[0, :-2]
    torch.testing.assert_close(out[0, 0, 0, 2:].real, (w0 * 1 + w1 * 3) / (w0 + w1))
    torch.testing.assert_close(out[0, 0, 0, :2].real, torch.ones(2))  # member 1 does not reach
    torch.testing.assert_close(merge_overlaps(torch.full_like(p, 2 - 1j), weight, offsets), torch.full_like(p, 2 - 1j))


def test_the_pinns_merge_weights_are_its_support_or_the_probes_intensity_on_it():
    yy, xx = torch.meshgrid(torch.arange(16) - 8.0, torch.arange(16) - 8.0, indexing="ij")
    probe = torch.exp(-(xx**2 + yy**2) / 20).to(torch.complex64) * (2 + 1j)
    uniform = PINN(N=16, base_filters=(4, 8, 8), probe=probe)
    weighted = PINN(N=16, base_filters=(4, 8, 8), probe=probe, merge_weight="probe")
    torch.testing.assert_close(uniform.merge_weights(), uniform.support)
    intensity = probe.abs().square() * weighted.support
    torch.testing.assert_close(weighted.merge_weights(), intensity / intensity.max())
    assert float(weighted.merge_weights().max()) == pytest.approx(1.0)


@pytest.mark.parametrize(("dose", "rule"), [(1e3, "support"), (1e4, "probe"), (1e5, "support")])
def test_the_merge_weight_comes_from_the_training_counts_unless_set(small_dataset_cfg, tmp_path, dose, rule):
    """model.merge_weight=null (the default) picks the probe's weight in the counts where it was
    measured to help (dose 1e4 here); a set choice wins at any counts, and the bundle's
    hyperparameters record what ran."""
    train = load_or_simulate(small_dataset_cfg, dose, 0, tmp_path / "cache").train
    low, high = PROBE_MERGE_COUNTS
    assert (low <= train.mean_counts < high) == (rule == "probe")
    assert build_model(PinnConfig(base_filters=[8, 16, 32]), 2, train).hparams["merge_weight"] == rule
    other = MergeWeight.support if rule == "probe" else MergeWeight.probe
    chosen = build_model(PinnConfig(base_filters=[8, 16, 32], merge_weight=other), 2, train)
    assert chosen.hparams["merge_weight"] == str(other)


def test_the_probe_merge_counts_include_the_low_bound_only():
    low, high = PROBE_MERGE_COUNTS
    assert [str(merge_weight_for_counts(None, c)) for c in (low * 0.999, low, high * 0.999, high)] == \
        ["support", "probe", "probe", "support"]


def _nll_on(model, batch):
    with torch.no_grad():
        pred = model.predicted_counts(model.predict_object(batch["diff"], batch["offsets"]))
        return float(poisson_nll(pred, batch["diff"].square()))


@pytest.mark.parametrize(("gridsize", "per_pattern", "augment", "precision", "merge"),
                         [(1, False, False, "32-true", "support"), (2, False, False, "32-true", "support"),
                          (2, True, False, "32-true", "support"), (2, True, True, "32-true", "support"),
                          (2, True, False, "bf16-mixed", "support"), (2, True, False, "32-true", "probe")])
def test_tiny_pinn_training_lowers_poisson_nll(small_dataset_cfg, tmp_path, gridsize, per_pattern, augment,
                                               precision, merge):
    src = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache")
    train = src.train
    L.seed_everything(0, verbose=False)
    model = build_model(PinnConfig(base_filters=[8, 16, 32], width=1, lr=3e-3, per_pattern=per_pattern,
                                   merge_weight=merge), gridsize, train)
    groups = group_positions(train.xcoords, train.ycoords, gridsize, 7)
    ds = GroupedPatterns(train.diff3d, groups)
    probe_batch = ds.__getitems__(list(range(min(32, len(ds)))))
    # the NLL of the true object is the floor this loss can approach
    truth = torch.from_numpy(train.Y[groups.indices[: len(probe_batch["index"])]])
    with torch.no_grad():
        floor = float(poisson_nll(model.predicted_counts(truth), probe_batch["diff"].square()))
    before = _nll_on(model, probe_batch)
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        precision=precision)
    # augmented: the groups also mirrored and rotated (the probe's symmetries); scored as measured
    transforms = probe_symmetries(train.probe) if augment else (0,)
    trainer.fit(model, make_loader(ds, 8, True, 0, transforms=transforms))
    after = _nll_on(model, probe_batch)
    assert after < before
    assert (before - after) > 0.3 * (before - floor), (before, after, floor)


def test_a_fit_without_validation_patterns_trains_without_lightnings_noise(small_dataset_cfg, tmp_path):
    """The refined arm's set-up (no validation share): it trains, picks its checkpoint by the
    training loss, and the two warnings Lightning gives on every such job do not reach the user;
    nor does the one about epochs shorter than the logging interval (two batches here, against 10)."""
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    cfg = PinnConfig(base_filters=[8, 16, 32], val_fraction=0.0, batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, outcome = fit(cfg, 2, 0, train, {"max_steps": 3, "max_epochs": -1, "accelerator": "cpu",
                                             "enable_progress_bar": False, "limit_train_batches": 2,
                                             "log_every_n_steps": 10}, tmp_path / "run")
    assert outcome.steps == 3 and outcome.groups["val"] == 0 and outcome.best_checkpoint_path
    said = [str(w.message) for w in caught]
    assert not [m for m in said if m.startswith(LIGHTNING_NOISE) or "logging interval" in m], said


def test_a_step_budget_under_an_epoch_cap_trains_the_whole_epochs_that_reach_it(small_dataset_cfg, tmp_path):
    """1800 steps are 22 epochs of 82 batches (rounded up) and 90 of 20; the cap still rules a tiny
    scan; a pure step budget (the refined arm's) and one shorter than an epoch pass unchanged. A
    real fit of 5 steps in epochs of 2 batches runs 3 whole epochs, 6 steps (Lightning resumes
    wrongly with ``max_steps`` set)."""
    assert whole_epoch_budget({"max_steps": 1800, "max_epochs": 200}, 82) == {"max_steps": -1, "max_epochs": 22}
    assert whole_epoch_budget({"max_steps": 1800, "max_epochs": 200}, 20)["max_epochs"] == 90
    assert whole_epoch_budget({"max_steps": 1800, "max_epochs": 200}, 4)["max_epochs"] == 200
    assert whole_epoch_budget({"max_steps": 1800, "max_epochs": 200, "limit_train_batches": 30}, 82)["max_epochs"] == 60
    accumulated = {"max_steps": 1800, "max_epochs": 200, "accumulate_grad_batches": 2}
    assert whole_epoch_budget(accumulated, 40)["max_epochs"] == 90
    short = {"max_steps": 30, "max_epochs": 60}  # the parity preset's shortest documented run
    assert whole_epoch_budget(short, 192) == short
    pure = {"max_steps": 3, "max_epochs": -1}
    assert whole_epoch_budget(pure, 82) == pure and whole_epoch_budget({"max_epochs": 5}, 82) == {"max_epochs": 5}
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    cfg = PinnConfig(base_filters=[8, 16, 32], val_fraction=0.0, batch_size=8)
    _, outcome = fit(cfg, 2, 0, train, {"max_steps": 5, "max_epochs": 200, "accelerator": "cpu",
                                         "enable_progress_bar": False, "limit_train_batches": 2}, tmp_path / "run")
    assert (outcome.epochs, outcome.steps) == (3, 6)


def test_training_starts_from_a_bundles_network_on_this_datas_physics(small_dataset_cfg, tmp_path):
    """``model.init_weights``: the network of a bundle trained at another dose starts a training on
    this data; the probe and the scales stay this data's; the manifest's outcome names the bundle;
    a network of another shape and a missing file are refused, naming what is wrong."""
    high = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    low = load_or_simulate(small_dataset_cfg, 1e3, 0, tmp_path / "cache").train
    cfg = PinnConfig(base_filters=[8, 16, 32], val_fraction=0.0, batch_size=8)
    budget = {"max_steps": 3, "max_epochs": -1, "accelerator": "cpu", "enable_progress_bar": False}
    trained, _ = fit(cfg, 2, 0, high, budget, tmp_path / "a")
    path = tmp_path / "wts.h5.zip"
    digest = save_model_bundle(path, trained, "pinn", {}, {}, "dose: 10000.0\n")
    started = build_model(cfg, 2, low)
    assert start_from_bundle(started, str(path)) == digest == load_bundle(path).sha256
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(started.net(x), trained.net(x), strict=True))
    fresh = build_model(cfg, 2, low)
    assert float(started.log_intensity_scale) == float(fresh.log_intensity_scale) != float(trained.log_intensity_scale)
    model, outcome = fit(PinnConfig(base_filters=[8, 16, 32], val_fraction=0.0, batch_size=8, init_weights=str(path)),
                         2, 0, low, budget, tmp_path / "b")
    assert outcome.init_weights_sha256 == digest and outcome.steps == 3
    moved = [not torch.equal(p, q) for p, q in zip(model.net.parameters(), trained.net.parameters(), strict=True)]
    assert any(moved)  # it trained on from there
    with pytest.raises(BundleError, match=r"wts\.h5\.zip: model\.init_weights: network tensor 'net\..*' is of shape"):
        start_from_bundle(build_model(PinnConfig(base_filters=[8, 16, 32], width=2), 2, low), str(path))
    gone = PinnConfig(base_filters=[8, 16, 32], val_fraction=0.0, batch_size=8, init_weights="nowhere/wts.h5.zip")
    # a finished run's config stays readable after its start moved; training from it is refused
    with pytest.raises(BundleError, match=r"nowhere/wts\.h5\.zip: no such bundle file"):
        fit(gone, 2, 0, low, budget, tmp_path / "c")
    one = load_bundle(path).models["pinn"]
    write_bundle(tmp_path / "two" / "wts.h5.zip", {"pinn": one, "spare": one}, {}, "x: 1\n", {})
    with pytest.raises(BundleError, match=r"holds 2 models \(pinn, spare\); a start needs exactly one"):
        start_from_bundle(build_model(cfg, 2, low), str(tmp_path / "two" / "wts.h5.zip"))


def test_the_logging_interval_is_capped_at_the_steps_an_epoch_runs():
    assert logging_interval({"log_every_n_steps": 10}, 30) == 10
    assert logging_interval({}, 30) == 30  # Lightning's default 50, capped
    assert logging_interval({"log_every_n_steps": 10, "limit_train_batches": 4}, 30) == 4
    assert logging_interval({"log_every_n_steps": 10, "limit_train_batches": 0.1}, 30) == 3
    assert logging_interval({"log_every_n_steps": 10, "limit_train_batches": 0.01}, 30) == 1


@pytest.mark.parametrize("terminal", [False, True])
def test_training_progress_goes_to_the_log_where_no_terminal_shows_a_bar(tmp_path, monkeypatch, terminal):
    """A bar written to a file (a sweep's job, a cluster's log, ``make run > log``) draws nothing
    until training ends: there the steps go to the log; on a terminal the bar shows them, and
    ``enable_progress_bar=false`` logs them anywhere."""
    monkeypatch.setattr("sys.stdout.isatty", lambda: terminal)

    def shown(**kwargs) -> tuple[bool, bool]:
        trainer, _ = build_trainer({"accelerator": "cpu", **kwargs}, tmp_path, 0, 4)
        logged = any(isinstance(c, StepProgress) for c in trainer.callbacks)
        return trainer.progress_bar_callback is not None, logged

    assert shown() == (terminal, not terminal)
    assert shown(enable_progress_bar=False) == (False, True)


@pytest.mark.parametrize("augment", [False, True])
def test_refinement_uses_the_probes_symmetries_only_when_asked(small_dataset_cfg, tmp_path, augment):
    """Training's samples include the probe's symmetries (model.augment_symmetries); the refined arm
    fits the test patterns as measured unless refine.augment_symmetries says otherwise."""
    data = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache")
    model_cfg = PinnConfig(base_filters=[8, 16, 32], batch_size=8)
    assert model_cfg.augment_symmetries and len(probe_symmetries(data.test.probe)) > 1
    model = build_model(model_cfg, 2, data.train)
    _, outcome = refine(model, model_cfg, RefineConfig(steps=3, augment_symmetries=augment), 2, 0, data.test,
                        {"accelerator": "cpu", "enable_progress_bar": False}, tmp_path)
    assert outcome.steps == 3 and outcome.groups["val"] == 0
    assert outcome.groups["symmetries"] == (len(probe_symmetries(data.test.probe)) if augment else 1)


@pytest.mark.parametrize("freeze", [True, False])
def test_refinement_moves_the_encoder_only_when_it_is_not_frozen(small_dataset_cfg, tmp_path, freeze):
    """With refine.freeze_encoder the refined arm fine-tunes the decoders alone; either way the
    trained network it starts from is left as it was (the single pass and the bundle are its)."""
    data = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache")
    model_cfg = PinnConfig(base_filters=[8, 16, 32], batch_size=8)
    model = build_model(model_cfg, 2, data.train)
    trained = {name: p.detach().clone() for name, p in model.net.named_parameters()}
    tuned, outcome = refine(model, model_cfg, RefineConfig(steps=4, freeze_encoder=freeze), 2, 0, data.test,
                            {"accelerator": "cpu", "enable_progress_bar": False}, tmp_path)
    assert outcome.steps == 4
    assert all(torch.equal(p, trained[name]) for name, p in model.net.named_parameters())
    encoder = {id(p) for p in tuned.net.encoder_parameters()}
    moved = {id(p) for name, p in tuned.net.named_parameters() if not torch.equal(p, trained[name])}
    assert len(moved - encoder) > 0  # the decoders always move
    assert moved.isdisjoint(encoder) == freeze
    assert all(p.requires_grad for p in model.net.parameters())  # the copy was frozen, not the original


@pytest.mark.parametrize("group_norm", ["none", "phase_decoder"])
def test_bf16_autocast_leaves_amplitude_and_phase_in_full_precision(small_dataset_cfg, tmp_path, group_norm):
    """Under bf16 autocast (trainer=cpu on a CPU with AVX512-BF16) the convolutions run in bf16 but the
    heads do not: a bf16 phase would move in steps of about 0.01 rad."""
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    model = build_model(PinnConfig(base_filters=[8, 16, 32], group_norm=group_norm), 2, train)
    diff = GroupedPatterns(train.diff3d, group_positions(train.xcoords, train.ycoords, 2, 7)).__getitems__([0])["diff"]
    with torch.no_grad():
        _, phase32 = model.predict_amp_phase(diff)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp, phase = model.predict_amp_phase(diff)
    assert amp.dtype == phase.dtype == torch.float32
    assert not torch.equal(phase, phase.bfloat16().float())  # values bf16 cannot hold
    assert not torch.equal(phase, phase32)  # the convolutions did run in bf16
    # bf16's 8-bit mantissa through the convolutions: a few per cent of the phase's spread. (An untrained
    # network's phase spans about 0.01 rad without normalisation and about 2 rad with it.)
    assert float((phase - phase32).square().mean().sqrt()) < 0.05 * float(phase32.std())


@pytest.mark.parametrize("group_norm", ["none", "phase_decoder", "all"])
def test_per_pattern_network_predicts_each_pattern_from_itself_alone(small_dataset_cfg, tmp_path, group_norm):
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    model = build_model(PinnConfig(base_filters=[8, 16, 32], per_pattern=True, group_norm=group_norm), 2, train)
    model.train()  # group normalisation is per sample in training too (a batch norm's would mix the batch)
    ds = GroupedPatterns(train.diff3d, group_positions(train.xcoords, train.ycoords, 2, 7))
    diff = ds.__getitems__([0, 1])["diff"]
    with torch.no_grad():
        whole = model.predict_patches(diff)
        changed = diff.clone()
        changed[:, 1:] = changed[:, 1:].flip(-1)  # every member but the first altered
        again = model.predict_patches(changed)
    assert torch.equal(whole[:, 0], again[:, 0])
    assert not torch.equal(whole[:, 1], again[:, 1])
    # one network for all members: a pattern moved to another slot gives the same patch
    swapped = diff[:, [1, 0, 2, 3]]
    with torch.no_grad():
        assert torch.allclose(model.predict_patches(swapped)[:, 1], whole[:, 0], atol=1e-6)


def test_phase_total_variation_counts_steps_on_the_support_only():
    support = support_mask(16, "center")  # the central 8 x 8
    ramp = (0.1 * torch.arange(16.0))[None, :].expand(16, 16).clone()  # 0.1 rad per column
    assert float(total_variation(torch.full((2, 4, 16, 16), 3.0), support)) == 0.0
    torch.testing.assert_close(total_variation(ramp, support), torch.tensor(0.1))
    ramp[support == 0] = torch.randn(int((support == 0).sum()), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(total_variation(ramp, support), torch.tensor(0.1))  # off the support: ignored


def test_phase_tv_adds_its_weighted_term_to_the_loss(small_dataset_cfg, tmp_path):
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    batch = GroupedPatterns(train.diff3d, group_positions(train.xcoords, train.ycoords, 2, 7)).__getitems__([0, 1, 2])
    L.seed_everything(0, verbose=False)
    plain = build_model(PinnConfig(base_filters=[8, 16, 32], phase_tv=0.0), 2, train)
    L.seed_everything(0, verbose=False)
    prior = build_model(PinnConfig(base_filters=[8, 16, 32], phase_tv=0.5), 2, train)
    with torch.no_grad():
        without, with_tv = plain.training_loss(batch), prior.training_loss(batch)
    assert "phase_tv" not in without and float(with_tv["phase_tv"]) > 0  # an untrained network's phase varies
    torch.testing.assert_close(with_tv["nll"], without["nll"])
    counts = batch["diff"].square().mean()  # the weight is relative to the likelihood, which scales with counts
    torch.testing.assert_close(with_tv["loss"], without["loss"] + 0.5 * counts * with_tv["phase_tv"])


def test_the_merge_cannot_see_an_error_every_member_shares_at_twice_their_spacing():
    """Why model.own_patch_weight exists: a phase error that every member's patch makes alike,
    periodic at twice the members' spacing, averages away in the overlap merge (the members see
    it with opposite signs; the merge, an average of shifted copies, damps any fine shared error),
    so the merged likelihood is nearly blind to it; each own patch's is not (measured: 1.6% of it)."""
    rng = np.random.default_rng(0)
    obj = torch.from_numpy((0.6 + 0.4 * rng.random((96, 96))) * np.exp(0.3j * rng.random((96, 96)))).to(torch.complex64)
    n = 32
    centres = torch.tensor([[45.0, 45.0], [48.0, 45.0], [45.0, 48.0], [48.0, 48.0]])  # a 2x2 raster, 3 px apart
    truth = extract_patches(obj, centres[:, 0], centres[:, 1], n)[None]
    offsets = (centres - centres.mean(dim=0))[None]
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    shared = torch.exp(0.3j * torch.cos(torch.pi * xx / 3) * torch.cos(torch.pi * yy / 3))  # period 6 px
    support = support_mask(n, "center")
    probe = torch.from_numpy(np.exp(-((xx - n / 2) ** 2 + (yy - n / 2) ** 2).numpy() / 40.0).astype(np.complex64))
    model = PINN(N=n, gridsize=2, base_filters=(8,), probe=probe, object_support="center")
    counts = model.predicted_counts(merge_overlaps(truth * support, support, offsets))  # noiseless data
    wrong = truth * shared * support

    def excess(pred):  # the likelihood's excess over the truth's own, per pattern
        return float(poisson_nll(pred, counts) - poisson_nll(counts, counts))

    merged = excess(model.predicted_counts(merge_overlaps(wrong, support, offsets)))
    own = excess(model.predicted_counts(wrong))
    assert own > 0 and merged < 0.05 * own


def test_own_patch_weight_adds_each_members_own_likelihood_to_the_loss(small_dataset_cfg, tmp_path):
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    batch = GroupedPatterns(train.diff3d, group_positions(train.xcoords, train.ycoords, 2, 7)).__getitems__([0, 1, 2])
    L.seed_everything(0, verbose=False)
    plain = build_model(PinnConfig(base_filters=[8, 16, 32]), 2, train)
    L.seed_everything(0, verbose=False)
    both = build_model(PinnConfig(base_filters=[8, 16, 32], own_patch_weight=0.2), 2, train)
    with torch.no_grad():
        without, with_own = plain.training_loss(batch), both.training_loss(batch)
        own = poisson_nll(both.predicted_counts(both.patches_from(*both.predict_amp_phase(batch["diff"]))),
                          batch["diff"].square())
    assert "own_nll" not in without
    torch.testing.assert_close(with_own["nll"], without["nll"])
    torch.testing.assert_close(with_own["own_nll"], own)
    torch.testing.assert_close(with_own["loss"], without["loss"] + 0.2 * own)
    with pytest.raises(ConfigError, match=r"model\.own_patch_weight"):
        PinnConfig(own_patch_weight=-1.0)


def test_the_own_patches_likelihood_without_ramps_ignores_a_ramp_and_keeps_the_rest(small_dataset_cfg, tmp_path):
    """model.own_patch_ramps=removed: the own term gives the same loss and gradient whatever linear
    ramp the phase carries (only the merged term decides it), and leaves a ramp-free phase alone."""
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    L.seed_everything(0, verbose=False)
    kept = build_model(PinnConfig(base_filters=[8, 16, 32], own_patch_weight=1.0), 2, train)
    L.seed_everything(0, verbose=False)
    model = build_model(PinnConfig(base_filters=[8, 16, 32], own_patch_weight=1.0, own_patch_ramps="removed"), 2, train)
    n = train.N
    rng = torch.Generator().manual_seed(0)
    phase = 0.3 * torch.randn(2, 4, n, n, generator=rng)
    flat = model.without_ramps(phase)
    c = torch.arange(n, dtype=torch.float32) - n // 2  # a ramp about the patch's centre, which keeps the mean
    ramped = phase + 0.05 * c - 0.03 * c[:, None]
    torch.testing.assert_close(model.without_ramps(ramped), flat, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.without_ramps(flat), flat, atol=1e-5, rtol=0)  # nothing left to remove
    assert float((flat - phase).abs().max()) > 1e-3  # noise has a fitted ramp of its own

    batch = GroupedPatterns(train.diff3d, group_positions(train.xcoords, train.ycoords, 2, 7)).__getitems__([0, 1])
    amp = torch.full((2, 4, n, n), 0.8)

    def own_nll(ph):
        pred = model.predicted_counts(model.patches_from(amp, model.without_ramps(ph)))
        return poisson_nll(pred, batch["diff"].square())

    a, b = phase.clone().requires_grad_(), ramped.clone().requires_grad_()
    la, lb = own_nll(a), own_nll(b)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # the same network: the merged term agrees, the own term does not
        as_predicted, ramps_removed = kept.training_loss(batch), model.training_loss(batch)
    torch.testing.assert_close(as_predicted["nll"], ramps_removed["nll"])
    assert float(as_predicted["own_nll"]) != float(ramps_removed["own_nll"])


def test_supervised_baseline_learns_and_refuses_data_without_y(small_dataset_cfg, tmp_path):
    train = load_or_simulate(small_dataset_cfg, 1e4, 0, tmp_path / "cache").train
    L.seed_everything(0, verbose=False)
    model = build_model(SupervisedConfig(base_filters=[8, 16, 32], width=1, lr=3e-3), 1, train)
    assert isinstance(model, Supervised)
    ds = GroupedPatterns(train.diff3d, group_positions(train.xcoords, train.ycoords, 1), train.Y)
    batch = ds.__getitems__(list(range(32)))
    before = float(model.training_loss(batch)["loss"].detach())
    L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, make_loader(ds, 8, True, 0))
    after = float(model.training_loss(batch)["loss"].detach())
    assert after < 0.8 * before, (before, after)
    train.Y = None
    with pytest.raises(PtylabError, match="needs ground-truth patches 'Y'"):
        build_model(SupervisedConfig(), 1, train)
    with pytest.raises(ConfigError, match="trains at gridsize 1"):
        build_model(SupervisedConfig(), 2, train)


def test_checkpoint_loads_outside_hydra(tmp_path):
    model = PINN(N=16, gridsize=2, base_filters=(4, 8, 8), width=1, probe=torch.ones(16, 16, dtype=torch.complex64),
                 intensity_scale=5.0, input_scale=0.3)
    trainer = L.Trainer(max_epochs=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = PINN.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert again.hparams["gridsize"] == 2 and float(again.input_scale) == pytest.approx(0.3)
    torch.testing.assert_close(again.probe, model.probe)


def test_the_network_is_built_from_hyperparameters_the_models_save():
    """Every architecture name ``NetworkSpec`` reads is a parameter of the models (a renamed one would
    fall back to its default without a word), and a model's saved hyperparameters give its network."""
    names = {f.name for f in fields(NetworkSpec)}
    assert names <= set(inspect.signature(PINN).parameters)
    assert names - {"per_pattern"} <= set(inspect.signature(Supervised).parameters)
    model = PINN(N=16, base_filters=(4, 8, 8), width=2, separate_decoders=True, decoder_width=0.5,
                 group_norm="phase_decoder", bilinear_upsampling="phase_decoder", per_pattern=True)
    spec = NetworkSpec.from_hparams(model.hparams)
    assert spec == NetworkSpec(base_filters=(4, 8, 8), width=2, separate_decoders=True, decoder_width=0.5,
                               group_norm="phase_decoder", bilinear_upsampling="phase_decoder", per_pattern=True)
    assert model.net.down[0][0].in_channels == 1 and model.net.down[0][0].out_channels == 8  # per pattern, width 2
    assert model.net.phase_decoder.head.out_channels == 1
    assert NetworkSpec.from_hparams(Supervised().hparams).per_pattern is False


def test_a_pattern_size_the_network_cannot_halve_three_times_is_refused_by_the_model():
    with pytest.raises(ConfigError, match=r"N=12: .* must be a multiple of 8"):
        PINN(N=12, base_filters=(4, 8, 8))
    assert PINN(N=24, base_filters=(4, 8, 8)).predict_patches(torch.ones(1, 4, 24, 24)).shape == (1, 4, 24, 24)


def test_per_pattern_batches_count_patterns_and_epochs_pass_over_the_patterns():
    assert batch_plan(PINN(N=16, gridsize=2, per_pattern=True), 16, 2) == (4, 0.25)
    assert batch_plan(PINN(N=16, gridsize=1, per_pattern=True), 16, 1) == (16, 1.0)
    assert batch_plan(PINN(N=16, gridsize=2, per_pattern=False), 16, 2) == (16, 1.0)
    # whole groups, as many as come nearest the patterns asked for (not fewer: 16 at gs3 is 18, not 9)
    assert batch_plan(PINN(N=16, gridsize=3, per_pattern=True), 16, 3) == (2, 1 / 9)
    assert batch_plan(PINN(N=16, gridsize=3, per_pattern=True), 4, 3) == (1, 1 / 9)
    # halves round up, every time (round() took 2.5 to 2 and 1.5 to 2)
    assert [batch_plan(PINN(N=16, gridsize=2, per_pattern=True), b, 2)[0] for b in (2, 6, 10, 14)] == [1, 2, 3, 4]
    sampler = EpochShuffle(100, seed=3, fraction=0.25)
    first = list(sampler)
    assert len(first) == len(sampler) == 25 and len(set(first)) == 25
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first  # a fresh subset each epoch...
    sampler.set_epoch(0)
    assert list(sampler) == first  # ...that depends on (seed, epoch) only, so resume sees the same batches
    assert list(EpochShuffle(10, seed=3, shuffle=False, fraction=0.25)) == list(range(10))  # validation: all
