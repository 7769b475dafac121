"""`paystream dead-letters list|show|redrive`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click

from paystream_cli.common import settings

if TYPE_CHECKING:
    from paystream_cli.dead_letters import DeadLetterSettings, Filter, Tally
    from paystream_messaging.dead_letters import DeadLetter
    from paystream_storage.models import DeadLetterRedrive

# Exit codes scripts can rely on: 0 done, 1 something failed or was refused, 2 usage
# (click's own, and bad settings).
FAILED = 1


@click.group("dead-letters")
def dead_letters() -> None:
    """Records the workers could not handle (`<prefix>.dead-letters`): list, inspect,
    send back to their topic. A dead letter's ID is its position there, PARTITION:OFFSET."""


def _filters(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--reason",
                metavar="R",
                help="Reason starts with R (e.g. unknown_tenant, invalid_event).",
            ),
            click.option(
                "--since",
                metavar="T",
                help="Dead-lettered at or after T: 90s, 15m, 2h, 3d ago or an ISO 8601 time.",
            ),
            click.option(
                "--topic",
                metavar="T",
                help="Original topic, with or without the prefix (commands, callbacks).",
            ),
        ]
    ):
        command = option(command)
    return command


def _filter(
    config: DeadLetterSettings, reason: str | None, since: str | None, topic: str | None
) -> Filter:
    from paystream_cli.dead_letters import Filter, parse_since

    at = None
    if since is not None:
        try:
            at = parse_since(since, datetime.now(UTC))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    return Filter(reason=reason, since=at, topic=topic, prefix=config.topic_prefix)


def _settings() -> DeadLetterSettings:
    from paystream_cli.dead_letters import DeadLetterSettings

    return settings(DeadLetterSettings)


def _topic(config: DeadLetterSettings) -> str:
    from paystream_messaging import topics

    return config.topic(topics.DEAD_LETTERS)


def _reader(config: DeadLetterSettings) -> dict[str, Any]:
    from paystream_messaging.dead_letters import reader_config

    return reader_config(
        config.kafka_bootstrap, "paystream-cli-dead-letters", config.kafka_fetch_wait_max_ms
    )


def _stop(message: str) -> NoReturn:
    click.echo(f"paystream: {message}", err=True)
    sys.exit(FAILED)


def _read(config: DeadLetterSettings, selection: Filter) -> list[DeadLetter]:
    """The matching dead letters, oldest first; progress on stderr for long topics."""
    from paystream_messaging.dead_letters import ReadFailed, read_all

    def progress(read: int) -> None:
        click.echo(f"read {read} dead letters", err=True)

    try:
        letters = [
            letter
            for letter in read_all(_reader(config), _topic(config), progress=progress)
            if selection.matches(letter)
        ]
    except ReadFailed as exc:
        _stop(f"cannot read the dead letters: {exc}")
    epoch = datetime.min.replace(tzinfo=UTC)
    letters.sort(key=lambda d: (d.dead_lettered_at or epoch, d.partition, d.offset))
    return letters


def _redrives(
    config: DeadLetterSettings, positions: list[tuple[int, int]] | None
) -> dict[tuple[int, int], list[DeadLetterRedrive]]:
    from paystream_cli.common import run_owner
    from paystream_storage.redrives import of_dead_letters

    topic = _topic(config)

    async def action(session: Any) -> dict[tuple[int, int], list[DeadLetterRedrive]]:
        return await of_dead_letters(session, topic, positions)

    try:
        return run_owner(config, action)
    except Exception as exc:  # the log is advisory for list/show: say why, stop cleanly
        _stop(f"cannot read the redrive log (PAYSTREAM_DATABASE_URL): {exc}")


