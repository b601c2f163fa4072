"""Turn a sweep into a study report: table (CSV, Markdown), metric-vs-dose plots, one HTML page.
A sweep over several seeds also gets each method's mean and standard deviation over its seeds.

Reads only what a sweep directory holds (manifests, metrics files, each run's config snapshot for
its data, and LSQML results where compare.py wrote them), so it works on a sweep directory copied
from a cluster.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import numpy as np

from ..config import data_key, data_overrides, format_dose, is_flat_start, override_key, run_config, run_variant
from ..errors import PtylabError
from ..figures import metric_vs_dose, study_gallery
from ..fileio import atomic_write_text
from ..manifest import MANIFEST_NAME, RECONSTRUCTION_FILE, job_dirs, method_name, read_manifest
from ..tables import cell, csv_text, markdown_lines

log = logging.getLogger(__name__)

# Each row's registered reconstruction beside its truth, for the gallery: a job's (or its refined
# arm's) ``manifest.RECONSTRUCTION_FILE``, the file compare.py wrote for LSQML.
IMAGE = "image"
# The gallery's figures, one per part: every method's reconstruction at every dose.
GALLERY = {"amplitude": "gallery_amplitude.png", "phase": "gallery_phase.png"}
# The last needs no truth: how well each reconstruction explains the test patterns (ptylab.data_fit).
METRICS = ["amplitude_ssim", "phase_ssim", "amplitude_corr", "phase_corr", "amplitude_psnr", "phase_psnr",
           "amplitude_frc50_px", "phase_frc50_px", "data_fit_ratio"]
# Drawn against dose beside METRICS: the network's own patches against the truth's, which no offset
# fit makes, so what overlap or supervision buys the network itself is seen across the study.
PATCH_METRICS = ["amplitude_patch_corr", "phase_patch_corr"]
COLUMNS = ["dose", "view", "method", "model", "gridsize", "seed", "status", *METRICS, "below_flat", "below_fit_alone",
           "amplitude_flat_ssim", "phase_flat_ssim", "amplitude_fit_alone_ssim", "phase_fit_alone_ssim",
           "amplitude_network_alone_ssim", "phase_network_alone_ssim", *PATCH_METRICS,
           "amplitude_ms_ssim", "phase_ms_ssim", "amplitude_mae", "phase_mae", "epochs", "steps",
           "duration_s", "bundle_sha256", "run_dir", "reason", "variant", "data"]


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for run_dir in job_dirs(sweep_dir):
        manifest = read_manifest(run_dir)
        if not manifest:
            continue
        for job in manifest["jobs"]:
            ctx = job["context"]
            row: dict[str, Any] = {c: None for c in COLUMNS}
            row.update(dose=ctx["dose"], view=ctx["view"], method=method_name(ctx), model=ctx["model"],
                       gridsize=ctx["gridsize"],
                       seed=ctx.get("seed"), status=job["status"], epochs=job.get("epochs"),
                       duration_s=job.get("duration_s"),
                       bundle_sha256=job.get("bundle_sha256"), run_dir=str(run_dir.relative_to(sweep_dir)),
                       reason=job.get("error"))
            row["steps"] = job.get("steps")
            row["variant"] = run_variant(run_dir)
            row["data"] = _data_of(run_dir)
            row[IMAGE] = run_dir / RECONSTRUCTION_FILE
            rows.append(_scored(row, run_dir / "metrics.json", job["status"]))
            if job.get("refined"):
                metrics_path = run_dir / job["refined"]["metrics_path"]
                refined = {**row, "method": method_name(ctx, refined=True), "steps": job["refined"]["steps"],
                           "duration_s": job["refined"]["refine_s"], IMAGE: metrics_path.parent / RECONSTRUCTION_FILE}
                rows.append(_scored(refined, metrics_path, job["status"]))
    return rows


def _data_of(run_dir: Path) -> str | None:
    """The run's ``config.data_key`` from its config snapshot; None where it has none this ptylab
    can read (the gallery then places it only where its view holds one data)."""
    try:
        return data_key(run_config(run_dir))
    except PtylabError:
        return None


def _scored(row: dict[str, Any], metrics_path: Path, status: str) -> dict[str, Any]:
    """The row with its scores; ``below_flat`` counts the scores that do not beat a flat image,
    ``below_fit_alone`` those the offset fit reaches on flat patches too."""
    row = dict(row)
    if status == "succeeded" and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        row.update({k: v for k, v in metrics["headline"].items() if k in row})
        row["below_flat"] = len(metrics.get("flat_image_flags", []))
        row["below_fit_alone"] = len(metrics.get("fit_alone_flags", []))
        for part in ("amplitude", "phase"):
            row[f"{part}_ms_ssim"] = metrics[part].get("ms_ssim")
            row[f"{part}_mae"] = metrics[part].get("mae")
    return row


def lsqml_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """LSQML results written by compare.py anywhere inside the sweep directory."""
    rows = []
    for path in sorted(sweep_dir.glob("**/comparison.json")):
        for r in json.loads(path.read_text()):
            if not str(r.get("method", "")).startswith("LSQML"):  # from a flat start or from a network's object
                continue
            row: dict[str, Any] = {c: None for c in COLUMNS}
            row.update({k: r.get(k) for k in METRICS})
            row.update(dose=r["dose"], view=r["view"], method=r["method"], model="lsqml", seed=r.get("seed"),
                       status=r["status"],
                       duration_s=r.get("reconstruct_s"), reason=r.get("reason"),
                       run_dir=str(path.parent.relative_to(sweep_dir)), variant=r.get("variant") or "",
                       data=r.get("data"))  # compare.py records it since 2026-12-07
            if r.get("reconstruction"):  # compare.py records its file since 2026-12-06
                row[IMAGE] = path.parent / r["reconstruction"]
            rows.append(row)
    return rows


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_report(sweep_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The report's files in ``out_dir``; a directory with no job and no comparison in it is
    refused before anything is written (an empty report would look like a study that ran nothing)."""
    rows = sorted(job_rows(sweep_dir) + lsqml_rows(sweep_dir),
                  key=lambda r: (r["dose"] or 0, r["view"] or "", r["method"], r["seed"] or 0))
    if not rows:
        raise PtylabError(f"sweep_dir={sweep_dir}: no {MANIFEST_NAME} (and no comparison.json) found under it")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "study.csv", csv_text(rows, COLUMNS))
    shown = ["dose", "view", "method", "seed", "status", *METRICS, "below_flat", "below_fit_alone"]
    labels = line_variants(rows)
    lines = line_names(rows, labels)
    table = rows
    if any(labels):  # several variants of a method: the table names them as the plots do
        shown.insert(3, "variant")
        table = [{**r, "variant": label} for r, label in zip(rows, labels, strict=True)]
    md = markdown_lines(table, shown)
    if any(labels):
        md += ["", "variant: where the study runs a method in several variants, the overrides that set this row's "
               "apart (those every variant shares left out; study.csv's variant column holds them all)."]
    md += ["", "data_fit_ratio: the test patterns' Poisson deviance under the reconstruction over its noise floor "
           "(about 1 for the truth; lower explains the data better, below 1 fits their noise; needs no truth).",
           "below_flat: how many of the seven scores (SSIM, PSNR, correlation; amplitude and phase; the data fit) do "
           "not beat a flat image of the truth's mean on the same region (for the data fit, any flat object); "
           "anything above 0 is flagged, not a success.",
           "below_fit_alone: how many of them do not beat the stitching's offset fit applied to flat patches (no "
           "network): for those, the fit to the test patterns, not the network, made the score."]
    means = seed_means(rows)
    means_shown = [_mean_cells(m) for m in means]
    if means:
        atomic_write_text(out_dir / "study_seed_means.csv", csv_text(means, MEAN_COLUMNS))
        md += ["", "Over seeds: the mean and the standard deviation of each score, over the runs that succeeded "
               "(runs: how many; variant: the overrides they share, all but the seed).", ""]
        md += markdown_lines(means_shown, MEAN_SHOWN)
    problems = [r for r in rows if r["status"] != "succeeded"]
    if problems:
        md += ["", "Jobs that did not succeed:", ""]
        md += [f"- dose {cell(r['dose'], 'dose')} {r['view']} {r['method']}: {r['status']} - "
               f"{r['reason']}" for r in problems]
    atomic_write_text(out_dir / "study.md", "\n".join(md) + "\n")
    plots = []
    for metric in [*METRICS, *PATCH_METRICS]:
        series: dict[str, tuple[list[float], list[float]]] = {}
        for i, r in enumerate(rows):
            if r["status"] == "succeeded" and isinstance(r[metric], int | float):
                key = lines[i]
                series.setdefault(key, ([], []))
                series[key][0].append(float(r["dose"]))
                series[key][1].append(float(r[metric]))
        if series:
            path = out_dir / f"{metric}_vs_dose.png"
            metric_vs_dose(path, series, metric)
            plots.append(path)
    gallery = write_gallery(rows, lines, out_dir)
    # compare.py's reconstructions side by side and their FRC curves, wherever it wrote them in the sweep
    compared = sorted(p for name in ("comparison.png", "comparison_frc.png") for p in sweep_dir.glob(f"**/{name}"))
    _write_html(out_dir / "study.html", sweep_dir, table, shown, problems, plots, means_shown, gallery, compared)
    return {"rows": len(rows), "failed_or_skipped": len(problems), "plots": [p.name for p in plots],
            "seed_means": len(means), "gallery": [p.name for p in gallery]}


