"""`paystream topics create`."""

from __future__ import annotations

import click

from paystream_cli.common import settings


@click.group()
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
def topics_create() -> None:
    """Create the paystream topics that do not exist yet."""
    from paystream_config import KafkaSettings
    from paystream_messaging.topics import ensure_topics

    created = ensure_topics(settings(KafkaSettings))
    click.echo(f"created: {', '.join(created) or 'nothing (all exist)'}")
