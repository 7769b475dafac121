"""What `paystream dead-letters` does: select dead letters, describe them, redrive them.

Reading and the record format are `paystream_messaging.dead_letters`; the redrive log is
`paystream_storage.redrives`. A redrive goes in batches: claim each dead letter in the log
(one committed transaction), send the claimed ones to their original topics and wait for
Kafka's acknowledgements, then confirm each (or mark it failed). A crash between the two
leaves claims that say so; the same record is never sent twice by accident.
"""

from __future__ import annotations

import base64
import getpass
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from paystream_config import DatabaseSettings, KafkaSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_messaging.dead_letters import DeadLetter
    from paystream_storage.models import DeadLetterRedrive

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
Status = Literal["redriven", "refused", "failed", "would_redrive"]


class DeadLetterSettings(KafkaSettings, DatabaseSettings):
    """The broker (PAYSTREAM_KAFKA_BOOTSTRAP, PAYSTREAM_TOPIC_PREFIX) and the owner-role
    database (PAYSTREAM_DATABASE_URL) that holds the redrive log."""


def parse_since(text: str, now: datetime) -> datetime:
    """`90s`, `15m`, `2h`, `3d` ago, or an ISO 8601 date/time (UTC unless it says)."""
    relative = _RELATIVE.match(text.strip().lower())
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r}: expected a duration (90s, 15m, 2h, 3d) or an ISO 8601 time"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters: every given condition must hold."""

    reason: str | None = None  # the reason starts with it (`unknown_tenant`, `invalid_event: ...`)
    since: datetime | None = None  # dead-lettered at or after
    topic: str | None = None  # original topic, with or without the prefix
    prefix: str = "paystream"

    @property
    def empty(self) -> bool:
        return self.reason is None and self.since is None and self.topic is None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reason is not None and not letter.reason.startswith(self.reason):
            return False
        if self.topic is not None and letter.original_topic not in (
            self.topic,
            f"{self.prefix}.{self.topic}",
        ):
            return False
        if self.since is not None:
            at = letter.dead_lettered_at
            if at is None or at < self.since:
                return False
        return True


