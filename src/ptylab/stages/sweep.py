"""Sweep bookkeeping: one ``sweep_manifest.json`` for a Hydra multirun, and its exit status.

The callback runs in the launching process after all jobs (basic, joblib or submitit launcher),
reads each job directory's manifest (the only source of truth about the job) and exits non-zero
if any job failed. Jobs never raise for their own failures, so one bad job cannot stop the others.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..fileio import atomic_write_json
from ..manifest import job_dirs, read_manifest

log = logging.getLogger(__name__)
SWEEP_MANIFEST_NAME = "sweep_manifest.json"


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = []
    for run_dir in job_dirs(sweep_dir):
        manifest = read_manifest(run_dir)
        if not manifest:
            jobs.append({"run_dir": run_dir.name, "status": "failed", "error": "unreadable manifest"})
            continue
        for job in manifest["jobs"]:
            jobs.append({
                "run_dir": run_dir.name,
                "label": job.get("label"),
                "context": job.get("context"),
                "status": job.get("status"),
                "error": job.get("error"),
                "bundle_sha256": job.get("bundle_sha256"),
                "headline_metrics": job.get("headline_metrics"),
                "duration_s": job.get("duration_s"),
            })
    return jobs


def write_sweep_manifest(sweep_dir: Path) -> dict[str, Any]:
    jobs = collect_jobs(sweep_dir)
    counts = {s: sum(j["status"] == s for j in jobs) for s in ("succeeded", "failed", "skipped", "running")}
    manifest = {"sweep_dir": str(sweep_dir), "jobs": jobs, "counts": counts,
                "status": "failed" if counts["failed"] or counts["running"] else "succeeded"}
    atomic_write_json(Path(sweep_dir) / SWEEP_MANIFEST_NAME, manifest)
    return manifest


class SweepManifestCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        manifest = write_sweep_manifest(sweep_dir)
        c = manifest["counts"]
        log.info("sweep %s: %d succeeded, %d skipped, %d failed", sweep_dir, c["succeeded"], c["skipped"],
                 c["failed"])
        if manifest["status"] != "succeeded":
            log.error("sweep has failed jobs; see %s", sweep_dir / SWEEP_MANIFEST_NAME)
            sys.exit(1)
