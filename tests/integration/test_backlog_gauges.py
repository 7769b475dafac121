"""The reconciler's backlog gauges: what waits pending/unknown per gateway and in the outbox,
and the oldest one's age, across tenants though the app role sees no tenant's rows."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from paystream_provider_reports.metrics import CallbackMetrics
from paystream_provider_reports.reconciler import BacklogExporter
from paystream_provider_reports.settings import ReconcilerSettings
from paystream_storage.backlog import PgBacklog
from tests.support.databases import libpq

pytestmark = pytest.mark.integration


def _transaction(
    conn: psycopg.Connection[tuple[object, ...]],
    tenant: uuid.UUID,
    status: str,
    gateway: str,
    age: str,
) -> None:
    txn = uuid.uuid4()
    conn.execute(
        "INSERT INTO transactions (id, tenant_id, account_id, type, status, amount_minor,"
        " currency, country, idempotency_key, payload_hash, gateway_code, created_at)"
        " VALUES (%s, %s, 'a', 'deposit', %s, 100, 'EUR', 'DE', %s, 'h', %s,"
        " now() - %s::interval)",
        (txn, tenant, status, str(txn), gateway, age),
    )


def _outbox(
    conn: psycopg.Connection[tuple[object, ...]], tenant: uuid.UUID, age: str, *, published: bool
) -> None:
    conn.execute(
        "INSERT INTO outbox (tenant_id, topic, key, shard, event_id, event_type, source,"
        " occurred_at, data, created_at, published_at) VALUES (%s, 'commands', 'a', 0,"
        " gen_random_uuid(), 't', 's', now(), '{}', now() - %s::interval,"
        " CASE WHEN %s THEN now() END)",
        (tenant, age, published),
    )


def test_ages_and_counts_across_tenants_as_the_app_role(database_url: str) -> None:
    settings = ReconcilerSettings(database_url=database_url)
    metrics = CallbackMetrics()
    exporter = BacklogExporter(PgBacklog(settings), metrics, settings)
    value = metrics.registry.get_sample_value

    # Nothing waits: the outbox gauges read 0, no gateway has a series.
    asyncio.run(exporter.run_once())
    assert value("paystream_outbox_unpublished") == 0
    assert value("paystream_outbox_oldest_unpublished_age_seconds") == 0
    assert (
        value("paystream_transactions_waiting", {"gateway": "jsonpay", "status": "pending"}) is None
    )

    tenants = [uuid.uuid4(), uuid.uuid4()]
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute(
            "INSERT INTO gateways (code, provider, name, currencies) VALUES"
            " ('jsonpay', 'json', 'j', '{EUR}'), ('soapbank', 'soap', 's', '{EUR}')"
        )
        for tenant in tenants:
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, str(tenant)))
            conn.execute(
                "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, 'a', 'DE')", (tenant,)
            )
        _transaction(conn, tenants[0], "pending", "jsonpay", "10 minutes")
        _transaction(conn, tenants[1], "pending", "jsonpay", "2 hours")
        _transaction(conn, tenants[1], "unknown", "soapbank", "30 minutes")
        _transaction(conn, tenants[0], "succeeded", "soapbank", "3 hours")  # not waiting
        _outbox(conn, tenants[0], "5 minutes", published=False)
        _outbox(conn, tenants[1], "1 minute", published=False)
        _outbox(conn, tenants[1], "1 hour", published=True)  # published: not a backlog

    asyncio.run(exporter.run_once())
    pending = {"gateway": "jsonpay", "status": "pending"}
    unknown = {"gateway": "soapbank", "status": "unknown"}
    assert value("paystream_transactions_waiting", pending) == 2
    assert value("paystream_transactions_waiting", unknown) == 1
    assert 7200 <= (value("paystream_transactions_waiting_oldest_age_seconds", pending) or 0) < 7300
    assert 1800 <= (value("paystream_transactions_waiting_oldest_age_seconds", unknown) or 0) < 1900
    assert (
        value("paystream_transactions_waiting", {"gateway": "soapbank", "status": "pending"})
        is None
    )
    assert value("paystream_outbox_unpublished") == 2
    assert 300 <= (value("paystream_outbox_oldest_unpublished_age_seconds") or 0) < 400
    assert (value("paystream_backlog_last_success_timestamp_seconds") or 0) > 0

    # A drained gateway loses its series rather than keeping its last age.
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("UPDATE transactions SET status = 'failed' WHERE status = 'unknown'")
    asyncio.run(exporter.run_once())
    assert value("paystream_transactions_waiting_oldest_age_seconds", unknown) is None
    assert value("paystream_transactions_waiting", pending) == 2

    # The functions return aggregates only; the app role still reads no row itself.
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute("SET ROLE paystream_app")
        assert conn.execute("SELECT count(*) FROM transactions").fetchall() == [(0,)]
