"""Provider-neutral sandbox machinery: accounts, fault controls, idempotency records, the
ledger of executed payments, outcome decisions and signed callback delivery.

The provider modules (stripe_api, jsonpay_api, soapbank_api) only translate wire formats;
everything that decides what happens lives here, so the three behave alike under a fault.
All state is in memory and lives on one event loop: no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx
from pydantic import BaseModel, Field

from paystream_sandbox.settings import SandboxSettings

log = logging.getLogger(__name__)

PROVIDERS = ("stripe", "json", "soap")
Provider = Literal["stripe", "json", "soap"]
SCENARIO_KEY = "sandbox_scenario"

PaymentStatus = Literal["succeeded", "pending", "action_required", "declined"]
FINAL: frozenset[str] = frozenset({"succeeded", "declined"})


class Faults(BaseModel):
    """Fault controls for one provider (PUT /_sandbox/faults/{provider})."""

    latency_ms: int = Field(default=0, ge=0, le=60_000)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)  # 5xx before executing
    down: bool = False  # every call refused with the provider's "unavailable" answer
    timeout: bool = False  # execute, then hold the answer (the client times out)
    timeout_hold_ms: int | None = Field(default=None, ge=0, le=600_000)
    decline_code: str | None = None  # decline every payment with this code
    # Decline this fraction of new payments (with `decline_rate_code`), spread evenly rather
    # than drawn at random, so a test that sends N payments sees exactly round(N * rate).
    decline_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    decline_rate_code: str = Field(default="do_not_honor", pattern=r"^[a-z0-9_.]{1,64}$")
    default_outcome: Literal["succeeded", "pending", "action_required"] = "succeeded"
    duplicate_callbacks: bool = False  # deliver every callback twice
    out_of_order_callbacks: bool = False  # deliver the final callback before earlier ones
    callback_delay_ms: int | None = Field(default=None, ge=0, le=600_000)
    settle_delay_ms: int | None = Field(default=None, ge=0, le=3_600_000)
    auto_settle: bool = True  # False: pending payments wait for POST /_sandbox/settle


@dataclass
class Account:
    provider: str
    account: str
    api_secret: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None


@dataclass
class Payment:
    """One execution at the provider: what the ledger counts."""

    id: str
    provider: str
    account: str
    kind: Literal["deposit", "withdrawal"]
    reference: str | None
    idempotency_key: str | None
    amount_minor: int
    currency: str
    status: PaymentStatus
    created: int
    country: str | None = None
    payment_method: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    destination: dict[str, str] = field(default_factory=dict)
    failure_code: str | None = None
    failure_message: str | None = None
    redirect_url: str | None = None
    settle_to: tuple[PaymentStatus, str | None] | None = None
    extra: dict[str, str] = field(default_factory=dict)  # provider-specific fields
    held_events: list[Event] = field(default_factory=list)

    def ledger_entry(self) -> dict[str, object]:
        return {
            "id": self.id,
            "provider": self.provider,
            "account": mask(self.account),
            "kind": self.kind,
            "reference": self.reference,
            "idempotency_key": self.idempotency_key,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "status": self.status,
            "failure_code": self.failure_code,
            "created": self.created,
            # Where a payout went when the provider names an account (a Stripe connected
            # account); bank details are not echoed.
            "destination": self.destination.get("account"),
            "reversed": self.extra.get("reversed") == "true",
        }


@dataclass(frozen=True)
class Event:
    event_id: str
    provider: str
    account: str
    payment_id: str
    reference: str | None
    event_type: str
    body: bytes
    due: float = 0.0


@dataclass
class StoredResponse:
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _IdemRecord:
    fingerprint: str
    response: StoredResponse | None = None  # None while the first request is executing


@dataclass(frozen=True)
class Decision:
    status: PaymentStatus
    failure_code: str | None = None
    settle_to: tuple[PaymentStatus, str | None] | None = None
    timeout: bool = False
    error_after_execute: bool = False


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class ErrorShapes:
    """How one provider spells the answers the shared write pipeline can give."""

    unavailable: Callable[[], StoredResponse]
    server_error: Callable[[], StoredResponse]
    idempotency_mismatch: Callable[[str], StoredResponse]
    idempotency_in_progress: Callable[[str], StoredResponse]
    invalid: Callable[[str], StoredResponse]
    replay_header: tuple[str, str] = ("Idempotent-Replayed", "true")


@dataclass(frozen=True)
class ProviderHooks:
    render_event: Callable[[Payment], tuple[str, str, bytes]]  # -> event id, type, body
    sign: Callable[[bytes, str], dict[str, str]]  # body, webhook secret -> headers
    media_type: str


def mask(account: str) -> str:
    """Stripe accounts are identified by their secret key: never echo one whole."""
    if account.startswith(("sk_", "rk_")) and len(account) > 12:
        return f"{account[:8]}...{account[-4:]}"
    return account


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def parse_scenario(value: str | None) -> Decision | Literal["down", "error"] | None:
    """metadata[sandbox_scenario] -> what to do. None: no scenario given."""
    if not value:
        return None
    if value in ("down", "error_500"):
        return "down" if value == "down" else "error"
    if value in ("succeed", "success", "succeeded"):
        return Decision("succeeded")
    if value == "pending":
        return Decision("pending", settle_to=("succeeded", None))
    if value in ("pending_fail", "pending_then_fail"):
        return Decision("pending", settle_to=("declined", "insufficient_funds"))
    if value.startswith("pending_decline_"):
        return Decision("pending", settle_to=("declined", value.removeprefix("pending_decline_")))
    if value == "action_required":
        return Decision("action_required")
    if value.startswith("decline_") and len(value) > len("decline_"):
        return Decision("declined", failure_code=value.removeprefix("decline_"))
    if value == "timeout":
        return Decision("succeeded", timeout=True)
    if value == "error_after_execute":
        return Decision("succeeded", error_after_execute=True)
    raise ScenarioError(f"unknown {SCENARIO_KEY} {value!r}")


class Sandbox:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.accounts: dict[tuple[str, str], Account] = {}
        self.faults: dict[str, Faults] = {p: Faults() for p in PROVIDERS}
        self.payments: dict[str, Payment] = {}
        self.deliveries: list[dict[str, object]] = []
        self.hooks: dict[str, ProviderHooks] = {}
        self._idempotency: dict[tuple[str, str, str], _IdemRecord] = {}
        self._rng = random.Random(settings.seed)
        self._queues: dict[tuple[str, str], asyncio.Queue[Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._release: asyncio.Event | None = None
        # Write calls received per provider, refused ones included (GET /_sandbox/calls):
        # what a circuit breaker is meant to save a provider from.
        self.calls: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        self._declinable: dict[str, int] = dict.fromkeys(PROVIDERS, 0)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.settings.callback_timeout_s)
        self._release = asyncio.Event()

    async def stop(self) -> None:
        self._cancel_tasks()
        if self._release is not None:
            self._release.set()
        if self._http is not None:
            await self._http.aclose()

    def reset(self, *, accounts: bool) -> None:
        """Forget payments, idempotency, deliveries and faults (and accounts if asked)."""
        self._cancel_tasks()
        if self._release is not None:
            self._release.set()  # wake requests held by the timeout fault
            self._release = asyncio.Event()
        self.payments.clear()
        self.deliveries.clear()
        self._idempotency.clear()
        self.faults = {p: Faults() for p in PROVIDERS}
        self.calls = dict.fromkeys(PROVIDERS, 0)
        self._declinable = dict.fromkeys(PROVIDERS, 0)
        if accounts:
            self.accounts.clear()

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._queues.clear()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- accounts and faults ------------------------------------------------------------

    def account(self, provider: str, account: str) -> Account | None:
        return self.accounts.get((provider, account))

    def upsert_account(self, account: Account) -> Account:
        self.accounts[(account.provider, account.account)] = account
        return account

    def fault(self, provider: str) -> Faults:
        return self.faults[provider]

    def _delay_s(self, provider: str, which: Literal["callback", "settle", "hold"]) -> float:
        f = self.faults[provider]
        if which == "callback":
            ms = f.callback_delay_ms
            default = self.settings.callback_delay_ms
        elif which == "settle":
            ms = f.settle_delay_ms
            default = self.settings.settle_delay_ms
        else:
            ms = f.timeout_hold_ms
            default = self.settings.timeout_hold_ms
        return (default if ms is None else ms) / 1000

    async def simulate_latency(self, provider: str) -> None:
        latency = self.faults[provider].latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)  # emulated network latency, not a sync point

    # --- the write pipeline -------------------------------------------------------------

    async def write(
        self,
        *,
        provider: str,
        account: str,
        idempotency_key: str | None,
        fingerprint: str,
        scenario: str | None,
        default: Decision,
        shapes: ErrorShapes,
        execute: Callable[[Decision], StoredResponse],
    ) -> StoredResponse:
        """Faults, idempotency and execution, in the order a real provider applies them."""
        faults = self.faults[provider]
        self.calls[provider] += 1
        await self.simulate_latency(provider)
        try:
            parsed = parse_scenario(scenario)
        except ScenarioError as exc:
            return shapes.invalid(str(exc))
        if faults.down or parsed == "down":
            return shapes.unavailable()
        if parsed == "error" or (faults.error_rate and self._rng.random() < faults.error_rate):
            return shapes.server_error()  # refused before executing: nothing stored
        slot = (provider, account, idempotency_key) if idempotency_key else None
        if slot is not None:
            record = self._idempotency.get(slot)
            if record is not None:
                if record.fingerprint != fingerprint:
                    return shapes.idempotency_mismatch(idempotency_key or "")
                if record.response is None:
                    return shapes.idempotency_in_progress(idempotency_key or "")
                replay = record.response
                name, value = shapes.replay_header
                return StoredResponse(
                    replay.status, replay.body, replay.media_type, {**replay.headers, name: value}
                )
            self._idempotency[slot] = _IdemRecord(fingerprint)
        decision = (
            parsed if isinstance(parsed, Decision) else self._default(provider, faults, default)
        )
        try:
            response = execute(decision)
        except BaseException:
            if slot is not None:
                self._idempotency.pop(slot, None)
            raise
        if slot is not None:
            self._idempotency[slot].response = response
        if decision.timeout or faults.timeout:
            await self._hold(self._delay_s(provider, "hold"))
        if decision.error_after_execute:
            return shapes.server_error()
        return response

    def _default(self, provider: str, faults: Faults, default: Decision) -> Decision:
        if faults.decline_code:
            return Decision("declined", failure_code=faults.decline_code)
        if faults.decline_rate:
            # The n-th payment is declined when n * rate crosses an integer: exactly
            # round(N * rate) of N, evenly spread.
            n = self._declinable[provider]
            self._declinable[provider] = n + 1
            if int((n + 1) * faults.decline_rate) > int(n * faults.decline_rate):
                return Decision("declined", failure_code=faults.decline_rate_code)
        if default.status != "succeeded" or faults.default_outcome == "succeeded":
            return default  # the request itself (e.g. a test payment method) decided
        if faults.default_outcome == "pending":
            return Decision("pending", settle_to=("succeeded", None))
        return Decision("action_required")

    async def _hold(self, seconds: float) -> None:
        release = self._release
        if release is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), seconds)

    # --- payments -----------------------------------------------------------------------

    def record(self, payment: Payment, decision: Decision) -> Payment:
        """Store an executed payment, emit its first callback, schedule its settlement."""
        payment.status = decision.status
        payment.failure_code = decision.failure_code
        payment.settle_to = decision.settle_to
        self.payments[payment.id] = payment
        self.emit(payment)
        faults = self.faults[payment.provider]
        if payment.status == "pending" and faults.auto_settle and decision.settle_to:
            self._spawn(self._settle_later(payment, self._delay_s(payment.provider, "settle")))
        return payment

    async def _settle_later(self, payment: Payment, delay: float) -> None:
        await asyncio.sleep(delay)  # the provider's processing time, not a sync point
        if payment.status == "pending" and payment.settle_to is not None:
            status, code = payment.settle_to
            self.transition(payment, status, code)

    def transition(self, payment: Payment, status: PaymentStatus, code: str | None = None) -> None:
        if payment.status in FINAL:
            return
        payment.status = status
        payment.failure_code = code if status == "declined" else None
        payment.settle_to = None
        self.emit(payment)

    def reverse(self, payment: Payment) -> None:
        """Take a succeeded payout back (a Stripe transfer reversal): its status stays
        succeeded (it did execute), the provider's object says reversed, a callback tells."""
        if payment.extra.get("reversed") == "true":
            return
        payment.extra["reversed"] = "true"
        self.emit(payment)

    def find(self, provider: str, account: str, **match: str) -> list[Payment]:
        return [
            p
            for p in self.payments.values()
            if p.provider == provider
            and p.account == account
            and all(getattr(p, k, None) == v or p.extra.get(k) == v for k, v in match.items())
        ]

    # --- callbacks ----------------------------------------------------------------------

    def emit(self, payment: Payment) -> None:
        """Render the callback for the payment's current state and queue it."""
        hooks = self.hooks.get(payment.provider)
        if hooks is None:
            return
        event_id, event_type, body = hooks.render_event(payment)
        event = Event(
            event_id=event_id,
            provider=payment.provider,
            account=payment.account,
            payment_id=payment.id,
            reference=payment.reference,
            event_type=event_type,
            body=body,
        )
        faults = self.faults[payment.provider]
        if faults.out_of_order_callbacks and payment.status not in FINAL:
            payment.held_events.append(event)  # released after the final one
            return
        batch = [event, *payment.held_events]
        payment.held_events.clear()
        for item in batch:
            for _ in range(2 if faults.duplicate_callbacks else 1):
                self._enqueue(item)

    def _enqueue(self, event: Event) -> None:
        key = (event.provider, event.account)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._spawn(self._deliver_loop(queue))
        due = time.monotonic() + self._delay_s(event.provider, "callback")
        queue.put_nowait(dataclasses.replace(event, due=due))

    async def _deliver_loop(self, queue: asyncio.Queue[Event]) -> None:
        # One loop per account, events in order: a provider's own ordering, which the
        # out_of_order fault then breaks on purpose.
        while True:
            event = await queue.get()
            wait = event.due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the configured callback delay
            await self._deliver(event)

    async def _deliver(self, event: Event) -> None:
        account = self.account(event.provider, event.account)
        hooks = self.hooks[event.provider]
        if account is None or not account.webhook_url or not account.webhook_secret:
            self._log_delivery(event, None, 0, None, "no webhook target registered")
            return
        assert self._http is not None
        for attempt in range(1, self.settings.callback_attempts + 1):
            headers = {
                "Content-Type": hooks.media_type,
                **hooks.sign(event.body, account.webhook_secret),
            }
            try:
                response = await self._http.post(
                    account.webhook_url, content=event.body, headers=headers
                )
            except httpx.HTTPError as exc:
                self._log_delivery(event, account.webhook_url, attempt, None, type(exc).__name__)
            else:
                self._log_delivery(event, account.webhook_url, attempt, response.status_code, None)
                if 200 <= response.status_code < 300:
                    return
            if attempt < self.settings.callback_attempts:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))  # retry backoff, as providers do

    def _log_delivery(
        self, event: Event, url: str | None, attempt: int, status: int | None, error: str | None
    ) -> None:
        self.deliveries.append(
            {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "provider": event.provider,
                "account": mask(event.account),
                "payment_id": event.payment_id,
                "reference": event.reference,
                "url": url,
                "attempt": attempt,
                "status_code": status,
                "error": error,
                "at": time.time(),
            }
        )
        if error:
            log.info("callback %s to %s: %s", event.event_id, url, error)
