"""Put methods side by side on the same test positions and dose: PINN runs, supervised runs and
the LSQML reference, from a flat start and from each network's reconstruction. Every requested
method gets a row; one that could not run says why.

Runs of several seeds or datasets can be compared in one call: each flat-start reference is run on
the test split it scores against (dataset, view, dose and seed), and labels name the seed when the
runs have several.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..config import (
    LsqmlConfig,
    TrainConfig,
    data_key,
    data_settings,
    flat_start_variant,
    format_dose,
    run_config,
    run_variant,
)
from ..data import PtychoData
from ..datasets import load_job_data
from ..errors import PtylabError
from ..evaluation import headline
from ..figures import complex_panels, frc_curves
from ..fileio import atomic_write_json, atomic_write_text, atomic_write_with, sha256_file
from ..manifest import MANIFEST_NAME, RECONSTRUCTION_FILE, job_dirs, method_name, read_manifest
from ..reference_cache import inputs_key
from ..refine import REFINE_DIR
from ..stitching import OBJECT_FILE, read_object
from ..tables import csv_text, markdown_lines

log = logging.getLogger(__name__)
INPUTS_KEY = "inputs_sha256"  # in an LSQML row's JSON: the inputs it was computed from (lsqml_inputs)
# Beside each SSIM, what a flat image, the stitching's offset fit on flat patches and the network
# without that fit score, and the network's patches against the truth's (the last three exist for
# network methods only; see ptylab.evaluation.fit_alone_scores, NETWORK_ALONE and PATCH_CORR); and
# how well each method's object explains the test patterns, which needs no truth (ptylab.data_fit).
# An LSQML row's ``data`` (``config.data_key``) names the data it ran on, for the study's gallery.
COLUMNS = ["method", "dose", "view", "seed", "status", "reason", "amplitude_ssim", "amplitude_flat_ssim",
           "amplitude_fit_alone_ssim", "amplitude_network_alone_ssim", "amplitude_patch_corr", "amplitude_corr",
           "amplitude_psnr", "amplitude_frc50_px", "phase_ssim", "phase_flat_ssim", "phase_fit_alone_ssim",
           "phase_network_alone_ssim", "phase_patch_corr", "phase_corr", "phase_psnr", "phase_frc50_px",
           "data_fit_ratio", "train_s", "reconstruct_s", "iterations", "source", "variant", "data"]


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """Every job directory of a sweep (one holding a training manifest, whatever its status), in
    name order: the directories study_report reads. A sweep with none is refused: a wrong path, or
    a sweep that has not started a job."""
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise PtylabError(f"sweep={sweep_dir}: no job directory in it (none holds a {MANIFEST_NAME})")
    return jobs


def run_list(runs: list[str], sweep: Path | None) -> list[str]:
    """The run directories a comparison covers: ``runs``, then the sweep's jobs (``sweep_jobs``),
    each once (a run named in both, or twice, would be compared twice, its label numbered ``#2``)."""
    listed = [*runs, *(str(job) for job in sweep_jobs(sweep))] if sweep is not None else list(runs)
    seen: set[Path] = set()
    out = []
    for run in listed:
        key = Path(run).resolve()
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def run_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows from a run directory's manifest and metrics (the single-pass model, and its refined arm
    where the job ran one); a reason instead of numbers where it has none."""
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row["source"] = str(run_dir)
    row["variant"] = run_variant(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        row.update(method=run_dir.name, status="missing", reason=f"no training_manifest.json in {run_dir}")
        return [row]
    job = manifest["jobs"][0]
    ctx = job["context"]
    row.update(method=method_name(ctx), dose=ctx["dose"], view=ctx["view"], seed=ctx.get("seed"),
               status=job["status"], train_s=job.get("train_s"))
    if job["status"] != "succeeded":
        row["reason"] = job.get("error") or f"job {job['status']}"
        return [row]
    rows = [_with_metrics(row, run_dir, run_dir / "metrics.json")]
    refined = job.get("refined")
    if refined:
        ref = {**row, "method": method_name(ctx, refined=True), "metrics_dir": REFINE_DIR}
        ref = _with_metrics(ref, run_dir, run_dir / refined["metrics_path"])
        if ref["reconstruct_s"] is not None:
            ref["reconstruct_s"] += refined["refine_s"]
        rows.append(ref)
    return rows


def _with_metrics(row: dict[str, Any], run_dir: Path, path: Path) -> dict[str, Any]:
    row = dict(row)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        row.update(status="failed", reason=f"{path.name} unreadable in {run_dir}: {exc}")
        return row
    row.update({k: v for k, v in metrics["headline"].items() if k in row})
    row["reconstruct_s"] = metrics.get("inference_s")
    return row


def rebuild_test_split(cfg: TrainConfig) -> PtychoData:
    """Rebuild the run's test positions (same dataset, dose, seed and view) from its config."""
    source, sel = load_job_data(cfg.dataset, cfg.view, cfg.dose, cfg.seed, cfg.paths.cache_dir)
    return sel.apply(source.train, source.test)[1]


