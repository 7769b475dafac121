"""Which gateways may take a transaction, in priority order (design.md §1, seed 003)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_storage.models import Connection, Gateway, GatewayCountry


@dataclass(frozen=True, slots=True)
class Candidate:
    gateway: str
    provider: str
    connection_id: uuid.UUID
    priority: int


async def candidates(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    country: str,
    kind: str,
    currency: str,
    amount_minor: int,
) -> list[Candidate]:
    """Enabled routes for the country and type, on enabled gateways that take the currency
    and amount, where the tenant has an enabled connection; lowest priority number first."""
    rows = await session.execute(
        select(
            GatewayCountry.gateway_code, Gateway.provider, Connection.id, GatewayCountry.priority
        )
        .join(Gateway, Gateway.code == GatewayCountry.gateway_code)
        .join(Connection, Connection.gateway_code == Gateway.code)
        .where(
            GatewayCountry.country == country,
            GatewayCountry.transaction_type == kind,
            GatewayCountry.enabled.is_(True),
            Gateway.enabled.is_(True),
            Gateway.currencies.contains([currency]),
            Gateway.min_amount_minor <= amount_minor,
            (Gateway.max_amount_minor.is_(None)) | (Gateway.max_amount_minor >= amount_minor),
            Connection.tenant_id == tenant_id,
            Connection.enabled.is_(True),
        )
        .order_by(GatewayCountry.priority, Connection.created_at)
    )
    seen: set[str] = set()
    out = []
    for code, provider, connection_id, priority in rows:
        if code not in seen:  # one connection per gateway: the oldest enabled one
            seen.add(code)
            out.append(Candidate(code, provider, connection_id, priority))
    return out
