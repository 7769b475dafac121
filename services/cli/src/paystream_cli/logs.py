"""One log format for every paystream process: text (timestamp, level, process, logger,
message) by default, JSON lines with `PAYSTREAM_LOG_FORMAT=json` (paystream_telemetry)."""

from __future__ import annotations

from paystream_telemetry.logs import setup_logging


def setup(process: str) -> None:
    setup_logging(process)
