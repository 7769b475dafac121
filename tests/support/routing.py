"""The demo routing `paystream dev` seeds, written into a test's database."""

from __future__ import annotations

from paystream_cli.demo_seed import seed_routing
from paystream_config import DatabaseSettings
from paystream_storage.db import create_engine, sessionmaker


async def seed_demo_routing(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    try:
        async with sessionmaker(engine)() as session, session.begin():
            await seed_routing(session)
    finally:
        await engine.dispose()
