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
from typing import Any, Final, Literal

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
    same_breaker,
    to_json,
)
from paystream_messaging.kafka_config import producer_config

log = logging.getLogger(__name__)

HEADERS: Final = [("content-type", b"application/json")]
# Changes of one gateway's entry as this view saw them: (before or None, after).
OnChange = Callable[[HealthRecord | None, HealthRecord], None]
ClaimResult = Literal["granted", "denied", "timeout"]
# The topic's one partition: every record goes there, the view reads only it.
PARTITION: Final = 0


class TopicLayoutError(RuntimeError):
    """The health topic is missing or has more than one partition: views would miss records
    (and breakers never close in them), so the worker does not start on it."""


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
        self._claims: dict[tuple[str, float], asyncio.Future[ClaimResult]] = {}
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
                    waiter.set_result("granted" if granted else "denied")
            self._apply(record)
            if record.by == self._worker_id and record.event != "restate":
                self._restate_if_partial(record)

    def _restate_if_partial(self, record: HealthRecord) -> None:
        """Our record came back and the log took less of it than it says (a late failure,
        a denied claim): if it stays the last of its key, compaction leaves it to stand for
        the whole state in a view started later, so say the whole state after it."""
        entry = self._view[record.gateway]
        if same_breaker(record, entry):
            return
        self._send(
            dataclasses.replace(
                entry,
                event="restate",
                by=self._worker_id,
                at=self._clock(),
                reason=f"restated after a {record.event} of mine changed less: {entry.reason}",
            )
        )

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

    async def claim(self, gateway: str, *, until: float, timeout_s: float) -> ClaimResult:
        """Ask for the probe lease until `until`: "granted" or "denied" as the claim came
        back through the log, "timeout" if it did not within `timeout_s` (it may still be
        granted later: the view then shows our lease)."""
        lease = Lease(self._worker_id, until)
        record = self._next(
            gateway, event="claim", state="half_open", lease=lease, reason="open period over"
        )
        waiter: asyncio.Future[ClaimResult] = asyncio.get_running_loop().create_future()
        self._claims[(gateway, until)] = waiter
        try:
            self._send(record)
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return "timeout"
        finally:
            self._claims.pop((gateway, until), None)


