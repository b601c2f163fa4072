"""What happens when things go wrong: kills, pre-emption, two writers, broken artefacts, full disks.

The resume tests run train.py as a user would, kill it for real (SIGKILL, SIGTERM) and re-run the
same command: the resumed job must end with the digest and metrics of a job never interrupted.
"""

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ptylab.bundle
from ptylab.evaluation import RUN_DEPENDENT_KEYS
from ptylab.fileio import atomic_path
from ptylab.runlock import LOCK_NAME, RunDirLocked, run_dir_lock
from ptylab.stages.train import resume_point, run_job
from ptylab.training import CheckpointError, check_checkpoint

from .conftest import ROOT, SMALL_OVERRIDES, TINY_TRAIN, compose_config, run_script

# Four short epochs, so a kill lands mid-training; evaluation and the refined arm stay on.
RESUMABLE = [*SMALL_OVERRIDES, *TINY_TRAIN, "trainer.max_epochs=4", "dose=1000"]


def _cmd(run_dir: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", f"hydra.run.dir={run_dir}", f"paths.output_root={root}", *RESUMABLE, *extra]


def _job(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_manifest.json").read_text())["jobs"][0]


def _metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in RUN_DEPENDENT_KEYS}


def _start_and_signal(run_dir: Path, root: Path, sig: int) -> int:
    """Start a job and send ``sig`` once its first epoch's checkpoint exists; return its exit code."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # SIGINT as a terminal leaves it (a test runner's worker may ignore it, and children inherit that)
    proc = subprocess.Popen(_cmd(run_dir, root), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job, never interrupted."""
    root = tmp_path_factory.mktemp("reference")
    run_dir = root / "run"
    res = subprocess.run(_cmd(run_dir, root), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)])
def test_killed_job_resumes_to_the_uninterrupted_digest_and_metrics(reference, tmp_path, sig, code):
    run_dir = tmp_path / "run"
    assert _start_and_signal(run_dir, tmp_path, sig) == code
    job = _job(run_dir)
    if sig == signal.SIGTERM:  # pre-emption is recorded, with the way back
        assert job["status"] == "interrupted" and "resume" in job["error"]
    else:  # a SIGKILL leaves the manifest saying 'running'
        assert job["status"] == "running"
    assert not (run_dir / "wts.h5.zip").exists()
    res = run_script(_cmd(run_dir, tmp_path)[1:], cwd=ROOT)  # the same command again
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, ref = _job(run_dir), _job(reference)
    assert resumed["status"] == "succeeded" and resumed["resumed_from"] == "checkpoints/last.ckpt"
    assert resumed["bundle_sha256"] == ref["bundle_sha256"]
    assert resumed["loss_history"] == ref["loss_history"] and resumed["steps"] == ref["steps"]
    # trained on the groups under the embedded disc probe's eight symmetries, drawn the same way again
    assert resumed["groups"] == ref["groups"] and ref["groups"]["symmetries"] == 8
    assert _metrics(run_dir) == _metrics(reference)


def test_ctrl_c_marks_the_job_interrupted_and_resumable_not_failed(tmp_path):
    """Lightning answers a KeyboardInterrupt in ``fit`` with ``sys.exit(1)``: the manifest said
    ``failed``, with no error, and the same command started over. The job's own SIGINT handler
    records it as SIGTERM's pre-emption is recorded (whose resume the test above runs)."""
    run_dir = tmp_path / "run"
    assert _start_and_signal(run_dir, tmp_path, signal.SIGINT) == 128 + signal.SIGINT
    job = _job(run_dir)
    assert job["status"] == "interrupted" and job["signal"] == "SIGINT" and "resume" in job["error"]
    assert not (run_dir / "wts.h5.zip").exists()
    cfg = compose_config([f"paths.output_root={tmp_path}"])
    assert resume_point(cfg, run_dir) == str(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("status, resume, expected", [
    ("interrupted", True, True), ("running", True, True), ("interrupted", False, False), ("failed", True, False),
])
def test_resume_point_follows_the_manifest_and_resume_flag(reference, tmp_path, status, resume, expected):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    manifest = json.loads((reference / "training_manifest.json").read_text())
    manifest["jobs"][0]["status"] = manifest["status"] = status
    (run_dir / "training_manifest.json").write_text(json.dumps(manifest))
    cfg = compose_config([f"resume={str(resume).lower()}"])
    assert resume_point(cfg, run_dir) == (str(run_dir / "checkpoints" / "last.ckpt") if expected else None)



def test_second_writer_is_refused_naming_the_directory_and_holder(tmp_path):
    run_dir = tmp_path / "run"
    with run_dir_lock(run_dir):
        res = run_script(["train.py", f"hydra.run.dir={run_dir}", f"paths.output_root={tmp_path}", *SMALL_OVERRIDES,
                          *TINY_TRAIN], cwd=ROOT)
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            run_job(compose_config([f"paths.output_root={tmp_path}"]), run_dir)
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(run_dir) in err and f"pid {os.getpid()}" in err
    assert not (run_dir / "training_manifest.json").exists()  # the refused job wrote nothing of its own


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A holder that died: its record is on disk, but no process holds the kernel lock any more.
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": "gone", "pid": 999999, "started": "yesterday"}))
    with run_dir_lock(run_dir):
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path, reference):
    good = reference / "checkpoints" / "last.ckpt"
    assert check_checkpoint(good) == good
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{bad}: not a complete checkpoint"):
        check_checkpoint(bad)
    (tmp_path / "foreign.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"foreign\.ckpt: not a complete checkpoint"):
        check_checkpoint(tmp_path / "foreign.ckpt")
    record = run_job(compose_config([f"paths.output_root={tmp_path}", *SMALL_OVERRIDES, *TINY_TRAIN,
                               f"ckpt_path={bad}"]), tmp_path / "job")
    assert record.status == "failed" and "not a complete checkpoint" in record.error and str(bad) in record.error
    assert _job(tmp_path / "job")["status"] == "failed"


def test_disk_full_while_writing_the_bundle_leaves_no_bundle(tmp_path, monkeypatch):
    def full_disk(path, data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[: len(data) // 3])  # part of it reached the disk, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ptylab.bundle, "atomic_write_bytes", full_disk)
    run_dir = tmp_path / "job"
    record = run_job(compose_config([f"paths.output_root={tmp_path}", *SMALL_OVERRIDES, *TINY_TRAIN]), run_dir)
    assert record.status == "failed" and "No space left" in record.error
    assert _job(run_dir)["status"] == "failed" and _job(run_dir)["bundle_sha256"] is None
    assert not (run_dir / "wts.h5.zip").exists() and not (run_dir / "wts.h5.zip.sha256").exists()
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    assert not (run_dir / "metrics.json").exists()


def test_ddp_on_cpu_with_two_processes_only_rank_zero_writes(tmp_path):
    run_dir = tmp_path / "run"
    res = run_script(["train.py", f"hydra.run.dir={run_dir}", f"paths.output_root={tmp_path}", *SMALL_OVERRIDES,
                      *TINY_TRAIN, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      "refine.enabled=false"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    job = _job(run_dir)
    assert job["status"] == "succeeded" and len(job["bundle_sha256"]) == 64
    assert res.stdout.count("bundle wts.h5.zip sha256") == 1  # one summary line: rank zero's
    assert len(list(run_dir.glob("*.sha256"))) == 1 and not list(run_dir.glob("error*.log"))
