"""The benchmark stage: throughput whose ratios are taken in one process, on the same batches.

Each measurement returns plain numbers; ``run_benchmark`` collects them into ``benchmark.json``.
Nothing here asserts a time: the ratios are reported, not tested. ``quick=true`` runs a reduced
version (tiny data, few steps) that checks the harness; its numbers are not the project's figures.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from ..batches import GroupedPatterns, make_loader
from ..bundle import BUNDLE_NAME, bundle_config_yaml, load_bundle, save_model_bundle
from ..cli import CONF_DIR
from ..config import EvalConfig, ModelConfig, TrainConfig, cpu_precision, validate
from ..data import PtychoData
from ..evaluation import score_reconstruction
from ..fileio import atomic_write_text
from ..grouping import group_positions
from ..models import PINN, build_model
from ..physics import far_field, poisson_nll
from ..refine import freeze_encoder
from ..simulate import simulate
from ..stitching import reconstruct_from_bundle
from ..training import batch_plan, build_trainer
from ..views import select_view_for
from .train import inference_record

log = logging.getLogger(__name__)


@dataclass
class BenchmarkConfig:
    """``ptylab-benchmark quick=true bundle=RUN/wts.h5.zip output=benchmark.json device=cuda``."""

    quick: bool = False
    bundle: str | None = None  # score inference (and LSQML) with a trained model
    output: str = "benchmark.json"
    device: str | None = None  # default: cuda when available, else cpu
    skip_default_job: bool = False
    skip_scaling: bool = False


def _rate(fn: Callable[[], Any], items: float, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return items * repeats / (time.perf_counter() - t0)


def peak_matmul_flops(device: str, sizes: tuple[int, ...] = (1024, 2048, 3072), trials: int = 3) -> float:
    """Float32 FLOP/s of large matrix multiplies, best of several sizes and trials: the practical peak.

    A single short measurement under-reads it (turbo ramp-up, other work), which would inflate
    the utilisation derived from it.
    """
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)

        def mm(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
            a @ b
            if device != "cpu":
                torch.cuda.synchronize()

        for _ in range(trials):
            best = max(best, _rate(mm, 2.0 * size**3, 2, 8))
    return best


def physics_bound(probe: torch.Tensor, batch: int, channels: int, device: str, repeats: int) -> float:
    """Patterns/s of probe multiply + far field + Poisson NLL, forward and backward: a step's ceiling."""
    n = probe.shape[-1]
    obj = torch.ones(batch, channels, n, n, dtype=torch.complex64, device=device, requires_grad=True)
    obs = torch.rand(batch, channels, n, n, device=device) * 10
    p = probe.to(device)

    def step() -> None:
        loss = poisson_nll(100.0 * far_field(p * obj).abs().square(), obs)
        loss.backward()
        if device != "cpu":
            torch.cuda.synchronize()

    return _rate(step, batch * channels, 3, repeats)


def training_setup(train: PtychoData, model_cfg: ModelConfig, gridsize: int,
                   seed: int = 0) -> tuple[PINN, GroupedPatterns]:
    L.seed_everything(seed, verbose=False)
    model = build_model(model_cfg, gridsize, train)
    groups = group_positions(train.xcoords, train.ycoords, gridsize, model_cfg.neighbours_at(gridsize))
    return model, GroupedPatterns(train.diff3d, groups)  # type: ignore[return-value]


def bare_training(model: PINN, loader: Any, steps: int, device: str) -> float:
    """Patterns/s of a plain PyTorch loop (no Lightning) over the same batches."""
    model = model.to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batches = []
    for b in loader:
        batches.append({k: v.to(device) for k, v in b.items()})
        if len(batches) == steps + 2:
            break
    patterns = batches[0]["diff"].shape[0] * batches[0]["diff"].shape[1]

    def run(b: dict[str, torch.Tensor]) -> None:
        loss = model.training_loss(b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:2]:
        run(b)
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches[2:]:
        run(b)
    if device != "cpu":
        torch.cuda.synchronize()
    return patterns * (len(batches) - 2) / (time.perf_counter() - t0)


class _EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self.batches: list[int] = []
        self._t = 0.0
        self._n = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._n += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.durations.append(time.perf_counter() - self._t)
        self.batches.append(self._n)


