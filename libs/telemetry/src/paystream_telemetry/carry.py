"""The trace context an outbox row keeps: which traceparent the outcome events of each
transaction carry, set by the worker around the database unit that writes them.

A context variable rather than a parameter of the storage port: the traceparent is
metadata of the events, not part of any payment rule, and one unit writes the outcomes of
many transactions, each in its own trace. Storage asks `traceparent_for(transaction)` as it
writes an outbox row (None when nothing is carried: the row then has no traceparent)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

_carried: ContextVar[Mapping[uuid.UUID, str] | None] = ContextVar(
    "paystream_carried_traces", default=None
)


@contextmanager
def carrying(traces: Mapping[uuid.UUID, str]) -> Iterator[None]:
    """The events written in the block for transaction `t` carry `traces[t]` (added to
    what an outer block carries)."""
    if not traces:
        yield
        return
    outer = _carried.get()
    token = _carried.set({**outer, **traces} if outer else traces)
    try:
        yield
    finally:
        _carried.reset(token)


def traceparent_for(transaction_id: uuid.UUID) -> str | None:
    carried = _carried.get()
    return None if carried is None else carried.get(transaction_id)
