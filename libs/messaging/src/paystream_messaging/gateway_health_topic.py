"""The gateway-health topic as a live view: records read in offset order, own changes
applied at once, publishing that never waits, and the probe-lease claim.

`LiveView` holds the logic and takes its transport as a function, so tests drive it with an
in-memory log; `HealthTopic` feeds it from Kafka: a consumer with the one partition assigned
(no consumer group, so no rebalance and nothing committed) reading from the beginning in a
thread, handing records to the event loop in order. `read_view` and `publish_record` are the
blocking versions for the operator commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from paystream_config import KafkaSettings
from paystream_messaging import topics
from paystream_messaging.async_publisher import AsyncPublisher, PublishFailed
from paystream_messaging.cloudevents_codec import KafkaRecord
from paystream_messaging.gateway_health import (
    BadHealthRecord,
    HealthRecord,
    Lease,
    Operator,
    apply,
    claim_granted,
    closed,
    decode,
    encode,
    to_json,
)
from paystream_messaging.kafka_config import producer_config

log = logging.getLogger(__name__)

HEADERS: Final = [("content-type", b"application/json")]
# Changes of one gateway's entry as this view saw them: (before or None, after).
OnChange = Callable[[HealthRecord | None, HealthRecord], None]


class LiveView:
    """A view of every gateway's health, kept by applying records in log order.

    This process's own changes are applied at once (its next call must see the breaker it
    just opened) and published; when they come back through the log they are applied again,
    which changes nothing unless someone else's record landed in between, and then the log's
    order wins in every view. Claims are the exception: granted or not is decided only by
    the claim's place in the log, so they are never applied ahead of it.
    """

    def __init__(
        self,
        worker_id: str,
        send: Callable[[HealthRecord], None],
        *,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._worker_id = worker_id
        self._send = send
        self._on_change = on_change
        self._clock = clock
        self._view: dict[str, HealthRecord] = {}
        self._claims: dict[tuple[str, float], asyncio.Future[bool]] = {}
        self.applied = 0  # records received from the log

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def view(self) -> dict[str, HealthRecord]:
        return dict(self._view)

    def entry(self, gateway: str) -> HealthRecord | None:
        return self._view.get(gateway)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The view as JSON (for /healthz and the CLI)."""
        return {gateway: to_json(record) for gateway, record in sorted(self._view.items())}

    # --- from the log ----------------------------------------------------------------------

    def receive(self, records: Sequence[HealthRecord]) -> None:
        """Apply records read from the log, in their order."""
        for record in records:
            self.applied += 1
            if record.event == "claim" and record.lease is not None:
                granted = claim_granted(self._view.get(record.gateway), record)
                waiter = self._claims.get((record.gateway, record.lease.until))
                if waiter is not None and record.by == self._worker_id and not waiter.done():
                    waiter.set_result(granted)
            self._apply(record)

    def _apply(self, record: HealthRecord) -> None:
        before = self._view.get(record.gateway)
        self._view = apply(self._view, record)
        after = self._view[record.gateway]
        if after is not before and self._on_change is not None:
            self._on_change(before, after)

    # --- this process's changes ------------------------------------------------------------

    def _next(self, gateway: str, **changes: Any) -> HealthRecord:
        current = self._view.get(gateway) or closed(gateway)
        return dataclasses.replace(current, by=self._worker_id, at=self._clock(), **changes)

    def _publish(self, record: HealthRecord) -> None:
        self._apply(record)
        self._send(record)

    def failed(self, gateway: str, *, failures: int, reason: str) -> None:
        self._publish(self._next(gateway, event="failure", failures=failures, reason=reason))

    def reset(self, gateway: str, *, reason: str) -> None:
        self._publish(self._next(gateway, event="reset", failures=0, reason=reason))

    def opened(
        self, gateway: str, *, failures: int, opened_at: float, open_until: float, reason: str
    ) -> None:
        current = self._view.get(gateway)
        lease = current.lease if current is not None else None
        record = self._next(
            gateway,
            event="open",
            state="open",
            failures=failures,
            opened_at=opened_at,
            open_until=open_until,
            lease=None if lease is not None and lease.holder == self._worker_id else lease,
            reason=reason,
        )
        self._publish(record)

    def closed(self, gateway: str, *, reason: str) -> None:
        record = self._next(
            gateway,
            event="close",
            state="closed",
            failures=0,
            opened_at=None,
            open_until=None,
            lease=None,
            reason=reason,
        )
        self._publish(record)

    def operator(self, gateway: str, operator: Operator, *, reason: str) -> HealthRecord:
        record = self._next(gateway, event="operator", operator=operator, reason=reason)
        self._publish(record)
        return record

    async def claim(self, gateway: str, *, until: float, timeout_s: float) -> bool:
        """Ask for the probe lease until `until`; True once the claim came back through the
        log granted, False if it came back denied or not within `timeout_s`."""
        lease = Lease(self._worker_id, until)
        record = self._next(
            gateway, event="claim", state="half_open", lease=lease, reason="open period over"
        )
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._claims[(gateway, until)] = waiter
        try:
            self._send(record)
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return False
        finally:
            self._claims.pop((gateway, until), None)


