"""Benchmark the default model and job; every ratio is measured in this one process.

    python scripts/benchmark.py [--quick] [--bundle RUN/wts.h5.zip] [--output benchmark.json]

--quick runs a reduced version (tiny data, few steps) in about a minute: it checks the harness,
its numbers are not the project's figures. --bundle scores inference and the LSQML comparison
with a trained model instead of the briefly trained benchmark model.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ptylab.config  # noqa: F401
from ptylab import benchmark as bm
from ptylab.bundle import load_bundle
from ptylab.config import EvalConfig
from ptylab.datamodule import make_loader
from ptylab.evaluation import score_reconstruction
from ptylab.inference import reconstruct_from_bundle
from ptylab.job import save_bundle
from ptylab.simulate import simulate
from ptylab.views import select_view_for

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["dataset.N=32", "dataset.object_size=96", "dataset.probe_diameter=11", "dataset.probe_blur=1.0",
         "dataset.scan_step=4", "view.min_train_positions=16"]
DEFAULT_JOB = ["dose=1000", "view=dense", "gridsize=2"]


def _compose(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _run_job_subprocess(overrides: list[str], out_root: Path) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MB) of one train.py job in a child process.

    The peak is the child's own VmHWM (high-water mark of the address space it exec'd into),
    polled until it exits; rusage's ru_maxrss would include this large parent's RSS at fork.
    """
    log_path = out_root.with_suffix(".log")
    out_root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    peak = 0.0
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"paths.output_root={out_root}",
                                 "trainer.enable_progress_bar=false"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_mb(proc.pid) or 0.0)
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(overrides)} failed:\n{log_path.read_text()[-3000:]}")
    return wall, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path("benchmark.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-default-job", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device, accel = args.device, ("gpu" if args.device.startswith("cuda") else "cpu")
    extra = QUICK if args.quick else []
    steps = 4 if args.quick else 40
    cfg = _compose([*DEFAULT_JOB, *extra])
    dataset = OmegaConf.to_object(cfg.dataset)
    work = Path(tempfile.mkdtemp(prefix="ptylab-bench-"))
    out: dict[str, Any] = {"device": device, "quick": args.quick, "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}

    t0 = time.perf_counter()
    train, test, _ = simulate(dataset, float(cfg.dose), int(cfg.seed))
    out["simulate_patterns_per_s"] = (train.n_positions + test.n_positions) / (time.perf_counter() - t0)
    train, test = select_view_for(OmegaConf.to_object(cfg.view), train, test).apply(train, test)
    out["peak_matmul_gflops"] = bm.peak_matmul_flops(device) / 1e9
    model_cfg = OmegaConf.to_object(cfg.model)
    batch = model_cfg.batch_size
    trained = None
    for gs in (1, 2):
        key = f"gs{gs}"
        model, ds = bm.training_setup(train, model_cfg, gs)
        out[f"physics_bound_patterns_per_s_{key}"] = bm.physics_bound(model.probe.detach(), batch, gs * gs, device,
                                                                      10 if args.quick else 30)
        out[f"train_patterns_per_s_bare_{key}"] = bm.bare_training(model, make_loader(ds, batch, True, 0), steps,
                                                                   device)
        model, ds = bm.training_setup(train, model_cfg, gs)
        out[f"train_patterns_per_s_lightning_{key}"] = bm.lightning_training(model, ds, batch, steps,
                                                                             work / f"light_{gs}", accel)
        out[f"lightning_over_bare_{key}"] = (out[f"train_patterns_per_s_lightning_{key}"]
                                             / out[f"train_patterns_per_s_bare_{key}"])
        probe_batch = {k: v.to(device) for k, v in ds.__getitems__(list(range(batch))).items()}
        model = model.to(device)
        flops = bm.flops_per_step(model, probe_batch)
        steps_per_s = out[f"train_patterns_per_s_lightning_{key}"] / (batch * gs * gs)
        out[f"train_flops_per_step_{key}"] = flops
        out[f"train_model_flop_utilization_{key}"] = flops * steps_per_s / (out["peak_matmul_gflops"] * 1e9)
        if gs == int(cfg.gridsize):
            trained = model.cpu()

    assert trained is not None
    bundle_path = args.bundle
    if bundle_path is None:
        run = work / "bundle"
        run.mkdir()
        save_bundle(cfg, run, trained, {})
        bundle_path = run / "wts.h5.zip"
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
        from ptylab.lsqml import ptychi_available, reconstruct_and_score

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
        job = [*DEFAULT_JOB, *extra] + (["trainer.max_epochs=1", "++trainer.limit_train_batches=3",
                                         "++trainer.limit_val_batches=1"] if args.quick else [])
        out["default_job_s"], out["peak_rss_mb"] = _run_job_subprocess(job, work / "default")
    if not args.skip_scaling and not args.quick:
        scaling = {}
        for positions, size in ((1000, 157), (5000, 274), (20000, 487)):
            job = ["dose=1000", "view=full", "gridsize=1", f"dataset.object_size={size}", "trainer.max_epochs=1",
                   "++trainer.limit_train_batches=20", "++trainer.limit_val_batches=1", "eval.enabled=false"]
            wall, rss = _run_job_subprocess(job, work / f"scale_{positions}")
            run = next((work / f"scale_{positions}" / "runs").glob("*/*"))
            manifest = json.loads((run / "training_manifest.json").read_text())["jobs"][0]
            per_step = manifest["train_s"] / 21  # 20 training batches and 1 validation batch
            scaling[str(positions)] = {"positions": ((size - 64) // 3 + 1) ** 2, "peak_rss_mb": rss, "job_s": wall,
                                       "epoch_s_extrapolated": per_step * manifest["groups"]["train"] / batch}
        out["scaling"] = scaling

    args.output.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    width = max(len(k) for k in out)
    for k, v in out.items():
        text = f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, dict) else str(v)
        print(f"{k:<{width}}  {text}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
