"""The relay process loses PostgreSQL (a TCP proxy between them is cut): at startup, in the
middle of draining a backlog, and while idle on LISTEN. It stays up, logs one warning per
outage, and once the database is back publishes every row written before and during the
outage, in per-key order, republishing at most one chunk."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.integration.relay_support import (
    RelayEnv,
    TopicCount,
    assert_per_key_order,
    ce_ids,
    make_relay_env,
    read_all,
    write_rows,
)
from tests.support.polling import wait_for
from tests.support.processes import terminate
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

OUTAGE = "database unavailable"
CHUNK = 50


@pytest.fixture
def relay_env(kafka_bootstrap: str, primary_database_url: str, tmp_path: Path) -> RelayEnv:
    return make_relay_env(kafka_bootstrap, primary_database_url, tmp_path)


@pytest.fixture
def proxy(primary_database_url: str) -> Iterator[TcpProxy]:
    url = make_url(primary_database_url)
    assert url.port is not None
    tcp = TcpProxy(url.port, host=url.host or "127.0.0.1")
    try:
        yield tcp
    finally:
        tcp.close()


def _through(proxy: TcpProxy, database_url: str) -> str:
    return make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)


def _wait_for_outages(env: RelayEnv, proc: subprocess.Popen[bytes], count: int) -> None:
    """Until the relay has logged `count` outages; it must not exit meanwhile."""
    log = env.log("relay")
    wait_for(
        lambda: proc.poll() is not None or log.read_text().count(OUTAGE) >= count,
        timeout=60,
        what=f"outage warning #{count}",
    )
    assert proc.poll() is None, f"relay exited during the outage:\n{log.read_text()}"


def _wait_drained(env: RelayEnv, proc: subprocess.Popen[bytes], what: str) -> None:
    wait_for(lambda: proc.poll() is not None or env.unpublished() == 0, timeout=60, what=what)
    assert proc.poll() is None, f"relay exited:\n{env.log('relay').read_text()}"


def test_relay_rides_out_database_outages(relay_env: RelayEnv, proxy: TcpProxy) -> None:
    ids: dict[str, str] = {}
    proxy.down()
    ids |= write_rows(relay_env, count=100, keys=10)  # versions 1-10
    # A 60 s fallback poll: after the last outage only a re-established LISTEN can deliver.
    proc = relay_env.start(
        "relay",
        PAYSTREAM_DATABASE_URL=_through(proxy, relay_env.database_url),
        PAYSTREAM_RELAY_IDLE_POLL_S="60",
        PAYSTREAM_RELAY_PUBLISH_CHUNK=str(CHUNK),
    )
    try:
        # 1. Not reachable at startup: the relay waits instead of exiting.
        _wait_for_outages(relay_env, proc, 1)
        proxy.up()
        _wait_drained(relay_env, proc, "the rows written before startup")

        # 2. Cut in the middle of a backlog, while batches are claimed and chunks marked.
        ids |= write_rows(relay_env, count=5_000, keys=10, first_version=11)  # 11-510
        with contextlib.closing(TopicCount(relay_env)) as on_topic:
            wait_for(lambda: on_topic() >= 2_000, timeout=60, what="the backlog half drained")
        proxy.down()
        _wait_for_outages(relay_env, proc, 2)
        ids |= write_rows(relay_env, count=100, keys=10, first_version=511)  # 511-520
        assert relay_env.unpublished() > 0
        proxy.up()
        _wait_drained(relay_env, proc, "the backlog and the rows written during the outage")

        # 3. Cut while idle on LISTEN: the listener connection is the one that notices.
        proxy.down()
        _wait_for_outages(relay_env, proc, 3)
        ids |= write_rows(relay_env, count=100, keys=10, first_version=521)  # 521-530
        proxy.up()
        _wait_drained(relay_env, proc, "the rows written during the idle outage")
        ids |= write_rows(relay_env, count=1, keys=1, first_version=531)
        _wait_drained(relay_env, proc, "a row announced by NOTIFY on the new listener")
    finally:
        code = terminate(proc)
    log = relay_env.log("relay").read_text()
    assert code == 0, log
    assert log.count(OUTAGE) == 3, "one warning per outage"
    assert "Traceback" not in log

    records = read_all(relay_env, set(ids))
    seen = ce_ids(records)
    assert set(seen) == set(ids), "rows missing from the topic"
    assert_per_key_order(records)
    # Only the cut mid-backlog can catch a chunk acknowledged by Kafka but not yet marked.
    assert len(seen) - len(set(seen)) <= CHUNK


def test_sigterm_stops_a_relay_waiting_for_the_database(
    relay_env: RelayEnv, proxy: TcpProxy
) -> None:
    proxy.down()
    proc = relay_env.start("relay", PAYSTREAM_DATABASE_URL=_through(proxy, relay_env.database_url))
    try:
        _wait_for_outages(relay_env, proc, 1)
    finally:
        code = terminate(proc)  # SIGKILL (code -9) if it does not stop in time
    assert code == 0, relay_env.log("relay").read_text()