def gallery_rows(rows: list[dict[str, Any]],
                 lines: list[str] | None = None) -> dict[str, dict[float, tuple[np.ndarray, np.ndarray]]]:
    """The gallery's rows: per view and, within it, per data (``config.data_key``; a sweep over
    datasets holds several), the truth, then each line of the plots on that data (method, view and,
    where several, variant) with its reconstruction at each dose where one succeeded and left its
    file; of several seeds, the lowest's. Networks before LSQML, as the tables sort them. A truth
    row is named for its view and, where the view holds several data, for the overrides that set
    its data apart. A row that does not record its data (a comparison written before 2026-12-07, a
    run without its config snapshot) joins its view's data where there is one, and is left out
    where there are several: it could be drawn under another data's truth. ``lines``: the rows'
    ``plot_lines`` where the caller has them."""
    lines = plot_lines(rows) if lines is None else lines
    chosen: dict[tuple[str, float], dict[str, Any]] = {}
    for line, r in zip(lines, rows, strict=True):
        path = r.get(IMAGE)
        if r["status"] != "succeeded" or path is None or not Path(path).is_file():
            continue
        key = (line, float(r["dose"]))
        if key not in chosen or (r["seed"] or 0) < (chosen[key]["seed"] or 0):
            chosen[key] = {**r, "line": line}
    known: dict[str, set[str]] = {}
    for r in chosen.values():
        if r.get("data"):
            known.setdefault(r["view"], set()).add(r["data"])
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in chosen.values():
        data, views_data = r.get("data"), known.get(r["view"], set())
        if data is None:
            if len(views_data) > 1:
                log.warning("gallery: %s %s at dose %s does not record its data, and view %s holds several: left out",
                            r["method"], r["view"], r["dose"], r["view"])
                continue
            data = next(iter(views_data), None)
        groups.setdefault((r["view"], data), []).append(r)
    spelled = {group: data_spelling(members) for group, members in groups.items()}
    several = {view for view, _ in groups if sum(v == view for v, _ in groups) > 1}
    shared = {view: set.intersection(*(set(spelled[g] or ()) for g in groups if g[0] == view)) for view in several}
    out: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = {}
    for group in sorted(groups, key=lambda g: (g[0], spelled[g] or (), g[1] or "")):  # each truth, then its methods
        view, data = group
        name = f"ground truth {view}"
        if view in several:  # named by what sets its data apart, else by all of it
            words = spelled[group]
            own = f"data {data}" if words is None else " ".join([t for t in words if t not in shared[view]] or words)
            name += f" [{own or 'defaults'}]"
        truth: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        by_line: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = {}
        for r in sorted(groups[group], key=lambda r: (r["model"] == "lsqml", r["method"], r["line"], r["dose"])):
            with np.load(r[IMAGE]) as f:
                image, ground_truth = f["object"], f["ground_truth"]
            truth.setdefault(float(r["dose"]), (ground_truth, ground_truth))
            by_line.setdefault(r["line"], {})[float(r["dose"])] = (image, ground_truth)
        out[name] = truth
        out.update(by_line)
    return out


