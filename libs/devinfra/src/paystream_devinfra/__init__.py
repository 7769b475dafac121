"""paystream_devinfra: embedded Kafka-protocol broker and PostgreSQL for dev and tests."""

from paystream_devinfra.kafka import EmbeddedKafka, resolve_tansu_binary
from paystream_devinfra.postgres import EmbeddedPostgres, RestartReport, postgres_bin_dir
from paystream_devinfra.processes import (
    ChildProcess,
    EmbeddedStartError,
    free_port,
    port_accepts_connections,
    wait_until_ready,
)
from paystream_devinfra.supervisor import RestartBackoff, Supervised, Supervisor

__all__ = [
    "ChildProcess",
    "EmbeddedKafka",
    "EmbeddedPostgres",
    "EmbeddedStartError",
    "RestartBackoff",
    "RestartReport",
    "Supervised",
    "Supervisor",
    "free_port",
    "port_accepts_connections",
    "postgres_bin_dir",
    "resolve_tansu_binary",
    "wait_until_ready",
]
