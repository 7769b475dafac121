"""Publishing from asyncio code with the acknowledgement awaited.

confluent_kafka.aio.AIOProducer cannot send headers, which CloudEvents binary mode needs, so
this wraps the plain Producer: a thread serves delivery reports and resolves one asyncio
future per record. librdkafka reports every record by `delivery.timeout.ms`, success or
failure, so `publish` never returns before Kafka decided.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from paystream_messaging.cloudevents_codec import KafkaRecord

log = logging.getLogger(__name__)


# After an outage an idempotent producer may be fenced (its epoch bump refused); it then
# fails every record, so it is replaced like one with a fatal error.
_FENCED = frozenset(
    code
    for code in (
        getattr(KafkaError, "PRODUCER_FENCED", None),
        getattr(KafkaError, "INVALID_PRODUCER_EPOCH", None),
        getattr(KafkaError, "_FENCED", None),
    )
    if code is not None
)


class PublishFailed(Exception):
    """Kafka did not acknowledge the record. `maybe_persisted` is True when it may still
    have been written (a retry with the same idempotency key is then safe, not a loss)."""

    def __init__(self, reason: str, *, maybe_persisted: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_persisted = maybe_persisted


class AsyncPublisher:
    def __init__(self, config: dict[str, Any]) -> None:
        self._config = {**config, "error_cb": self._on_error}
        self._producer = Producer(self._config)
        self._fatal: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in _FENCED:
            # An idempotent producer that hit a fatal error (e.g. fenced after an outage)
            # fails every later record: replace it on the next publish.
            log.error("kafka producer fatal error: %s; it will be replaced", err.str())
            self._fatal = err.str()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                producer = self._producer
            producer.poll(0.05)

    def _current(self) -> Producer:
        with self._lock:
            if self._fatal is not None:
                old, self._producer, self._fatal = self._producer, Producer(self._config), None
                old.purge()  # its queued records already failed or will fail: report them
                old.poll(0)
            return self._producer

    async def publish(
        self,
        topic: str,
        record: KafkaRecord,
        *,
        deadline_s: float,
        partition: int | None = None,
    ) -> None:
        """Return once Kafka acknowledged `record`; raise PublishFailed otherwise.

        `deadline_s` is a safety net above delivery.timeout.ms: librdkafka reports first.
        `partition`: this one instead of the partitioner's choice (a one-partition log).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message[bytes, bytes]) -> None:
            if err is not None and (err.fatal() or err.code() in _FENCED):
                self._on_error(err)
            loop.call_soon_threadsafe(_settle, done, err)

        try:
            self._current().produce(
                topic,
                value=record.value,
                key=record.key,
                headers=list[tuple[str, str | bytes | None]](record.headers),
                on_delivery=on_delivery,
                partition=-1 if partition is None else partition,  # -1: the partitioner's
            )
        except BufferError as exc:
            raise PublishFailed("local producer queue is full", maybe_persisted=False) from exc
        except KafkaException as exc:
            raise PublishFailed(str(exc), maybe_persisted=False) from exc
        try:
            await asyncio.wait_for(asyncio.shield(done), deadline_s)
        except TimeoutError as exc:
            raise PublishFailed("no delivery report in time", maybe_persisted=True) from exc

    def ping(self, timeout: float) -> bool:
        """True if the cluster answers a metadata request (blocking: run it in a thread)."""
        try:
            self._current().list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (up to `timeout`), stop the poller; returns undelivered.

        Idempotent. The client is released at once, not at garbage collection, so it stops
        reconnecting to a broker that may already be gone.
        """
        if self._stop.is_set():
            return 0
        remaining = self._current().flush(timeout)
        self._stop.set()
        self._poller.join(timeout)
        with self._lock:
            self._producer = _Closed()  # type: ignore[assignment]
        if remaining:
            log.error("%d records were not delivered before shutdown", remaining)
        return remaining


class _Closed:
    """Stands in for the released client: using a closed publisher fails clearly."""

    def __getattr__(self, name: str) -> Any:
        raise PublishFailed("publisher is closed", maybe_persisted=False)


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
        return
    # The Python client does not expose librdkafka's persistence status; a timed-out
    # record may have reached the broker, so say so.
    timed_out = err.code() == KafkaError._MSG_TIMED_OUT
    done.set_exception(PublishFailed(err.str(), maybe_persisted=timed_out))