def write_gallery(rows: list[dict[str, Any]], lines: list[str], out_dir: Path) -> list[Path]:
    """``GALLERY``'s figures (none where no row left a reconstruction): a study's reconstructions
    by method and dose, for the eye, beside the tables and plots."""
    cells = gallery_rows(rows, lines)
    if not cells:
        return []
    doses = sorted({dose for by_dose in cells.values() for dose in by_dose})
    seeds = sorted({r["seed"] for r in rows if r["status"] == "succeeded" and r["seed"] is not None})
    note = f" (seed {seeds[0]} of {len(seeds)})" if len(seeds) > 1 else ""
    paths = []
    for part, name in GALLERY.items():
        study_gallery(out_dir / name, doses, cells, part, f"{part}: each method's reconstruction by dose{note}")
        paths.append(out_dir / name)
    return paths


def across_doses(variant: str) -> str:
    """A variant without its dose: what one line of a plot against dose holds fixed. A flat-start
    LSQML row of a comparison written before 2026-12-06 names its test data by a digest that
    held the dose (and no epochs); without the digest it joins its line across doses as newer rows do."""
    words = variant.split()
    if is_flat_start(variant) and not any(w.startswith("lsqml.") for w in words):
        return " ".join(words[:4])  # "test data <dataset> <view>"
    return " ".join(t for t in words if override_key(t) != "dose")


