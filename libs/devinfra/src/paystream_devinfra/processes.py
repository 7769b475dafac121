"""Supervised child processes for the embedded dev/test infrastructure.

A :class:`ChildProcess` runs in its own session (and so its own process group), writes
stdout and stderr to a log file, is stopped by signalling the whole group (then SIGKILL
after a timeout), and on Linux asks the kernel to signal it when the parent dies
(``PR_SET_PDEATHSIG``), so that a crashed test run does not leak brokers or databases.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

__all__ = [
    "ChildProcess",
    "EmbeddedStartError",
    "free_port",
    "port_accepts_connections",
    "wait_until_ready",
]

_PR_SET_PDEATHSIG = 1


class EmbeddedStartError(RuntimeError):
    """An embedded component failed to start or did not become ready in time."""


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Resolved once in the parent: the preexec hook must not import or load anything.
_PRCTL = _load_prctl()

_LIVE: weakref.WeakSet[ChildProcess] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _make_preexec(death_signal: signal.Signals | None) -> Callable[[], None] | None:
    """Build the ``preexec_fn`` that arms the parent-death signal.

    ``subprocess`` runs ``preexec_fn`` after ``setsid``/``setgid``/``setuid`` (the
    ``user=``/``group=`` arguments), which matters: the kernel clears the parent-death
    signal on a credential change, so it must be armed after the switch.
    """
    prctl = _PRCTL
    if death_signal is None or prctl is None:
        return None
    parent_pid = os.getpid()
    signum = int(death_signal)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody will signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signum)

    return preexec


class ChildProcess:
    """A supervised child process in its own process group, logging to ``log_path``.

    ``stop_signal`` is what :meth:`stop` sends first (to the whole group, or only to the
    leader when ``signal_leader_only`` - right for servers that shut down their own
    children, like the postmaster). ``death_signal`` is delivered by the kernel if this
    (parent) thread dies; ``None`` disables it. Linux ties the parent-death signal to the
    *thread* that forked: start long-lived children from a long-lived thread.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: str | os.PathLike[str],
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        user: str | int | None = None,
        group: str | int | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        death_signal: signal.Signals | None = signal.SIGTERM,
        signal_leader_only: bool = False,
    ) -> None:
        self.argv: list[str] = [os.fspath(a) for a in argv]
        self.log_path = Path(log_path)
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.group = group
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self.signal_leader_only = signal_leader_only
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self._popen.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            log.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {self.argv!r}\n".encode()
            )
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                group=self.group,
                extra_groups=[] if self.user is not None else None,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_make_preexec(self.death_signal),
            )
        except BaseException:
            log.close()
            raise
        self._log = log
        with _LIVE_LOCK:
            _LIVE.add(self)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Send ``stop_signal`` to the process group (or only the leader when
        ``signal_leader_only``), wait up to ``timeout``, then SIGKILL the group.

        Also kills and waits for any descendant still alive afterwards. Returns the exit
        code of the leader (``None`` if it was never started). Idempotent.
        """
        popen = self._popen
        if popen is None:
            return None
        try:
            descendants = self._descendants()
            if popen.poll() is None:
                if self.signal_leader_only:
                    with contextlib.suppress(ProcessLookupError):
                        popen.send_signal(self.stop_signal)
                else:
                    self._signal_group(self.stop_signal)
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    popen.wait(timeout=max(timeout, 5.0))
            # Anything left in the group (grandchildren) goes too.
            self._signal_group(signal.SIGKILL)
            _kill_and_wait(descendants, timeout=5.0)
            return popen.returncode
        finally:
            self._close()

    def kill(self) -> None:
        """SIGKILL the whole group immediately (simulates a crash) and wait until the
        leader and all its descendants are gone."""
        popen = self._popen
        if popen is None:
            return
        try:
            descendants = self._descendants()
            self._signal_group(signal.SIGKILL)
            popen.wait(timeout=10.0)
            _kill_and_wait(descendants, timeout=5.0)
        finally:
            self._close()

    def _descendants(self) -> list[psutil.Process]:
        if self._popen is None or self._popen.poll() is not None:
            return []
        try:
            return psutil.Process(self._popen.pid).children(recursive=True)
        except psutil.Error:
            return []

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._popen is None:
            return
        # start_new_session=True makes the leader's pid the process-group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    # -- inspection --------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def poll(self) -> int | None:
        return self.returncode

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                data = fh.read()
        except OSError as exc:
            return f"<log {self.log_path} unreadable: {exc}>"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def describe_failure(self, reason: str, what: str | None = None) -> str:
        """An error message with the exit status and the tail of the log."""
        rc = self.returncode
        status = "running" if rc is None else f"exited with code {rc}"
        return (
            f"{what or self.name} {reason} (pid {self.pid}, {status}; log: {self.log_path})\n"
            f"--- last lines of {self.log_path.name} ---\n{self.log_tail()}"
        )

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name} pid={self.pid} rc={self.returncode}>"


def _kill_and_wait(processes: list[psutil.Process], timeout: float) -> None:
    """SIGKILL ``processes`` and wait until each is gone (or a zombie awaiting reaping)."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + timeout
    pending = processes
    while pending and time.monotonic() < deadline:
        still: list[psutil.Process] = []
        for proc in pending:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
            except psutil.Error:
                pass
        pending = still
        if pending:
            time.sleep(0.01)


def wait_until_ready(
    probe: Callable[[float], bool],
    *,
    process: ChildProcess,
    timeout: float,
    what: str | None = None,
    interval: float = 0.05,
    abort: threading.Event | None = None,
) -> None:
    """Poll ``probe(remaining_seconds)`` until it returns True or the deadline passes.

    Raises :class:`EmbeddedStartError` (with the child's exit code and log tail) if the
    child exits first or the deadline passes, or as soon as ``abort`` is set (a supervisor
    shutting down must not wait out a restart). Exceptions from the probe count as "not
    ready yet"; the last one is reported on timeout.
    """
    label = what or process.name
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if abort is not None and abort.is_set():
            raise EmbeddedStartError(f"{label}: start aborted (shutting down)")
        if process.poll() is not None:
            raise EmbeddedStartError(
                process.describe_failure("exited before becoming ready", label)
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f"; last probe error: {last_error!r}" if last_error else ""
            raise EmbeddedStartError(
                process.describe_failure(f"was not ready within {timeout:g}s{detail}", label)
            )
        try:
            if probe(remaining):
                return
        except Exception as exc:  # any probe failure means "not yet"
            last_error = exc
        pause = min(interval, max(0.0, deadline - time.monotonic()))
        if abort is not None:
            abort.wait(pause)
        else:
            time.sleep(pause)


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (bind to port 0; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@atexit.register
def _stop_leftovers() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for child in live:
        with contextlib.suppress(Exception):
            child.stop(timeout=5.0)
