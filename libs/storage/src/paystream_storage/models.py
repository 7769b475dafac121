"""SQLAlchemy 2 typed models. The Alembic migrations are the source of truth for the DDL;
`tests/integration/test_migrations.py` checks that these models match them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Tables whose rows belong to one tenant: row-level security applies to all of them.
TENANT_TABLES = (
    "tenants",
    "api_keys",
    "accounts",
    "connections",
    "transactions",
    "attempts",
    "ledger_entries",
    "balances",
    "outbox",
    "inbox",
    "callback_log",
    "parked_callbacks",
    "anomalies",
    "reconciliations",
    "idempotency_keys",
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 of the whole key: keys are random 256-bit values, so no slow hash is needed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Country(Base):
    __tablename__ = "countries"
    code: Mapped[str] = mapped_column(String(2), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Account(Base):
    __tablename__ = "accounts"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key to countries: that table is routing configuration, and a command for
    # a country nobody routes must still be stored (and rejected), not fail.
    country: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime] = _now()


class Gateway(Base):
    __tablename__ = "gateways"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    currencies: Mapped[list[str]] = mapped_column(ARRAY(String(3)))
    min_amount_minor: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    max_amount_minor: Mapped[int | None] = mapped_column(BigInteger)


class GatewayCountry(Base):
    __tablename__ = "gateway_countries"
    __table_args__ = (
        CheckConstraint("transaction_type IN ('deposit', 'withdrawal')", name="type"),
        CheckConstraint("priority >= 1", name="priority"),
        CheckConstraint("weight BETWEEN 1 AND 10000", name="weight"),
        Index(None, "country", "transaction_type", "priority"),
    )
    gateway_code: Mapped[str] = mapped_column(ForeignKey("gateways.code"), primary_key=True)
    country: Mapped[str] = mapped_column(ForeignKey("countries.code"), primary_key=True)
    transaction_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Share of the volume among routes of equal priority (paystream_core.ranking).
    weight: Mapped[int] = mapped_column(Integer, server_default=text("100"))


class Connection(Base):
    __tablename__ = "connections"
    __table_args__ = (UniqueConstraint("tenant_id", "gateway_code", "code"),)
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    gateway_code: Mapped[str] = mapped_column(ForeignKey("gateways.code"))
    code: Mapped[str] = mapped_column(String(64))
    # AES-256-GCM: nonce || ciphertext || tag, associated data tenant|connection|key id.
    credentials_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    credentials_key_id: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("type IN ('deposit', 'withdrawal')", name="type"),
        CheckConstraint(
            "status IN ('received', 'processing', 'action_required', 'pending', 'unknown',"
            " 'succeeded', 'failed', 'rejected')",
            name="status",
        ),
        CheckConstraint("version >= 1", name="version"),
        ForeignKeyConstraint(["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"]),
        Index(None, "tenant_id", "account_id"),
        Index(None, "status", "updated_at"),
        Index(None, "provider_reference"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    account_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    country: Mapped[str] = mapped_column(String(2))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    payload_hash: Mapped[str] = mapped_column(String(64))
    payment_method: Mapped[str | None] = mapped_column(String(64))
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    destination_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    destination_key_id: Mapped[str | None] = mapped_column(String(64))
    destination_masked: Mapped[str | None] = mapped_column(String(64))
    gateway_code: Mapped[str | None] = mapped_column(ForeignKey("gateways.code"))
    provider_reference: Mapped[str | None] = mapped_column(String(255))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("transaction_id", "seq"),
        # The health window (paystream_route_health, every few seconds per worker): final
        # attempts only. Migration 0014 builds it concurrently.
        Index(
            "ix_attempts_final_finished_at",
            "finished_at",
            postgresql_where=text("status IN ('succeeded', 'declined')"),
        ),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    transaction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("transactions.id"))
    seq: Mapped[int] = mapped_column(Integer)
    gateway_code: Mapped[str] = mapped_column(ForeignKey("gateways.code"))
    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("connections.id"))
    # Sent to the provider on every try of this attempt, so retries cannot execute twice.
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(24))
    provider_reference: Mapped[str | None] = mapped_column(String(255), index=True)
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why routing chose this gateway (paystream_core.ranking), for operators.
    route_reason: Mapped[str | None] = mapped_column(Text)
    # The transaction's (never changed), so the health window reads attempts alone. NULL on
    # rows older than migration 0014 (not counted by the window).
    country: Mapped[str | None] = mapped_column(String(2))
    transaction_type: Mapped[str | None] = mapped_column(String(16))


class LedgerEntry(Base):
    """One leg of a double-entry posting; the legs of a transaction sum to zero."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("bucket IN ('available', 'held', 'external')", name="bucket"),
        CheckConstraint("amount_minor <> 0", name="nonzero"),
        Index(None, "tenant_id", "account_id", "currency"),
        Index(None, "transaction_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    transaction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("transactions.id"))
    account_id: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now()


class Balance(Base):
    __tablename__ = "balances"
    __table_args__ = (
        CheckConstraint("available_minor >= 0", name="available_nonnegative"),
        CheckConstraint("held_minor >= 0", name="held_nonnegative"),
        ForeignKeyConstraint(["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"]),
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    available_minor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    held_minor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    updated_at: Mapped[datetime] = _now()


class OutboxRow(Base):
    """An event written in the same DB transaction as the state change it describes."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished",
            "shard",
            "id",
            postgresql_where=text("published_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    topic: Mapped[str] = mapped_column(String(64))  # logical name: "outcomes", ...
    key: Mapped[str] = mapped_column(String(255))
    # Rows of one key share a shard; a relay holds a shard while publishing it, which keeps
    # per-key order with several relays running.
    shard: Mapped[int] = mapped_column(SmallInteger)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID, unique=True)
    event_type: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    traceparent: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutboxShard(Base):
    """One row per shard; relays lock these with SKIP LOCKED to split the work."""

    __tablename__ = "outbox_shards"
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)


class InboxMessage(Base):
    """Messages a consumer has applied: a redelivery hits the primary key and is skipped."""

    __tablename__ = "inbox"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    processed_at: Mapped[datetime] = _now()


class CallbackLog(Base):
    __tablename__ = "callback_log"
    __table_args__ = (Index(None, "tenant_id", "received_at"),)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("connections.id"))
    gateway_code: Mapped[str] = mapped_column(String(64))
    provider_event_id: Mapped[str | None] = mapped_column(String(255))
    verdict: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB)
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = _now()


class ParkedCallback(Base):
    """A verified callback whose attempt is not known yet (orphan): applied once it is."""

    __tablename__ = "parked_callbacks"
    __table_args__ = (
        UniqueConstraint("connection_id", "provider_event_id"),
        Index(None, "resolved_at", "next_try_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("connections.id"))
    gateway_code: Mapped[str] = mapped_column(String(64))
    provider_event_id: Mapped[str] = mapped_column(String(255))
    provider_reference: Mapped[str | None] = mapped_column(String(255))
    reference: Mapped[str | None] = mapped_column(String(255))
    # The body exactly as published by the ingress (`body_encoding`: utf-8 or base64).
    body: Mapped[str] = mapped_column(Text)
    body_encoding: Mapped[str] = mapped_column(String(8))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    parked_at: Mapped[datetime] = _now()
    tries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_try_at: Mapped[datetime] = _now()
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution: Mapped[str | None] = mapped_column(String(32))


class Anomaly(Base):
    """A provider report that contradicts what we recorded (kept, counted, alerted on)."""

    __tablename__ = "anomalies"
    __table_args__ = (Index(None, "tenant_id", "created_at"),)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("transactions.id"))
    connection_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("connections.id"))
    source: Mapped[str] = mapped_column(String(32))  # callback | reconciler
    kind: Mapped[str] = mapped_column(String(64))
    provider_event_id: Mapped[str | None] = mapped_column(String(255))
    transaction_status: Mapped[str | None] = mapped_column(String(24))
    reported_status: Mapped[str | None] = mapped_column(String(24))
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class Reconciliation(Base):
    """The reconciler's bookkeeping per transaction: lookups made, when to look next."""

    __tablename__ = "reconciliations"
    transaction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("transactions.id"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    lookups: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_lookup_at: Mapped[datetime] = _now()
    last_lookup_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_result: Mapped[str | None] = mapped_column(Text)
    # Set when the transaction passed the unresolved horizon and was reported.
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """A tenant's Idempotency-Key, bound by the ingest API to the first body sent with it."""

    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    payload_hash: Mapped[str] = mapped_column(String(64))
    transaction_id: Mapped[uuid.UUID] = mapped_column(UUID)
    created_at: Mapped[datetime] = _now()


class RoutingChange(Base):
    """One `paystream routes` command that changed the routing: who, when, before/after.
    Append-only (a trigger refuses UPDATE, DELETE and TRUNCATE, migration 0010)."""

    __tablename__ = "routing_changes"
    __table_args__ = (
        CheckConstraint("action IN ('set', 'disable', 'enable', 'limits')", name="action"),
        Index(None, "changed_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    changed_at: Mapped[datetime] = _now()
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    country: Mapped[str | None] = mapped_column(String(2))
    transaction_type: Mapped[str | None] = mapped_column(String(16))
    gateway_code: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[Any] = mapped_column(JSONB)
    after: Mapped[Any] = mapped_column(JSONB)


class ConfigVersion(Base):
    """One row: bumped by a trigger whenever gateways, routes, connections or tenants
    change, so processes know when their cached configuration is stale."""

    __tablename__ = "config_version"
    __table_args__ = (CheckConstraint("id", name="config_version_id_check"),)
    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))


OUTBOX_SHARDS = 16


class DeadLetterRedrive(Base):
    """A dead letter sent back to its original topic by `paystream dead-letters redrive`:
    claimed first, `published_*` once Kafka acknowledged it, `failure` if it did not."""

    __tablename__ = "dead_letter_redrives"
    __table_args__ = (
        Index(
            "ix_dead_letter_redrives_dead_letter",
            "dead_letter_topic",
            "dead_letter_partition",
            "dead_letter_offset",
        ),
        # The same failed record is redriven once, unless forced or the send failed.
        Index(
            "uq_dead_letter_redrives_once",
            "original_topic",
            "original_partition",
            "original_offset",
            "record_digest",
            unique=True,
            postgresql_where=text("NOT forced AND failure IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    dead_letter_topic: Mapped[str] = mapped_column(String(255))
    dead_letter_partition: Mapped[int] = mapped_column(Integer)
    dead_letter_offset: Mapped[int] = mapped_column(BigInteger)
    original_topic: Mapped[str] = mapped_column(String(255))
    original_partition: Mapped[int] = mapped_column(Integer)
    original_offset: Mapped[int] = mapped_column(BigInteger)
    record_digest: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    redrive_count: Mapped[int] = mapped_column(Integer)
    forced: Mapped[bool] = mapped_column(Boolean)
    redriven_by: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[datetime] = _now()
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_partition: Mapped[int | None] = mapped_column(Integer)
    published_offset: Mapped[int | None] = mapped_column(BigInteger)
    failure: Mapped[str | None] = mapped_column(Text)
