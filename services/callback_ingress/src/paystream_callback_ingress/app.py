"""The callback ingress: verify, publish, answer; every callback kept in the callback log.

A 2xx is sent only once Kafka acknowledged the record, so a callback the provider was told
we have is never lost; a Kafka outage answers 503 and the provider retries later. Nothing
about a callback is acted on here: the callback worker does that from the topic.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from paystream_callback_ingress.deps import IngressDeps
from paystream_callback_ingress.openapi import build_openapi
from paystream_callback_ingress.problems import Problem
from paystream_gateways.callbacks import callback_gateway
from paystream_gateways.errors import CallbackRejected, ConnectionNotFound, GatewaySetupError
from paystream_gateways.protocol import CallbackEvent
from paystream_messaging import topics
from paystream_messaging.async_publisher import PublishFailed
from paystream_messaging.callbacks import CallbackReceived
from paystream_messaging.cloudevents_codec import Event, encode
from paystream_storage.callback_log import CallbackLogEntry
from paystream_storage.config_cache import poll_version
from paystream_storage.errors import TRANSIENT_DB_ERRORS
from paystream_telemetry.tracing import span, traceparent_of, tracing_on
from paystream_telemetry.web import add_tracing
from paystream_web.edge import DirectRoute, EdgeMiddleware
from paystream_web.lifespan import closing_lifespan
from paystream_web.service import (
    add_operations_routes,
    install_problem_handlers,
    read_limited_body,
)

log = logging.getLogger(__name__)

SOURCE = "/paystream/callback-ingress"
# Headers worth keeping with a callback: its signature and how to read it. Everything
# else (cookies, proxies' forwarding headers, auth of other systems) is dropped.
_KEPT_HEADERS = frozenset({"content-type", "user-agent", "soapaction", "request-id"})
_MAX_HEADER_VALUE = 8192
# The gateway codes of the schemas (paystream.transaction.common.json#/$defs/gateway).
GATEWAY_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CALLBACK_ROUTE = "/v1/callbacks/{gateway}/{connection_id}"


def create_app(deps: IngressDeps) -> FastAPI:
    lifespan = closing_lifespan(
        "callback-ingress",
        log,
        deps.publisher,
        deps.sessions,
        deps.gateways.aclose,
        deps.pool.close,
        background=[
            lambda: poll_version(deps.engine, deps.config, deps.settings.callback_config_poll_s)
        ],
    )
    app = FastAPI(
        lifespan=lifespan,
        title="paystream callback ingress",
        version="1.0.0",
        description="Provider callbacks, verified and acknowledged once Kafka has them.",
        docs_url=None,
        redoc_url=None,
    )

    install_problem_handlers(
        app,
        Problem,
        unavailable=TRANSIENT_DB_ERRORS,
        retry_after_s=deps.settings.callback_retry_after_s,
    )

    @app.post(CALLBACK_ROUTE, operation_id="receiveCallback")
    async def receive(request: Request, gateway: str, connection_id: str) -> Response:
        return await _receive(deps, request, gateway, connection_id)

    async def receive_direct(request: Request) -> Response:
        params = request.path_params
        return await _receive(deps, request, params["gateway"], params["connection_id"])

    add_operations_routes(
        app,
        kafka_ping=deps.publisher.ping,
        sessions=deps.sessions,
        registry=deps.metrics.registry,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, GATEWAY_CODE.pattern)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(
        EdgeMiddleware,
        requests=deps.metrics.requests,
        latency=deps.metrics.latency,
        routes=app.router.routes,
        handlers=app.exception_handlers,
        # Callbacks are the volume: called straight from the edge (see paystream_web.edge).
        direct=[DirectRoute(CALLBACK_ROUTE, receive_direct)],
    )
    add_tracing(app)  # outermost: the request's span covers the metrics middleware too
    return app


async def _receive(deps: IngressDeps, request: Request, gateway: str, raw_id: str) -> Response:
    body = await read_limited_body(request, deps.settings.callback_max_body_bytes, Problem)
    try:
        connection_id = uuid.UUID(raw_id)
    except ValueError:
        connection_id = None
    # A gateway code that no gateway can have (a NUL would even fail the lookup's query)
    # is an unknown connection like any other.
    known_shape = GATEWAY_CODE.fullmatch(gateway) is not None
    tenant = (
        None
        if connection_id is None or not known_shape
        else await deps.tenants.tenant_of(deps.sessions, connection_id, gateway)
    )
    if connection_id is None or tenant is None:
        deps.metrics.callbacks.labels("unknown", "unknown_connection").inc()
        log.warning("callback for unknown connection %r/%r refused", gateway[:64], raw_id[:64])
        raise Problem("unknown-connection", f"no connection {raw_id!r} for gateway {gateway!r}")
    try:
        _, client = await callback_gateway(deps.gateways, deps.connections, tenant, connection_id)
    except ConnectionNotFound:
        raise Problem("unknown-connection", f"no connection {raw_id!r}") from None
    except GatewaySetupError as exc:
        # Our side cannot verify (credentials undecryptable, provider not registered...):
        # not the provider's fault, so it must retry once an operator fixed it.
        log.error("callback for connection %s cannot be verified: %s", connection_id, exc)
        deps.metrics.callbacks.labels(gateway, "connection_unavailable").inc()
        raise Problem(
            "connection-unavailable",
            "the connection cannot verify callbacks right now",
            headers={"Retry-After": str(deps.settings.callback_retry_after_s)},
        ) from None
    headers = _kept_headers(request.headers)
    received = CallbackReceived(gateway, connection_id, tenant, datetime.now(UTC), body, headers)

    async def verdict(name: str, reason: str | None, event_id: str | None = None) -> None:
        deps.metrics.callbacks.labels(gateway, name).inc()
        await _log_callback(deps, received, name, reason, event_id)

    try:
        client.verify_callback(request.headers, body)
    except CallbackRejected as exc:
        await verdict(f"rejected_{exc.reason}", str(exc))
        kind = {"stale": "stale-signature", "malformed": "malformed-callback"}.get(
            exc.reason, "invalid-signature"
        )
        raise Problem(kind, str(exc)) from None
    try:
        event = client.parse_callback(body)
    except CallbackRejected as exc:
        if exc.reason == "unsupported":  # signed by the provider, but nothing we act on
            await verdict("ignored", str(exc))
            return JSONResponse({"status": "ignored"})
        await verdict("rejected_malformed", str(exc))
        raise Problem("malformed-callback", str(exc)) from None
    try:
        await _publish(deps, received, event)
    except PublishFailed as exc:
        await verdict("broker_unavailable", exc.reason, event.event_id)
        raise Problem(
            "broker-unavailable",
            "the callback could not be stored; retry later",
            headers={"Retry-After": str(deps.settings.callback_retry_after_s)},
        ) from None
    await verdict("accepted", None, event.event_id)
    return JSONResponse({"status": "accepted", "event_id": event.event_id})


def partition_key(event: CallbackEvent) -> str:
    """Callbacks about one payment share a key (and so a partition, in order)."""
    return event.provider_reference or event.reference or event.event_id


async def _publish(deps: IngressDeps, received: CallbackReceived, event: CallbackEvent) -> None:
    cloud_event = received.to_event(source=SOURCE, partition_key=partition_key(event))
    topic = deps.settings.topic(topics.CALLBACKS)
    if not tracing_on():
        await _publish_event(deps, topic, cloud_event)
        return
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "paystream.gateway": received.gateway,
        "paystream.connection_id": str(received.connection_id),
        "paystream.tenant_id": str(received.tenant_id),
    }
    with span(f"publish {topic}", kind="producer", attributes=attributes) as publishing:
        assert publishing is not None
        # The callback worker's span continues this trace (the callback's request span).
        traced = dataclasses.replace(cloud_event, traceparent=traceparent_of(publishing))
        await _publish_event(deps, topic, traced)


async def _publish_event(deps: IngressDeps, topic: str, cloud_event: Event) -> None:
    record = encode(cloud_event, deps.registry)
    timeout_s = deps.settings.callback_publish_timeout_ms / 1000
    await deps.publisher.publish(topic, record, deadline_s=timeout_s + 1)


async def _log_callback(
    deps: IngressDeps,
    received: CallbackReceived,
    verdict: str,
    reason: str | None,
    event_id: str | None,
) -> None:
    """The audit trail of every callback from a known connection. Best effort: an accepted
    callback is already safe in Kafka, so a failed log write does not fail the request."""
    body, encoding = received.encoded_body()
    entry = CallbackLogEntry(
        tenant_id=received.tenant_id,
        connection_id=received.connection_id,
        gateway_code=received.gateway,
        provider_event_id=event_id[:255] if event_id else None,
        verdict=verdict,
        reason=(reason or "")[:2000] or None,
        headers=dict(received.headers),
        body=body if encoding == "utf-8" else f"base64:{body}",
    )
    try:
        await deps.callback_log.write(entry)
    except Exception:
        log.exception("callback log write failed (verdict %s)", verdict)


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    kept = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _KEPT_HEADERS or "signature" in lowered:
            kept[lowered] = value[:_MAX_HEADER_VALUE]
    return kept
