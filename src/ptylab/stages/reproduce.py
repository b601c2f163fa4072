"""Re-run a finished job from its config snapshot alone and say exactly what differs.

Hydra stores ``.hydra/config.yaml`` unresolved, so interpolations such as ``${now:...}`` resolve
afresh on the re-run; only location-dependent values may change, and the bundle is written
location-free, so on the CPU trainer its digest must match. Hydra's pickle-based rerun is not used.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import setup_globals
from omegaconf import OmegaConf

from ..bundle import BUNDLE_NAME
from ..config import load_run_config, trainer_device
from ..errors import PtylabError
from ..evaluation import RUN_DEPENDENT_KEYS
from ..manifest import read_manifest
from .train import run_job

# Values that name where a run lives; they may differ between the original and the re-run.
LOCATION_PARAMS = ("output_prefix",)

log = logging.getLogger(__name__)


@dataclass
class ReproduceReport:
    original: Path
    rerun: Path
    differences: list[str] = field(default_factory=list)
    original_sha256: str | None = None
    rerun_sha256: str | None = None

    @property
    def identical(self) -> bool:
        return not self.differences


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _dict_diff(a: dict[str, Any], b: dict[str, Any], what: str, ignore: tuple[str, ...] = ()) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        if key in ignore or key.startswith("frc_curve") or ".frc_curve." in key:
            continue
        va, vb = fa.get(key, "<absent>"), fb.get(key, "<absent>")
        if va != vb:
            if isinstance(va, int | float) and isinstance(vb, int | float):
                diffs.append(f"{what} {key}: {va} -> {vb} (delta {vb - va:+.6g})")
            else:
                diffs.append(f"{what} {key}: {va!r} -> {vb!r}")
    return diffs


def _bundle_config(run_dir: Path) -> dict[str, Any]:
    with zipfile.ZipFile(run_dir / BUNDLE_NAME) as zf:
        loaded = OmegaConf.to_container(OmegaConf.create(zf.read("config.yaml").decode()))
    assert isinstance(loaded, dict)
    return {str(k): v for k, v in loaded.items()}


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def reproduce(run_dir: str | Path, out_dir: str | Path | None = None) -> ReproduceReport:
    """Re-run ``run_dir``'s job into ``out_dir`` (default: ``<paths.output_root>/reproduced/<name>_<time>``,
    outside any sweep directory so a study report never mistakes it for one of the sweep's jobs)."""
    run_dir = Path(run_dir)
    original = read_manifest(run_dir)
    if original is None or not (run_dir / ".hydra" / "config.yaml").is_file():
        raise PtylabError(f"{run_dir}: needs training_manifest.json and .hydra/config.yaml to reproduce")
    setup_globals()  # Hydra's resolvers (${now:...}) for the unresolved snapshot
    cfg = load_run_config(run_dir / ".hydra" / "config.yaml")
    cfg.ckpt_path = None
    if trainer_device(cfg.trainer) != "cpu":  # the snapshot as composed: the job validates it
        log.warning("%s trained on a GPU: GPU training is not byte-reproducible (two seeded runs on one H200 wrote "
                    "different bundles; docs/performance.md), so expect another digest and nearby scores. "
                    "The same-digest guarantee is trainer=cpu's.", run_dir)
    if out_dir is None:
        out_dir = Path(cfg.paths.output_root) / "reproduced" / f"{run_dir.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / ".hydra" / "config.yaml", out / ".hydra" / "config.yaml")
    record = run_job(cfg, out)
    assert record is not None
    first = original["jobs"][0]
    report = ReproduceReport(run_dir, out, original_sha256=first.get("bundle_sha256"),
                             rerun_sha256=record.bundle_sha256)
    d = report.differences
    if first["status"] != record.status:
        d.append(f"status: {first['status']} -> {record.status} ({record.error})")
    if report.original_sha256 != report.rerun_sha256:
        d.append(f"bundle sha256: {report.original_sha256} -> {report.rerun_sha256}")
    if (run_dir / BUNDLE_NAME).is_file() and (out / BUNDLE_NAME).is_file():
        d += _dict_diff(_bundle_config(run_dir), _bundle_config(out), "config")
    d += _dict_diff(_json(run_dir / "params.json"), _json(out / "params.json"), "params", LOCATION_PARAMS)
    d += _dict_diff(_json(run_dir / "metrics.json"), _json(out / "metrics.json"), "metric",
                    RUN_DEPENDENT_KEYS)
    return report
