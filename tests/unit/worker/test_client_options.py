"""The worker's provider clients: their timeouts come from the settings, and a resend on
another connection is counted per provider."""

from __future__ import annotations

from paystream_gateway_worker.main import client_options
from paystream_gateway_worker.metrics import WorkerMetrics
from paystream_gateway_worker.settings import GatewayWorkerSettings


def test_resends_are_counted_per_provider() -> None:
    settings = GatewayWorkerSettings(
        database_url="postgresql://x@h/d",
        kafka_bootstrap="h:1",
        gateway_connect_timeout_s=1.5,
        gateway_read_timeout_s=9.0,
    )
    metrics = WorkerMetrics()
    options = client_options(settings, metrics)
    assert (options.connect_timeout_s, options.read_timeout_s) == (1.5, 9.0)
    assert options.on_resend is not None

    options.on_resend("stripe")
    options.on_resend("stripe")
    options.on_resend("soap")

    def resends(provider: str) -> float | None:
        return metrics.registry.get_sample_value(
            "paystream_worker_gateway_resends_total", {"provider": provider}
        )

    assert (resends("stripe"), resends("soap"), resends("json")) == (2.0, 1.0, None)
