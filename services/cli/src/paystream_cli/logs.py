"""One log format for every paystream process: timestamp, level, process, logger, message."""

from __future__ import annotations

import logging
import os


def setup(process: str) -> None:
    level = os.environ.get("PAYSTREAM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {process} %(name)s: %(message)s",
    )
    # librdkafka and alembic are chatty at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
