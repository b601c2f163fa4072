"""The console commands. Each takes ``key=value`` overrides and answers bad input with one
``error: ...`` line and exit status 2 (``ptylab.cli``); the scripts in ``scripts/`` and the root
``train.py`` call these functions.

    ptylab-train dose=1000 view=dense gridsize=2        (= python train.py ...)
    ptylab-simulate dose=1000 view=dense output_dir=DIR
    ptylab-reconstruct bundle=RUN/wts.h5.zip data=FILE.npz output_dir=DIR
    ptylab-compare runs=[RUN_A,RUN_B] output_dir=DIR   (or sweep=SWEEP_DIR: all its jobs)
    ptylab-reproduce RUN_DIR [output_dir=DIR]
    ptylab-study-report SWEEP_DIR [output_dir=DIR]
    ptylab-benchmark [quick=true] [bundle=RUN/wts.h5.zip]
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .cli import CONF_DIR, fail, guarded, parse_overrides, preflight, require_path
from .config import CompareConfig, ReconstructConfig, validate

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def _hydra_command(config_name: str, task: Any) -> None:
    """Check the command line, then hand it to Hydra (run directories, sweeps, launchers)."""
    preflight(config_name)
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task)()


def _train_task(cfg: DictConfig) -> float | None:
    """Run the job; return its validation objective (what a hyperparameter sweeper minimises).

    The objective is the best validation loss on the training half, never a test score; a job
    that did not succeed returns NaN, which Optuna records as a failed trial.
    """
    from .stages.train import run_job, summary_line

    _lightning_logs_through_the_root()
    hc = HydraConfig.get()
    record = guarded(lambda: run_job(cfg, hc.runtime.output_dir))  # a locked run directory is refused here
    if record is None:  # a non-zero DDP rank: rank zero reports for the job
        return None
    print(summary_line(record), flush=True)
    # where its files are (metrics, figures, bundle, log): a user's next stop, which no other line names
    print(f"{record.label} run directory {hc.runtime.output_dir}", flush=True)
    if record.status == "interrupted":  # non-zero in runs and sweeps alike, so a scheduler requeues a pre-empted job
        sys.exit(128 + signal.Signals[record.signal or "SIGTERM"].value)  # what a shell reports for the signal
    if record.status == "failed" and hc.mode == RunMode.RUN:
        if record.user_error:  # bad input is the user's to fix: one error line, exit 2
            fail(str(record.error).split(": ", 1)[-1])
        sys.exit(1)
    ok = record.status == "succeeded"
    return float(record.best_val_loss) if ok and record.best_val_loss is not None else float("nan")


def _lightning_logs_through_the_root() -> None:
    """Lightning's records go once, through the root's handlers (Hydra's console and job log).
    Imported while the root had no handlers (the command line's preflight imports it to check
    the trainer's keys, before Hydra sets up logging), ``lightning.pytorch`` and
    ``lightning.fabric`` keep their records to console handlers of their own, out of the job's
    log; imported after, the ``lightning`` package's console handler printed each line a second
    time (as "INFO: ..."). Commands that set up logging with ``basicConfig`` after the import
    (reproduce, benchmark) need nothing: there Lightning's own handlers print each record once."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def train() -> None:
    _hydra_command("train", _train_task)


def _simulate_task(cfg: DictConfig) -> None:
    from .stages.simulate import run_simulate

    s = guarded(lambda: run_simulate(cfg))
    print(f"wrote {cfg.output_dir}: {s['positions']} positions "
          f"(train {s['splits']['train']['positions']}, test {s['splits']['test']['positions']})")
    for split, st in s["splits"].items():
        if "counts_per_pattern" in st:
            c = st["counts_per_pattern"]
            print(f"  {split}: counts per pattern mean {c['mean']:.1f} min {c['min']:.0f} max {c['max']:.0f}")
    view = s.get("view")
    if view:
        if view["skipped"]:
            print(f"SKIPPED view {view['view']}: {view['skip_reason']}")
        else:
            for split in ("train", "test"):
                v = view[split]
                print(f"  view {view['view']} {split}: kept {v['kept']}/{v['available']}, spacing "
                      f"{view['spacing']:.2f} px, median NN {v['median_nn_distance']:.2f} px, "
                      f"overlap {v['achieved_overlap']:.3f} (target {view['target_overlap']})")


def simulate() -> None:
    _hydra_command("simulate", _simulate_task)


def _reconstruct_task(cfg: DictConfig) -> None:
    rc: ReconstructConfig = validate(cfg)
    require_path("bundle", rc.bundle)
    require_path("data", rc.data)

    from .bundle import load_bundle
    from .data import read_dataset
    from .data_fit import DATA_FIT_FILE, write_data_fit
    from .prediction import with_model_probe
    from .stitching import bundle_model, reconstruct_from_bundle, write_reconstruction

    def run() -> None:
        bundle = load_bundle(rc.bundle)
        data = read_dataset(rc.data)
        model = bundle_model(bundle, data)
        stitched = reconstruct_from_bundle(bundle, data, rc.batch_size, rc.device, rc.tile_patches,
                                           rc.fit_overrides(), model)
        title = f"{Path(rc.data).name} from {bundle.sha256[:12]}"
        out = write_reconstruction(Path(rc.output_dir), stitched, title)
        # under the probe the reconstruction was made with: the one the network learnt, if it did
        fit = write_data_fit(Path(rc.output_dir), stitched.obj, with_model_probe(data, model), title)
        print(f"wrote {out} (object {stitched.obj.shape}, bundle sha256 {bundle.sha256}); its patterns' deviance "
              f"{fit['ratio']:.3f} x the noise floor (a flat object {fit['flat']:.2f}; {DATA_FIT_FILE})")

    guarded(run)


def reconstruct() -> None:
    _hydra_command("reconstruct", _reconstruct_task)


def _compare_task(cfg: DictConfig) -> None:
    from .stages.compare import compare as run_compare
    from .stages.compare import run_list

    cc: CompareConfig = validate(cfg)
    sweep = None if cc.sweep is None else require_path("sweep", cc.sweep, directory=True)
    runs = guarded(lambda: run_list(cc.runs, sweep))
    rows = guarded(lambda: run_compare(runs, Path(cc.output_dir), cc.lsqml))
    print((Path(cc.output_dir) / "comparison.md").read_text(), end="")
    print(f"wrote {cc.output_dir}/comparison.csv, comparison.md, comparison.png ({len(rows)} rows)")


def compare() -> None:
    _hydra_command("compare", _compare_task)


@dataclass
class ReproduceArgs:
    run_dir: str = "???"
    output_dir: str | None = None  # default: <paths.output_root>/reproduced/<run>_<time>


def reproduce(argv: list[str] | None = None) -> int:
    """Re-run a finished job from its config snapshot; exit 0 when identical, 1 with each difference."""
    args = parse_overrides(ReproduceArgs, sys.argv[1:] if argv is None else argv, positional=("run_dir",))
    require_path("run_dir", args.run_dir, directory=True)
    from .stages.reproduce import reproduce as run_reproduce

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    report = guarded(lambda: run_reproduce(args.run_dir, args.output_dir))
    print(f"original {report.original}: bundle sha256 {report.original_sha256}")
    print(f"re-run   {report.rerun}: bundle sha256 {report.rerun_sha256}")
    if report.identical:
        print("IDENTICAL: bundle digest, config, params and metrics all match")
        return 0
    print(f"DIFFERENT ({len(report.differences)}):")
    for line in report.differences:
        print(f"  {line}")
    return 1


@dataclass
class StudyReportArgs:
    sweep_dir: str = "???"
    output_dir: str | None = None  # default: SWEEP_DIR/report


def study_report(argv: list[str] | None = None) -> int:
    """A sweep directory -> study.csv, study.md, metric-vs-dose plots and study.html."""
    from .stages.study_report import write_report

    args = parse_overrides(StudyReportArgs, sys.argv[1:] if argv is None else argv, positional=("sweep_dir",))
    sweep = require_path("sweep_dir", args.sweep_dir, directory=True)
    out = Path(args.output_dir) if args.output_dir else sweep / "report"
    summary = guarded(lambda: write_report(sweep, out))
    print((out / "study.md").read_text(), end="")
    print(f"wrote {out}/study.csv, study.md, study.html, {len(summary['plots'])} plots and "
          f"{len(summary['gallery'])} gallery figures")
    return 0


def benchmark(argv: list[str] | None = None) -> int:
    """Throughput, utilisation, inference, memory and job-time figures -> benchmark.json."""
    from .stages.benchmark import BenchmarkConfig, run_benchmark

    args = parse_overrides(BenchmarkConfig, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    out = guarded(lambda: run_benchmark(args))
    width = max(len(k) for k in out)
    for k, v in out.items():
        text = f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, dict) else str(v)
        print(f"{k:<{width}}  {text}")
    print(f"wrote {args.output}")
    return 0


__all__ = ["benchmark", "compare", "reconstruct", "reproduce", "simulate", "study_report", "train"]