class HealthTopic:
    """The worker's view of `<prefix>.gateway-health`, fed by a consumer thread."""

    def __init__(
        self,
        settings: KafkaSettings,
        publisher: AsyncPublisher,
        *,
        worker_id: str,
        fetch_wait_ms: int,
        on_change: OnChange | None = None,
        on_publish_error: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._topic = settings.topic(topics.GATEWAY_HEALTH)
        self._publisher = publisher
        self._fetch_wait_ms = fetch_wait_ms
        self._on_publish_error = on_publish_error
        self._deadline_s = settings.kafka_delivery_timeout_ms / 1000 + 5
        self.live = LiveView(worker_id, self._send, on_change=on_change)
        self._sending: set[asyncio.Task[None]] = set()
        self._caught_up = asyncio.Event()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    async def start(self, catch_up_s: float) -> bool:
        """Start reading and wait until the view has read the topic to its end (True), or
        `catch_up_s` passed (False: it goes on reading in the background)."""
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(
            target=self._read_into, args=(loop,), name="gateway-health", daemon=True
        )
        started = time.monotonic()
        self._reader.start()
        try:
            await asyncio.wait_for(self._caught_up.wait(), catch_up_s)
        except TimeoutError:
            log.error(
                "gateway health view NOT caught up after %.0f s (%d records read from %s):"
                " taking commands with what it has, it keeps reading",
                catch_up_s,
                self.live.applied,
                self._topic,
            )
            return False
        log.warning(
            "gateway health view caught up in %.1f s: %d records, %d gateways (%s)",
            time.monotonic() - started,
            self.live.applied,
            len(self.live.view),
            ", ".join(f"{g}={r.state}" for g, r in sorted(self.live.view.items())) or "none",
        )
        return True

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)

    def _send(self, record: HealthRecord) -> None:
        """Fire and forget: a payment call never waits for the health topic."""
        task = asyncio.get_running_loop().create_task(self._deliver(record))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, record: HealthRecord) -> None:
        kafka_record = KafkaRecord(record.gateway.encode(), encode(record), HEADERS)
        try:
            await self._publisher.publish(self._topic, kafka_record, deadline_s=self._deadline_s)
        except PublishFailed as exc:
            log.warning("gateway health %s %s not published: %s", record.gateway, record.event, exc)
            if self._on_publish_error is not None:
                self._on_publish_error()

    def _read_into(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread: records to the loop in offset order (call_soon_threadsafe
        keeps it), then "caught up" once the end is reached."""
        batches = _read(self._settings, self._topic, self._fetch_wait_ms, self._stop)
        try:
            for values, at_end in batches:
                if values:
                    loop.call_soon_threadsafe(self._received, values)
                if at_end:
                    loop.call_soon_threadsafe(self._caught_up.set)
        except RuntimeError:  # the loop closed under us: the process is stopping
            return

    def _received(self, values: list[bytes | None]) -> None:
        self.live.receive(_decoded(values))


def _read(
    settings: KafkaSettings, topic: str, fetch_wait_ms: int, stop: threading.Event
) -> Generator[tuple[list[bytes | None], bool], None, None]:
    """Yield (values, reached_end) batches from the start of the partition, forever.

    The end is an end-of-partition event at an offset at or past the end the broker
    reported first: tansu's ListOffsets can be short after a batched produce, so the
    reported end alone could stop short; the partition EOF comes only from an empty fetch
    at the true end. `reached_end` is True once."""
    consumer = Consumer(_consumer_config(settings, fetch_wait_ms))
    partition = TopicPartition(topic, 0)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        reported: int | None = None
        eof: int | None = None
        done = False
        complained = 0.0
        while not stop.is_set():
            if reported is None:
                try:
                    reported = int(consumer.get_watermark_offsets(partition, timeout=2)[1])
                except KafkaException as exc:
                    complained = _complain(complained, f"cannot read the end of {topic}: {exc}")
            values: list[bytes | None] = []
            for message in consumer.consume(num_messages=500, timeout=0.5):
                err = message.error()
                if err is None:
                    values.append(message.value())
                elif err.code() == KafkaError._PARTITION_EOF:
                    eof = int(message.offset() or 0)
                else:
                    complained = _complain(complained, f"reading {topic}: {err.str()}")
            at_end = not done and reported is not None and eof is not None and eof >= reported
            done = done or at_end
            if values or at_end:
                yield values, at_end
    finally:
        consumer.close()


def _complain(last: float, message: str) -> float:
    """Log a reading problem at most every 30 s (the reader retries on its own)."""
    now = time.monotonic()
    if now - last > 30:
        log.error("gateway health: %s", message)
        return now
    return last


def _consumer_config(settings: KafkaSettings, fetch_wait_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        # librdkafka wants a group id even for an assigned partition; with nothing
        # subscribed and nothing committed it never joins that group.
        "group.id": "paystream-gateway-health-view",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        # tansu answers a fetch only when this wait expires: it bounds how late a breaker
        # opened elsewhere shows here (a second is the promise) and what an idle view costs.
        "fetch.wait.max.ms": fetch_wait_ms,
        "fetch.queue.backoff.ms": 0,
    }


def _decoded(values: Sequence[bytes | None]) -> list[HealthRecord]:
    records: list[HealthRecord] = []
    for value in values:
        try:
            records.append(decode(value))
        except BadHealthRecord as exc:
            log.error("gateway health: skipped a record that is not one: %s", exc)
    return records


# --- blocking, for the operator commands ------------------------------------------------------


def read_view(settings: KafkaSettings, timeout_s: float = 30.0) -> dict[str, HealthRecord]:
    """The view after reading the whole topic; TimeoutError if its end was not reached."""
    view = LiveView("reader", lambda _record: None)
    stop = threading.Event()
    deadline = time.monotonic() + timeout_s
    batches = _read(settings, settings.topic(topics.GATEWAY_HEALTH), 10, stop)
    try:
        for values, at_end in batches:
            view.receive(_decoded(values))
            if at_end:
                return view.view
            if time.monotonic() > deadline:
                break
    finally:
        batches.close()
    raise TimeoutError(f"could not read {settings.topic(topics.GATEWAY_HEALTH)} to its end")


def publish_record(settings: KafkaSettings, record: HealthRecord, timeout_s: float = 30.0) -> None:
    """Publish `record` and wait for the acknowledgement; PublishFailed otherwise."""
    producer = Producer(producer_config(settings, "paystream-cli"))
    failure: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failure.append(err.str())

    producer.produce(
        settings.topic(topics.GATEWAY_HEALTH),
        key=record.gateway.encode(),
        value=encode(record),
        headers=list[tuple[str, str | bytes | None]](HEADERS),
        on_delivery=on_delivery,
    )
    if producer.flush(timeout_s) > 0:
        raise PublishFailed("no acknowledgement in time", maybe_persisted=True)
    if failure:
        raise PublishFailed(failure[0], maybe_persisted=False)
