"""The callback log: every callback from a known connection and what became of it.

Written in groups: each request hands its row to the writer and waits until the group it
joined is committed (one database transaction for all the requests of a few milliseconds,
one INSERT per tenant under that tenant's row-level security). A request is answered only
after its row is durable, as with a transaction per request, at a fraction of the cost.

A group is one simple query (`statements.StatementQueue`): BEGIN, then per tenant its scope
and one INSERT taking the rows as one JSON document, then COMMIT. One round trip instead of
four (BEGIN, scope, INSERT, COMMIT each waited for), and one `json.dumps` instead of seven
arrays dumped element by element.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from paystream_storage.db import APP_ROLE
from paystream_storage.pool import HotPool
from paystream_storage.statements import Json, Rows, StatementQueue, rowset

_SCOPE = "SELECT set_config('role', %s, true), set_config('paystream.tenant_id', %s, true)"
_ROWS = rowset("uuid", "text", "text", "text", "text", "jsonb", "text")
_INSERT = f"""
INSERT INTO callback_log (tenant_id, connection_id, gateway_code, provider_event_id, verdict,
  reason, headers, body)
SELECT %s, * FROM {_ROWS} AS v"""


@dataclass(frozen=True, slots=True)
class CallbackLogEntry:
    tenant_id: uuid.UUID
    connection_id: uuid.UUID
    gateway_code: str
    provider_event_id: str | None
    verdict: str
    reason: str | None
    headers: dict[str, str]
    body: str = field(repr=False)


class CallbackLogWriter:
    def __init__(self, pool: HotPool, *, linger_s: float = 0.002) -> None:
        self._pool = pool
        self._linger_s = linger_s
        self._pending: list[tuple[CallbackLogEntry, asyncio.Future[None]]] = []
        self._flush: asyncio.Task[None] | None = None

    async def write(self, entry: CallbackLogEntry) -> None:
        """Return once `entry` is committed; raise what the commit raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, done))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_soon())
        await asyncio.shield(done)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._linger_s)  # let the requests of the next moments join
        group, self._pending = self._pending, []
        try:
            await self._insert([entry for entry, _ in group])
        except Exception as exc:
            for _, done in group:
                if not done.done():
                    done.set_exception(exc)
            return
        finally:
            if self._pending:  # arrived while we were writing: the next group
                self._flush = asyncio.create_task(self._flush_soon())
        for _, done in group:
            if not done.done():
                done.set_result(None)

    async def _insert(self, entries: list[CallbackLogEntry]) -> None:
        by_tenant: dict[uuid.UUID, list[CallbackLogEntry]] = {}
        for entry in entries:
            by_tenant.setdefault(entry.tenant_id, []).append(entry)
        # If the query fails, the connection is left in the aborted transaction and the pool
        # rolls it back when it is returned.
        async with self._pool.connection() as conn:
            queue = StatementQueue(conn)
            queue.add("BEGIN")
            for tenant_id, rows in by_tenant.items():
                queue.add(_SCOPE, (APP_ROLE, str(tenant_id)))
                values = [
                    (
                        r.connection_id,
                        r.gateway_code,
                        r.provider_event_id,
                        r.verdict,
                        r.reason,
                        Json(r.headers),
                        r.body,
                    )
                    for r in rows
                ]
                queue.add(_INSERT, (tenant_id, Rows(values)))
            queue.add("COMMIT")
            await queue.flush()
