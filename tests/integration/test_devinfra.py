"""Embedded tansu broker and PostgreSQL: lifecycle, crash recovery, and real clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from paystream_devinfra import (
    ChildProcess,
    EmbeddedKafka,
    EmbeddedPostgres,
    EmbeddedStartError,
    free_port,
    wait_until_ready,
)

pytestmark = pytest.mark.integration


def _tree(pid: int | None) -> list[int]:
    assert pid is not None
    proc = psutil.Process(pid)
    return [pid, *(child.pid for child in proc.children(recursive=True))]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_is_free(port: int) -> bool:
    """Nothing listens on the port. SO_REUSEADDR (as servers use) ignores TIME_WAIT
    leftovers of closed connections, which would otherwise make this flaky."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def kafka() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka(timeout=30) as broker:
        yield broker


@pytest.fixture
def pg_base(tmp_path: Path) -> Iterator[Path]:
    """Parent for PostgreSQL data dirs: tmp_path, except when running as root.

    As root the server runs as an unprivileged user that needs o+x on every ancestor of
    its data dir, for as long as it runs (PostgreSQL opens e.g. global/pg_control by
    absolute path). Every pytest session start resets /tmp/pytest-of-root to 0700, so a
    concurrent pytest run would pull the ground from under a server living in tmp_path.
    """
    if os.geteuid() != 0:
        yield tmp_path
        return
    base = Path(tempfile.mkdtemp(prefix="paystream-devinfra-test-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _pg(data_dir: Path, **kwargs: object) -> EmbeddedPostgres:
    return EmbeddedPostgres(data_dir, fsync=False, timeout=60, **kwargs)  # type: ignore[arg-type]


def test_child_process_failure_reports_exit_code_and_log_tail(tmp_path: Path) -> None:
    child = ChildProcess(
        ["/bin/sh", "-c", "echo boom-from-child; exit 3"], log_path=tmp_path / "child.log"
    )
    child.start()
    with pytest.raises(EmbeddedStartError) as info:
        wait_until_ready(lambda _remaining: False, process=child, timeout=10)
    message = str(info.value)
    assert "exited with code 3" in message
    assert "boom-from-child" in message
    child.stop()


def test_kafka_start_stop_frees_port_and_process() -> None:
    port = free_port()
    broker = EmbeddedKafka(port=port)
    with broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        pids = _tree(broker.pid)
        assert not _port_is_free(port)
        log_path = broker.log_path
        assert log_path is not None
        assert log_path.exists()
    assert not broker.is_running()
    assert _port_is_free(port)
    assert not [pid for pid in pids if _alive(pid)]
    assert not log_path.exists()  # temporary log removed on stop


def test_kafka_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from paystream_devinfra import EmbeddedKafka\n"
        "k = EmbeddedKafka(log_path=sys.argv[1]).start()\n"
        "print(k.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "tansu.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert _alive(broker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(broker_pid).wait(timeout=10)
        assert not _alive(broker_pid)
    finally:
        parent.kill()
        parent.wait()


def test_kafka_produce_consume_round_trip(kafka: EmbeddedKafka) -> None:
    topic = f"devinfra-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        future.result(timeout=10)

    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    payloads = [f"message-{i}".encode() for i in range(5)]
    for payload in payloads:
        producer.produce(topic, key=b"k", value=payload)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "fetch.wait.max.ms": 10,
        }
    )
    received: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(received) < len(payloads) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            value = message.value()
            assert value is not None
            received.append(value)
    finally:
        consumer.close()
    assert received == payloads


def test_postgres_start_query_stop(pg_base: Path) -> None:
    pg = _pg(pg_base / "pg", database="paystream_test")
    with pg:
        assert pg.url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/paystream_test"
        with psycopg.connect(pg.dsn) as conn:
            row = conn.execute("SELECT current_database(), current_user, 40 + 2").fetchone()
        assert row == ("paystream_test", "postgres", 42)
        pids = _tree(pg.pid)
        assert len(pids) > 1  # postmaster plus its auxiliary processes
        port = pg.port
    assert not pg.is_running()
    assert _port_is_free(port)
    assert not [pid for pid in pids if _alive(pid)]
    assert not (pg_base / "pg" / "postmaster.pid").exists()


def test_postgres_restart_after_sigkill_with_stale_pid_file(pg_base: Path) -> None:
    data_dir = pg_base / "pg"
    first = _pg(data_dir).start()
    with psycopg.connect(first.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivor (id int)")
        conn.execute("INSERT INTO survivor VALUES (7)")
    pids = _tree(first.pid)
    first.kill()  # SIGKILL the whole group: no clean shutdown
    assert not [pid for pid in pids if _alive(pid)]
    assert (data_dir / "postmaster.pid").exists()

    with _pg(data_dir) as second:  # same data dir, fresh port
        with psycopg.connect(second.dsn) as conn:
            row = conn.execute("SELECT id FROM survivor").fetchone()
        assert row == (7,)


def test_postgres_removes_pid_file_of_unrelated_process(pg_base: Path) -> None:
    data_dir = pg_base / "pg"
    with _pg(data_dir):
        pass
    # A pid file naming a live process that is not postgres (pid reuse after a crash):
    # postgres itself would refuse to start, thinking another postmaster owns the dir.
    pid_file = data_dir / "postmaster.pid"
    pid_file.write_text(f"1\n{data_dir}\n0\n5432\n\n\n")
    os.chmod(pid_file, 0o600)
    with _pg(data_dir) as pg, psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_refuses_non_cluster_directory(pg_base: Path) -> None:
    data_dir = pg_base / "notpg"
    data_dir.mkdir()
    (data_dir / "something.txt").write_text("not a cluster")
    with pytest.raises(EmbeddedStartError, match="not a PostgreSQL data directory"):
        _pg(data_dir).start()
