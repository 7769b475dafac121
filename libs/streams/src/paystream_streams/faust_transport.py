"""faust's aiokafka transport, corrected where money depends on it.

1. faust hard-codes `fetch_max_wait_ms=1500`; tansu answers a fetch only when that expires,
   so a sparse command would wait up to 1.5 s before the worker sees it.
2. With agent concurrency > 1, faust (0.15.3) can commit past a record that is still being
   processed: its head-of-queue check lets the lowest acked offset be committed+1 while
   `committed` itself is in flight, and skips the check entirely before a group's first
   commit. A crash then loses that command. `_Consumer._new_offset` refuses to commit until
   the record at the head is acked (or a known gap).

Registered as the `paystream://` broker scheme.
"""

from __future__ import annotations

from typing import Any, ClassVar

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 10

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


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


def register(fetch_max_wait_ms: int) -> str:
    """Install the transport; returns the URL scheme to use in `broker=`."""
    _ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms
    TRANSPORTS.aliases["paystream"] = f"{__name__}:Transport"
    return "paystream"
