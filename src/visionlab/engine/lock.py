"""One process per run folder: an exclusive flock on RUN_DIR/.lock that holds the owner's pid.

The kernel drops the lock when its process ends (even on SIGKILL), so a lock file left behind never blocks anyone."""
from __future__ import annotations

import os
from pathlib import Path

from ..utils import UserError

try:
    import fcntl
except ImportError:         # Windows: no flock; runs there are not protected against a second process
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """A held lock; ``release()`` (or the end of the process) frees it. Only rank 0 of a distributed run takes one."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing the descriptor drops the flock
            self._fd = None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _pid_in(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def holder(run_dir: str | Path) -> str | None:
    """The pid (as text) of the process holding ``run_dir``'s lock, or None when nobody holds it."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _try_lock(fd):
            return None                 # free: our probe lock goes away with the descriptor
        return _pid_in(path)
    finally:
        os.close(fd)


def in_use_message(run_dir: str | Path, pid: str) -> str:
    return (f"{run_dir} is in use by process {pid} (a train, seeds, compare or sweep command still running); "
            f"wait for it to end or stop it (kill {pid}), then run this again")


def acquire(run_dir: str | Path) -> RunLock:
    """Take ``run_dir``'s lock and write our pid into it; UserError naming the holder's pid when it is taken."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None:
        return RunLock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        os.close(fd)
        raise UserError(in_use_message(run_dir, _pid_in(path)))
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(path, fd)


def check_free(run_dir: str | Path) -> None:
    """UserError naming the holder's pid when another process holds ``run_dir``'s lock."""
    pid = holder(run_dir)
    if pid is not None:
        raise UserError(in_use_message(run_dir, pid))
