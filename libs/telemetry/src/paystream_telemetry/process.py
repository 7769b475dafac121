"""What every paystream process sets up first: its log format and, if configured, tracing."""

from __future__ import annotations

from paystream_telemetry.logs import setup_logging
from paystream_telemetry.tracing import setup_tracing


def setup_process(process: str) -> bool:
    """Logs and tracing of this process, from the environment; returns whether tracing is
    on. Safe to call again (a server's worker process calls it from its app factory after
    the CLI did in the parent)."""
    setup_logging(process)
    return setup_tracing(process)
