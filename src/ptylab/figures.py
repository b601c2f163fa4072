"""Figures people would rather look at than read: previews, reconstructions, error maps, FRC."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .fileio import atomic_path


def _save(fig: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def dataset_preview(path: str | Path, obj: np.ndarray, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                    patterns: np.ndarray, title: str) -> None:
    """Object amplitude and phase with the scan positions, and a few patterns on a log scale."""
    k = min(4, patterns.shape[0])
    fig, axes = plt.subplots(1, 2 + k, figsize=(4 * (2 + k), 4))
    for ax, img, name in ((axes[0], np.abs(obj), "amplitude"), (axes[1], np.angle(obj), "phase")):
        im = ax.imshow(img, cmap="gray")
        for (label, (x, y)), colour in zip(splits.items(), ("tab:orange", "tab:cyan", "tab:green"), strict=False):
            ax.scatter(x, y, s=2, c=colour, label=f"{label} ({x.size})")
        ax.set_title(f"object {name}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].legend(loc="upper right", fontsize=7, markerscale=4)
    picks = np.linspace(0, patterns.shape[0] - 1, k).astype(int)
    for ax, i in zip(axes[2:], picks, strict=True):
        ax.imshow(np.log1p(patterns[i].astype(np.float64) ** 2), cmap="magma")
        ax.set_title(f"pattern {i}: log(1 + counts)")
        ax.axis("off")
    fig.suptitle(title)
    _save(fig, path)


def complex_panels(path: str | Path, entries: dict[str, tuple[np.ndarray, np.ndarray | None]], title: str,
                   columns: int = 6) -> None:
    """One column per entry: amplitude and phase, plus error maps against the entry's reference;
    more than ``columns`` entries wrap onto further blocks of rows, so a comparison of many methods
    stays readable on a screen.

    ``entries`` maps a name to (image, reference or None); references may differ per column
    (each method is scored on its own registered crop). An image with a reference is shown on the
    reference's value range, and every error map of a kind on one colour scale (the median over the
    entries of each map's 99th percentile of |error|), so columns compare by eye: a worse method
    saturates rather than being rescaled to look like the others, and a few wild pixels at a scan's
    edge do not wash out the rest.
    """
    names = list(entries)
    errors = {name: [np.abs(img) - np.abs(ref), np.angle(img * np.conj(ref))]
              for name, (img, ref) in entries.items() if ref is not None}
    limits = [float(np.median([np.nanpercentile(np.abs(e[k]), 99) for e in errors.values()])) or 1.0
              for k in range(2)] if errors else []
    rows = 4 if errors else 2
    cols = min(len(names), columns)
    blocks = -(-len(names) // cols)
    # Rows as tall as the images are (a scan's region is often wide), plus room for the titles.
    height, width = entries[names[0]][0].shape
    aspect = min(max(height / max(width, 1), 0.25), 2.0)
    fig, axes = plt.subplots(rows * blocks, cols, figsize=(3.6 * cols, (3.0 * aspect + 0.6) * rows * blocks),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i, name in enumerate(names):
        img, ref = entries[name]
        panels = [(np.abs(img), "amplitude", "gray"), (np.angle(img), "phase", "twilight")]
        ranges = [None, None] if ref is None else [(float(np.min(f(ref))), float(np.max(f(ref))))
                                                   for f in (np.abs, np.angle)]
        if name in errors:
            panels += [(errors[name][0], "amplitude error", "coolwarm"), (errors[name][1], "phase error", "coolwarm")]
        for row, (data, label, cmap) in enumerate(panels):
            ax = axes[(i // cols) * rows + row, i % cols]
            if "error" in label:
                lim = limits[row - 2]
                im = ax.imshow(data, cmap=cmap, vmin=-lim, vmax=lim)
            else:
                vmin, vmax = ranges[row] or (None, None)
                im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
            # A long method name goes on its own line rather than over the next column's colour bar.
            ax.set_title(f"{name}: {label}" if len(name) + len(label) <= 40 else f"{name}\n{label}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    _save(fig, path)


def study_gallery(path: str | Path, doses: list[float], rows: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]],
                  part: str, title: str) -> None:
    """One ``part`` (amplitude or phase) of a study at a glance: a row per method (``rows`` maps its
    name to {dose: (image, truth)}, both complex), a column per dose, each panel on its own truth's
    range (as a job's ``reconstruction.png`` shows it) so a method's panels compare along its row and
    down a column by eye; where a method did not run at a dose, an empty panel says so."""
    take = np.abs if part == "amplitude" else np.angle
    cmap = "gray" if part == "amplitude" else "twilight"
    # Rows as tall as the images are (a scan's region is often wide), plus room for the titles.
    height, width = next(iter(next(iter(rows.values())).values()))[0].shape
    aspect = min(max(height / max(width, 1), 0.25), 2.0)
    fig, axes = plt.subplots(len(rows), len(doses), figsize=(2.6 * len(doses) + 1.2, (2.6 * aspect + 0.3) * len(rows)),
                             squeeze=False, layout="constrained")
    for i, (name, cells) in enumerate(rows.items()):
        for j, dose in enumerate(doses):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"dose {dose:.0e}", fontsize=10)
            if j == 0:
                ax.set_ylabel(textwrap.fill(name, 24), fontsize=8)  # "LSQML from PINN gs2 refined dense" in two lines
            if dose not in cells:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="gray")
                continue
            image, truth = cells[dose]
            ax.imshow(take(image), cmap=cmap, vmin=float(take(truth).min()), vmax=float(take(truth).max()))
    fig.suptitle(title)
    _save(fig, path)


def frc_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """FRC against spatial frequency (cycles/pixel) with the 1/7 and 0.5 thresholds."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (freq, frc) in curves.items():
        ax.plot(freq, frc, label=name)
    for thr, style in ((0.5, "--"), (1 / 7, ":")):
        ax.axhline(thr, color="gray", linestyle=style, linewidth=1)
    ax.set_xlabel("spatial frequency (cycles / pixel)")
    ax.set_ylabel("FRC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def series_style(name: str, colours: dict[str, Any]) -> dict[str, Any]:
    """Line style of a study's series, so related methods read as related: one colour per network
    (its refined arm and the LSQML runs started from it share it), triangles for refined arms,
    dashes for LSQML started from a network (dots with pty-chi's Poisson noise model, dash-dots
    with the probe refined), black for LSQML from a flat start (grey diamonds and dots with the
    Poisson model, dash-dots with the probe refined). ``colours`` maps each network's base name to
    its colour and grows as new ones appear."""
    solver = re.match(r"LSQML(?: \(([^)]*)\))?(?: from |(?= )|$)", name)
    qualifiers = (solver.group(1) or "") if solver else ""
    poisson, probe_refined = "Poisson" in qualifiers, "probe refined" in qualifiers
    if solver and not solver.group(0).endswith(" from "):
        flat = ({"color": "dimgray", "marker": "D", "linestyle": ":"} if poisson
                else {"color": "black", "marker": "s", "linestyle": "-"})
        return {**flat, "linestyle": "-."} if probe_refined else flat
    source = name[solver.end():] if solver else name
    refined = " refined" in source
    base = source.replace(" refined", "")
    if base not in colours:
        colours[base] = plt.get_cmap("tab10")(len(colours) % 10)
    dashes = (":" if poisson else "-." if probe_refined else "--") if solver else "-"
    return {"color": colours[base], "marker": "^" if refined else "o", "linestyle": dashes}


def metric_vs_dose(path: str | Path, series: dict[str, tuple[list[float], list[float]]], metric: str) -> None:
    """One line per series; several values at one dose (runs of several seeds) are drawn as their
    mean with a bar of one standard deviation, so a study over seeds shows its spread."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    several = False
    colours: dict[str, Any] = {}
    for name, (doses, values) in sorted(series.items()):
        d, v = np.asarray(doses, float), np.asarray(values, float)
        at = np.unique(d)
        several |= len(at) < len(d)
        mean = np.array([v[d == x].mean() for x in at])
        std = np.array([v[d == x].std() for x in at])
        ax.errorbar(at, mean, yerr=std if std.any() else None, capsize=3, label=name,
                    **series_style(name, colours))
    ax.set_xscale("log")
    ax.set_xlabel("dose (photons per pattern)")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    # Beside the axes, not over them: a study's dozen series would cover its points.
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(f"{metric} against dose" + (" (mean ± 1 sd over seeds)" if several else ""))
    _save(fig, path)


def loss_curve(path: str | Path, epochs: list[int], series: dict[str, list[float]], title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, values in series.items():
        ax.plot(epochs[: len(values)], values, marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title(title)
    _save(fig, path)


def patch_map(path: str | Path, truth: np.ndarray, x: np.ndarray, y: np.ndarray,
              per_position: dict[str, np.ndarray], pooled: dict[str, float | None],
              example: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> None:
    """Where the network learnt: per part, each test position coloured by its crops' correlation
    with the truth's (``patch_scores``) over the truth, and the crop of median correlation beside
    the truth's at its position, both as the score compares them (structure about the crop's
    own level, blank where the probe is dim). A network that learnt nothing of a part shows a map
    of noise about 0 and a crop unlike the truth's, however its stitched scores look."""
    # Spaced by hand: a constrained layout would double the figure's cost, drawn in every evaluation.
    fig, axes = plt.subplots(len(per_position), 3, figsize=(13, 4.4 * len(per_position)), squeeze=False,
                             gridspec_kw={"wspace": 0.35, "hspace": 0.35})
    for row, (part, corr) in enumerate(per_position.items()):
        ax = axes[row, 0]
        ax.imshow(np.abs(truth) if part == "amplitude" else np.angle(truth), cmap="gray", alpha=0.5)
        dots = ax.scatter(x, y, c=corr, s=5, cmap="RdBu", vmin=-1, vmax=1)
        value = pooled.get(part)
        ax.set_title(f"{part}: each position's crops against the truth's\n(pooled corr "
                     f"{'not scored' if value is None else f'{value:.3f}'})", fontsize=9)
        fig.colorbar(dots, ax=ax, fraction=0.046, label="correlation")
        true_crop, predicted_crop, median = example[part]
        limit = float(np.nanmax(np.abs(true_crop))) or 1.0
        for ax, image, name in ((axes[row, 1], true_crop, "the truth's crop"),
                                (axes[row, 2], predicted_crop, f"the network's (corr {median:.2f})")):
            im = ax.imshow(image, cmap="coolwarm", vmin=-limit, vmax=limit)
            ax.set_title(f"{name}, the crop of median corr:\n{part} about its level", fontsize=9)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    _save(fig, path)


# The data fit's references as the figure names them, in the order drawn.
DATA_FIT_REFERENCES = {"truth": "the truth", "network_alone": "the network alone", "fit_alone": "the fit alone",
                       "flat": "a flat object"}


def data_fit_map(path: str | Path, image: np.ndarray, x: np.ndarray, y: np.ndarray, per_position: np.ndarray,
                 fit: dict[str, float], title: str) -> None:
    """Where the reconstruction explains the data: each test position coloured by its pattern's
    deviance over the noise floor (``data_fit``), over the reconstruction's amplitude (not the
    truth: the map needs none), and the ratios' histogram with the references' pooled ratios. Red
    is structure the pattern shows and the reconstruction lacks; blue, less misfit than the noise
    leads one to expect (a pattern's own spread about 1, or noise the reconstruction has fitted)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"wspace": 0.45})
    left.imshow(np.abs(image), cmap="gray", alpha=0.5)
    shown = per_position[np.isfinite(per_position)]  # a pattern the object predicts nothing of has none
    # The colours and the histogram end at 1.5 times the 95th percentile (at least 2): a pattern the
    # reconstruction leaves dark can score 1e5 and would wash the rest out; those beyond are drawn
    # at the end of the scale.
    low, high = 1.0, 1.0
    if shown.size:
        low = float(shown.min())
        high = min(float(shown.max()), max(2.0, 1.5 * float(np.percentile(shown, 95))))
    norm = matplotlib.colors.TwoSlopeNorm(1.0, min(low, 0.99), max(high, 1.01))
    dots = left.scatter(x, y, c=np.minimum(per_position, high), s=5, cmap="RdBu_r", norm=norm)
    beyond = bool(shown.size) and float(shown.max()) > high
    fig.colorbar(dots, ax=left, fraction=0.046, label="deviance / noise floor", extend="max" if beyond else "neither")
    pad = 0.05 * max(float(np.ptp(x)), float(np.ptp(y)), 1.0)  # the scan, not the whole canvas
    left.set_xlim(float(np.min(x)) - pad, float(np.max(x)) + pad)
    left.set_ylim(float(np.max(y)) + pad, float(np.min(y)) - pad)
    left.set_title(f"each test pattern (pooled {fit['ratio']:.3f})", fontsize=9)
    right.hist(np.minimum(shown, high), bins=60, color="0.4")
    for (key, name), colour in zip(DATA_FIT_REFERENCES.items(), ("tab:green", "tab:orange", "tab:purple", "tab:red"),
                                   strict=True):
        if key in fit and fit[key] <= 2 * high:  # a flat object's ratio may lie far off the histogram
            right.axvline(fit[key], color=colour, label=f"{name} {fit[key]:.2f}")
    right.axvline(fit["ratio"], color="k", linestyle="--", label=f"this reconstruction {fit['ratio']:.3f}")
    right.set_xlabel("deviance / noise floor (1: explained to the noise)")
    right.set_ylabel("test patterns")
    right.legend(fontsize=8, title=", ".join(f"{n} {fit[k]:.2f}" for k, n in DATA_FIT_REFERENCES.items()
                                             if k in fit and fit[k] > 2 * high) or None, title_fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