def line_variants(rows: list[dict[str, Any]]) -> list[str]:
    """What sets each row's line apart where the study holds its method and view in several
    variants (say, two widths, or a raster and a spiral scan): the words of its variant but the
    dose that not every such variant shares ("defaults" where it has none of its own); "" where
    the method and view come in one variant. Words every variant shares (a sweep's common
    overrides) would only lengthen each name; ``study.csv``'s ``variant`` keeps them all. A
    flat-start LSQML row names its data by a digest; where a job of the study ran on the same
    data, the row is named by that job's data overrides instead (``_named_variant``)."""
    on_data: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("data"):
            on_data.setdefault((r["view"], r["data"]), []).append(r)
    spelled = {key: data_spelling(members) for key, members in on_data.items()}
    named = [across_doses(_named_variant(r, spelled)) for r in rows]
    variants: dict[str, set[str]] = {}
    for r, variant in zip(rows, named, strict=True):
        if r["status"] == "succeeded":
            variants.setdefault(f"{r['method']} {r['view']}", set()).add(variant)
    shared = {line: set.intersection(*(set(v.split()) for v in vs)) for line, vs in variants.items() if len(vs) > 1}
    labels = []
    for r, variant in zip(rows, named, strict=True):
        line = f"{r['method']} {r['view']}"
        own = [w for w in variant.split() if w not in shared.get(line, ())]
        labels.append((" ".join(own) or "defaults") if line in shared else "")
    return labels


def _named_variant(row: dict[str, Any], spelled: dict[tuple[str, str], tuple[str, ...] | None]) -> str:
    """The row's variant with a flat-start LSQML row's data digest (``config.data_key``, which
    names no setting) replaced by ``spelled``'s overrides for its view and data, where a job spells them."""
    variant, data = row.get("variant") or "", row.get("data")
    words = spelled.get((row["view"], data)) if data else None
    if words is None or not is_flat_start(variant):
        return variant
    return " ".join(" ".join(" ".join(words) if w == data else w for w in variant.split()).split())


def data_spelling(rows: list[dict[str, Any]]) -> tuple[str, ...] | None:
    """How rows on one data spell it: the data overrides of the first job among them; None where
    only flat-start LSQML rows are (they name their data by a digest)."""
    return next((data_overrides(r.get("variant") or "") for r in rows if not is_flat_start(r.get("variant") or "")),
                None)


def plot_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's line in the plots against dose: its method and view and, where the study holds
    that method and view in several variants, what sets its variant apart (``line_variants``), so
    that a line's points at one dose are only seeds of one variant, drawn as their mean and spread."""
    return line_names(rows, line_variants(rows))


