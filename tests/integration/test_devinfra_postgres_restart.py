"""Embedded PostgreSQL after a `kill -9` of its postmaster: reaped, lock files cleared
safely, restarted by the dev supervisor on the same port with committed data intact."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from paystream_cli.dev_stack import PostgresUnit
from paystream_devinfra import EmbeddedPostgres, EmbeddedStartError, RestartBackoff, Supervisor
from paystream_devinfra.postgres_locks import LockHeldError, clear_stale_lock
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

BUSY_SQL = "SELECT count(*) FROM generate_series(1, 2000000000)"


@pytest.fixture
def pg_base() -> Iterator[Path]:
    """Not pytest's tmp_path: as root the server runs as another user that needs o+x on
    every parent, and each pytest start resets /tmp/pytest-of-root to 0700."""
    base = Path(tempfile.mkdtemp(prefix="paystream-devinfra-restart-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg(pg_base: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(pg_base / "data", fsync=False, timeout=60) as server:
        yield server


def _postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])


def _commit_row(pg: EmbeddedPostgres, value: int) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survivor (id int)")
        conn.execute("INSERT INTO survivor VALUES (%s)", (value,))


def _rows(pg: EmbeddedPostgres) -> list[int]:
    with psycopg.connect(pg.dsn, connect_timeout=5) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM survivor ORDER BY id")]


def _gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_busy_backend(pg: EmbeddedPostgres) -> tuple[threading.Thread, int]:
    """A backend running a long CPU-bound statement: it outlives a killed postmaster
    (it does not wait on anything that would notice the death)."""
    conn = psycopg.connect(pg.dsn, autocommit=True)
    backend_pid = conn.info.backend_pid

    def run() -> None:
        try:
            conn.execute(BUSY_SQL)
        except psycopg.Error:
            pass  # expected: the backend is killed under it
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def active() -> bool:
        with psycopg.connect(pg.dsn, autocommit=True) as probe:
            row = probe.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
            ).fetchone()
        return row is not None and row[0] == "active"

    wait_for(active, timeout=30, what="busy backend running")
    return thread, backend_pid


def test_supervisor_restarts_killed_postmaster_with_data_and_port(pg: EmbeddedPostgres) -> None:
    _commit_row(pg, 1)
    port = pg.port
    postmaster = _postmaster_pid(pg)
    assert postmaster == pg.pid
    busy, backend = _start_busy_backend(pg)
    stop = threading.Event()
    supervisor = Supervisor(RestartBackoff(initial=0.1, maximum=1.0))
    supervisor.watch(PostgresUnit(pg, stop))

    os.kill(postmaster, signal.SIGKILL)
    assert psutil.pid_exists(backend)  # the busy backend lives on without its postmaster

    def recovered() -> bool:
        supervisor.step()
        return pg.pid != postmaster and pg.alive and not supervisor.restarting()

    wait_for(recovered, timeout=90, interval=0.1, what="postgres restarted")
    assert pg.port == port  # every service was given this URL
    assert _gone_or_zombie(postmaster)
    with pytest.raises(psutil.NoSuchProcess):  # reaped by its parent: no zombie left
        psutil.Process(postmaster)
    assert _gone_or_zombie(backend)  # the leftover backend did not block the restart
    busy.join(timeout=30)
    assert _rows(pg) == [1]  # crash recovery kept what was committed
    _commit_row(pg, 2)
    assert _rows(pg) == [1, 2]


def test_restart_reports_cleared_locks_and_leftover_backends(pg: EmbeddedPostgres) -> None:
    _commit_row(pg, 7)
    postmaster = _postmaster_pid(pg)
    busy, _backend = _start_busy_backend(pg)
    os.kill(postmaster, signal.SIGKILL)
    exit_code = wait_for(pg.poll, timeout=10, what="postmaster death noticed")
    assert exit_code == -signal.SIGKILL
    # Both lock files still name the dead postmaster.
    assert (pg.data_dir / "postmaster.pid").exists()

    report = pg.restart()

    assert report.exit_code == -signal.SIGKILL
    assert "postmaster.pid" in report.cleared
    assert f".s.PGSQL.{pg.port}.lock" in report.cleared
    assert report.leftover_backends >= 1
    assert "postmaster.pid" in report.describe()
    busy.join(timeout=30)
    assert _rows(pg) == [7]


def test_stale_locks_naming_other_processes_are_cleared(
    pg: EmbeddedPostgres, pg_base: Path
) -> None:
    stopped = EmbeddedPostgres(pg_base / "other", fsync=False, timeout=60)
    with stopped:
        pass
    pid_file = stopped.data_dir / "postmaster.pid"
    socket_lock = pg_base / ".s.PGSQL.1.lock"
    # pid reused by a live process that is not postgres (this test process) ...
    for lock in (pid_file, socket_lock):
        lock.write_text(f"{os.getpid()}\n{stopped.data_dir}\n0\n1\n\n")
        assert clear_stale_lock(lock, stopped.data_dir)
        assert not lock.exists()
    # ... or by a live postgres serving another data directory ...
    pid_file.write_text(f"{pg.pid}\n{stopped.data_dir}\n0\n1\n\n")
    assert clear_stale_lock(pid_file, stopped.data_dir)
    assert not pid_file.exists()
    # ... and the server starts past such a pid file.
    pid_file.write_text(f"{os.getpid()}\n{stopped.data_dir}\n0\n1\n\n")
    os.chmod(pid_file, 0o600)
    with stopped, psycopg.connect(stopped.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_locks_of_a_running_server_are_never_removed(pg: EmbeddedPostgres) -> None:
    pid_file = pg.data_dir / "postmaster.pid"
    assert pg.socket_dir is not None
    socket_lock = pg.socket_dir / f".s.PGSQL.{pg.port}.lock"
    for lock in (pid_file, socket_lock):
        with pytest.raises(LockHeldError):
            clear_stale_lock(lock, pg.data_dir)
        assert lock.exists()
    # No data directory given: the one written in the file decides.
    with pytest.raises(LockHeldError):
        clear_stale_lock(socket_lock)
    # A second server on the same data directory refuses instead of clearing the lock.
    with pytest.raises(EmbeddedStartError, match="already running"):
        EmbeddedPostgres(pg.data_dir, fsync=False, timeout=30).start()
    assert pid_file.exists()
    assert _postmaster_pid(pg) == pg.pid
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
