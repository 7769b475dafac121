"""What a provider said about one attempt, as plain values.

A call either returns an `Outcome` (the provider answered and we know what it did) or fails
in one of two ways that decide whether fallback is safe (design.md §3):

- `NotExecutedCall`: the provider certainly did not act on the request (nothing reached it,
  it refused before processing, our breaker is open). The next gateway may be tried.
- `AmbiguousCall`: it may have executed (timeout after sending, 5xx, connection lost,
  unreadable answer). Never fall back while that is unresolved.

Gateway adapters raise `paystream_gateways.NotExecuted` / `Ambiguous`; the worker turns them
into these values before the policy (`paystream_core.attempts`) decides.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Succeeded:
    provider_reference: str


@dataclass(frozen=True, slots=True)
class Pending:
    """Accepted; the final result arrives by callback (or a later status lookup)."""

    provider_reference: str


@dataclass(frozen=True, slots=True)
class ActionRequired:
    """The customer must act (3-D Secure, bank login) at `redirect_url`."""

    provider_reference: str
    redirect_url: str


@dataclass(frozen=True, slots=True)
class Declined:
    """The provider refused. `retry_elsewhere`: another gateway may still succeed (soft
    decline); False means the answer holds everywhere (insufficient funds, fraud...)."""

    code: str
    message: str
    retry_elsewhere: bool
    provider_reference: str | None = None


Outcome = Succeeded | Pending | ActionRequired | Declined


@dataclass(frozen=True, slots=True)
class NotFound:
    """The provider has no record of the attempt.

    `conclusive` is True only when the lookup is strongly consistent (a list/lookup by our
    reference), so absence proves the attempt never executed. Eventually consistent lookups
    (Stripe search) return False: the caller must not fall back on that alone.
    """

    conclusive: bool


StatusResult = Outcome | NotFound


@dataclass(frozen=True, slots=True)
class NotExecutedCall:
    """The call provably did not execute; `reason` is machine-readable (connect_failed,
    breaker_open, rejected, ...), `message` is for people."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class AmbiguousCall:
    """The call may have executed; `reason` is machine-readable (timeout, server_error...)."""

    reason: str
    message: str


CallResult = Outcome | NotExecutedCall | AmbiguousCall
