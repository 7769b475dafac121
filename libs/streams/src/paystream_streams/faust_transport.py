"""faust's aiokafka transport, corrected where money depends on it.

1. faust hard-codes `fetch_max_wait_ms=1500`; tansu answers a fetch only when that expires,
   so a sparse command would wait up to 1.5 s before the worker sees it. A short wait, on
   the other hand, costs CPU in the worker and the broker while nothing comes (~13% of a
   core per consumer at 10 ms). So the wait adapts (`FetchWait`): short while records flow,
   long once none came for a while; the first record after a quiet spell pays part of the
   long wait once, every record after it the short one.
2. With agent concurrency > 1, faust (0.15.3) can commit past a record that is still being
   processed: its head-of-queue check lets the lowest acked offset be committed+1 while
   `committed` itself is in flight, and skips the check entirely before a group's first
   commit. A crash then loses that command. `_Consumer._new_offset` refuses to commit until
   the record at the head is acked (or a known gap).

Registered as the `paystream://` broker scheme.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka


@dataclass(frozen=True, slots=True)
class FetchWait:
    """`busy_ms` while records arrived in the last `idle_after_s`, else `idle_ms`."""

    busy_ms: int = 10
    idle_ms: int = 10
    idle_after_s: float = 2.0

    def wait_ms(self, since_data_s: float) -> int:
        return self.busy_ms if since_data_s < self.idle_after_s else self.idle_ms


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_wait: ClassVar[FetchWait] = FetchWait()

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher.
        consumer._fetch_max_wait_ms = self.fetch_wait.busy_ms
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        consumer: Any = self._consumer
        _adapt_fetch_wait(consumer._fetcher, self.fetch_wait)


def _adapt_fetch_wait(fetcher: Any, policy: FetchWait) -> None:
    """Wrap aiokafka's fetch request coroutine: it reports whether the fetch brought records,
    and the wait of the next request is read from `_fetch_max_wait_ms` when it is built."""
    fetch = fetcher._proc_fetch_request
    last_data = time.monotonic()

    async def adaptive(*args: Any, **kwargs: Any) -> Any:
        nonlocal last_data
        has_data = await fetch(*args, **kwargs)
        now = time.monotonic()
        if has_data:
            last_data = now
        fetcher._fetch_max_wait_ms = policy.wait_ms(now - last_data)
        return has_data

    fetcher._proc_fetch_request = adaptive


def head_is_done(
    acked: list[int], gap_starts: list[int], committed: int | None, first_seen: int | None
) -> bool:
    """May offsets be committed? Only if the next record to commit (the committed offset,
    or the first one this consumer saw before any commit) is acked or inside a gap."""
    head = committed if committed is not None else first_seen
    if head is None or not acked:
        return bool(acked)
    lowest = min([*acked, *gap_starts])
    return lowest <= head


class _Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first_seen: dict[Any, int] = {}

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def track_message(self, message: Any) -> None:
        self._first_seen.setdefault(message.tp, message.offset)
        super().track_message(message)

    def _new_offset(self, tp: Any) -> int | None:
        gaps = [interval.begin for interval in self._gap.get(tp, ())]
        if not head_is_done(
            list(self._acked.get(tp, ())),
            gaps,
            self._committed_offset[tp],
            self._first_seen.get(tp),
        ):
            return None
        new: int | None = super()._new_offset(tp)
        return new

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self._first_seen.pop(tp, None)
        await super().on_partitions_revoked(revoked)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register(fetch_wait: FetchWait) -> str:
    """Install the transport; returns the URL scheme to use in `broker=`."""
    _ConsumerThread.fetch_wait = fetch_wait
    TRANSPORTS.aliases["paystream"] = f"{__name__}:Transport"
    return "paystream"