def line_names(rows: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """``plot_lines`` from the rows' ``line_variants``, for a caller that has them."""
    return [f"{r['method']} {r['view']}" + (f" [{label}]" if label else "")
            for r, label in zip(rows, labels, strict=True)]


MEAN_COLUMNS = ["dose", "view", "method", "runs", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
                "variant"]
MEAN_SHOWN = ["dose", "view", "method", "runs", *METRICS, "variant"]


def seed_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dose, view, method and variant (the overrides but the seed), each score's mean and
    (population) standard deviation over the seeds that succeeded; empty unless the sweep holds
    some method at several seeds. Runs of different variants (say, two learning rates) are never
    averaged together."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "succeeded":
            groups.setdefault((r["dose"], r["view"], r["method"], r.get("variant") or ""), []).append(r)
    if all(len({r["seed"] for r in g}) < 2 for g in groups.values()):
        return []
    out = []
    for (dose, view, method, var), group in groups.items():
        row: dict[str, Any] = {"dose": dose, "view": view, "method": method, "runs": len(group), "variant": var}
        for m in METRICS:
            values = [float(r[m]) for r in group if isinstance(r[m], int | float)]
            row[f"{m}_mean"] = mean(values) if values else None
            row[f"{m}_std"] = pstdev(values) if values else None
        out.append(row)
    return out


def _mean_cells(row: dict[str, Any]) -> dict[str, Any]:
    """A seed-means row for display: each score as 'mean ± std'."""
    shown = {k: row[k] for k in ("dose", "view", "method", "runs", "variant")}
    for m in METRICS:
        mu, sd = row[f"{m}_mean"], row[f"{m}_std"]
        shown[m] = "" if mu is None else f"{mu:.4g} ± {sd:.2g}"
    return shown


def _table_html(rows: list[dict[str, Any]], columns: list[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(cell(r[c], c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _write_html(path: Path, sweep_dir: Path, rows: list[dict[str, Any]], shown: list[str],
                problems: list[dict[str, Any]], plots: list[Path], means: list[dict[str, Any]],
                gallery: list[Path], compared: list[Path]) -> None:
    e = html.escape
    over_seeds = f"<h2>Over seeds (mean ± standard deviation)</h2>{_table_html(means, MEAN_SHOWN)}" if means else ""
    issues = "".join(f"<li>dose {e(cell(r['dose'], 'dose'))} {e(str(r['view']))} "
                     f"{e(r['method'])}: <b>{e(r['status'])}</b> &mdash; "
                     f"{e(str(r['reason']))}</li>" for r in problems)
    figs = "".join(f'<figure><img alt="{e(p.stem)}" src="data:image/png;base64,{_png_b64(p)}"></figure>' for p in plots)
    side_by_side = "".join(f'<figure><img class="wide" alt="{e(str(p.relative_to(sweep_dir)))}" '
                           f'src="data:image/png;base64,{_png_b64(p)}"><figcaption>{e(str(p.relative_to(sweep_dir)))}'
                           '</figcaption></figure>' for p in compared)
    compare_section = f"<h2>Reconstructions side by side (compare.py)</h2>{side_by_side}" if compared else ""
    by_dose = "".join(f'<figure><img class="wide" alt="{e(p.stem)}" src="data:image/png;base64,{_png_b64(p)}">'
                      '</figure>' for p in gallery)
    gallery_section = f"<h2>Reconstructions by method and dose</h2>{by_dose}" if gallery else ""
    doses = ", ".join(sorted({format_dose(float(r["dose"])) for r in rows if r["dose"]}))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ptylab study: {e(sweep_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}figure{{display:inline-block;margin:0.5em}}
img{{max-width:480px}}img.wide{{max-width:100%}}</style></head><body>
<h1>Study report</h1><p>Sweep <code>{e(str(sweep_dir))}</code>: {len(rows)} rows, doses {e(doses)}.</p>
{_table_html(rows, shown)}
{over_seeds}
<h2>Jobs that did not succeed</h2><ul>{issues or "<li>none</li>"}</ul>
<h2>Metrics against dose</h2>{figs}
{gallery_section}
{compare_section}
</body></html>
"""
    atomic_write_text(path, page)
