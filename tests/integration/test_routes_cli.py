"""`paystream routes` against a fresh PostgreSQL: list, set, disable/enable, limits, history;
refusals change nothing and record nothing; every change moves config_version, which is
what makes a running worker's next unit read the new routes (shown with the worker's own
PgPaymentStore)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from paystream_cli.main import cli
from paystream_config import DatabaseSettings
from paystream_core.statuses import TransactionType
from paystream_messaging.schemas import SchemaRegistry
from paystream_storage.payments import PgPaymentStore
from paystream_storage.pool import HotPool
from tests.support.databases import libpq
from tests.support.routing import seed_demo_routing

pytestmark = pytest.mark.integration


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    """The demo routing (DE deposits: stripe, jsonpay, soapbank), and who the OS user is."""
    asyncio.run(seed_demo_routing(database_url))
    return {"PAYSTREAM_DATABASE_URL": database_url, "LOGNAME": "oncall", "USER": "oncall"}


def routes(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, ["routes", *args], env=env)


def query(env: dict[str, str], sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(env["PAYSTREAM_DATABASE_URL"])) as conn:
        return conn.execute(sql, args).fetchall()


def table(env: dict[str, str], country: str, kind: str) -> list[tuple[str, int, bool]]:
    rows = query(
        env,
        "SELECT gateway_code, priority, enabled FROM gateway_countries"
        " WHERE country = %s AND transaction_type = %s ORDER BY priority, gateway_code",
        country,
        kind,
    )
    return [(r[0], r[1], r[2]) for r in rows]


def version(env: dict[str, str]) -> int:
    return int(query(env, "SELECT version FROM config_version")[0][0])


def changes(env: dict[str, str]) -> list[tuple[Any, ...]]:
    return query(
        env,
        "SELECT actor, action, country, transaction_type, gateway_code, before, after"
        " FROM routing_changes ORDER BY id",
    )


def test_list_shows_priority_state_and_limits(env: dict[str, str]) -> None:
    listed = routes(env, "list", "--country", "de", "--type", "deposit")
    as_json = routes(env, "list", "--json")

    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert lines[0].split() == [
        "COUNTRY", "TYPE", "PRIO", "GATEWAY", "PROVIDER", "STATE", "CURRENCIES", "MIN", "MAX",
        "WEIGHT",
    ]  # fmt: skip
    assert [line.split()[:6] for line in lines[1:]] == [
        ["DE", "deposit", "1", "stripe", "stripe", "enabled"],
        ["DE", "deposit", "2", "jsonpay", "json", "enabled"],
        ["DE", "deposit", "3", "soapbank", "soap", "enabled"],
    ]
    assert lines[1].split()[6:] == ["EUR,GBP,USD,BRL", "1", "-", "100"]
    every = json.loads(as_json.output)
    assert len(every) == len(query(env, "SELECT 1 FROM gateway_countries"))
    assert every[0] == {
        "country": "BR",
        "type": "deposit",
        "priority": 1,
        "weight": 100,
        "gateway": "jsonpay",
        "provider": "json",
        "state": "enabled",
        "route_enabled": True,
        "gateway_enabled": True,
        "currencies": ["EUR", "GBP", "USD", "BRL", "NGN"],
        "min_amount_minor": 1,
        "max_amount_minor": None,
    }


def test_list_shows_a_down_gateway(env: dict[str, str]) -> None:
    down = CliRunner().invoke(cli, ["gateways", "down", "stripe"], env=env)
    assert down.exit_code == 0, down.output

    listed = json.loads(routes(env, "list", "--country", "DE", "--json").output)

    assert {(r["type"], r["gateway"]): r["state"] for r in listed}[
        ("deposit", "stripe")
    ] == "gateway-down"


def test_set_replaces_the_list_in_order_moves_the_version_and_is_recorded(
    env: dict[str, str],
) -> None:
    before = version(env)

    result = routes(env, "set", "DE", "deposit", "jsonpay", "stripe", "--actor", "alice")

    assert result.exit_code == 0, result.output
    assert "DE deposits: stripe, jsonpay, soapbank -> jsonpay, stripe" in result.output
    assert "by alice" in result.output
    assert table(env, "DE", "deposit") == [("jsonpay", 1, True), ("stripe", 2, True)]
    assert table(env, "DE", "withdrawal") == [("soapbank", 1, True), ("jsonpay", 2, True)]
    assert version(env) > before
    assert changes(env) == [
        (
            "alice",
            "set",
            "DE",
            "deposit",
            None,
            [
                {"gateway": "stripe", "priority": 1, "enabled": True, "weight": 100},
                {"gateway": "jsonpay", "priority": 2, "enabled": True, "weight": 100},
                {"gateway": "soapbank", "priority": 3, "enabled": True, "weight": 100},
            ],
            [
                {"gateway": "jsonpay", "priority": 1, "enabled": True, "weight": 100},
                {"gateway": "stripe", "priority": 2, "enabled": True, "weight": 100},
            ],
        )
    ]

    same = routes(env, "set", "DE", "deposit", "jsonpay", "stripe")
    assert same.exit_code == 0, same.output
    assert "nothing changed" in same.output
    assert len(changes(env)) == 1, "a change that changes nothing is not recorded"


def test_disable_and_enable_keep_the_place_and_set_keeps_the_switch(
    env: dict[str, str],
) -> None:
    disabled = routes(env, "disable", "DE", "deposit", "jsonpay")
    again = routes(env, "disable", "DE", "deposit", "jsonpay")
    reordered = routes(env, "set", "DE", "deposit", "soapbank", "jsonpay", "stripe")
    listed = routes(env, "list", "--country", "DE", "--type", "deposit")
    enabled = routes(env, "enable", "DE", "deposit", "jsonpay", "--actor", "bob")

    assert disabled.exit_code == 0, disabled.output
    assert "jsonpay disabled for DE deposits" in disabled.output
    assert again.exit_code == 0
    assert "already disabled" in again.output
    assert reordered.exit_code == 0, reordered.output
    assert "soapbank, jsonpay (disabled), stripe" in reordered.output
    assert [line.split()[3:6] for line in listed.output.splitlines()[1:]] == [
        ["soapbank", "soap", "enabled"],
        ["jsonpay", "json", "disabled"],
        ["stripe", "stripe", "enabled"],
    ]
    assert enabled.exit_code == 0, enabled.output
    assert table(env, "DE", "deposit") == [
        ("soapbank", 1, True),
        ("jsonpay", 2, True),
        ("stripe", 3, True),
    ]
    recorded = changes(env)
    assert [(r[0], r[1], r[4]) for r in recorded] == [
        ("oncall", "disable", "jsonpay"),  # --actor defaults to the OS user
        ("oncall", "set", None),
        ("bob", "enable", "jsonpay"),
    ]
    assert recorded[0][5][1] == {
        "gateway": "jsonpay",
        "priority": 2,
        "enabled": True,
        "weight": 100,
    }
    assert recorded[0][6][1] == {
        "gateway": "jsonpay",
        "priority": 2,
        "enabled": False,
        "weight": 100,
    }


def test_disabling_the_last_enabled_route_warns(env: dict[str, str]) -> None:
    assert routes(env, "set", "NG", "deposit", "soapbank").exit_code == 0

    result = routes(env, "disable", "NG", "deposit", "soapbank")

    assert result.exit_code == 0, result.output
    assert "no enabled route left" in result.output
    assert "no_gateway_available" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "DE", "deposit", "stripe", "paypal"], "no gateway 'paypal'"),
        (["set", "XX", "deposit", "stripe"], "no country 'XX'"),
        (["set", "ES", "deposit", "stripe"], "--country-name"),
        (["set", "XX", "deposit", "stripe", "--country-name", "Nowhere"], "not an ISO 3166-1"),
        (["set", "DE", "deposit", "stripe", "stripe"], "listed more than once: stripe"),
        (["set", "DE", "deposit", "jsonpay", "--actor", " "], "the actor is empty"),
        (["disable", "DE", "deposit", "paypal"], "no gateway 'paypal'"),
        (["disable", "ZZ", "deposit", "stripe"], "no country 'ZZ'"),
        (["disable", "NG", "deposit", "stripe"], "does not route NG deposits"),
        (["enable", "NG", "deposit", "stripe"], "does not route NG deposits"),
        (["limits", "paypal", "--min-minor", "5"], "no gateway 'paypal'"),
        (["limits", "stripe", "--currencies", "EUR,XYZ"], "unknown currency: XYZ"),
        (["limits", "stripe", "--min-minor", "500", "--max-minor", "100"], "below the smallest"),
        (["limits", "stripe", "--min-minor", "0"], "between 1 and"),
        (["limits", "stripe", "--max-minor", "9", "--no-max"], "not both"),
        (["list", "--country", "XX"], "no country 'XX'"),
        (["set", "DE", "deposit", "jsonpay:0,stripe"], "from 1 to 10000"),
        (["set", "DE", "deposit", "jsonpay:ten"], "from 1 to 10000"),
        (["set", "DE", "deposit", "jsonpay:10001"], "from 1 to 10000"),
        (["set", "DE", "deposit", "jsonpay,,stripe"], "empty gateway name"),
        (["set", "DE", "deposit", "jsonpay:50,stripe", "stripe"], "more than once: stripe"),
        (["explain", "DE", "deposit", "EUR", "--amount", "1.001"], "--amount"),
    ],
)
def test_refusals_exit_1_change_nothing_and_record_nothing(
    env: dict[str, str], args: list[str], message: str
) -> None:
    config_before = query(env, "SELECT * FROM gateway_countries ORDER BY 1, 2, 3")
    gateways_before = query(env, "SELECT * FROM gateways ORDER BY code")
    countries_before = query(env, "SELECT * FROM countries ORDER BY code")
    version_before = version(env)

    result = routes(env, *args)

    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("paystream: ")
    assert query(env, "SELECT * FROM gateway_countries ORDER BY 1, 2, 3") == config_before
    assert query(env, "SELECT * FROM gateways ORDER BY code") == gateways_before
    assert query(env, "SELECT * FROM countries ORDER BY code") == countries_before
    assert version(env) == version_before
    assert changes(env) == []


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    assert routes(env, "set", "DE", "refund", "stripe").exit_code == 2
    assert routes(env, "set", "DE", "deposit").exit_code == 2
    assert changes(env) == []


def test_set_routes_a_new_country_named_once(env: dict[str, str]) -> None:
    result = routes(env, "set", "es", "withdrawal", "jsonpay", "--country-name", "Spain")

    assert result.exit_code == 0, result.output
    assert query(env, "SELECT name FROM countries WHERE code = 'ES'") == [("Spain",)]
    assert table(env, "ES", "withdrawal") == [("jsonpay", 1, True)]
    assert changes(env)[0][1:3] == ("set", "ES")


def test_limits_change_every_route_of_the_gateway(env: dict[str, str]) -> None:
    shown = routes(env, "limits", "stripe")
    changed = routes(
        env, "limits", "stripe", "--currencies", "eur,GBP", "--min-minor", "100",
        "--max-minor", "500000", "--actor", "carol",
    )  # fmt: skip
    unbounded = routes(env, "limits", "stripe", "--no-max")
    listed = json.loads(routes(env, "list", "--json").output)

    assert shown.exit_code == 0
    assert "EUR,GBP,USD,BRL, amounts 1.. minor units" in shown.output
    assert changed.exit_code == 0, changed.output
    assert "stripe: EUR,GBP,USD,BRL, amounts 1.. minor units -> EUR,GBP, amounts 100..500000" in (
        changed.output
    )
    assert unbounded.exit_code == 0, unbounded.output
    assert query(
        env, "SELECT currencies, min_amount_minor, max_amount_minor FROM gateways"
        " WHERE code = 'stripe'"
    ) == [(["EUR", "GBP"], 100, None)]  # fmt: skip
    assert {
        (r["currencies"][0], r["min_amount_minor"]) for r in listed if r["gateway"] == "stripe"
    } == {("EUR", 100)}
    recorded = changes(env)
    assert [(r[0], r[1], r[4]) for r in recorded] == [
        ("carol", "limits", "stripe"),
        ("oncall", "limits", "stripe"),
    ]
    assert recorded[0][5] == {
        "currencies": ["EUR", "GBP", "USD", "BRL"],
        "min_amount_minor": 1,
        "max_amount_minor": None,
    }
    assert recorded[0][6] == {
        "currencies": ["EUR", "GBP"],
        "min_amount_minor": 100,
        "max_amount_minor": 500000,
    }


def test_history_shows_who_when_and_what_newest_first_with_filters(
    env: dict[str, str],
) -> None:
    assert routes(env, "set", "DE", "deposit", "jsonpay", "--actor", "alice").exit_code == 0
    assert routes(env, "disable", "FR", "deposit", "soapbank").exit_code == 0
    assert routes(env, "limits", "soapbank", "--max-minor", "1000").exit_code == 0

    shown = routes(env, "history")
    for_de = json.loads(routes(env, "history", "--country", "DE", "--json").output)
    for_stripe = json.loads(routes(env, "history", "--gateway", "stripe", "--json").output)
    for_soapbank = json.loads(routes(env, "history", "--gateway", "soapbank", "--json").output)
    last = json.loads(routes(env, "history", "--limit", "1", "--json").output)

    assert shown.exit_code == 0, shown.output
    lines = shown.output.strip().splitlines()
    assert lines[0].split()[:5] == ["ID", "WHEN", "(UTC)", "ACTOR", "ACTION"]
    assert [line.split()[3:5] for line in lines[1:]] == [
        ["oncall", "limits"],
        ["oncall", "disable"],
        ["alice", "set"],
    ]
    assert "DE deposit" in lines[3]
    assert "stripe, jsonpay, soapbank -> jsonpay" in lines[3]
    assert "FR deposit soapbank" in lines[2]
    assert [c["action"] for c in for_de] == ["set"]
    assert for_de[0]["actor"] == "alice"
    assert for_de[0]["changed_at"]
    assert [c["action"] for c in for_stripe] == ["set"]  # listed before the change
    assert [c["action"] for c in for_soapbank] == ["limits", "disable", "set"]
    assert [c["action"] for c in last] == ["limits"]


def test_the_history_is_append_only(env: dict[str, str]) -> None:
    assert routes(env, "disable", "FR", "deposit", "soapbank").exit_code == 0
    with psycopg.connect(libpq(env["PAYSTREAM_DATABASE_URL"])) as conn:
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE routing_changes SET actor = 'someone else'")
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM routing_changes")
        conn.rollback()
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("TRUNCATE routing_changes")


def test_the_demo_seed_keeps_what_operators_changed(env: dict[str, str]) -> None:
    assert routes(env, "set", "DE", "deposit", "soapbank").exit_code == 0
    assert routes(env, "disable", "FR", "deposit", "stripe").exit_code == 0
    assert routes(env, "limits", "jsonpay", "--currencies", "EUR").exit_code == 0

    asyncio.run(seed_demo_routing(env["PAYSTREAM_DATABASE_URL"]))  # `paystream dev` starting again

    assert table(env, "DE", "deposit") == [("soapbank", 1, True)]
    assert table(env, "FR", "deposit") == [("stripe", 1, False), ("soapbank", 2, True)]
    assert query(env, "SELECT currencies FROM gateways WHERE code = 'jsonpay'") == [(["EUR"],)]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PgPaymentStore]:
    store = PgPaymentStore(HotPool(DatabaseSettings(database_url=database_url)), SchemaRegistry())
    yield store
    await store.close()


async def test_the_workers_store_routes_by_the_change_at_its_next_unit(
    env: dict[str, str], store: PgPaymentStore
) -> None:
    tenant = uuid.uuid4()
    query(env, "INSERT INTO tenants (id, name) VALUES (%s, 't') RETURNING id", tenant)

    async def order() -> list[tuple[str, bool, frozenset[str]]]:
        async with store.unit(tenant) as unit:
            found, _ = await unit.routing("DE", TransactionType.DEPOSIT)
        ranked = sorted(found, key=lambda r: r.priority)
        return [(r.gateway, r.enabled, r.currencies) for r in ranked]

    def run(*args: str) -> None:
        result = routes(env, *args)
        assert result.exit_code == 0, result.output

    first = await order()
    assert await order() == first  # served from the store's cache
    await asyncio.to_thread(run, "set", "DE", "deposit", "soapbank", "stripe")
    swapped = await order()
    await asyncio.to_thread(run, "disable", "DE", "deposit", "soapbank")
    disabled = await order()
    await asyncio.to_thread(run, "limits", "stripe", "--currencies", "GBP")
    limited = await order()

    assert [g for g, _, _ in first] == ["stripe", "jsonpay", "soapbank"]
    assert [(g, on) for g, on, _ in swapped] == [("soapbank", True), ("stripe", True)]
    assert [(g, on) for g, on, _ in disabled] == [("soapbank", False), ("stripe", True)]
    assert limited[1][2] == frozenset({"GBP"})


def test_set_with_weights_splits_a_priority_and_is_recorded(env: dict[str, str]) -> None:
    before = version(env)

    result = routes(env, "set", "DE", "deposit", "jsonpay:70,stripe:30", "soapbank")
    listed = json.loads(
        routes(env, "list", "--country", "DE", "--type", "deposit", "--json").output
    )
    kept = routes(env, "set", "DE", "deposit", "stripe,jsonpay", "soapbank")

    assert result.exit_code == 0, result.output
    assert "stripe, jsonpay, soapbank -> jsonpay:70 + stripe:30, soapbank" in result.output
    assert [(r["gateway"], r["priority"], r["weight"]) for r in listed] == [
        ("jsonpay", 1, 70),
        ("stripe", 1, 30),
        ("soapbank", 2, 100),
    ]
    assert version(env) > before, "workers' caches refresh"
    [(_, action, _, _, _, _, after)] = changes(env)
    assert action == "set"
    assert after == [
        {"gateway": "jsonpay", "priority": 1, "enabled": True, "weight": 70},
        {"gateway": "stripe", "priority": 1, "enabled": True, "weight": 30},
        {"gateway": "soapbank", "priority": 2, "enabled": True, "weight": 100},
    ]
    # Without weights, a gateway keeps the one it had: re-listing them changes nothing.
    assert kept.exit_code == 0, kept.output
    assert "nothing changed" in kept.output
    reweighted = routes(env, "set", "DE", "deposit", "jsonpay:50,stripe:50", "soapbank")
    assert "jsonpay:70 + stripe:30, soapbank -> jsonpay:50 + stripe:50, soapbank" in (
        reweighted.output
    )
    history = routes(env, "history", "--country", "DE").output
    assert "jsonpay:70 + stripe:30, soapbank -> jsonpay:50 + stripe:50, soapbank" in history


def test_explain_ranks_as_a_worker_with_the_window_stats(env: dict[str, str]) -> None:
    assert routes(env, "set", "DE", "deposit", "jsonpay", "stripe:70,soapbank:30").exit_code == 0
    assert routes(env, "limits", "soapbank", "--max-minor", "5000").exit_code == 0
    # jsonpay: 3 of 10 final attempts succeeded in the window (2 pending ones do not count);
    # stripe: 10 of 10; an old decline of stripe's is out of the window.
    tenant, connection = uuid.uuid4(), uuid.uuid4()
    query(env, "INSERT INTO tenants (id, name) VALUES (%s, 't') RETURNING id", tenant)
    query(
        env,
        "INSERT INTO accounts (tenant_id, id, country) VALUES (%s, 'a', 'DE') RETURNING id",
        tenant,
    )
    for gateway in ("jsonpay", "stripe"):
        query(
            env,
            "INSERT INTO connections (id, tenant_id, gateway_code, code, credentials_ciphertext,"
            " credentials_key_id) VALUES (%s, %s, %s, %s, '\\x00', 'k') RETURNING id",
            uuid.uuid5(connection, gateway),
            tenant,
            gateway,
            gateway,
        )
    attempts = (
        [("jsonpay", "succeeded", 0)] * 3
        + [("jsonpay", "declined", 0)] * 7
        + [("jsonpay", "pending", 0)] * 2
        + [("stripe", "succeeded", 0)] * 10
        + [("stripe", "declined", 3600)]
    )
    for n, (gateway, status, age_s) in enumerate(attempts):
        txn = uuid.uuid4()
        query(
            env,
            "INSERT INTO transactions (id, tenant_id, account_id, type, status, amount_minor,"
            " currency, country, idempotency_key, payload_hash)"
            " VALUES (%s, %s, 'a', 'deposit', 'failed', 100, 'EUR', 'DE', %s, 'h') RETURNING id",
            txn,
            tenant,
            f"k{n}",
        )
        query(
            env,
            "INSERT INTO attempts (id, tenant_id, transaction_id, seq, gateway_code,"
            " connection_id, idempotency_key, status, finished_at, country, transaction_type)"
            " VALUES (%s, %s, %s, 1, %s, %s, %s, %s, now() - make_interval(secs => %s),"
            " 'DE', 'deposit')"
            " RETURNING id",
            uuid.uuid4(),
            tenant,
            txn,
            gateway,
            uuid.uuid5(connection, gateway),
            f"ps-{txn}-1",
            status,
            age_s,
        )
    settings = {
        **env,
        "PAYSTREAM_ROUTING_MIN_VOLUME": "10",
        "PAYSTREAM_ROUTING_HEALTH_WINDOW_S": "600",
    }

    shown = CliRunner().invoke(cli, ["routes", "explain", "de", "deposit", "eur"], env=settings)
    big = CliRunner().invoke(
        cli,
        ["routes", "explain", "DE", "deposit", "EUR", "--amount", "100.00", "--json"],
        env=settings,
    )

    assert shown.exit_code == 0, shown.output
    lines = shown.output.strip().splitlines()
    assert lines[0] == (
        "DE deposits in EUR (any amount); health over the last 600s, floor 50%, min volume 10"
    )
    assert lines[1].split() == [
        "RANK", "GATEWAY", "PRIO", "WEIGHT", "SHARE", "WINDOW", "DEMOTED", "REASON"
    ]  # fmt: skip
    assert lines[2].split()[:7] == ["1", "stripe", "2", "70", "70%", "10/10", "(100%)"]
    assert lines[2].endswith("priority 2; weight 70 of 100 (share 70%); ahead of demoted jsonpay")
    assert lines[3].split()[:6] == ["2", "soapbank", "2", "30", "30%", "-"]
    assert lines[4].split()[:8] == ["3", "jsonpay", "1", "100", "100%", "3/10", "(30%)", "yes"]
    assert lines[4].endswith("demoted: 30% of 10 succeeded in 600s < floor 50%; priority 1")
    assert big.exit_code == 0, big.output
    explained = json.loads(big.output)
    assert explained["amount_minor"] == 10000
    assert [(e["gateway"], e["demoted"], e["decision"]) for e in explained["order"]] == [
        ("stripe", False, "demoted"),
        ("jsonpay", True, "demoted"),
    ]
    assert explained["order"][0]["share"] == 1.0
    assert explained["skipped"] == [{"gateway": "soapbank", "why": "amount out of its range"}]
    assert explained["policy"] == {"success_floor": 0.5, "window_s": 600.0, "min_volume": 10}


async def test_explain_orders_ties_as_the_tenants_worker_does(
    env: dict[str, str], store: PgPaymentStore
) -> None:
    """Equal priority and weight: a worker tries the tenant's oldest connection first, and
    skips a gateway where the tenant has none. `--tenant` shows exactly that order; without
    it the tie is marked, not passed off as the order."""
    from paystream_core.ranking import HealthPolicy, rank
    from paystream_core.routing import candidates

    done = await asyncio.to_thread(
        routes, env, "set", "DE", "deposit", "jsonpay,stripe", "soapbank"
    )
    assert done.exit_code == 0, done.output
    tenant = uuid.uuid4()
    query(env, "INSERT INTO tenants (id, name) VALUES (%s, 'acme') RETURNING id", tenant)
    # stripe connected a day before jsonpay; no connection at soapbank.
    for gateway, age in (("stripe", "1 day"), ("jsonpay", "1 hour")):
        query(
            env,
            "INSERT INTO connections (id, tenant_id, gateway_code, code, credentials_ciphertext,"
            " credentials_key_id, created_at) VALUES (%s, %s, %s, 'main', '\\x00', 'k',"
            " now() - %s::interval) RETURNING id",
            uuid.uuid4(),
            tenant,
            gateway,
            age,
        )
    async with store.unit(tenant) as unit:
        found, connections = await unit.routing("DE", TransactionType.DEPOSIT)
    eligible = candidates(
        found,
        connections,
        country="DE",
        kind=TransactionType.DEPOSIT,
        currency="EUR",
        amount_minor=1000,
    )
    worker = [r.gateway for r in rank(eligible, {}, HealthPolicy(0.5, 300, 50), None)]

    def explained(*args: str) -> dict[str, Any]:
        result = routes(env, "explain", "DE", "deposit", "EUR", *args)
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output))

    mine = await asyncio.to_thread(explained, "--tenant", "acme", "--json")
    anyone = await asyncio.to_thread(explained, "--json")
    text = await asyncio.to_thread(routes, env, "explain", "DE", "deposit", "EUR")

    assert worker == ["stripe", "jsonpay"]
    assert [(e["gateway"], e["tied"]) for e in mine["order"]] == [
        ("stripe", False),
        ("jsonpay", False),
    ]
    assert mine["skipped"] == [
        {"gateway": "soapbank", "why": "the tenant has no enabled connection there"}
    ]
    assert [(e["gateway"], e["tied"]) for e in anyone["order"]] == [
        ("jsonpay", True),
        ("stripe", True),
        ("soapbank", False),
    ]
    assert "tied (jsonpay, stripe: same priority and weight)" in text.output
    unknown = await asyncio.to_thread(
        routes, env, "explain", "DE", "deposit", "EUR", "--tenant", "x"
    )
    assert unknown.exit_code == 1
    assert "no tenant 'x'" in unknown.output


def test_explain_without_routes_names_what_was_asked(env: dict[str, str]) -> None:
    query(env, "INSERT INTO countries VALUES ('PL', 'Poland') RETURNING code")
    result = routes(env, "explain", "PL", "withdrawal", "PLN")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("PL withdrawals in PLN (any amount);")
    assert lines[1] == "no gateway takes PL withdrawals in PLN: they are rejected"