@dead_letters.command("list", short_help="Dead letters, oldest first (filters, --json).")
@_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON document (machine-readable).")
def dead_letters_list(
    reason: str | None, since: str | None, topic: str | None, as_json: bool
) -> None:
    """Dead letters, oldest first: why, where from (original topic[partition]@offset),
    key, event type, age, how many times dead-lettered (COUNT) and redriven."""
    from paystream_cli.dead_letters import TABLE_HEADER, summary, table_row

    config = _settings()
    selection = _filter(config, reason, since, topic)
    letters = _read(config, selection)
    done = _redrives(config, None) if letters else {}
    now = datetime.now(UTC)
    rows = [summary(d, now, done.get((d.partition, d.offset), [])) for d in letters]
    if as_json:
        click.echo(json.dumps({"topic": _topic(config), "dead_letters": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no dead letter on {_topic(config)}" + ("" if selection.empty else " matches"))
        return
    click.echo(TABLE_HEADER)
    for row in rows:
        click.echo(table_row(row))
    click.echo(f"{len(rows)} dead letter(s) on {_topic(config)}", err=True)


@dead_letters.command("show", short_help="One dead letter in full (--json).")
@click.argument("dead_letter_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (machine-readable).")
def dead_letters_show(dead_letter_id: str, as_json: bool) -> None:
    """Dead letter ID (PARTITION:OFFSET) in full: reason, origin, every header, the value
    (text, or base64 when it is not UTF-8) and its redrives. Exit code 1 if there is none."""
    from paystream_cli.dead_letters import detail, show_lines
    from paystream_messaging.dead_letters import ReadFailed, parse_id, read_one

    try:
        partition, offset = parse_id(dead_letter_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ID") from None
    config = _settings()
    try:
        letter = read_one(_reader(config), _topic(config), partition, offset)
    except ReadFailed as exc:
        _stop(f"cannot read the dead letters: {exc}")
    if letter is None:
        _stop(f"no dead letter {dead_letter_id} on {_topic(config)}")
    done = _redrives(config, [(partition, offset)]).get((partition, offset), [])
    item = detail(letter, datetime.now(UTC), done)
    if as_json:
        click.echo(json.dumps(item, indent=2))
        return
    for line in show_lines(item):
        click.echo(line)


@dead_letters.command(
    "redrive", short_help="Send dead letters back to their topic (--dry-run, --force)."
)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@_filters
@click.option("--all", "everything", is_flag=True, help="Every dead letter (no filter).")
@click.option("--dry-run", is_flag=True, help="Say what would be sent; send and record nothing.")
@click.option(
    "--force", is_flag=True, help="Send again what was redriven before (you checked it is safe)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document (machine-readable).")
@click.option(
    "--batch",
    "batch_size",
    default=200,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Records claimed, sent and confirmed together; progress is shown per batch.",
)
def dead_letters_redrive(
    ids: tuple[str, ...],
    reason: str | None,
    since: str | None,
    topic: str | None,
    everything: bool,
    dry_run: bool,
    force: bool,
    as_json: bool,
    batch_size: int,
) -> None:
    """Send dead letters back to their original topic: the original record (key, value,
    headers) plus `dlq_redrives` = its dead-letter count, so one that fails again comes
    back counted higher. Name them by ID, or select them with --reason/--since/--topic,
    or --all. Each is recorded (dead_letter_redrives) and is not sent twice unless
    --force. Exit code 1 if any was refused or failed."""
    from paystream_cli import dead_letters as logic
    from paystream_messaging.dead_letters import ReadFailed, parse_id, read_one

    selection_given = reason is not None or since is not None or topic is not None
    if ids and (selection_given or everything):
        raise click.UsageError("name dead letters by ID or select them with filters, not both")
    if not ids and not selection_given and not everything:
        raise click.UsageError(
            "say which: ID..., --reason/--since/--topic, or --all for every dead letter"
        )
    positions: list[tuple[int, int]] = []
    for text in ids:
        try:
            positions.append(parse_id(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="ID") from None
    config = _settings()
    if ids:
        letters = []
        for (partition, offset), text in zip(positions, ids, strict=True):
            try:
                letter = read_one(_reader(config), _topic(config), partition, offset)
            except ReadFailed as exc:
                _stop(f"cannot read the dead letters: {exc}")
            if letter is None:
                _stop(f"no dead letter {text} on {_topic(config)}; nothing was redriven")
            letters.append(letter)
    else:
        letters = _read(config, _filter(config, reason, since, topic))
    if not letters:
        _report(config, [], dry_run=dry_run, as_json=as_json)
        return

    def progress(tally: Tally) -> None:
        if tally.total > batch_size:
            click.echo(tally.line(), err=True)

    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    try:
        outcomes = asyncio.run(
            logic.redrive(
                config,
                letters,
                force=force,
                dry_run=dry_run,
                batch_size=batch_size,
                progress=progress,
            )
        )
    except (OSError, SQLAlchemyError) as exc:
        # What was sent is logged; a batch cut off between send and confirm shows as
        # "claimed, never confirmed" in `show` and is refused until --force.
        _stop(f"redrive stopped: {exc}; `dead-letters show ID` tells what was sent")
    _report(config, outcomes, dry_run=dry_run, as_json=as_json)


def _report(
    config: DeadLetterSettings, outcomes: list[Any], *, dry_run: bool, as_json: bool
) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    if as_json:
        document = {
            "topic": _topic(config),
            "dry_run": dry_run,
            "results": [o.as_json() for o in outcomes],
            "summary": counts,
        }
        click.echo(json.dumps(document, indent=2))
    else:
        for outcome in outcomes:
            click.echo(outcome.line())
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))
        what = "dry run: nothing sent" if dry_run else "redrive"
        click.echo(f"{what}: {parts or 'no dead letter matches'}", err=True)
    if counts.get("refused") or counts.get("failed"):
        sys.exit(FAILED)
