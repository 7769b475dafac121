"""What an HTTP service does when it stops: deliver what it still holds, then let go.

The publisher is closed first: records still queued in the producer are delivered (or
counted as undelivered) before the process exits on a deploy's SIGTERM. Then the
service's own clients close, and the database pool says goodbye to PostgreSQL instead of
dropping its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

PUBLISHER_CLOSE_TIMEOUT_S = 10.0

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class Publisher(Protocol):
    def close(self, timeout: float) -> int:
        """Flush and stop; returns how many records were not delivered."""


def closing_lifespan(
    name: str,
    log: logging.Logger,
    publisher: Publisher,
    sessions: async_sessionmaker[AsyncSession],
    *also_close: Callable[[], Awaitable[None]],
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> Lifespan:
    """A FastAPI lifespan that runs each of `background` as a task while the service
    serves, and on shutdown cancels them, closes `publisher` (blocking, so in a thread),
    awaits each of `also_close` in order, disposes the engine behind `sessions`, and logs
    how many records were left undelivered on the service's logger `log`."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run()) for run in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        undelivered = await asyncio.to_thread(publisher.close, PUBLISHER_CLOSE_TIMEOUT_S)
        for close in also_close:
            await close()
        # The services keep only the sessionmaker; its bind is the engine they created.
        engine = sessions.kw.get("bind")
        if isinstance(engine, AsyncEngine):
            await engine.dispose()
        log.info("%s: publisher closed, %d records undelivered", name, undelivered)

    return lifespan
