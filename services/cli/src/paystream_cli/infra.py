"""Kafka and PostgreSQL for a command: the configured ones, or embedded ones it starts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from paystream_devinfra import EmbeddedKafka, EmbeddedPostgres


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    database_url: str
    # The embedded servers this command started (None when configured ones are used),
    # for a supervisor to watch.
    kafka: EmbeddedKafka | None = None
    postgres: EmbeddedPostgres | None = None


# An embedded database starts empty and fills fast, and the workers' prepared statements
# are planned on the statistics of the moment. Planned on empty tables, the row-set
# updates hash-join over every row of the tenant and the callback lookup scans all
# attempts, until autovacuum's next ANALYZE (its default naptime is a minute) makes them
# replan: a fresh stack spent 15 ms of PostgreSQL CPU per payment at 50/s instead of 7,
# growing with the tables. Looking every second keeps the statistics as representative as
# those of a database that has been running for a while (ANALYZE of a small table is
# cheap; a large one is analyzed after 10% more rows, the default scale factor).
EMBEDDED_SETTINGS: Final[Mapping[str, str]] = {"autovacuum_naptime": "1s"}


def open_infra(stack: contextlib.ExitStack, home: Path, *, fsync: bool = True) -> Infra:
    """Use PAYSTREAM_KAFKA_BOOTSTRAP / PAYSTREAM_DATABASE_URL when set, else start embedded
    servers whose lifetime is tied to `stack` (logs and PostgreSQL data under `home`)."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kafka: EmbeddedKafka | None = None
    pg: EmbeddedPostgres | None = None
    bootstrap = os.environ.get("PAYSTREAM_KAFKA_BOOTSTRAP")
    if not bootstrap:
        kafka = stack.enter_context(EmbeddedKafka(log_path=logs / "kafka.log"))
        bootstrap = kafka.bootstrap
    database_url = os.environ.get("PAYSTREAM_DATABASE_URL")
    if not database_url:
        pg = EmbeddedPostgres(
            home / "pg",
            log_path=logs / "postgres.log",
            database="paystream",
            fsync=fsync,
            settings=EMBEDDED_SETTINGS,
        )
        database_url = stack.enter_context(pg).url
    return Infra(bootstrap, database_url, kafka, pg)
