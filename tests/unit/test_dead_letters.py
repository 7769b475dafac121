"""The dead-letter format: what a worker writes, what the CLI reads back and redrives, and
the count that grows on every round trip of a poison record (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from paystream_cli.dead_letters import Filter, age, parse_since, printable
from paystream_messaging.cloudevents_codec import KafkaRecord
from paystream_messaging.dead_letters import (
    DeadLetter,
    NotADeadLetter,
    dead_letter_headers,
    parse_id,
    redrives,
)
from paystream_streams.records import KafkaDeadLetters, RawRecord

ORIGINAL = [("ce_type", b"paystream.deposit.requested.v1"), ("ce_id", b"e1"), ("x", b"\x00\xff")]
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Published:
    """Stands in for AsyncPublisher: keeps what would have gone to Kafka."""

    def __init__(self) -> None:
        self.records: list[tuple[str, KafkaRecord]] = []

    async def publish(self, topic: str, record: KafkaRecord, *, deadline_s: float) -> None:
        self.records.append((topic, record))


def letter(record: KafkaRecord, partition: int = 0, offset: int = 5) -> DeadLetter:
    """A dead letter as the reader would build it from `record` on the topic."""
    return DeadLetter(
        "p.dead-letters", partition, offset, AT, record.key, record.value, record.headers
    )


async def dead_letter_of(raw: RawRecord, reason: str) -> KafkaRecord:
    out = Published()
    await KafkaDeadLetters(out, "p.dead-letters", by="worker").send(raw, reason)  # type: ignore[arg-type]
    [(topic, record)] = out.records
    assert topic == "p.dead-letters"
    return record


async def test_a_poison_record_comes_back_counted_higher_each_round() -> None:
    raw = RawRecord("p.commands", 2, 40, b"acct-1", b"not json", list(ORIGINAL))
    first = letter(await dead_letter_of(raw, "invalid_event: not JSON"))
    assert first.count == 1
    assert first.reason == "invalid_event: not JSON"
    assert first.reason_code == "invalid_event"
    assert (first.original_topic, first.original_partition, first.original_offset) == (
        "p.commands",
        2,
        40,
    )
    assert first.by == "worker"
    assert first.event_type == "paystream.deposit.requested.v1"

    resent = first.redrive_record()
    assert resent.key == b"acct-1"
    assert resent.value == b"not json"
    assert resent.headers == [*ORIGINAL, ("dlq_redrives", b"1")]

    # The worker fails it again at its new position: the count carries over, +1.
    again = RawRecord("p.commands", 2, 97, resent.key, resent.value, resent.headers)
    second = letter(await dead_letter_of(again, "invalid_event: not JSON"), offset=9)
    assert second.count == 2
    assert second.original_offset == 97
    assert second.original_headers() == ORIGINAL  # its old dlq_redrives is replaced
    assert second.redrive_record().headers == [*ORIGINAL, ("dlq_redrives", b"2")]
    # One failed record, one digest: its two dead letters differ only in where and why.
    assert second.digest() == first.digest()


def test_the_last_header_wins_and_old_dead_letters_count_one() -> None:
    headers = [
        ("dlq_reason", b"stale, from the original"),
        *dead_letter_headers(ORIGINAL, reason="r", topic="t", partition=1, offset=2, by=b"w"),
    ]
    found = letter(KafkaRecord(b"k", b"v", headers))
    assert found.reason == "r"
    assert [k for k, _ in found.original_headers()] == ["ce_type", "ce_id", "x"]
    old = [(k, v) for k, v in headers if k != "dlq_count"]  # written before the count existed
    assert letter(KafkaRecord(b"k", b"v", old)).count == 1
    assert redrives([("dlq_redrives", b"x")]) == 0
    assert redrives([("dlq_redrives", b"3")]) == 3


def test_dead_lettered_at_falls_back_to_the_kafka_timestamp() -> None:
    stamped = dead_letter_headers([], reason="r", topic="t", partition=0, offset=0, by=b"w", at=AT)
    assert letter(KafkaRecord(b"", b"", stamped)).dead_lettered_at == AT
    bare = letter(KafkaRecord(b"", b"", [("dlq_at", b"garbage")]))
    assert bare.dead_lettered_at == AT  # the record's own timestamp


def test_a_record_without_origin_cannot_be_redriven() -> None:
    stray = letter(KafkaRecord(b"k", b"v", [("ce_type", b"x")]))
    assert stray.reason == "-"
    assert stray.original_topic is None
    with pytest.raises(NotADeadLetter):
        stray.redrive_record()


def test_structured_events_name_their_type() -> None:
    structured = [("content-type", b"application/cloudevents+json; charset=utf-8")]
    value = b'{"type": "paystream.callback.received.v1"}'
    assert letter(KafkaRecord(b"", value, structured)).event_type == (
        "paystream.callback.received.v1"
    )
    assert letter(KafkaRecord(b"", b"[1]", structured)).event_type is None
    assert letter(KafkaRecord(b"", b"{", structured)).event_type is None


def test_digest_tells_different_records_apart() -> None:
    base = dead_letter_headers(ORIGINAL, reason="r", topic="t", partition=0, offset=0, by=b"w")
    one = letter(KafkaRecord(b"k", b"v", base))
    assert letter(KafkaRecord(b"k", b"v2", base)).digest() != one.digest()
    assert letter(KafkaRecord(b"k2", b"v", base)).digest() != one.digest()
    assert letter(KafkaRecord(b"kv", b"", base)).digest() != one.digest()


@pytest.mark.parametrize(
    ("text", "expected"), [("0:0", (0, 0)), (" 3:1234 ", (3, 1234)), ("12:9", (12, 9))]
)
def test_ids(text: str, expected: tuple[int, int]) -> None:
    assert parse_id(text) == expected


@pytest.mark.parametrize("text", ["", "1", "a:1", "1:-1", "1:2:3", "-1:0"])
def test_bad_ids(text: str) -> None:
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_id(text)


def test_since() -> None:
    now = AT
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("15m", now) == now - timedelta(minutes=15)
    assert parse_since("2H", now) == now - timedelta(hours=2)
    assert parse_since("1.5d", now) == now - timedelta(hours=36)
    assert parse_since("2026-02-01", now) == datetime(2026, 2, 1, tzinfo=UTC)
    assert parse_since("2026-02-01T10:00:00+02:00", now) == datetime(2026, 2, 1, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration"):
        parse_since("last week", now)


def test_filter() -> None:
    headers: Any = dead_letter_headers(
        [],
        reason="unknown_tenant: no tenant 1",
        topic="p.commands",
        partition=0,
        offset=1,
        by=b"w",
        at=AT,
    )
    found = letter(KafkaRecord(b"", b"", headers))
    assert Filter(prefix="p").matches(found)
    assert Filter(reason="unknown_tenant", prefix="p").matches(found)
    assert not Filter(reason="invalid_event", prefix="p").matches(found)
    assert Filter(topic="commands", prefix="p").matches(found)
    assert Filter(topic="p.commands", prefix="p").matches(found)
    assert not Filter(topic="callbacks", prefix="p").matches(found)
    assert Filter(since=AT, prefix="p").matches(found)
    assert not Filter(since=AT + timedelta(seconds=1), prefix="p").matches(found)


def test_age() -> None:
    assert [age(s) for s in (5, 300, 9000, 400000)] == ["5s", "5m", "2.5h", "4.6d"]


def test_record_bytes_never_drive_the_terminal() -> None:
    assert printable("ok \x1b[2Jcleared\nnext") == "ok \\x1b[2Jcleared\\x0anext"
