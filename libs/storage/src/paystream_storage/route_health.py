"""Recent health of each route: final attempts per gateway, country and type in a window,
and how many succeeded (`paystream_route_health`, migrations 0013-0014), as the ranking's
`WindowStats`. The gateway worker reads it through its payment unit (the app role, no
tenant: the function is SECURITY DEFINER); `paystream routes explain` through the CLI's
session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_core.ranking import WindowStats

# (gateway, country, transaction type) -> its window's stats.
HealthKey = tuple[str, str, str]
Health = dict[HealthKey, WindowStats]

ROUTE_HEALTH_SQL = (
    "SELECT gateway_code, country, transaction_type, final, succeeded"
    " FROM paystream_route_health(%s)"
)


def health_of(rows: Iterable[Sequence[Any]]) -> Health:
    return {(r[0], r[1], r[2]): WindowStats(int(r[3]), int(r[4])) for r in rows}


async def read_route_health(session: AsyncSession, window_s: float) -> Health:
    rows = await session.execute(
        text(
            "SELECT gateway_code, country, transaction_type, final, succeeded"
            " FROM paystream_route_health(:window)"
        ),
        {"window": window_s},
    )
    return health_of(rows.all())
