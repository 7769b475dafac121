"""What routing remembers in one worker process between commands."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from paystream_gateway_worker.settings import GatewayWorkerSettings


class RoutingState:
    """Per-process routing memory, built with the worker's deps."""

    def __init__(self, settings: GatewayWorkerSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
