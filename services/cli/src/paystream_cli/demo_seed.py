"""The demo configuration `paystream dev` seeds: countries, gateways, routing priorities."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from paystream_storage.models import Country, Gateway, GatewayCountry

COUNTRIES = {
    "DE": "Germany",
    "FR": "France",
    "GB": "United Kingdom",
    "US": "United States",
    "BR": "Brazil",
    "NG": "Nigeria",
}

# code -> (provider, name, currencies)
GATEWAYS = {
    "stripe": ("stripe", "Stripe", ["EUR", "GBP", "USD", "BRL"]),
    "jsonpay": ("json", "JSONPay REST gateway", ["EUR", "GBP", "USD", "BRL", "NGN"]),
    "soapbank": ("soap", "SOAPBank XML gateway", ["EUR", "GBP", "USD", "NGN", "BRL"]),
}

# country -> gateway codes in priority order; deposits and withdrawals differ on purpose.
DEPOSIT_ROUTES = {
    "DE": ["stripe", "jsonpay", "soapbank"],
    "FR": ["stripe", "soapbank"],
    "GB": ["jsonpay", "stripe"],
    "US": ["stripe", "jsonpay"],
    "BR": ["jsonpay", "soapbank", "stripe"],
    "NG": ["soapbank", "jsonpay"],
}
WITHDRAWAL_ROUTES = {
    "DE": ["soapbank", "jsonpay"],
    "FR": ["jsonpay", "soapbank"],
    "GB": ["stripe", "jsonpay"],
    "US": ["jsonpay", "stripe"],
    "BR": ["soapbank", "jsonpay"],
    "NG": ["jsonpay", "soapbank"],
}


async def seed_routing(session: AsyncSession) -> None:
    """Idempotent, and it never undoes an operator's routing: countries and gateways are
    added when missing (a gateway's limits, which `paystream routes limits` changes, are set
    only then), and a country/type gets the demo routes only while it has none, so the
    priorities and switches set with `paystream routes` survive a restart of `paystream
    dev` (`routes set` never leaves a country/type without routes)."""
    for code, name in COUNTRIES.items():
        stmt = insert(Country).values(code=code, name=name)
        await session.execute(
            stmt.on_conflict_do_update(index_elements=["code"], set_={"name": name})
        )
    for code, (provider, name, currencies) in GATEWAYS.items():
        gw = insert(Gateway).values(code=code, provider=provider, name=name, currencies=currencies)
        await session.execute(
            gw.on_conflict_do_update(
                index_elements=["code"], set_={"provider": provider, "name": name}
            )
        )
    pairs = select(GatewayCountry.country, GatewayCountry.transaction_type).distinct()
    routed = {(country, kind) for country, kind in await session.execute(pairs)}
    for kind, routes in (("deposit", DEPOSIT_ROUTES), ("withdrawal", WITHDRAWAL_ROUTES)):
        for country, codes in routes.items():
            if (country, kind) in routed:
                continue
            await session.execute(
                insert(GatewayCountry).values(
                    [
                        {
                            "gateway_code": code,
                            "country": country,
                            "transaction_type": kind,
                            "priority": priority,
                        }
                        for priority, code in enumerate(codes, start=1)
                    ]
                )
            )
