"""Tracing and structured logs for every paystream process.

- `tracing`: OpenTelemetry, off unless an exporter is configured (`OTEL_*`,
  `PAYSTREAM_TRACE_FILE`); spans parented by the CloudEvents `traceparent`.
- `logs`: text or JSON log lines (`PAYSTREAM_LOG_FORMAT`), with `log_context`.
- `carry`: the traceparent an outbox row keeps, per transaction.
- `spanfile`: finished spans as JSON lines, the tests' exporter.
"""

from paystream_telemetry.logs import log_context, setup_logging
from paystream_telemetry.process import setup_process
from paystream_telemetry.tracing import setup_tracing, tracing_on

__all__ = ["log_context", "setup_logging", "setup_process", "setup_tracing", "tracing_on"]