def lightning_training(model: PINN, dataset: GroupedPatterns, batch_size: int, steps: int, run_dir: Path,
                       accelerator: str, precision: str = "32-true") -> float:
    """Patterns/s of the real training path (train.py's Trainer with checkpoints, logging and
    progress bar), in steady state: the first epoch is excluded."""
    loader = make_loader(dataset, batch_size, True, 0)
    trainer, _ = build_trainer(
        {"accelerator": accelerator, "devices": 1, "precision": precision, "max_epochs": 3,
         "limit_train_batches": steps,
         "limit_val_batches": 0, "deterministic": accelerator == "cpu", "enable_progress_bar": True,
         "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 10},
        run_dir, early_stop_patience=0, batches_per_epoch=len(loader), monitor="train_loss")
    timer = _EpochTimer()
    trainer.callbacks.append(timer)  # type: ignore[attr-defined]
    trainer.fit(model, loader)
    patterns = batch_size * dataset.indices.shape[1]
    return patterns * sum(timer.batches[1:]) / sum(timer.durations[1:])


def flops_per_step(model: PINN, batch: dict[str, torch.Tensor]) -> int:
    """Floating-point operations of one training step (forward and backward), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        loss = model.training_loss(batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


QUICK = ["dataset.N=32", "dataset.object_size=96", "dataset.probe_diameter=11", "dataset.probe_blur=1.0",
         "dataset.scan_step=4", "view.min_train_positions=16", "eval.offset_fit_steps=10"]
DEFAULT_JOB = ["dose=1000", "view=dense", "gridsize=2"]
# Quick mode's matmul peak: smaller, fewer multiplies (the full set takes about 14 s on two cores).
QUICK_MATMUL: dict[str, Any] = {"sizes": (512, 1024), "trials": 2}


def _compose(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return 0.0
    return 0.0


@dataclass
class ChildRun:
    """Wall time and memory of one child process.

    ``peak_rss_mb`` is the child's own VmHWM (rusage's ru_maxrss would include this large parent's
    RSS at fork); ``peak_anon_mb`` the highest anonymous resident memory seen, which leaves out the
    page cache of memory-mapped data files (those pages belong to the file and can be dropped).
    """

    wall_s: float
    peak_rss_mb: float
    peak_anon_mb: float


def run_child(command: list[str], log_path: Path, cwd: Path, poll_s: float = 0.05,
              env: Mapping[str, str] | None = None) -> ChildRun:
    """Run ``command`` (with ``env`` added to this process's environment), polling its memory."""
    t0 = time.perf_counter()
    hwm = anon = 0.0
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, **env} if env else None)
        while proc.poll() is None:
            hwm = max(hwm, _status_mb(proc.pid, "VmHWM"))
            anon = max(anon, _status_mb(proc.pid, "RssAnon"))
            time.sleep(poll_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{log_path.read_text()[-3000:]}")
    return ChildRun(time.perf_counter() - t0, hwm, anon)


def _run_job_subprocess(overrides: list[str], out_root: Path, env: Mapping[str, str] | None = None) -> ChildRun:
    """One train.py job in a child process."""
    out_root.mkdir(parents=True, exist_ok=True)
    root = CONF_DIR.parent
    command = [sys.executable, str(root / "train.py"), *overrides, f"paths.output_root={out_root}",
               "trainer.enable_progress_bar=false"]
    return run_child(command, out_root.with_suffix(".log"), root, env=env)


def write_synthetic_scan(path: Path, positions: int, n: int = 64, seed: int = 0) -> Path:
    """An uncompressed, contract-conforming NPZ of ``positions`` random patterns on a 1 px raster.

    For memory measurements only: the content is noise, the layout is a user's large scan.
    """
    side = int(np.ceil(np.sqrt(positions)))
    grid = np.arange(side, dtype=np.float64) + n // 2
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    rng = np.random.default_rng(seed)
    size = side + n
    probe = np.ones((n, n), np.complex64)
    with open(path, "wb") as fh:
        np.savez(fh, diff3d=rng.random((positions, n, n), dtype=np.float32), xcoords=xx.ravel()[:positions],
                 ycoords=yy.ravel()[:positions], probeGuess=probe, objectGuess=np.ones((size, size), np.complex64))
    return path


def memory_by_positions(counts: tuple[int, ...], work: Path, n: int = 64, extra: tuple[str, ...] = (),
                        env: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Peak memory of a short training (5 steps) and the evaluation of the whole file (every
    position predicted, stitched and scored), on files of ``counts`` positions. Two offset-fit
    steps: every step holds the same memory, and the default 100 would take most of an hour at
    200k positions on a CPU; no fit-alone reference, which repeats the same tiled stitching.
    ``env`` is added to each child job's environment."""
    out = {}
    for m in counts:
        data = write_synthetic_scan(work / f"scan_{m}.npz", m, n)
        job = ["dataset=npz", f"dataset.train_file={data}", f"dataset.test_file={data}", "view=full", "gridsize=1",
               "trainer.max_epochs=1", "++trainer.limit_train_batches=5", "++trainer.limit_val_batches=1",
               "refine.enabled=false", "dose=1000", "eval.offset_fit_steps=2", "eval.fit_alone=false", *extra]
        run = _run_job_subprocess(job, work / f"memory_{m}", env)
        out[str(m)] = {"peak_anon_mb": round(run.peak_anon_mb, 1), "peak_rss_mb": round(run.peak_rss_mb, 1),
                       "file_mb": round(data.stat().st_size / 2**20, 1), "job_s": round(run.wall_s, 1)}
        data.unlink()
    return out


def run_benchmark(args: BenchmarkConfig) -> dict[str, Any]:
    """Every figure of ``benchmark.json``, measured in this process (and its child jobs), written
    to ``args.output``. The child jobs, data files and the benchmark's own bundle go in a scratch
    directory removed at the end, failed or not: it holds about 130 MB per quick run, and every
    ``make test`` runs one (before 2026-12-06 each run left its directory in the system's temp)."""
    with tempfile.TemporaryDirectory(prefix="ptylab-bench-") as scratch:
        out = _measure(args, Path(scratch))
    atomic_write_text(Path(args.output), json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def _measure(args: BenchmarkConfig, work: Path) -> dict[str, Any]:
    """The figures, with ``work`` for every file the measurements need."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accel = "gpu" if device.startswith("cuda") else "cpu"
    extra = QUICK if args.quick else []
    steps = 4 if args.quick else 40
    cfg = _compose([*DEFAULT_JOB, *extra])
    typed: TrainConfig = validate(cfg)
    precision = cpu_precision()  # what trainer=cpu runs on this CPU
    out: dict[str, Any] = {"device": device, "quick": args.quick, "torch": torch.__version__,
                           "cpu_precision": precision,
                           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}

    t0 = time.perf_counter()
    train, test, _ = simulate(typed.dataset, typed.dose, typed.seed)
    out["simulate_patterns_per_s"] = (train.n_positions + test.n_positions) / (time.perf_counter() - t0)
    train, test = select_view_for(typed.view, train, test).apply(train, test)
    out["peak_matmul_gflops"] = peak_matmul_flops(device, **(QUICK_MATMUL if args.quick else {})) / 1e9
    model_cfg = typed.model
    trained = None
    for gs in (1, 2):
        key = f"gs{gs}"
        model, ds = training_setup(train, model_cfg, gs)
        batch, _ = batch_plan(model, model_cfg.batch_size, gs)  # groups per step, as training uses
        out[f"physics_bound_patterns_per_s_{key}"] = physics_bound(model.probe.detach(), batch, gs * gs, device,
                                                                      10 if args.quick else 30)
        out[f"train_patterns_per_s_bare_{key}"] = bare_training(model, make_loader(ds, batch, True, 0), steps,
                                                                   device)
        if gs == 2:  # the refined arm's step with refine.freeze_encoder (decoders only) against training's:
            freeze_encoder(model)  # the same model and batches (the rate does not depend on the weights)
            out["train_patterns_per_s_bare_decoders_only_gs2"] = bare_training(
                model, make_loader(ds, batch, True, 0), steps, device)
            out["decoders_only_over_whole_gs2"] = (out["train_patterns_per_s_bare_decoders_only_gs2"]
                                                   / out["train_patterns_per_s_bare_gs2"])
        model, ds = training_setup(train, model_cfg, gs)
        out[f"train_patterns_per_s_lightning_{key}"] = lightning_training(model, ds, batch, steps,
                                                                             work / f"light_{gs}", accel)
        out[f"lightning_over_bare_{key}"] = (out[f"train_patterns_per_s_lightning_{key}"]
                                             / out[f"train_patterns_per_s_bare_{key}"])
        probe_batch = {k: v.to(device) for k, v in ds.__getitems__(list(range(batch))).items()}
        model = model.to(device)
        flops = flops_per_step(model, probe_batch)
        steps_per_s = out[f"train_patterns_per_s_lightning_{key}"] / (batch * gs * gs)
        out[f"train_flops_per_step_{key}"] = flops
        out[f"train_model_flop_utilization_{key}"] = flops * steps_per_s / (out["peak_matmul_gflops"] * 1e9)
        if accel == "cpu" and precision != "32-true":  # bf16 autocast: its rate beside the fp32 one
            fresh, fresh_ds = training_setup(train, model_cfg, gs)  # the fp32 model stays the one scored below
            fast = lightning_training(fresh, fresh_ds, batch, steps, work / f"light_{gs}_bf16", accel, precision)
            out[f"train_patterns_per_s_lightning_bf16_{key}"] = fast
            out[f"bf16_over_fp32_{key}"] = fast / out[f"train_patterns_per_s_lightning_{key}"]
        if gs == int(cfg.gridsize):
            trained = model.cpu()

    assert trained is not None
    bundle_path = Path(args.bundle) if args.bundle else None
    if bundle_path is None:
        bundle_path = work / "bundle" / BUNDLE_NAME
        bundle_path.parent.mkdir()
        # The job's own stitching settings, offset fit included, so reconstruct_s times what a job runs.
        save_model_bundle(bundle_path, trained, typed.model.name, inference_record(typed, trained), {},
                          bundle_config_yaml(cfg))
    bundle = load_bundle(bundle_path)
    reconstruct_from_bundle(bundle, test, device=device)  # warm-up
    t0 = time.perf_counter()
    stitched = reconstruct_from_bundle(bundle, test, device=device)
    out["reconstruct_s"] = time.perf_counter() - t0
    groups_patterns = test.n_positions * bundle.inference["gridsize"] ** 2
    out["inference_patterns_per_s"] = groups_patterns / out["reconstruct_s"]
    pinn_scores = score_reconstruction(stitched, test.obj, EvalConfig())
    out["pinn_phase_ssim"] = pinn_scores["phase"]["ssim"]
    out["pinn_bundle"] = str(bundle_path) if args.bundle else "benchmark model (briefly trained)"

    try:
        from ..lsqml import ptychi_available, reconstruct_and_score

        if ptychi_available():
            scores, info = reconstruct_and_score(test, 5 if args.quick else 200, EvalConfig())
            out.update(lsqml_s=info["wall_s"], lsqml_epochs=info["iterations"],
                       lsqml_phase_ssim=scores["phase"]["ssim"], lsqml_amplitude_ssim=scores["amplitude"]["ssim"],
                       pinn_speedup_vs_lsqml=info["wall_s"] / out["reconstruct_s"])
        else:
            out["lsqml"] = "pty-chi not installed (make ptychi)"
    except Exception as exc:  # the reference is optional; its failure is reported, not fatal
        out["lsqml"] = f"failed: {type(exc).__name__}: {exc}"

    if not args.skip_default_job:
        on_gpu = ["trainer=gpu"] if accel == "gpu" else []  # the job on the device measured above
        job = [*DEFAULT_JOB, *extra, *on_gpu] + (["trainer.max_epochs=1", "++trainer.limit_train_batches=3",
                                         "++trainer.limit_val_batches=1", "refine.steps=3",
                                         "eval.fit_alone=false"] if args.quick else [])
        default = _run_job_subprocess(job, work / "default")
        out["default_job_s"], out["peak_rss_mb"] = default.wall_s, default.peak_rss_mb
    if not args.skip_scaling and not args.quick:
        scaling = {}
        for positions, size in ((1000, 157), (5000, 274), (20000, 487)):
            job = ["dose=1000", "view=full", "gridsize=1", f"dataset.object_size={size}", "trainer.max_epochs=1",
                   "++trainer.limit_train_batches=20", "++trainer.limit_val_batches=1", "eval.enabled=false"]
            child = _run_job_subprocess(job, work / f"scale_{positions}")
            wall, rss = child.wall_s, child.peak_rss_mb
            run_dir = next((work / f"scale_{positions}" / "runs").glob("*/*"))
            manifest = json.loads((run_dir / "training_manifest.json").read_text())["jobs"][0]
            per_step = manifest["train_s"] / 21  # 20 training batches and 1 validation batch
            scaling[str(positions)] = {"positions": ((size - 64) // 3 + 1) ** 2, "peak_rss_mb": rss, "job_s": wall,
                                       "epoch_s_extrapolated": per_step * manifest["groups"]["train"] / batch}
        out["scaling"] = scaling
        # Memory independent of the data's size: 5 training steps on files of 10k, 50k and 200k positions.
        out["rss_mb_by_positions"] = memory_by_positions((10_000, 50_000, 200_000), work)
    return out
