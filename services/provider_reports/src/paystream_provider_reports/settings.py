"""Settings of the callback worker and the reconciler processes."""

from __future__ import annotations

from pydantic import Field

from paystream_config import DatabaseSettings, KafkaSettings


class CallbackWorkerSettings(KafkaSettings, DatabaseSettings):
    callback_worker_group: str = Field(default="paystream-callback-worker", min_length=1)
    # Callbacks handled at once per process. Order does not matter for correctness: every
    # one takes the transaction's row lock and the state machine only moves forward.
    callback_worker_concurrency: int = Field(default=512, ge=1, le=10_000)
    # Callbacks taken in together: one database transaction per tenant for the batch.
    callback_worker_batch_max: int = Field(default=200, ge=1, le=10_000)
    callback_worker_batch_linger_s: float = Field(default=0.002, ge=0, le=1)
    # The broker answers a fetch only when this wait expires. Most callbacks confirm what
    # the synchronous answer already settled, and a pending payment waits for its provider
    # anyway: a longer wait than the gateway worker's costs little latency and saves the
    # worker and the broker most of their polling.
    callback_worker_fetch_wait_ms: int = Field(default=50, ge=1, le=5000)
    # Orphans (callback before its attempt is known) are retried with backoff from here.
    callback_parked_sweep_s: float = Field(default=1.0, gt=0, le=300)
    callback_parked_retry_base_s: float = Field(default=1.0, gt=0, le=3600)
    callback_parked_retry_max_s: float = Field(default=300.0, gt=0, le=86_400)
    callback_worker_web_host: str = "127.0.0.1"  # 0.0.0.0 in a pod, for the kubelet's probe
    callback_worker_web_port: int = Field(default=0, ge=0, le=65535, description="0: none")
    callback_worker_stall_after_s: float = Field(default=120.0, gt=0)


class ReconcilerSettings(DatabaseSettings):
    reconciler_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # pending/unknown transactions untouched this long are looked up at their provider.
    reconciler_pending_age_s: float = Field(default=60.0, ge=0)
    # action_required this long: looked up, then failed with `expired` if still waiting.
    reconciler_action_expiry_s: float = Field(default=1800.0, ge=0)
    # Still pending/unknown this long after creation: reported (metric, log, CLI), never
    # auto-failed: the money may have moved.
    reconciler_horizon_s: float = Field(default=86_400.0, ge=0)
    # Still received/processing without a change this long: the worker gave up on it
    # (its command was dead-lettered) or is stuck. Reported the same way.
    reconciler_stuck_processing_s: float = Field(default=900.0, ge=0)
    # `processing` with a `started` attempt this old: the gateway worker died during the call
    # and its command never came back. Looked up by the attempt's idempotency key. Above the
    # worker's longest call (3 tries of 3 s connect + 15 s read with backoff, then its own
    # lookup: about 75 s), so a live worker is never overtaken; a redelivered command
    # normally redoes the call well before.
    reconciler_processing_age_s: float = Field(default=120.0, ge=0)
    # Still so this long after the attempt started (no conclusive lookup, or resubmitted
    # commands the worker did not finish): `unknown`, resolved by the lookups above. Never
    # failed on that alone: the call may have executed.
    reconciler_processing_horizon_s: float = Field(default=900.0, ge=0)
    reconciler_backoff_base_s: float = Field(default=30.0, gt=0)
    reconciler_backoff_max_s: float = Field(default=3600.0, gt=0)
    reconciler_batch_size: int = Field(default=100, ge=1, le=10_000)
    # The money audit (`paystream audit`'s checks) exported as metrics this often; 0: never.
    # Each run reads the ledger, balances, transactions and outcome events once: minutes,
    # not seconds, on a large database.
    reconciler_audit_interval_s: float = Field(default=300.0, ge=0)
    reconciler_concurrency: int = Field(default=8, ge=1, le=256)
    reconciler_web_host: str = "127.0.0.1"
    reconciler_web_port: int = Field(default=0, ge=0, le=65535, description="0: none")
