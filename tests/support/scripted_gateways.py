"""Scripted payment gateways for the worker tests: answers per call from a script, every
call's idempotency key recorded, plus a collecting dead-letter sink."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from paystream_gateways.errors import Ambiguous, AmbiguousReason, NotExecuted, NotExecutedReason
from paystream_gateways.protocol import (
    CallbackEvent,
    Gateway,
    Outcome,
    PaymentRequest,
    StatusQuery,
    StatusResult,
    Succeeded,
)
from paystream_streams.records import RawRecord

Script = Callable[[PaymentRequest], Outcome]


@dataclass
class ScriptedGateway:
    """Answers per call from `script`; records every call's idempotency key."""

    name: str
    script: Script
    lookup: Callable[[StatusQuery], StatusResult] | None = None
    calls: list[str] = field(default_factory=list)
    requests: list[PaymentRequest] = field(default_factory=list)
    # Runs while the call is in flight (no unit is open then): a callback racing the answer.
    meanwhile: Callable[[PaymentRequest], Awaitable[None]] | None = None

    @property
    def provider(self) -> str:
        return self.name

    async def deposit(self, request: PaymentRequest) -> Outcome:
        return await self._call(request)

    async def withdraw(self, request: PaymentRequest) -> Outcome:
        return await self._call(request)

    async def _call(self, request: PaymentRequest) -> Outcome:
        self.calls.append(request.idempotency_key)
        self.requests.append(request)
        if self.meanwhile is not None:
            await self.meanwhile(request)
        return self.script(request)

    async def status(self, query: StatusQuery) -> StatusResult:
        assert self.lookup is not None, "unexpected status lookup"
        return self.lookup(query)

    def verify_callback(self, headers: Any, body: bytes, *, now: float | None = None) -> None:
        raise NotImplementedError

    def parse_callback(self, body: bytes) -> CallbackEvent:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@dataclass
class Lookup:
    by_connection: dict[uuid.UUID, ScriptedGateway]

    async def get(self, tenant_id: uuid.UUID, connection_id: uuid.UUID) -> Gateway:
        return self.by_connection[connection_id]


@dataclass
class CollectedDeadLetters:
    records: list[tuple[RawRecord, str]] = field(default_factory=list)

    async def send(self, record: RawRecord, reason: str) -> None:
        self.records.append((record, reason))

    @property
    def reasons(self) -> list[str]:
        return [reason.split(":", 1)[0] for _, reason in self.records]


def never(_: PaymentRequest) -> Outcome:
    raise AssertionError("this gateway must not be called")


def ok(request: PaymentRequest) -> Outcome:
    return Succeeded(f"ref-{request.idempotency_key}")


def refused(request: PaymentRequest) -> Outcome:
    raise NotExecuted("gw", NotExecutedReason.CONNECT_FAILED, "connection refused")


def timeout(request: PaymentRequest) -> Outcome:
    raise Ambiguous("gw", AmbiguousReason.TIMEOUT, "read timeout after sending")
