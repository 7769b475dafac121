"""Administrative database actions run by the CLI as the owner role (outside RLS)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from paystream_config import DatabaseSettings
from paystream_storage.db import create_engine, sessionmaker

T = TypeVar("T")


def run_owner(db: DatabaseSettings, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `action` in one owner-role DB transaction and return its result."""

    async def _go() -> T:
        engine = create_engine(db)
        try:
            async with sessionmaker(engine)() as session, session.begin():
                return await action(session)
        finally:
            await engine.dispose()

    return asyncio.run(_go())
