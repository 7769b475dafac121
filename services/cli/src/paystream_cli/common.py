"""What the `paystream` commands share: failing with a message, settings, owner-role
database actions (outside RLS), tenant lookup and running a service.

Only click and the standard library are imported at module level: `paystream --help`
imports this module, and every heavy import waits until a command runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from paystream_cli import logs

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream_config import DatabaseSettings
    from paystream_keyring import KeyRing
    from paystream_storage.models import Tenant

T = TypeVar("T")
S = TypeVar("S", bound="BaseSettings")


def fail(message: str) -> NoReturn:
    """Print `paystream: MESSAGE` to stderr and exit with code 2."""
    click.echo(f"paystream: {message}", err=True)
    sys.exit(2)


def settings(cls: type[S]) -> S:
    """`cls` loaded from the environment; invalid settings fail with one line per problem."""
    from paystream_config import SettingsError, load

    try:
        return load(cls)
    except SettingsError as exc:
        fail(str(exc))


def database() -> DatabaseSettings:
    """PAYSTREAM_DATABASE_URL and friends, or a clean failure."""
    from paystream_config import DatabaseSettings

    return settings(DatabaseSettings)


def keyring() -> KeyRing:
    """The key ring from PAYSTREAM_KEYRING / PAYSTREAM_ACTIVE_KEY_ID, or a clean failure."""
    from paystream_keyring import KeyRing, KeyRingSettings

    return KeyRing.from_settings(settings(KeyRingSettings))


def run_owner(db: DatabaseSettings, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `action` in one owner-role DB transaction and return its result."""
    import asyncio

    from paystream_storage.db import create_engine, sessionmaker

    async def go() -> T:
        engine = create_engine(db)
        try:
            async with sessionmaker(engine)() as session, session.begin():
                return await action(session)
        finally:
            await engine.dispose()

    return asyncio.run(go())


async def find_tenant(session: AsyncSession, tenant: str) -> Tenant | None:
    """The tenant named `tenant`, or whose id it is."""
    import uuid

    from paystream_storage.models import Tenant
    from paystream_storage.tenants import tenant_by_name

    try:
        as_uuid = uuid.UUID(tenant)
    except ValueError:
        return await tenant_by_name(session, tenant)
    return await session.get(Tenant, as_uuid)


def name_database_sessions(process: str) -> None:
    """Every PostgreSQL session this process opens from now on (and those of its child
    processes) carries `paystream-<process>` as its application_name: libpq reads PGAPPNAME.
    So pg_stat_activity, lock waits and the server's log (`%a`) say which service a backend
    serves; without it, an operator had to match backends to services by client port. A
    PGAPPNAME the operator set, or an application_name in the URL, wins."""
    os.environ.setdefault("PGAPPNAME", f"paystream-{process}")


def run_service(process: str, run: Callable[[], object]) -> None:
    """Run a service's entry point with the log format of `process`; invalid settings fail."""
    from paystream_config import SettingsError

    logs.setup(process)
    name_database_sessions(process)
    try:
        run()
    except SettingsError as exc:
        fail(str(exc))
