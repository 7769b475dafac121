"""The reconciler's (and callback worker's) provider clients count their resends."""

from __future__ import annotations

from paystream_provider_reports.main import client_options
from paystream_provider_reports.metrics import CallbackMetrics


def test_lookup_resends_are_counted_per_provider() -> None:
    metrics = CallbackMetrics()
    options = client_options(metrics)
    assert options.on_resend is not None

    options.on_resend("json")
    options.on_resend("json")

    def resends(provider: str) -> float | None:
        return metrics.registry.get_sample_value(
            "paystream_gateway_lookup_resends_total", {"provider": provider}
        )

    assert (resends("json"), resends("stripe")) == (2.0, None)
