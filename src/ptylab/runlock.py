"""One writer per run directory: an advisory lock held for the job's whole life.

The lock is ``fcntl.flock`` on ``<run_dir>/.ptylab.lock``: the kernel releases it when its holder
exits, however it exits (SIGKILL included), so a lock left by a killed process is never in the
way. The file keeps the holder's host, pid and start time for the message a second job gets.
Advisory locks on network file systems depend on the server; on a cluster, give each job its own
directory (Hydra's sweep layout does).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import PtylabError

LOCK_NAME = ".ptylab.lock"


class RunDirLocked(PtylabError):
    """Another live job is writing into the same run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock, or refuse at once naming the holder."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(f"{run_dir} is in use by another job ({_holder(path)}); give this job its own "
                               "hydra.run.dir, or wait for that one to finish") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"host {h['host']}, pid {h['pid']}, started {h['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
