"""What a process keeps of the configuration (tenants, routes, connections) between uses.

Every change to those tables bumps `config_version` (migration 0006, a trigger in the same
transaction). A process learns the version for free at the start of every unit of work
(`payments.PgPaymentStore`), or by polling it (`poll_version`, for processes that run no
units); when it moved, everything cached is dropped. So `paystream gateways down` or a
disabled connection takes effect in every worker at its next unit, without a restart.

An entry is kept only if it was read under the version the cache holds, so a unit that
read the old configuration just before a change cannot put it back after the drop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

T = TypeVar("T")

VERSION_QUERY = "SELECT version FROM config_version"


class ConfigCache:
    def __init__(self) -> None:
        self.version = 0
        # Tenants are never deleted: one known to exist stays known, whatever the version.
        self.tenants: set[Any] = set()
        self._entries: dict[Hashable, Any] = {}
        self._listeners: list[Callable[[], None]] = []

    def observe(self, version: int) -> None:
        """The version just read from the database; a new one drops every entry."""
        if version != self.version:
            if self.version:
                log.info("configuration changed (version %d -> %d)", self.version, version)
            self.version = version
            self._entries.clear()
            for listener in self._listeners:
                listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the version moves (e.g. to drop clients built from
        an old connection row)."""
        self._listeners.append(listener)

    def get(self, key: Hashable) -> Any | None:
        return self._entries.get(key)

    def put(self, key: Hashable, value: T, *, read_at: int) -> T:
        """Keep `value` if it was read under the current version; returns it either way."""
        if read_at == self.version:
            self._entries[key] = value
        return value


async def poll_version(engine: AsyncEngine, cache: ConfigCache, interval_s: float) -> None:
    """For processes that run no units of work: read the version every `interval_s`."""
    while True:
        try:
            async with engine.connect() as conn:
                version = (await conn.execute(text(VERSION_QUERY))).scalar_one()
            cache.observe(int(version))
        except Exception as exc:  # the database may be away: the caches stay as they are
            log.warning("configuration version poll failed: %s", exc)
        await asyncio.sleep(interval_s)
