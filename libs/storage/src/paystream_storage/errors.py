"""Database errors that mean "try again later", not "this record is bad".

A database that is down, restarting or failing over, a dropped connection, a deadlock or a
serialization failure: consumers retry these without limit, so no work is lost while
PostgreSQL is away. Anything else is a bug, or a value the database cannot hold.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import InterfaceError, OperationalError

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,  # SQLAlchemy's wrapper, e.g. at pool checkout
    InterfaceError,
    psycopg.OperationalError,  # includes deadlocks and serialization failures
    psycopg.InterfaceError,
)