def split_key(cfg: TrainConfig) -> str:
    """What a run's test split depends on (everything ``rebuild_test_split`` reads): runs that share
    it share one flat-start reference; runs that differ in any of it get their own."""
    return json.dumps({**data_settings(cfg), "dose": float(cfg.dose), "seed": int(cfg.seed)}, sort_keys=True,
                      default=str)


def data_variant(cfg: TrainConfig) -> str:
    """A flat-start LSQML row's variant: its test data but the seed and the dose (``data_key``), so
    that the study report averages such rows over seeds and never over datasets, and draws one line
    across doses per dataset (the report keeps doses apart itself)."""
    return flat_start_variant(cfg.dataset.name, cfg.view.name, data_key(cfg))


def lsqml_row(cfg: TrainConfig, test: PtychoData, lsqml: LsqmlConfig, out_dir: Path, label: str,
              start: tuple[str, Path] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """LSQML on the run's test positions from a flat object, or, with ``start`` (a method's name and
    its ``object.npz``), from that method's reconstruction for ``lsqml.from_networks_epochs``. Its
    files in ``out_dir`` are named after ``label``, which is unique within one comparison; where
    they hold a result of the same inputs (``lsqml_inputs``), it is read, not run again."""
    from ..lsqml import NOT_INSTALLED, ptychi_available, reconstruct_and_score

    method = lsqml_method(start, lsqml.noise_model, lsqml.probe)
    epochs = lsqml.epochs if start is None else lsqml.from_networks_epochs
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(method=method, dose=float(cfg.dose), view=str(cfg.view.name), seed=int(cfg.seed), source="pty-chi")
    if not ptychi_available():
        row.update(status="not run", reason=NOT_INSTALLED)
        return row, None
    if start is not None and not start[1].is_file():
        row.update(status="not run", reason=f"no {start[1].name} in {start[1].parent} (jobs write it since "
                                            "2026-12-03); re-run the job or reconstruct its bundle")
        return row, None
    stem = "_".join(re.findall(r"[a-z0-9.]+", label.lower())).replace(".", "p")
    key = lsqml_inputs(test, epochs, lsqml, cfg, None if start is None else start[1])
    kept = kept_lsqml(out_dir, stem, key, label) if lsqml.reuse else None
    if kept is not None:
        scores, info = kept
    else:
        try:
            scores, info = reconstruct_and_score(test, epochs, cfg.eval, lsqml.noise_model, lsqml.device,
                                                 start=None if start is None else read_object(start[1]),
                                                 start_name="flat" if start is None else f"{start[0]} ({start[1]})",
                                                 refine_probe=lsqml.probe == "refined")
        except Exception as exc:  # a reference that fails is reported as a row, not a crash
            log.exception("%s failed", method)
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            return row, None
        # the arrays first, the scores with the inputs' key last: a key on disk vouches for both files
        atomic_write_with(out_dir / f"{stem}.npz", lambda tmp: _save_arrays(tmp, scores))
        atomic_write_json(out_dir / f"{stem}.json", {**{k: v for k, v in scores.items()
                                                        if k not in ("aligned", "ground_truth")},
                                                     "lsqml": info, INPUTS_KEY: key})
    row.update(headline(scores), status="succeeded", reconstruct_s=info["wall_s"], iterations=info["iterations"])
    row["reconstruction"] = f"{stem}.npz"  # in comparison.json, for the study report's gallery
    return row, scores


def _save_arrays(path: Path, scores: dict[str, Any]) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez adds ".npz" to a name without it
        np.savez(fh, object=scores["aligned"], ground_truth=scores["ground_truth"])


def lsqml_inputs(test: PtychoData, epochs: int, lsqml: LsqmlConfig, cfg: TrainConfig, start: Path | None) -> str:
    """The key of everything an LSQML row's result depends on (``reference_cache.inputs_key``): the
    test split's content, the solver's settings and version, the start object's bytes and the
    run's evaluation settings."""
    from ..lsqml import ptychi_version

    return inputs_key(test, epochs=epochs, noise_model=lsqml.noise_model, device=lsqml.device, probe=lsqml.probe,
                      start=None if start is None else sha256_file(start), eval=asdict(cfg.eval),
                      ptychi=ptychi_version())


def kept_lsqml(out_dir: Path, stem: str, key: str, label: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The scores and run record of an LSQML row that an earlier comparison into ``out_dir`` computed
    from the same inputs (a comparison re-run after an interruption or with more runs); None where
    there is none, or it is of other inputs or unreadable (then it runs again, and is replaced)."""
    meta, arrays = out_dir / f"{stem}.json", out_dir / f"{stem}.npz"
    if not (meta.is_file() and arrays.is_file()):
        return None
    try:
        stored = json.loads(meta.read_text())
        if stored.get(INPUTS_KEY) != key:
            log.info("%s: %s holds a result of other inputs; running LSQML again", label, meta)
            return None
        with np.load(arrays) as npz:
            aligned, truth = npz["object"], npz["ground_truth"]
        info = stored.pop("lsqml")
        del stored[INPUTS_KEY]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: %s or %s is unusable (%s); running LSQML again", label, meta, arrays.name, exc)
        return None
    log.info("%s: read from %s (the same inputs; lsqml.reuse=false runs it again)", label, meta)
    return {**stored, "aligned": aligned, "ground_truth": truth}, info


def lsqml_method(start: tuple[str, Path] | None, noise_model: str = "gaussian", probe: str = "fixed") -> str:
    """An LSQML row's method name: from a flat start, or from the named method's object. The
    Poisson noise model is another likelihood, and a refined probe another unknown, so each is
    another method ("LSQML (Poisson)", "LSQML (probe refined)", "LSQML (Poisson, probe refined)"):
    their rows must never be averaged with, or plotted as, the Gaussian fixed-probe reference's."""
    qualifiers = [noise_model.capitalize()] if noise_model != "gaussian" else []
    qualifiers += ["probe refined"] if probe == "refined" else []
    solver = f"LSQML ({', '.join(qualifiers)})" if qualifiers else "LSQML"
    return solver if start is None else f"{solver} from {start[0]}"


def lsqml_variant(base: str, lsqml: LsqmlConfig, start: bool) -> str:
    """An LSQML row's variant: its data's (a flat start: ``data_variant``) or its start's run's
    (``run_variant``), and the epochs it ran (and a refined probe), so that the study report
    averages over seeds only the rows that ran alike (two comparisons with other epochs in one
    sweep stay apart)."""
    epochs = f"lsqml.from_networks_epochs={lsqml.from_networks_epochs}" if start else f"lsqml.epochs={lsqml.epochs}"
    probe = " lsqml.probe=refined" if lsqml.probe == "refined" else ""
    return f"{base} {epochs}{probe}".strip()


def arm_dir(row: dict[str, Any]) -> Path:
    """Where a network row's files are: its run directory, or the refined arm's inside it."""
    return Path(row["source"]) / (row.get("metrics_dir") or "")


def frc_of(curve: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(curve["frequency"]), np.asarray(curve["frc"])


class Labels:
    """Panel and file labels, one per row of a comparison: method, view and dose, the seed when the
    compared runs have several, and a count where two runs would still share a label (say, two
    ablations of one method on one split), so that no panel or file replaces another."""

    def __init__(self, seeds: set[Any]) -> None:
        self.with_seed = len(seeds) > 1
        self.taken: set[str] = set()

    def __call__(self, method: str, row: dict[str, Any]) -> str:
        label = f"{method} {row['view']} {format_dose(row['dose'])}"
        if self.with_seed:
            label += f" seed {row['seed']}"
        unique, n = label, 1
        while unique in self.taken:
            n += 1
            unique = f"{label} #{n}"
        self.taken.add(unique)
        return unique


def write_tables(rows: list[dict[str, Any]], out_dir: Path, stem: str = "comparison") -> None:
    """Every column in the CSV; the Markdown table without the last three (source, variant and
    data), which are long paths, overrides and a digest."""
    atomic_write_text(out_dir / f"{stem}.csv", csv_text(rows, COLUMNS))
    atomic_write_text(out_dir / f"{stem}.md", "\n".join(markdown_lines(rows, COLUMNS[:-3], digits=3)) + "\n")


def compare(run_dirs: list[str], out_dir: Path, lsqml: LsqmlConfig) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for r in run_dirs for row in run_rows(Path(r))]
    scored = [row for row in rows if row["status"] == "succeeded"]
    label = Labels({row["seed"] for row in scored})
    panels: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for row in scored:
        name = label(row["method"], row)
        run = arm_dir(row)
        rec = np.load(run / RECONSTRUCTION_FILE)
        if not panels:
            panels["ground truth"] = (rec["ground_truth"], None)
        panels[name] = (rec["object"], rec["ground_truth"])
        curves[f"{name} (phase)"] = frc_of(json.loads((run / "metrics.json").read_text())["phase"]["frc_curve"])
    if lsqml.enabled:
        configs = {row["source"]: run_config(Path(row["source"])) for row in scored}
        keys = {source: split_key(cfg) for source, cfg in configs.items()}
        references: list[tuple[dict[str, Any], tuple[str, Path] | None]] = []
        flat: set[str] = set()
        for row in scored:  # one flat-start reference per test split
            if keys[row["source"]] not in flat:
                flat.add(keys[row["source"]])
                references.append((row, None))
        if lsqml.from_networks_epochs > 0:
            references += [(row, (row["method"], arm_dir(row) / OBJECT_FILE)) for row in scored]
        tests: dict[str, PtychoData] = {}  # a split is rebuilt once for all the rows that use it
        for row, start in references:
            cfg, key = configs[row["source"]], keys[row["source"]]
            if key not in tests:
                tests[key] = rebuild_test_split(cfg)
            name = label(lsqml_method(start, lsqml.noise_model, lsqml.probe), row)
            lrow, scores = lsqml_row(cfg, tests[key], lsqml, out_dir, name, start)
            base = data_variant(cfg) if start is None else row["variant"]
            lrow["variant"] = lsqml_variant(base, lsqml, start is not None)
            lrow["data"] = data_key(cfg)
            rows.append(lrow)
            if scores is not None:
                panels[name] = (scores["aligned"], scores["ground_truth"])
                curves[f"{name} (phase)"] = frc_of(scores["phase"]["frc_curve"])
    write_tables(rows, out_dir)
    atomic_write_json(out_dir / "comparison.json", rows)
    if panels:
        complex_panels(out_dir / "comparison.png", panels, "test split: each method against the ground truth")
        frc_curves(out_dir / "comparison_frc.png", curves, "FRC against ground truth")
    return rows