class HealthTopic:
    """The worker's view of `<prefix>.gateway-health`, fed by a consumer thread.

    The reader never stops on its own: an error (the broker away, a consumer that cannot be
    made) is logged and counted, and reading resumes after a backoff from the record after
    the last one handed over, so the view does not freeze. `status()` tells /healthz and
    the metrics whether the view caught up and how long ago it last heard a record."""

    def __init__(
        self,
        settings: KafkaSettings,
        publisher: AsyncPublisher,
        *,
        worker_id: str,
        fetch_wait_ms: int,
        on_change: OnChange | None = None,
        on_publish_error: Callable[[], None] | None = None,
        on_reader_error: Callable[[], None] | None = None,
        reader_backoff_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self._topic = settings.topic(topics.GATEWAY_HEALTH)
        self._publisher = publisher
        self._fetch_wait_ms = fetch_wait_ms
        self._on_publish_error = on_publish_error
        self._on_reader_error = on_reader_error
        self._backoff_s = reader_backoff_s  # after a reader error, doubling up to 30 s
        self._deadline_s = settings.kafka_delivery_timeout_ms / 1000 + 5
        self.live = LiveView(worker_id, self._send, on_change=on_change)
        self._sending: set[asyncio.Task[None]] = set()
        self._caught_up = asyncio.Event()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._last_record: float | None = None  # monotonic, set on the loop
        self.reader_errors = 0  # written by the reader thread only
        self.last_reader_error: str | None = None

    async def start(self, catch_up_s: float) -> bool:
        """Check the topic's layout (TopicLayoutError if it is wrong), start reading and
        wait until the view has read the topic to its end (True), or `catch_up_s` passed
        (False: it goes on reading in the background, and `status()` says so)."""
        started = time.monotonic()
        try:
            await asyncio.to_thread(check_layout, self._settings, min(catch_up_s, 10.0))
        except KafkaException as exc:  # the broker is away: the reader keeps trying
            log.error("gateway health: cannot check the layout of %s: %s", self._topic, exc)
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(
            target=self._read_into, args=(loop,), name="gateway-health", daemon=True
        )
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

    @property
    def caught_up(self) -> bool:
        """The view has read the topic to its end at least once since it started."""
        return self._caught_up.is_set()

    def seconds_since_record(self) -> float | None:
        """How long ago the reader handed over a record (None: none yet). Records come only
        with changes, so a large value on a quiet system is normal."""
        if self._last_record is None:
            return None
        return time.monotonic() - self._last_record

    def status(self) -> dict[str, Any]:
        """The view's reader, for /healthz."""
        since = self.seconds_since_record()
        return {
            "caught_up": self.caught_up,
            "records": self.live.applied,
            "seconds_since_record": None if since is None else round(since, 1),
            "reader_errors": self.reader_errors,
            "last_reader_error": self.last_reader_error,
        }

    def close(self) -> None:
        """Stop the reader (blocking up to 5 s: call it from a thread on a running loop)."""
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
            # The view reads PARTITION only (the layout is checked at start).
            await self._publisher.publish(
                self._topic, kafka_record, deadline_s=self._deadline_s, partition=PARTITION
            )
        except PublishFailed as exc:
            log.warning("gateway health %s %s not published: %s", record.gateway, record.event, exc)
            if self._on_publish_error is not None:
                self._on_publish_error()

    def _read_into(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread: records to the loop in offset order (call_soon_threadsafe
        keeps it), then "caught up" once the end is reached; restarted on any error."""
        position = OFFSET_BEGINNING
        backoff_s = self._backoff_s
        while not self._stop.is_set():
            try:
                for batch in _read(
                    self._settings, self._topic, self._fetch_wait_ms, self._stop, start=position
                ):
                    if batch.values:
                        position = batch.next_offset
                        _to_loop(loop, self._received, batch.values)
                    if batch.at_end:
                        _to_loop(loop, self._caught_up.set)
                    backoff_s = self._backoff_s
            except _LoopClosed:  # the process is stopping
                return
            except Exception as exc:  # a KafkaException mostly: never let the view freeze
                self.reader_errors += 1
                self.last_reader_error = str(exc)[:300]
                log.error(
                    "gateway health reader failed (%s): reading again in %.0f s from offset %s",
                    exc,
                    backoff_s,
                    "the start" if position == OFFSET_BEGINNING else position,
                )
                if self._on_reader_error is not None:
                    self._on_reader_error()
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)

    def _received(self, values: list[bytes | None]) -> None:
        self._last_record = time.monotonic()
        self.live.receive(_decoded(values))


class _LoopClosed(Exception):
    pass


def _to_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError as exc:  # the loop closed under the reader
        raise _LoopClosed from exc


def check_layout(settings: KafkaSettings, timeout_s: float) -> None:
    """TopicLayoutError unless the health topic exists with exactly one partition (the
    view reads only PARTITION); KafkaException if the broker does not answer in time."""
    topic = settings.topic(topics.GATEWAY_HEALTH)
    consumer = Consumer(_consumer_config(settings, 100))
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    finally:
        consumer.close()
    if metadata is None or metadata.error is not None:
        problem = metadata.error if metadata is not None else "not in the metadata"
        raise TopicLayoutError(
            f"{topic} is missing ({problem}): `paystream dev` creates it, elsewhere create it"
            " with 1 partition and cleanup.policy=compact"
        )
    if list(metadata.partitions) != [PARTITION]:
        raise TopicLayoutError(
            f"{topic} has {len(metadata.partitions)} partitions, it must have exactly 1:"
            " workers read only partition 0, so they would miss records and breakers would"
            " never close in them. Recreate it with 1 partition and cleanup.policy=compact"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Batch:
    values: list[bytes | None]
    at_end: bool  # the end of the partition was reached (once per _read)
    next_offset: int  # the offset after the last of `values` (meaningless without values)


def _read(
    settings: KafkaSettings,
    topic: str,
    fetch_wait_ms: int,
    stop: threading.Event,
    *,
    start: int = OFFSET_BEGINNING,
) -> Generator[_Batch, None, None]:
    """Yield batches from `start` of the partition, forever: one per poll, empty ones
    included, so a caller with a deadline gets control back even when the broker is away.

    The end is an end-of-partition event at an offset at or past the end the broker
    reported first: tansu's ListOffsets can be short after a batched produce, so the
    reported end alone could stop short; the partition EOF comes only from an empty fetch
    at the true end. `at_end` is True once."""
    consumer = Consumer(_consumer_config(settings, fetch_wait_ms))
    partition = TopicPartition(topic, PARTITION)
    try:
        consumer.assign([TopicPartition(topic, PARTITION, start)])
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
            next_offset = -1
            for message in consumer.consume(num_messages=500, timeout=0.5):
                err = message.error()
                if err is None:
                    values.append(message.value())
                    next_offset = int(message.offset() or 0) + 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    eof = int(message.offset() or 0)
                else:
                    complained = _complain(complained, f"reading {topic}: {err.str()}")
            at_end = not done and reported is not None and eof is not None and eof >= reported
            done = done or at_end
            yield _Batch(values, at_end, next_offset)
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
    """The view after reading the whole topic. TimeoutError if the broker did not answer
    or the end was not reached within `timeout_s`; TopicLayoutError if the topic is
    missing or has more than one partition."""
    topic = settings.topic(topics.GATEWAY_HEALTH)
    deadline = time.monotonic() + timeout_s
    try:
        check_layout(settings, timeout_s)
    except KafkaException as exc:
        raise TimeoutError(f"the broker did not answer for {topic}: {exc}") from None
    view = LiveView("reader", lambda _record: None)
    batches = _read(settings, topic, 10, threading.Event())
    try:
        for batch in batches:
            view.receive(_decoded(batch.values))
            if batch.at_end:
                return view.view
            if time.monotonic() > deadline:
                break
    finally:
        batches.close()
    raise TimeoutError(f"could not read {topic} to its end in {timeout_s:.0f} s")


def publish_record(settings: KafkaSettings, record: HealthRecord, timeout_s: float = 30.0) -> None:
    """Publish `record` and wait for the acknowledgement; PublishFailed otherwise."""
    failure: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failure.append(err.str())

    try:
        producer = Producer(producer_config(settings, "paystream-cli"))
        producer.produce(
            settings.topic(topics.GATEWAY_HEALTH),
            key=record.gateway.encode(),
            value=encode(record),
            partition=PARTITION,
            headers=list[tuple[str, str | bytes | None]](HEADERS),
            on_delivery=on_delivery,
        )
    except (KafkaException, BufferError) as exc:
        raise PublishFailed(str(exc), maybe_persisted=False) from exc
    if producer.flush(timeout_s) > 0:
        raise PublishFailed("no acknowledgement in time", maybe_persisted=True)
    if failure:
        raise PublishFailed(failure[0], maybe_persisted=False)
