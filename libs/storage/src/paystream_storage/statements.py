"""Statements queued on one connection and sent together, as one simple query, when a
result is needed.

Why not psycopg's pipeline mode, which this replaced on the hot path: measured on a 2-core
machine, a statement in pipeline mode cost 100-160 µs of client CPU (query conversion, one
Python dumper call per array element, result bookkeeping), which made psycopg about half of
the gateway worker's CPU. The same unit's statements rendered with their values as literals
and sent in one `execute` cost about a third of that, and a round trip is still taken only
where a result is read. Sets of rows go in as one JSON document per statement (`rowset`:
one `json.dumps` in C instead of one array per column dumped element by element).

The price: the server parses and plans each statement every time (no prepared
statements). PostgreSQL does that in C, and these statements are small; `paystream bench
e2e` shows the whole machine's CPU per payment, the server's included.

Values become SQL literals here, so only the types `literal` knows are accepted. Strings are
always written as E'' literals with backslashes and quotes escaped, which reads the same
whatever `standard_conforming_strings` says; NUL, which PostgreSQL text cannot hold, is
refused (as psycopg refused it).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import ExecStatus


class Rows:
    """A set of rows sent as one JSON array of arrays; read in SQL with `rowset(...)`."""

    __slots__ = ("rows",)

    def __init__(self, rows: Sequence[Sequence[Any]]) -> None:
        self.rows = rows


class Json:
    """A value sent as `jsonb`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def rowset(*types: str) -> str:
    """SQL reading a `Rows` parameter as a relation, one column per type, in order; alias it
    (`rowset(...) AS v(a, b)`). A `jsonb` column takes the JSON value as it is. Needs
    migration 0015 (`paystream_rows`)."""
    columns = ", ".join(
        f"NULLIF(r->{i}, 'null'::jsonb)" if t == "jsonb" else f"(r->>{i})::{t}"
        for i, t in enumerate(types)
    )
    # paystream_rows (migration 0015): jsonb_array_elements with an estimate of 10 rows
    # instead of 100, so the planner joins by index instead of scanning whole tables.
    # OFFSET 0 keeps the subquery a relation of its own: flattened, a join condition would
    # read `(r->>0)::uuid`, and under row-level security a condition calling functions
    # that are not leakproof (->>, the casts) cannot be an index condition, so the generic
    # plan a prepared statement settles on scanned the whole table (the app role's plans).
    return f"(SELECT {columns} FROM paystream_rows(%s::jsonb) AS r OFFSET 0)"


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a string with a NUL character cannot be stored")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _json_value(value: Any) -> Any:
    """json.dumps's hook for what JSON has no type for."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Json):
        return value.value
    raise TypeError(f"cannot send {type(value).__name__} in a row set")


def _json(value: Any) -> str:
    # allow_nan=False: NaN is no JSON, and PostgreSQL would refuse the whole statement.
    return json.dumps(value, default=_json_value, separators=(",", ":"), allow_nan=False)


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"cannot send {value!r}")
    return repr(value)


_LITERALS: dict[type, Callable[[Any], str]] = {
    str: _text,
    int: str,
    float: _float,
    bool: lambda v: "true" if v else "false",
    uuid.UUID: lambda v: f"'{v}'::uuid",
    datetime: lambda v: f"'{v.isoformat()}'::timestamptz",
    Rows: lambda v: _text(_json(v.rows)),
    Json: lambda v: _text(_json(v.value)) + "::jsonb",
    type(None): lambda v: "NULL",
    list: lambda v: _array(v),
    tuple: lambda v: _array(v),
}


def _array(values: Sequence[Any]) -> str:
    # Typed by its elements' literals; an empty one is the untyped '{}', which takes the
    # type of the parameter it is given to (ARRAY[] alone has none).
    return "ARRAY[" + ", ".join(literal(x) for x in values) + "]" if values else "'{}'"


def literal(value: Any) -> str:
    """`value` as an SQL literal (a str subclass, such as a StrEnum, as its text)."""
    render = _LITERALS.get(type(value))
    if render is None:
        if isinstance(value, str):
            return _text(str(value))
        if isinstance(value, int):  # an IntEnum
            return str(int(value))
        raise TypeError(f"cannot send {type(value).__name__} as a literal")
    return render(value)


def render(sql: str, params: Sequence[Any] = ()) -> str:
    """`sql` with each `%s` replaced by the literal of its parameter."""
    return sql % tuple(literal(p) for p in params) if params else sql


@dataclass(frozen=True, slots=True)
class _Prepared:
    name: str
    prepare: str  # PREPARE name AS <the statement with $1..$n>


_PREPARED: dict[str, _Prepared] = {}


def _prepared(sql: str, count: int) -> _Prepared:
    """The server-side prepared statement a statement text with `count` parameters becomes
    (its name is a digest of the text: the same on every connection and every process)."""
    found = _PREPARED.get(sql)
    if found is None:
        name = "paystream_" + hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:20]
        body = sql % tuple(f"${i}" for i in range(1, count + 1))
        found = _PREPARED[sql] = _Prepared(name, f"PREPARE {name} AS {body}")
    return found


class _ConnectionState:
    """What one connection has prepared, as far as this process knows. After a batch that
    failed, PREPAREs in it may or may not have run: `known` is False until the list is read
    back from `pg_prepared_statements`."""

    __slots__ = ("known", "names")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.known = True


_STATES: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _ConnectionState] = (
    weakref.WeakKeyDictionary()
)
_READ_PREPARED = "SELECT name FROM pg_prepared_statements WHERE name LIKE 'paystream\\_%'"


class Result:
    """The rows one queued statement returned, once its batch has gone (`rows()` sends
    everything queued so far if it has not)."""

    __slots__ = ("_queue", "_rows")

    def __init__(self, queue: StatementQueue) -> None:
        self._queue = queue
        self._rows: list[tuple[Any, ...]] | None = None

    async def rows(self) -> list[tuple[Any, ...]]:
        if self._rows is None:
            await self._queue.flush()
        if self._rows is None:  # the batch that held it failed (and raised) before
            raise RuntimeError("this statement's batch failed: its unit must roll back")
        return self._rows


class StatementQueue:
    """Statements for one connection, sent when a result is read or `flush()` is called.

    A statement with parameters is prepared on the server the first time this connection
    sends it (`PREPARE`, in the same batch) and then sent as `EXECUTE name(literals...)`,
    so the server parses and plans it once per connection, as with psycopg's prepared
    statements (without it, planning every statement every time cost the server about as
    much CPU as the client saved, measured with one transaction per unit). Each parameter
    must therefore be typed by its context or a cast: a bare `SELECT %s` is prepared as
    text.

    A statement that fails stops its batch (PostgreSQL runs none of the rest) and the
    error is raised by the read that sent it; the transaction is then aborted, so the
    caller's unit must roll back, as with psycopg's pipeline mode."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._queued: list[tuple[str, list[str] | None]] = []
        self._results: list[Result] = []

    def add(self, sql: str, params: Sequence[Any] = ()) -> Result:
        # Rendered now: a value that cannot be sent fails here, where it was given.
        self._queued.append((sql, [literal(p) for p in params] if params else None))
        result = Result(self)
        self._results.append(result)
        return result

    async def flush(self) -> None:
        if not self._queued:
            return
        queued, results = self._queued, self._results
        self._queued, self._results = [], []
        state = _STATES.get(self._conn)
        if state is None:
            state = _STATES[self._conn] = _ConnectionState()
        if not state.known:
            cursor = await self._conn.execute(_READ_PREPARED, prepare=False)
            state.names = {row[0] for row in await cursor.fetchall()}
            state.known = True
        statements: list[str] = []
        slots: list[Result | None] = []  # the result each statement's answer goes to
        for (sql, args), result in zip(queued, results, strict=True):
            if args is None:
                statements.append(sql)
            else:
                prepared = _prepared(sql, len(args))
                if prepared.name not in state.names:
                    statements.append(prepared.prepare)
                    slots.append(None)
                    state.names.add(prepared.name)
                statements.append(f"EXECUTE {prepared.name}({', '.join(args)})")
            slots.append(result)
        try:
            # No parameters: psycopg sends it with the simple query protocol, which allows
            # several statements; prepare=False: the text never repeats.
            cursor = await self._conn.execute(";\n".join(statements), prepare=False)
            for i, slot in enumerate(slots):
                if i and not cursor.nextset():
                    raise RuntimeError(f"{len(slots)} statements sent, {i} results received")
                if slot is not None:
                    status = cursor.pgresult.status if cursor.pgresult is not None else None
                    slot._rows = await cursor.fetchall() if status == ExecStatus.TUPLES_OK else []
        except BaseException:
            state.known = False
            raise