def operator() -> str:
    """Who redrives: the OS user at this host, for the log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --- describing ----------------------------------------------------------------------------


def _bytes(raw: bytes | None) -> dict[str, str] | None:
    """Text when it is UTF-8, else base64, saying which."""
    if raw is None:
        return None
    try:
        return {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def _short(raw: bytes | None, width: int) -> str:
    if not raw:
        return "-"
    text = raw.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= width else text[: width - 1] + "~"


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _redrive_json(row: DeadLetterRedrive) -> dict[str, Any]:
    return {
        "redrive_id": row.id,
        "claimed_at": row.claimed_at.isoformat(),
        "by": row.redriven_by,
        "forced": row.forced,
        "redrive_count": row.redrive_count,
        "published_at": row.published_at.isoformat() if row.published_at else None,
        "published": (
            {"partition": row.published_partition, "offset": row.published_offset}
            if row.published_offset is not None
            else None
        ),
        "failure": row.failure,
    }


def summary(
    letter: DeadLetter, now: datetime, redrives: Sequence[DeadLetterRedrive] = ()
) -> dict[str, Any]:
    """One dead letter as a `list --json` row."""
    at = letter.dead_lettered_at
    return {
        "id": letter.id,
        "reason": letter.reason,
        "reason_code": letter.reason_code,
        "original": {
            "topic": letter.original_topic,
            "partition": letter.original_partition,
            "offset": letter.original_offset,
        },
        "key": _bytes(letter.key),
        "type": letter.event_type,
        "dead_lettered_at": at.isoformat() if at else None,
        "age_s": round((now - at).total_seconds(), 3) if at else None,
        "by": letter.by,
        "count": letter.count,
        "redriven": sum(1 for r in redrives if r.published_at is not None),
    }


def detail(
    letter: DeadLetter, now: datetime, redrives: Sequence[DeadLetterRedrive]
) -> dict[str, Any]:
    """One dead letter in full, for `show`."""
    return {
        **summary(letter, now, redrives),
        "dead_letter": {
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "timestamp": letter.timestamp.isoformat() if letter.timestamp else None,
        },
        "headers": [{"name": k, **(_bytes(v) or {})} for k, v in letter.headers],
        "value": _bytes(letter.value),
        "redrives": [_redrive_json(r) for r in redrives],
    }


TABLE_HEADER = (
    f"{'ID':<10} {'AGE':>6} {'COUNT':>5} {'REDRIVEN':>8}  {'ORIGINAL':<30} {'KEY':<24} "
    f"{'TYPE':<34} REASON"
)


def table_row(row: dict[str, Any]) -> str:
    original = row["original"]
    where = f"{original['topic'] or '?'}[{original['partition']}]@{original['offset']}"
    key = row["key"]
    if key is None:
        key_text = "-"
    elif "text" in key:
        key_text = _short(key["text"].encode(), 24)
    else:
        key_text = "<binary>"
    reason = printable(row["reason"])
    reason = reason if len(reason) <= 80 else reason[:79] + "~"
    return (
        f"{row['id']:<10} {age(row['age_s']) if row['age_s'] is not None else '-':>6} "
        f"{row['count']:>5} {row['redriven']:>8}  {where:<30} {key_text:<24} "
        f"{row['type'] or '-':<34} {reason}"
    )


def show_lines(item: dict[str, Any]) -> list[str]:
    """`show` as text: the summary, the headers, the value, the redrives."""
    original = item["original"]
    place = item["dead_letter"]
    lines = [
        f"dead letter   {item['id']} on {place['topic']}",
        f"reason        {printable(item['reason'])}",
        f"original      {original['topic']}[{original['partition']}]@{original['offset']}",
        f"key           {_field(item['key'])}",
        f"type          {item['type'] or '-'}",
        f"dead-lettered {item['dead_lettered_at'] or '-'} by {item['by'] or '-'}"
        + (f" ({age(item['age_s'])} ago)" if item["age_s"] is not None else ""),
        f"count         {item['count']} (times its record was dead-lettered)",
        "headers",
    ]
    lines += [f"  {printable(h['name'])}: {_field(h)}" for h in item["headers"]]
    lines.append(f"value         {_field(item['value'])}")
    if not item["redrives"]:
        lines.append("redrives      none")
    for r in item["redrives"]:
        if r["failure"]:
            state = f"FAILED: {r['failure']}"
        elif r["published"]:
            state = f"sent to {original['topic']}[{r['published']['partition']}]@" + str(
                r["published"]["offset"]
            )
        else:
            state = "claimed, never confirmed (interrupted?)"
        forced = " (forced)" if r["forced"] else ""
        lines.append(
            f"redrive       #{r['redrive_id']} {r['claimed_at']} by {r['by']}{forced}: {state}"
        )
    return lines


def _field(value: dict[str, str] | None) -> str:
    if value is None:
        return "-"
    if "text" in value:
        return printable(value["text"])
    return f"base64:{value['base64']}"


def printable(text: str) -> str:
    """`text` with control characters escaped: a record's bytes never drive the terminal."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


# --- redriving -----------------------------------------------------------------------------


@dataclass
class Outcome:
    letter: DeadLetter
    status: Status
    detail: str = ""
    published: tuple[int, int] | None = None
    redrive_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.letter.id,
            "status": self.status,
            "detail": self.detail,
            "reason": self.letter.reason,
            "original": {
                "topic": self.letter.original_topic,
                "partition": self.letter.original_partition,
                "offset": self.letter.original_offset,
            },
            "redrive_count": self.letter.count,
            "redrive_id": self.redrive_id,
            "published": (
                {
                    "topic": self.letter.original_topic,
                    "partition": self.published[0],
                    "offset": self.published[1],
                }
                if self.published
                else None
            ),
        }

    def line(self) -> str:
        where = f"{self.letter.original_topic}"
        if self.published:
            where += f"[{self.published[0]}]@{self.published[1]}"
        text = {
            "redriven": f"redriven to {where} (dlq_redrives={self.letter.count})",
            "would_redrive": f"would redrive to {where} (dlq_redrives={self.letter.count})",
            "refused": f"refused: {self.detail}",
            "failed": f"FAILED: {self.detail}",
        }[self.status]
        return f"{self.letter.id:<10} {printable(self.letter.reason_code):<24} {text}"


