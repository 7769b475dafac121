"""Deterministic identifiers: the same inputs always give the same id, across processes."""

from __future__ import annotations

import hashlib
import json
import uuid

# Fixed namespace so ids are stable across deployments and versions.
PAYSTREAM_NAMESPACE = uuid.UUID("6f6b9d4e-3c1a-5a7e-9a55-2f1f0c9a7d11")


def transaction_id(tenant_id: uuid.UUID, idempotency_key: str) -> uuid.UUID:
    """A repeat of the same request (tenant + key) maps to the same transaction."""
    return uuid.uuid5(PAYSTREAM_NAMESPACE, f"txn|{tenant_id}|{idempotency_key}")


def attempt_idempotency_key(transaction: uuid.UUID, attempt_seq: int) -> str:
    """Our key for one provider attempt: retries of that attempt reuse it verbatim."""
    return f"ps-{transaction}-{attempt_seq}"


def outcome_event_id(transaction: uuid.UUID, version: int) -> uuid.UUID:
    """One CloudEvent id per transaction version, so republishing keeps the same id."""
    return uuid.uuid5(PAYSTREAM_NAMESPACE, f"outcome|{transaction}|{version}")


def payload_hash(payload: object) -> str:
    """sha256 of the canonical JSON of a request: detects a reused key with a new body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
