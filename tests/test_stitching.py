"""Stitching: exact for consistent patches; phase synchronisation undoes per-patch phase offsets, and
the offsets fitted to the measured patterns undo what synchronisation leaves."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from ptylab import phase_sync, placement
from ptylab.config import trainer_device, validate
from ptylab.data import mean_total_counts
from ptylab.evaluation import NETWORK_ALONE, PATCH_CORR, PATCH_CORR_WARN, evaluate_reconstruction
from ptylab.models import build_model
from ptylab.phase_offsets import (
    AUTO_LR,
    AUTO_LR_MAX,
    AUTO_REGIMES,
    Evidence,
    OffsetFit,
    ResolvedFit,
    _polar,
    amplitude_variation,
    auto_lr,
    fit_offsets,
    phase_variation,
    shape_basis,
    shifted_terms,
)
from ptylab.physics import extract_patches, far_field, make_object, make_probe, poisson_sample, raster_scan
from ptylab.rng import stage_rng
from ptylab.simulate import simulate
from ptylab.stitching import spatial_tiles, stitch

from .conftest import SMALL_OVERRIDES, compose_config


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


def test_explicit_and_matrix_free_synchronisation_agree(scan, monkeypatch):
    """Sparse scans solve the synchronisation with an explicit matrix, densely covered tiles
    matrix-free: the same answer."""
    obj, x, y, patches = scan
    assert phase_sync.coverage(placement.place(patches, x, y, obj.shape, 16)) <= phase_sync.EXPLICIT_SYNC_MAX_COVER
    offsets = np.exp(1j * stage_rng(3, "offsets").uniform(-np.pi, np.pi, len(x))).astype(np.complex64)
    explicit = stitch(patches * offsets[:, None, None], x, y, obj.shape, 16, sync_phase=True)
    monkeypatch.setattr(phase_sync, "EXPLICIT_SYNC_MAX_COVER", 0.0)
    free = stitch(patches * offsets[:, None, None], x, y, obj.shape, 16, sync_phase=True)
    np.testing.assert_allclose(explicit.obj, free.obj, atol=1e-5)


def test_phase_sync_runs_its_power_steps_to_a_fixed_point():
    """The power steps relax the phases slowly across a large scan; they run until no phase moves
    by more than the tolerance, so one more step changes nothing. Patches with their own phase
    errors (a random bowl each, as a network's) on a 27 x 27 raster: 20 steps were not enough."""
    obj = make_object(112, "camera", "astronaut", 0.3, 2.0)
    x, y = raster_scan(obj.shape, 16, 3.0, 0.4, stage_rng(0, "scan"))
    patches = extract_patches(torch.from_numpy(obj), torch.from_numpy(x), torch.from_numpy(y), 16).numpy()
    rng = stage_rng(2, "errors")
    u = np.linspace(-1, 1, 16)
    bowl = (u[:, None] ** 2 + u[None, :] ** 2)[None] * rng.normal(0, 0.8, (len(x), 1, 1))
    patches = patches * np.exp(1j * (bowl + rng.uniform(-np.pi, np.pi, (len(x), 1, 1)))).astype(np.complex64)
    placed = placement.place(patches, x, y, obj.shape, 16)
    weight = placed.weight_sum()
    a = phase_sync.overlap_matrix(placed, torch.where(weight > 1e-6, 1 / weight.clamp_min(1e-6), 0 * weight))

    def last_move(v: torch.Tensor) -> float:
        z = torch.from_numpy(a @ v.numpy())
        return float((z / z.abs() * v.conj()).angle().abs().max())

    assert len(x) > 700
    assert last_move(phase_sync.phase_sync(placed, max_steps=20)) > 10 * phase_sync.SYNC_TOL
    assert last_move(phase_sync.phase_sync(placed)) < phase_sync.SYNC_TOL


def test_tiled_stitching_matches_stitching_the_whole_scan(scan):
    """Tiles bound memory on large scans; they must not change what is reconstructed."""
    obj, x, y, patches = scan
    offsets = np.exp(1j * stage_rng(2, "offsets").uniform(-np.pi, np.pi, len(x))).astype(np.complex64)
    scrambled = patches * offsets[:, None, None]
    whole = stitch(scrambled, x, y, obj.shape, 16, sync_phase=True)
    tiled = stitch(scrambled, x, y, obj.shape, 16, sync_phase=True, tile_patches=len(x) // 8)
    np.testing.assert_allclose(tiled.weight, whole.weight, rtol=1e-5, atol=1e-6)
    a, _ = _inner(whole, obj)
    b, _ = _inner(tiled, obj)
    rel = b * np.conj(a)
    rel *= np.exp(-1j * np.angle(rel.sum()))  # each result keeps its own global phase
    assert np.abs(np.angle(rel)).mean() < 0.01
    assert np.abs(np.abs(a) - np.abs(b)).mean() < 1e-3
    # Unsynchronised tiles would each keep an arbitrary phase: the tile step is what makes this work.
    assert len(spatial_tiles(x, y, len(x) // 8)) >= 8


def test_the_offset_fits_polar_form_gives_torch_polars_values_and_gradients():
    """The fit builds its per-pixel factors through cosines and sines (for speed, not
    ``torch.polar``): the same factors, broadcast over pixels, and the same gradients."""
    gen = torch.Generator().manual_seed(4)
    magnitude = (torch.rand(5, 1, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    phase = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 7, generator=gen, dtype=torch.complex128)
    torch.testing.assert_close(_polar(magnitude, phase), torch.polar(magnitude.expand_as(phase), phase))
    mine = torch.autograd.grad(((_polar(magnitude, phase) - target).abs() ** 2).sum(), (magnitude, phase))
    theirs = torch.autograd.grad(((torch.polar(magnitude.expand_as(phase), phase) - target).abs() ** 2).sum(),
                                 (magnitude, phase))
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_tiles_are_compact_and_cover_every_patch_once(scan):
    _, x, y, _ = scan
    tiles = spatial_tiles(x, y, 30)
    assert np.array_equal(np.sort(np.concatenate(tiles)), np.arange(len(x)))
    assert max(len(t) for t in tiles) <= 30
    # compact: a tile spans a fraction of the scan, not a strip across it
    assert max(np.ptp(x[t]) for t in tiles) < 0.6 * np.ptp(x)


# The fits below keep the rate their bounds were measured with (the automatic one would pick 0.06
# at these 1e4 counts; the rule is tested on its own).
LR = 0.02


def _measured(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A probe and the Poisson-noised amplitudes (1e4 photons per pattern) it gives on ``patches``."""
    probe = make_probe(32, 12.0, 1.0, 2.0)
    unit = far_field(torch.from_numpy(probe) * torch.from_numpy(patches)).abs().square().numpy()
    diff = np.sqrt(poisson_sample(unit * (1e4 / unit.sum((1, 2)).mean()), stage_rng(0, "noise"))).astype(np.float32)
    return probe, diff


def _phase_error(result, obj) -> float:
    rec, truth = _inner(result, obj)
    rel = rec * np.conj(truth)
    rel *= np.exp(-1j * np.angle(rel.sum()))
    return float(np.abs(np.angle(rel)).mean())


def test_offsets_fitted_to_the_data_undo_the_drift_of_overlap_synchronisation(scan):
    """Patches with network-like errors (phase contrast scaled by a random factor per patch, a
    brightness off by up to 25 %, an arbitrary offset each): overlap agreement drifts, the measured
    patterns pin the offsets and the gains."""
    obj, x, y, patches = scan
    probe, diff = _measured(patches)
    rng = stage_rng(3, "errors")
    centre = patches[:, 16, 16] / np.abs(patches[:, 16, 16])
    rel = patches * np.conj(centre)[:, None, None]
    gain = rng.uniform(0.6, 1.0, len(x))[:, None, None]
    offset = np.exp(1j * rng.uniform(-np.pi, np.pi, len(x)))[:, None, None]
    brightness = rng.uniform(0.75, 1.25, len(x))[:, None, None]
    predicted = (brightness * np.abs(rel) * np.exp(1j * gain * np.angle(rel)) * offset).astype(np.complex64)

    def phase_error(result):
        return _phase_error(result, obj)

    def amplitude_error(result):
        rec, truth = _inner(result, obj)
        rec = np.abs(rec) * np.abs(truth).mean() / np.abs(rec).mean()  # the overall scale is the data's
        return np.abs(rec - np.abs(truth)).mean()

    synced = stitch(predicted, x, y, obj.shape, 16, sync_phase=True)
    phases = stitch(predicted, x, y, obj.shape, 16, sync_phase=True,
                    evidence=Evidence(diff, np.arange(len(x)), x, y, probe,
                                      ResolvedFit(60, LR, gains=False, order=0, ramp=True, average=0.0)))
    fitted = stitch(predicted, x, y, obj.shape, 16, sync_phase=True,
                    evidence=Evidence(diff, np.arange(len(x)), x, y, probe,
                                      ResolvedFit(60, LR, gains=True, order=0, ramp=True, average=0.0)))
    assert phase_error(phases) < 0.8 * phase_error(synced)
    assert phase_error(fitted) < 0.8 * phase_error(synced)
    assert amplitude_error(fitted) < 0.9 * amplitude_error(phases)
    # Only offsets and gains change: the patches' placement and weights are the synchronised stitch's.
    np.testing.assert_allclose(fitted.weight, synced.weight)


def _with_shared_error(patches: np.ndarray, shared) -> np.ndarray:
    """``patches`` with the same phase error ``shared(u, v)`` in each (u, v +-1 at the edge of the
    16 px stitching crop), a random ramp and an arbitrary offset."""
    rng = stage_rng(4, "errors")
    u, v = np.meshgrid(np.arange(32) - 16.0, np.arange(32) - 16.0, indexing="xy")
    u, v = u / 8, v / 8
    ramps = rng.normal(0, 0.15, (2, len(patches), 1, 1))
    error = shared(u, v) + ramps[0] * u + ramps[1] * v
    offset = np.exp(1j * rng.uniform(-np.pi, np.pi, len(patches)))[:, None, None]
    return (patches * np.exp(1j * error) * offset).astype(np.complex64)


def _fitted(scan, predicted: np.ndarray, order: int, steps: int = 60, average: float = 0.0, lr: float = LR):
    obj, x, y, patches = scan
    probe, diff = _measured(patches)
    fit = ResolvedFit(steps, lr, gains=True, order=order, ramp=True, average=average)
    evidence = Evidence(diff, np.arange(len(x)), x, y, probe, fit)
    return stitch(predicted, x, y, obj.shape, 16, sync_phase=True, evidence=evidence)


def test_shape_terms_fitted_to_the_data_remove_an_error_every_patch_shares(scan):
    """Every patch carries the same phase bowl relative to its own centre (as a network that puts
    part of a defocused probe's phase into the object does) and a random ramp: averaged over the
    raster the bowl prints a grid at the scan step that offsets alone cannot remove; the fitted
    curvature and ramps (order 2) can."""
    obj, _, _, patches = scan
    predicted = _with_shared_error(patches, lambda u, v: 0.4 * (u**2 + v**2))
    offsets_only, shaped = (_phase_error(_fitted(scan, predicted, order), obj) for order in (0, 2))
    assert shaped < 0.8 * offsets_only  # measured 0.038 vs 0.058 rad


class _ShapedScan:
    """A 96 px object scanned with 32 px patterns, measured at 1e4 photons, and what a test of the
    fit's priors gives each patch: the patch coordinates u, v (about -2 to 2) for smooth errors,
    and a random generator seeded for them; ``fitted`` stitches predicted patches through a
    60-step order-2 fit with the given prior weights."""

    def __init__(self, obj: np.ndarray, seed: int):
        self.obj = obj
        self.x, self.y = raster_scan(obj.shape, 32, 5.0, 0.4, stage_rng(0, "scan"))
        xs, ys = torch.from_numpy(self.x), torch.from_numpy(self.y)
        self.patches = extract_patches(torch.from_numpy(obj), xs, ys, 32).numpy()
        self.probe, self.diff = _measured(self.patches)
        self.rng = stage_rng(seed, "errors")
        u, v = np.meshgrid(np.arange(32) - 16.0, np.arange(32) - 16.0, indexing="xy")
        self.u, self.v = u / 8, v / 8

    def fitted(self, predicted: np.ndarray, **priors: float):
        fit = ResolvedFit(60, LR, gains=True, order=2, ramp=True, average=0.0, **priors)
        evidence = Evidence(self.diff, np.arange(len(self.x)), self.x, self.y, self.probe, fit)
        return stitch(predicted, self.x, self.y, self.obj.shape, 16, sync_phase=True, evidence=evidence)


def test_the_phase_total_variation_in_the_fit_removes_the_texture_disagreeing_patches_leave():
    """Each patch of a flat-phase object carries its own random ramps, curvature and astigmatism
    (as a network's patches do where one pattern does not pin its phase's shape): the fitted shape
    terms leave part of them, which stitched overlap averages into texture at the scan step; the
    phase's total variation in the fit's loss (``phase_tv``) takes it out, and 0 leaves the
    likelihood alone."""
    obj = make_object(96, "camera", "astronaut", 0.3, 0.0)  # a flat phase
    scan = _ShapedScan(obj, seed=5)
    c = scan.rng.normal(0, 0.15, (5, len(scan.x), 1, 1))
    u, v = scan.u, scan.v
    error = c[0] * u + c[1] * v + c[2] * (u**2 + v**2) + c[3] * (u**2 - v**2) + c[4] * 2 * u * v
    offset = np.exp(1j * scan.rng.uniform(-np.pi, np.pi, len(scan.x)))[:, None, None]
    predicted = (scan.patches * np.exp(1j * error) * offset).astype(np.complex64)
    plain, prior = scan.fitted(predicted, phase_tv=0.0), scan.fitted(predicted, phase_tv=4.0)
    variation = {name: float(phase_variation(torch.from_numpy(_inner(r, obj)[0]))) for name, r in
                 (("plain", plain), ("prior", prior))}
    assert variation["prior"] < 0.7 * variation["plain"]  # measured 0.011 vs 0.020
    assert _phase_error(prior, obj) < 0.7 * _phase_error(plain, obj)  # measured 0.011 vs 0.017 rad
    assert OffsetFit.from_inference({k: v for k, v in OffsetFit(phase_tv=0.5).inference().items()
                                     if k != "offset_fit_phase_tv"}).phase_tv == 0.0  # older bundles
    assert OffsetFit.from_inference(OffsetFit(phase_tv=0.5).inference()).for_counts(1e4).phase_tv == 0.5


def test_the_amplitude_total_variation_in_the_fit_removes_the_grain_disagreeing_patches_leave():
    """Each patch of a flat-amplitude object carries its own random brightness, slopes and
    curvature in its amplitude (as a network's patches do where one pattern does not pin its
    amplitude's shape): the fitted gains and shape terms leave part of them, which the stitch's
    average turns into grain at the scan step; the amplitude's relative total variation in the fit's
    loss (``amplitude_tv``) takes it out, and 0 leaves the likelihood alone."""
    obj = make_object(96, "camera", "astronaut", 0.8, 0.6, amplitude_max=0.8)  # a flat amplitude
    scan = _ShapedScan(obj, seed=6)
    c = scan.rng.normal(0, 0.1, (6, len(scan.x), 1, 1))
    u, v = scan.u, scan.v
    log_error = c[0] + c[1] * u + c[2] * v + c[3] * (u**2 + v**2) + c[4] * (u**2 - v**2) + c[5] * 2 * u * v
    predicted = (scan.patches * np.exp(log_error)).astype(np.complex64)

    def amplitude_error(result) -> float:
        rec, truth = (np.abs(a) for a in _inner(result, obj))
        return float(np.abs(rec * truth.mean() / rec.mean() - truth).mean() / truth.mean())

    # a strong weight: 60 steps, in which the gains move at a fifth of the rate
    plain, prior = scan.fitted(predicted, amplitude_tv=0.0), scan.fitted(predicted, amplitude_tv=16.0)
    variation = {name: float(amplitude_variation(torch.from_numpy(_inner(r, obj)[0]))) for name, r in
                 (("plain", plain), ("prior", prior))}
    assert variation["prior"] < 0.7 * variation["plain"]  # measured 0.0078 vs 0.0148
    assert amplitude_error(prior) < 0.7 * amplitude_error(plain)  # measured 0.0057 vs 0.0104 (relative)
    assert OffsetFit.from_inference({k: v for k, v in OffsetFit(amplitude_tv=0.5).inference().items()
                                     if k != "offset_fit_amplitude_tv"}).amplitude_tv == 0.0  # older bundles
    assert OffsetFit.from_inference(OffsetFit(amplitude_tv=0.5).inference()).for_counts(1e4).amplitude_tv == 0.5


def test_shape_terms_as_a_product_are_the_terms_at_each_placed_pixel(scan):
    """The fit evaluates every patch's shape terms as fixed mixtures of one shared grid's
    (``shifted_terms``): they must equal ``shape_basis`` at the pixels ``place`` actually put each
    patch on, sub-pixel shift included, at every order (edge patches too: their pixels off the
    canvas carry no weight)."""
    obj, x, y, patches = scan
    placed = placement.place(patches, x, y, obj.shape, 16)
    grid = placement.patch_grid(x, y, 16)
    width = obj.shape[1]
    inside = placed.weights > 0
    u = ((placed.index % width).double() - torch.from_numpy(x)[:, None]) / 8
    v = ((placed.index // width).double() - torch.from_numpy(y)[:, None]) / 8
    np.testing.assert_allclose((grid.u - grid.du[:, None])[inside], u[inside], atol=1e-12)
    np.testing.assert_allclose((grid.v - grid.dv[:, None])[inside], v[inside], atol=1e-12)
    for order in (1, 2, 3, 4):
        mix, q = shifted_terms(grid, order)
        direct = shape_basis(u, v, order)
        assert mix.shape == (len(direct), len(x), len(direct) + 1)
        np.testing.assert_allclose((mix @ q)[:, inside], direct[:, inside].float(), atol=2e-5)


def test_averaging_the_fits_last_steps_keeps_what_its_last_step_wanders_from(scan):
    """Run long past where it has found the shared bowl and the ramps, the fit's last step wanders
    on noisy patterns: at a constant rate Adam moves every parameter by about the rate per step
    whatever its gradient, so where it stops decides the error, and by how much depends on the
    machine's rounding (at 600 and 800 steps: 0.0301 and 0.0299 rad on an AMD EPYC with one
    thread, 0.0330 and 0.0299 with two; 0.0321 at 800 on an Intel Xeon). The parameters averaged
    over the last half stitch nearly the same object wherever the fit stops (0.0293 and 0.0292 on
    each), better than the last step at either stop. Two stops, not one margin at one stop: the
    first version asked 5 % at 800 steps, which held on the Xeon and not on the EPYC."""
    obj, _, _, patches = scan
    predicted = _with_shared_error(patches, lambda u, v: 0.4 * (u**2 + v**2))
    last, averaged = (np.array([_phase_error(_fitted(scan, predicted, 2, steps, average, lr=0.05), obj)
                                for steps in (600, 800)]) for average in (0.0, 0.5))
    assert averaged.max() < last.min(), (last, averaged)
    assert np.ptp(averaged) < np.ptp(last), (last, averaged)


def test_third_order_terms_remove_a_shared_trefoil_that_second_order_leaves(scan):
    """A trefoil (u^3 - 3uv^2, orthogonal to every term up to order 2 over the patch) shared by
    every patch: order 3 (coma and trefoil; `eval.offset_fit_order`'s choice from 5e3 counts)
    takes it out to the floor of exact patches (0.030 rad), order 2 cannot."""
    obj, _, _, patches = scan
    predicted = _with_shared_error(patches, lambda u, v: u * (u * u - 3 * v * v))
    second, third = (_phase_error(_fitted(scan, predicted, order, steps=100), obj) for order in (2, 3))
    assert third < 0.7 * second  # measured 0.032 vs 0.052 rad


def test_fourth_order_terms_remove_a_shared_tetrafoil_that_third_order_leaves(scan):
    """A tetrafoil (4uv(u^2 - v^2), orthogonal to every term up to order 3 over the patch) shared
    by every patch: order 4 (`eval.offset_fit_order`'s choice from 1.7e4 counts) takes it out,
    order 3 cannot."""
    obj, _, _, patches = scan
    predicted = _with_shared_error(patches, lambda u, v: 2.0 * 4 * u * v * (u * u - v * v))
    third, fourth = (_phase_error(_fitted(scan, predicted, order, steps=100), obj) for order in (3, 4))
    assert fourth < 0.5 * third  # measured 0.032 vs 0.084 rad


def test_jobs_evaluate_on_the_device_they_train_on():
    """trainer=gpu (and DDP on GPUs) evaluates on CUDA, where the offset fit is 7x faster than on
    16 CPU cores (docs/performance.md); trainer=cpu, the default, keeps evaluation on the CPU. Read
    from the validated config, as a job reads it."""
    devices = {t: trainer_device(validate(compose_config([f"trainer={t}"])).trainer) for t in ("cpu", "gpu", "ddp")}
    assert devices == {"cpu": "cpu", "gpu": "cuda", "ddp": "cuda"}
    assert trainer_device(validate(compose_config(["trainer=ddp", "trainer.accelerator=cpu"])).trainer) == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
def test_the_offset_fit_on_cuda_reaches_what_it_reaches_on_the_cpu(scan):
    """A job trained on a GPU evaluates there (``config.trainer_device``): the default fit
    (gains, shape terms of order 2, the ramp) on CUDA must stitch what it stitches on the CPU, up
    to float32 rounding through 60 Adam steps."""
    obj, x, y, patches = scan
    probe, diff = _measured(patches)
    predicted = _with_shared_error(patches, lambda u, v: 0.4 * (u**2 + v**2))
    fit = ResolvedFit(60, LR, gains=True, order=2, ramp=True, average=0.0)
    evidence = Evidence(diff, np.arange(len(x)), x, y, probe, fit)
    on = {d: stitch(predicted, x, y, obj.shape, 16, sync_phase=True, evidence=evidence, device=d)
          for d in ("cpu", "cuda")}
    np.testing.assert_array_equal(on["cuda"].weight, on["cpu"].weight)
    errors = {d: _phase_error(r, obj) for d, r in on.items()}
    assert abs(errors["cuda"] - errors["cpu"]) < 0.05 * errors["cpu"]
    assert np.abs(on["cuda"].obj - on["cpu"].obj).mean() < 0.01 * np.abs(on["cpu"].obj).mean()


def test_ramp_terms_take_a_scan_wide_phase_ramp_out_of_the_offsets_faster(scan):
    """Exact patches whose offsets start on a 1 rad phase ramp across the scan (as overlap
    synchronisation leaves at low dose): the data pin the ramp, but offsets alone undo it slowly
    (each moves about the learning rate per step); moving them together along a ramp is faster."""
    obj, x, y, patches = scan
    probe, diff = _measured(patches)
    placed = placement.place(patches, x, y, obj.shape, 16)
    inv_weight = placed.inverse_weight()
    across = (x - x.mean()) / (x.max() - x.min())
    start = torch.polar(torch.ones(len(x), dtype=torch.float64), torch.from_numpy(1.0 * across))

    def residual_tilt(ramp: bool) -> float:
        fit = ResolvedFit(20, LR, gains=False, order=0, ramp=ramp, average=0.0)
        evidence = Evidence(diff, np.arange(len(x)), x, y, probe, fit)
        factors = fit_offsets(lambda ph: (placed.value_sum(ph) * inv_weight).reshape(obj.shape), start, evidence,
                              np.arange(len(x)), (0, 0), placement.patch_grid(x, y, 16), (x, y))
        return abs(float(np.polyfit(across, np.unwrap(np.angle(factors.numpy())), 1)[0]))

    assert residual_tilt(True) < 0.5 * residual_tilt(False)  # measured 0.11 vs 0.29 rad after 20 steps
    ramp_free = OffsetFit.from_inference({k: v for k, v in OffsetFit().inference().items() if k != "offset_fit_ramp"})
    assert not ramp_free.ramp  # bundles from before the ramp terms reconstruct as they did


def test_offset_fit_length_rate_and_order_follow_the_counts_unless_set(tmp_path):
    """An unset rate comes from the data's counts per pattern (slow where noise dominates, faster
    with more counts, capped), and an unset order and length too (third- and fourth-order terms,
    and a longer fit, only where the counts pin them); a set value, or one a bundle recorded, is
    kept, and a bundle from before the length was chosen keeps its recorded steps."""
    for counts in (300.0, 1e3, 4e3, 9e3, 1e5):
        diff = np.lib.format.open_memmap(tmp_path / f"d{counts}.npy", "w+", np.float32, (40, 8, 8))
        diff[:] = np.sqrt(counts / 64)  # amplitudes whose squares sum to ``counts`` per pattern
        assert mean_total_counts(diff, chunk=7) == pytest.approx(counts, rel=1e-5)
        assert OffsetFit().for_counts(mean_total_counts(diff)).lr == pytest.approx(auto_lr(counts))
        assert OffsetFit(lr=0.05).for_counts(counts).lr == 0.05
    rates = [auto_lr(c) for c in (300.0, 1e3, 2e3, 4e3, 9e3, 1e5)]
    assert rates[0] == rates[1] == AUTO_LR and rates[-2] == rates[-1] == pytest.approx(AUTO_LR_MAX)
    assert rates[1] < rates[2] < rates[3] < rates[4]
    assert OffsetFit.from_inference(OffsetFit().inference()).lr is None  # a bundle keeps "from the data"
    assert OffsetFit.from_inference(OffsetFit(lr=0.02).inference()).lr == 0.02
    low, third, mid, high = AUTO_REGIMES
    assert low.counts <= 1e3 < third.counts < mid.counts < 1e4 < high.counts < 1e5  # the study's doses in order
    for counts, regime in ((0.0, low), (1e3, low), (third.counts, third), (mid.counts, mid), (1e4, mid),
                           (high.counts, high), (1e5, high)):
        fit = OffsetFit().for_counts(counts)
        assert (fit.order, fit.steps, fit.average) == (regime.order, regime.steps, regime.average)
    assert [r.order for r in AUTO_REGIMES] == [2, 3, 3, 4] and low.steps == third.steps < mid.steps < high.steps
    assert [r.average > 0 for r in AUTO_REGIMES] == [False, False, True, False]
    assert OffsetFit(order=1).for_counts(1e4).order == 1
    assert OffsetFit(average=0.0).for_counts(1e4).average == 0.0
    assert OffsetFit.from_inference(OffsetFit().inference()).order is None
    assert OffsetFit.from_inference(OffsetFit(order=2).inference()).order == 2
    assert OffsetFit(steps=0).for_counts(1e5).steps == 0  # off stays off
    assert OffsetFit().active and not OffsetFit(steps=0).active  # only 0 steps turn the fit off
    assert OffsetFit.from_inference(OffsetFit().inference()).steps is None
    assert OffsetFit.from_inference(OffsetFit(average=0.25).inference()).average == 0.25
    # A bundle from before the averaging: a recorded length keeps its last step; a length left to
    # the data leaves the averaging to it too (they were chosen together).
    old = {k: v for k, v in OffsetFit().inference().items() if k != "offset_fit_average"}
    assert OffsetFit.from_inference({**old, "offset_fit_steps": 100}).for_counts(1e4).average == 0.0
    assert OffsetFit.from_inference(old).for_counts(1e4).average == mid.average
    assert OffsetFit.from_inference({"offset_fit_steps": 100}).for_counts(1e5).steps == 100
    resolved = OffsetFit(gains=False, ramp=False).for_counts(1e4)
    assert not resolved.gains and not resolved.ramp  # the flags pass through
    assert resolved.inference().keys() == OffsetFit().inference().keys()  # metrics.json keys are a bundle's
    # A command's overrides replace the recorded settings they set, and only those.
    assert OffsetFit(100, order=2, average=0.0).overridden(steps=None, order=3, average=None) == OffsetFit(
        100, order=3, average=0.0)


def test_the_network_alone_reference_scores_what_an_evaluation_without_the_fit_scores(small_dataset_cfg, tmp_path,
                                                                                      caplog):
    """The network-alone reference is the same predictions stitched without the offset fit: it must
    score exactly what a whole evaluation with the fit turned off scores, and the fit must move it.
    The patch scores never see the fit, and an untrained network's are called out in the log."""
    train, test, _ = simulate(small_dataset_cfg, 1e4, 0)
    cfg = validate(compose_config([*SMALL_OVERRIDES, "model.base_filters=[8,16,32]"]))
    torch.manual_seed(1)  # the untrained weights: unseeded, they followed whatever ran before in the worker
    model = build_model(cfg.model, 2, train)  # untrained, but a real network: its predictions are what they are
    ev = replace(cfg.eval, offset_fit_steps=10, fit_alone=False)
    runs = {name: tmp_path / name for name in ("fitted", "unfitted")}
    for run in runs.values():
        run.mkdir()
    fitted = evaluate_reconstruction(model, test, 2, cfg.model.neighbours_at(2), ev, runs["fitted"], "fitted")
    unfitted = evaluate_reconstruction(model, test, 2, cfg.model.neighbours_at(2), replace(ev, offset_fit_steps=0),
                                       runs["unfitted"], "unfitted")
    for part in ("amplitude", "phase"):
        alone, plain = fitted[part][NETWORK_ALONE], unfitted[part]
        assert NETWORK_ALONE not in plain  # without a fit there is nothing to separate
        for key in ("ssim", "psnr", "pearson"):
            assert alone[key] == pytest.approx(plain[key], rel=1e-9, abs=1e-12)
        assert alone["frc50_px"] == pytest.approx(plain["frc_0_5"]["period_px"], rel=1e-9)
        assert fitted[part]["psnr"] != pytest.approx(alone["psnr"], abs=1e-3)
        assert fitted["headline"][f"{part}_network_alone_ssim"] == alone["ssim"]
        # The network's patches against the truth's: the same with the fit or without, as the fit
        # moves the stitched scores (it is taken before the fit).
        patch = fitted["headline"][f"{part}_{PATCH_CORR}"]
        assert -1 <= patch <= 1 and patch == unfitted["headline"][f"{part}_{PATCH_CORR}"]
        # untrained: its patches carry none of the truth's structure (measured 0.013 and -0.029 with
        # this seed; -0.014 to 0.068 in amplitude over seeds 0-7), and every evaluation says so in its log
        assert abs(patch) < PATCH_CORR_WARN
        said = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and f"network's {part} patches" in r.getMessage()]
        assert len(said) == 2 and all(title in m for title, m in zip(("fitted", "unfitted"), said, strict=True))


def test_empty_pixels_of_the_evaluated_area_take_their_nearest_stitched_value(scan):
    """The evaluated area reaches corners that no patch constrains (weight below the empty share):
    inside it they are filled from the nearest stitched pixel, not left as zeros that score as
    amplitude 0; stitched pixels and everything outside the area stay as they were."""
    obj, x, y, patches = scan
    lit = np.exp(-((np.arange(32) - 15.5) ** 2) / 60.0)
    illumination = np.outer(lit, lit)
    area = (0, 60, 0, obj.shape[1])  # reaches the canvas's unscanned top rows and side columns
    out = stitch(patches, x, y, obj.shape, 24, illumination=illumination, bbox=area)
    empty = out.weight <= placement.MIN_WEIGHT_SHARE * out.weight.max()
    inside = np.zeros_like(empty)
    inside[: area[1], :] = True
    assert (empty & inside).sum() > 100 and (empty & ~inside).sum() > 100
    assert np.all(out.obj[inside] != 0) and np.all(out.obj[empty & ~inside] == 0)
    reference = stitch(patches, x, y, obj.shape, 24, illumination=illumination)  # its own, smaller area
    np.testing.assert_array_equal(out.obj[~empty], reference.obj[~empty])
    rows, cols = np.nonzero(~empty[: area[1]])
    for r, c in zip(*np.nonzero(empty & inside), strict=True):
        nearest = np.argmin((rows - r) ** 2 + (cols - c) ** 2)
        distance = np.hypot(rows[nearest] - r, cols[nearest] - c)
        # the filled value is that of a stitched pixel at the nearest distance (ties may pick either)
        assert any(out.obj[r, c] == out.obj[rr, cc] for rr, cc in zip(rows, cols, strict=True)
                   if np.hypot(rr - r, cc - c) == distance)
    filled = empty & inside
    assert np.abs(out.obj[filled] - obj[filled]).mean() < np.abs(obj[filled]).mean()  # nearer the truth than zero
