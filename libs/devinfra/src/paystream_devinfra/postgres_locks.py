"""PostgreSQL's lock files and leftover processes after its postmaster died.

A postmaster holds two lock files: ``postmaster.pid`` in its data directory and
``.s.PGSQL.<port>.lock`` next to its Unix socket. Both start with the postmaster's pid and
its data directory. After a ``kill -9`` they stay behind. PostgreSQL clears them itself
only when the pid in them is gone (``kill(pid, 0)`` fails): a postmaster still a zombie
(not reaped) or a pid reused by another process makes it refuse to start. A lock is
*live* only when its pid is a running (not zombie) postgres process serving that data
directory; anything else is stale and safe to delete. A live lock is never touched.

Backends outlive a killed postmaster until they next wait (idle ones leave at once,
busy ones finish their statement); while they are attached to the old shared memory
block, a new postmaster refuses to start ("pre-existing shared memory block ... is still
in use").
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import psutil

__all__ = [
    "LockHeldError",
    "clear_stale_lock",
    "is_postgres_for",
    "orphaned_backends",
    "read_lock_file",
    "reap_orphaned_backends",
]

_log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """A lock file belongs to a running postgres: it must not be removed."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(f"{path} belongs to a running PostgreSQL server (pid {pid})")
        self.path = path
        self.pid = pid


def read_lock_file(path: Path) -> tuple[int | None, Path | None]:
    """The pid and data directory written in a PostgreSQL lock file (None where unreadable).

    A standalone backend writes its pid negated; the process is the same.
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None, None
    pid: int | None
    try:
        pid = abs(int(lines[0].strip()))
    except (IndexError, ValueError):
        pid = None
    data_dir = Path(lines[1].strip()) if len(lines) > 1 and lines[1].strip() else None
    return pid, data_dir


def is_postgres_for(pid: int, data_dir: Path | None) -> bool:
    """Whether ``pid`` is a live (not zombie) postgres process serving ``data_dir``.

    The pid may have been reused since the file was written: the process must be named
    postgres and have its working directory in ``data_dir`` (every postgres process chdirs
    there). ``data_dir=None`` (unknown) accepts any postgres. A postgres we may not inspect
    counts as the owner: when in doubt, the lock is live.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if "postgres" not in proc.name() and "postgres" not in " ".join(proc.cmdline()[:1]):
            return False
        if data_dir is None:
            return True
        try:
            return Path(proc.cwd()).resolve() == data_dir.resolve()
        except (psutil.AccessDenied, OSError):
            return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def clear_stale_lock(path: Path, data_dir: Path | None = None) -> bool:
    """Delete the lock file ``path`` if it is stale; True when it was deleted.

    The owner is checked against ``data_dir``, or (when None) the data directory written
    in the file. Raises :class:`LockHeldError` when a running postgres owns it.
    """
    if not path.exists():
        return False
    pid, written_dir = read_lock_file(path)
    owner_dir = data_dir if data_dir is not None else written_dir
    if pid is not None and is_postgres_for(pid, owner_dir):
        raise LockHeldError(path, pid)
    _log.info("removing stale %s (pid %s is not a running postgres for it)", path, pid)
    path.unlink(missing_ok=True)
    return True


def orphaned_backends(data_dir: Path) -> list[psutil.Process]:
    """Live postgres processes working in ``data_dir``.

    Call only once no postmaster owns ``data_dir`` (``postmaster.pid`` is stale): then
    every postgres process there is a leftover of a dead postmaster.
    """
    target = data_dir.resolve()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if "postgres" not in proc.name() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if Path(proc.cwd()).resolve() == target:
                found.append(proc)
    return found


def reap_orphaned_backends(
    data_dir: Path,
    *,
    grace: float,
    abort: threading.Event | None = None,
) -> tuple[int, int]:
    """Wait up to ``grace`` seconds for leftover backends of ``data_dir`` to exit, then
    SIGKILL the rest and wait until they are gone. Returns (found, killed).

    Killing them is what PostgreSQL itself does to its children after one crashed: they
    serve a dead postmaster, and what they committed is in the WAL that crash recovery
    replays on the next start.
    """
    pending = orphaned_backends(data_dir)
    found = len(pending)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        if _pause(0.05, abort):
            return found, 0
        pending = [p for p in pending if _alive(p)]
    killed = 0
    for proc in pending:
        with contextlib.suppress(psutil.Error):
            _log.warning("killing leftover postgres backend pid %d of %s", proc.pid, data_dir)
            proc.kill()
            killed += 1
    deadline = time.monotonic() + 10.0
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if _alive(p)]
        if pending and _pause(0.02, abort):
            break
    return found, killed


def _alive(proc: psutil.Process) -> bool:
    """Running, i.e. neither gone nor a zombie: a zombie has dropped its shared memory."""
    try:
        # is_running() also compares the start time: a reused pid is not our process.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pause(seconds: float, abort: threading.Event | None) -> bool:
    """Sleep ``seconds`` (poll interval); True when ``abort`` was set meanwhile."""
    if abort is not None:
        return abort.wait(seconds)
    time.sleep(seconds)
    return False
