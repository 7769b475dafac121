"""`paystream bench e2e`: PostgreSQL's CPU split by the service each backend serves."""

from __future__ import annotations

from paystream_cli.bench_e2e import Mark, _Seen, usage
from paystream_cli.bench_pg_clients import SERVER, PgClients


def _mark(at: float, procs: dict[tuple[int, float], _Seen]) -> Mark:
    return Mark(at=at, machine=(0.0, 0.0), procs=procs)


def test_postgresql_cpu_is_split_by_client_and_adds_up() -> None:
    gateway, relay, postmaster, joined = (10, 1.0), (11, 1.0), (1, 0.5), (12, 5.0)
    begin = _mark(
        2.0,
        {
            gateway: _Seen("postgresql", 1.0, 2.0, "paystream-gateway-worker"),
            relay: _Seen("postgresql", 0.5, 2.0, "paystream-relay"),
            postmaster: _Seen("postgresql", 3.0, 2.0, SERVER),
        },
    )
    end = _mark(
        9.0,
        {
            gateway: _Seen("postgresql", 1.75, 9.0, "paystream-gateway-worker"),
            relay: _Seen("postgresql", 0.625, 9.0, "paystream-relay"),
            postmaster: _Seen("postgresql", 3.0, 9.0, SERVER),
            # a backend that connected during the window counts from zero
            joined: _Seen("postgresql", 0.25, 9.0, "paystream-gateway-worker"),
        },
    )
    pg = usage(begin, end)["postgresql"]
    assert pg.by_client == {
        "paystream-gateway-worker": 1.0,
        "paystream-relay": 0.125,
        SERVER: 0.0,
    }
    assert sum(pg.by_client.values()) == pg.cpu_s
    assert pg.processes == 4
    assert pg.new_processes == 1


def test_processes_other_than_postgresql_are_not_split() -> None:
    key = (20, 1.0)
    begin = _mark(1.0, {key: _Seen("relay", 1.0, 1.0)})
    end = _mark(2.0, {key: _Seen("relay", 1.5, 2.0)})
    assert usage(begin, end)["relay"].by_client == {}


def test_a_database_that_cannot_be_asked_puts_everything_under_the_server() -> None:
    clients = PgClients("postgresql+psycopg://postgres@127.0.0.1:1/paystream")
    assert clients.name(4242, 1.0) == SERVER
    assert clients.name(4243, 1.0) == SERVER  # not asked again: the bench measures on
    clients.close()
