"""The simulate stage as a command: dataset files, summary, preview and (optionally) a view."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import SimulateConfig, validate
from ..data import PtychoData, write_dataset
from ..datasets import load_dataset
from ..figures import dataset_preview
from ..fileio import atomic_write_json
from ..views import select_view_for

log = logging.getLogger(__name__)


def as_user_file(data: PtychoData) -> PtychoData:
    """The split as an instrument would write it: no intensity scale, no simulation settings.

    Used to test what users meet: the model must derive every scale from the data alone.
    """
    return replace(data, metadata={"source": "user-style simulation", "split": data.metadata.get("split")})


def run_simulate(cfg: DictConfig) -> dict[str, Any]:
    """Write train.npz, test.npz, summary.json, preview.png (and the view's subset) to output_dir."""
    sc: SimulateConfig = validate(cfg)
    out = Path(sc.output_dir)
    source = load_dataset(sc.dataset, sc.dose, sc.seed, sc.paths.cache_dir)
    if sc.as_user_files:
        source = replace(source, train=as_user_file(source.train), test=as_user_file(source.test))
    write_dataset(out / "train.npz", source.train)
    write_dataset(out / "test.npz", source.test)
    summary: dict[str, Any] = {**source.summary, "identity": source.identity}
    dataset_preview(
        out / "preview.png", source.train.obj,
        {"train": (source.train.xcoords, source.train.ycoords), "test": (source.test.xcoords, source.test.ycoords)},
        source.train.diff3d, f"dose {sc.dose:g}, {source.train.n_positions + source.test.n_positions} positions",
    )
    if sc.view is not None:
        view = sc.view
        sel = select_view_for(view, source.train, source.test)
        summary["view"] = {**sel.stats, "skipped": sel.skipped, "skip_reason": sel.skip_reason}
        if sel.skipped:
            log.warning("view skipped: %s", sel.skip_reason)
            atomic_write_json(out / "skip_summary.json", {"skipped_views": [
                {"view": view.name, "reason": sel.skip_reason, "stats": sel.stats}], "skipped_count": 1})
        else:
            train, test = sel.apply(source.train, source.test)
            write_dataset(out / f"train_{view.name}.npz", train)
            write_dataset(out / f"test_{view.name}.npz", test)
    atomic_write_json(out / "summary.json", summary)
    return summary
