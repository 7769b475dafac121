"""Typed errors. The gateway-call split (design.md §3) is the one that moves money:

- `NotExecuted`: the provider certainly did not act on the request (nothing reached it, it
  refused before processing, our breaker is open). Safe to try the next gateway.
- `Ambiguous`: it may have executed (timeout after sending, 5xx, connection lost mid-way,
  unreadable answer). Retry the same gateway with the same key, then look up the status;
  never fall back while it is unresolved.

Messages never carry credentials; provider messages are passed through as they are (the
providers mask keys themselves).
"""

from __future__ import annotations

import uuid
from enum import StrEnum


class NotExecutedReason(StrEnum):
    CONNECT_FAILED = "connect_failed"  # refused, DNS, connect timeout: nothing was sent
    BREAKER_OPEN = "breaker_open"  # raised by the resilience layer, never by an adapter
    REJECTED = "rejected"  # the provider refused the request before processing it
    UNAUTHORIZED = "unauthorized"  # our credentials were refused
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # the provider documents the answer as "not processed"


class AmbiguousReason(StrEnum):
    TIMEOUT = "timeout"  # sent, no answer in time
    SERVER_ERROR = "server_error"  # 5xx without a "not processed" guarantee
    CONNECTION_LOST = "connection_lost"  # reset or closed mid-request/response
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"  # our key was already used: it may have run
    BAD_RESPONSE = "bad_response"  # an answer we cannot read


class GatewayError(Exception):
    """Base of the errors a gateway call raises."""

    def __init__(
        self,
        provider: str,
        reason: str,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"{provider}: {reason}: {message}")
        self.provider = provider
        self.reason = reason
        self.message = message
        self.code = code
        self.http_status = http_status


class NotExecuted(GatewayError):
    reason: NotExecutedReason

    def __init__(
        self,
        provider: str,
        reason: NotExecutedReason,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(provider, reason, message, code=code, http_status=http_status)


class Ambiguous(GatewayError):
    reason: AmbiguousReason

    def __init__(
        self,
        provider: str,
        reason: AmbiguousReason,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(provider, reason, message, code=code, http_status=http_status)


class CallbackRejected(Exception):
    """A callback that must not be acted on. `reason`: signature | stale (refuse it),
    malformed (keep it as an anomaly), unsupported (a valid event we do not use: drop it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"callback rejected ({reason}): {message}")
        self.reason = reason


# --- Building a gateway from a connection ---------------------------------------------


class GatewaySetupError(Exception):
    """Base of the errors the gateway manager and the connection repository raise."""


class ConnectionNotFound(GatewaySetupError):
    def __init__(self, connection: uuid.UUID | str) -> None:
        super().__init__(f"no connection {connection} for this tenant")
        self.connection = connection


class ConnectionDisabled(GatewaySetupError):
    def __init__(self, connection: uuid.UUID) -> None:
        super().__init__(f"connection {connection} is disabled")
        self.connection = connection


class UnsupportedProvider(GatewaySetupError):
    def __init__(self, provider: str, known: list[str]) -> None:
        super().__init__(
            f"no gateway factory registered for provider {provider!r}"
            f" (registered: {', '.join(known) or 'none'})"
        )
        self.provider = provider


class CredentialsUndecryptable(GatewaySetupError):
    def __init__(self, connection: uuid.UUID, reason: str) -> None:
        super().__init__(f"credentials of connection {connection} cannot be decrypted: {reason}")
        self.connection = connection


class InvalidCredentials(GatewaySetupError):
    """Credentials that do not fit the provider's fields (names only, never values)."""


class GatewayNotFound(GatewaySetupError):
    def __init__(self, gateway_code: str) -> None:
        super().__init__(f"no gateway {gateway_code!r} configured")
        self.gateway_code = gateway_code


class ConnectionExists(GatewaySetupError):
    def __init__(self, gateway_code: str, code: str) -> None:
        super().__init__(f"connection {gateway_code}/{code} already exists for this tenant")