@dataclass
class Tally:
    total: int
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self.done += 1
            self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1

    def line(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return f"redrive: {self.done}/{self.total} ({parts})"


def _refusal(letter: DeadLetter, earlier: Sequence[DeadLetterRedrive], mine: dict[int, str]) -> str:
    """Why `letter` is not sent; `mine`: the claims of this run (id -> dead letter)."""
    last = earlier[-1]
    if last.id in mine:
        return f"same record as dead letter {mine[last.id]}, redriven by this run"
    if last.published_at is None:
        return (
            f"a redrive claimed at {last.claimed_at:%Y-%m-%d %H:%M:%S%z} by {last.redriven_by}"
            f" was never confirmed (interrupted?): check {last.original_topic} and use --force"
        )
    same = (last.dead_letter_partition, last.dead_letter_offset) == (
        letter.partition,
        letter.offset,
    )
    what = (
        "" if same else f" (as dead letter {last.dead_letter_partition}:{last.dead_letter_offset})"
    )
    return (
        f"already redriven{what} at {last.published_at:%Y-%m-%d %H:%M:%S%z} by"
        f" {last.redriven_by} to {last.original_topic}[{last.published_partition}]@"
        f"{last.published_offset}; --force to send it again"
    )


def _claim_for(letter: DeadLetter, *, force: bool, by: str) -> Any:
    from paystream_storage.redrives import Claim

    assert letter.original_topic is not None
    assert letter.original_partition is not None
    assert letter.original_offset is not None
    return Claim(
        dead_letter_topic=letter.topic,
        dead_letter_partition=letter.partition,
        dead_letter_offset=letter.offset,
        original_topic=letter.original_topic,
        original_partition=letter.original_partition,
        original_offset=letter.original_offset,
        record_digest=letter.digest(),
        reason=letter.reason,
        redrive_count=letter.count,
        forced=force,
        redriven_by=by,
    )


def _unredrivable(letter: DeadLetter) -> str | None:
    if not letter.original_topic:
        return "no dlq_topic header: not a paystream dead letter, nowhere to send it"
    if letter.original_partition is None or letter.original_offset is None:
        return "no dlq_partition/dlq_offset header: not a paystream dead letter"
    return None


async def redrive(
    settings: DeadLetterSettings,
    letters: Sequence[DeadLetter],
    *,
    force: bool,
    dry_run: bool,
    batch_size: int = 200,
    by: str | None = None,
    progress: Callable[[Tally], None] | None = None,
) -> list[Outcome]:
    """Send each dead letter's original record back to its topic (see the module doc)."""
    from paystream_storage.db import create_engine, sessionmaker

    who = by or operator()
    engine = create_engine(settings)
    sessions = sessionmaker(engine)
    producer = None if dry_run else _Sender(settings)
    tally = Tally(total=len(letters))
    outcomes: list[Outcome] = []
    mine: dict[int, str] = {}
    try:
        for start in range(0, len(letters), batch_size):
            chunk = letters[start : start + batch_size]
            async with sessions() as session, session.begin():
                done = await _claim(session, chunk, force=force, dry_run=dry_run, by=who, mine=mine)
            if producer is not None:
                sent = producer.send([o for o in done if o.redrive_id is not None])
                async with sessions() as session, session.begin():
                    await _settle(session, sent)
            outcomes.extend(done)
            tally.add(done)
            if progress is not None:
                progress(tally)
    finally:
        if producer is not None:
            producer.close()
        await engine.dispose()
    return outcomes


async def _claim(
    session: AsyncSession,
    chunk: Sequence[DeadLetter],
    *,
    force: bool,
    dry_run: bool,
    by: str,
    mine: dict[int, str],
) -> list[Outcome]:
    from paystream_storage import redrives

    outcomes: list[Outcome] = []
    for letter in chunk:
        problem = _unredrivable(letter)
        if problem is not None:
            outcomes.append(Outcome(letter, "refused", problem))
            continue
        claim = _claim_for(letter, force=force, by=by)
        if dry_run:
            earlier = [] if force else await redrives.previous(session, claim)
            if earlier:
                outcomes.append(Outcome(letter, "refused", _refusal(letter, earlier, mine)))
            else:
                outcomes.append(Outcome(letter, "would_redrive"))
            continue
        redrive_id = await redrives.claim(session, claim)
        if redrive_id is None:
            earlier = await redrives.previous(session, claim)
            why = _refusal(letter, earlier, mine) if earlier else "already being redriven"
            outcomes.append(Outcome(letter, "refused", why))
        else:
            mine[redrive_id] = letter.id
            outcomes.append(Outcome(letter, "redriven", redrive_id=redrive_id))
    return outcomes


async def _settle(session: AsyncSession, sent: Sequence[Outcome]) -> None:
    from paystream_storage import redrives

    for outcome in sent:
        assert outcome.redrive_id is not None
        if outcome.published is not None:
            await redrives.confirm(session, outcome.redrive_id, *outcome.published)
        else:
            await redrives.fail(session, outcome.redrive_id, outcome.detail)


class _Sender:
    """An idempotent, acks=all producer; each record's delivery report is awaited."""

    def __init__(self, settings: DeadLetterSettings) -> None:
        from confluent_kafka import Producer

        from paystream_messaging.kafka_config import producer_config

        self._producer = Producer(producer_config(settings, "paystream-cli-redrive"))
        self._timeout_s = settings.kafka_delivery_timeout_ms / 1000 + 10
        self._topics: dict[str, str | None] = {}

    def _topic_problem(self, topic: str) -> str | None:
        """Why `topic` cannot take the record (None: it exists). Checked, not auto-created."""
        if topic not in self._topics:
            from confluent_kafka import KafkaException

            try:
                metadata = self._producer.list_topics(topic, timeout=self._timeout_s)
            except KafkaException as exc:
                return f"{topic}: {exc}"
            described = metadata.topics.get(topic)
            error = None if described is None else described.error
            self._topics[topic] = (
                f"topic {topic} does not exist" if described is None or error is not None else None
            )
        return self._topics[topic]

    def send(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        from confluent_kafka import KafkaError, KafkaException, Message

        def report(outcome: Outcome) -> Callable[[KafkaError | None, Message], None]:
            def delivered(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    outcome.status, outcome.detail = "failed", f"not acknowledged: {err.str()}"
                else:
                    outcome.published = (int(msg.partition() or 0), int(msg.offset() or 0))

            return delivered

        waiting: list[Outcome] = []
        for outcome in outcomes:
            topic = outcome.letter.original_topic
            assert topic is not None
            problem = self._topic_problem(topic)
            if problem is not None:
                outcome.status, outcome.detail = "failed", problem
                continue
            record = outcome.letter.redrive_record()
            while True:
                try:
                    self._producer.produce(
                        topic,
                        key=record.key or None,
                        value=record.value,
                        headers=list[tuple[str, str | bytes | None]](record.headers),
                        on_delivery=report(outcome),
                    )
                    waiting.append(outcome)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.1)
                except KafkaException as exc:
                    outcome.status, outcome.detail = "failed", str(exc)
                    break
        self._producer.flush(self._timeout_s)
        for outcome in waiting:
            if outcome.status == "redriven" and outcome.published is None:
                # No report by the deadline: it may still land, so say so.
                outcome.status = "failed"
                outcome.detail = "no delivery report in time (it may still have been written)"
        return list(outcomes)

    def close(self) -> None:
        self._producer.flush(self._timeout_s)
