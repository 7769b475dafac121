"""Records in batches between a faust agent and a handler, acked when their work is done.

The agent (one actor, so records arrive in offset order) `put`s every record it reads; a
handler task takes `batch`es: the first record it waits for, then whatever else arrived, up
to `batch_max`, lingering at most `linger_s` for more. A record is acked (`finish`) only
when the handler says its work is done; our transport commits only offsets below the
oldest unacked record, so a crash redelivers everything whose effect may not be durable.
At most `max_in_flight` records are read and not yet finished: the agent waits beyond that.

Work the handler starts in the background (`spawn`) is cancelled on shutdown without
acking its records: they are redelivered and resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from prometheus_client import Gauge, Histogram


class BatchMetrics(Protocol):
    @property
    def in_flight(self) -> Gauge: ...

    @property
    def batch_size(self) -> Histogram: ...

    def progressed(self) -> None: ...


Ack = Callable[[Any], Awaitable[Any]]


class Batches:
    def __init__(
        self,
        ack: Ack,
        metrics: BatchMetrics,
        *,
        batch_max: int,
        linger_s: float,
        max_in_flight: int,
    ) -> None:
        self._ack = ack
        self._metrics = metrics
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._background: set[asyncio.Task[None]] = set()
        self._handler: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(
        self, handle: Callable[[Batches], Coroutine[Any, Any, None]]
    ) -> AsyncIterator[Batches]:
        """Run `handle(self)` (a loop over `batch()`) while the agent puts records."""
        self._handler = asyncio.create_task(handle(self), name="batch-handler")
        try:
            yield self
        finally:
            self._handler.cancel()
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(self._handler, *self._background, return_exceptions=True)

    async def put(self, event: Any) -> None:
        """Hand over one record (a faust event); waits while too many are in flight."""
        if self._handler is not None and self._handler.done():
            self._handler.result()  # a bug stopped the handler: fail the agent loudly
            raise RuntimeError("the batch handler stopped")
        await self._slots.acquire()
        self._metrics.in_flight.inc()
        self._queue.put_nowait(event)

    async def batch(self) -> list[Any]:
        """The next batch: waits for its first record, then takes what is there."""
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger_s
        while len(batch) < self._batch_max:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._metrics.batch_size.observe(len(batch))
        return batch

    async def finish(self, events: Sequence[Any]) -> None:
        """Their work is durable: ack them (the transport may commit past them)."""
        for event in events:
            await self._ack(event)
            self._slots.release()
            self._metrics.in_flight.dec()
        if events:
            self._metrics.progressed()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; cancelled (not acked) on shutdown."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def consume_in_batches(
    stream: Any,
    metrics: BatchMetrics,
    handle: Callable[[Batches], Coroutine[Any, Any, None]],
    *,
    batch_max: int,
    linger_s: float,
    max_in_flight: int,
) -> None:
    """The body of a faust agent (one actor) whose records `handle` takes in batches and
    acks itself: the agent only reads, in offset order, and hands every record over."""
    manual = stream.noack()
    batches = Batches(
        manual.ack, metrics, batch_max=batch_max, linger_s=linger_s, max_in_flight=max_in_flight
    )
    async with batches.running(handle):
        async for event in manual.events():
            await batches.put(event)
