"""Fresh, migrated PostgreSQL databases for tests, on whichever server a fixture provides."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url

from paystream_storage import migrate


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def server_answers(url: str) -> bool:
    try:
        with psycopg.connect(libpq(url), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@contextmanager
def fresh_database(server_url: str, *, migrated: bool = True) -> Iterator[str]:
    """Create a uniquely named database on the server of `server_url`; drop it afterwards."""
    name = f"paystream_test_{uuid.uuid4().hex[:12]}"
    admin = libpq(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name, drivername="postgresql+psycopg")
    rendered = url.render_as_string(hide_password=False)
    try:
        if migrated:
            migrate.upgrade(rendered)
        yield rendered
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
