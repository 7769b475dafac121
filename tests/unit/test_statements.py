"""Statements rendered with their values as literals (paystream_storage.statements): what
each type becomes, and that no value can end a string literal early."""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from enum import IntEnum, StrEnum

import pytest

from paystream_storage import payments
from paystream_storage.statements import Json, Rows, literal, render, rowset


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


def test_scalars() -> None:
    tid = uuid.UUID("00000000-0000-0000-0000-000000000001")
    at = datetime(2026, 12, 7, 3, 4, 5, 6, tzinfo=UTC)
    assert literal(None) == "NULL"
    assert literal(True) == "true"
    assert literal(False) == "false"
    assert literal(-42) == "-42"
    assert literal(2.5) == "2.5"
    assert literal(tid) == "'00000000-0000-0000-0000-000000000001'::uuid"
    assert literal(at) == "'2026-12-07T03:04:05.000006+00:00'::timestamptz"
    assert literal(Colour.RED) == "E'red'"
    assert literal(Level.HIGH) == "3"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "E'plain'"),
        ("it's", "E'it''s'"),
        ("back\\slash", "E'back\\\\slash'"),
        ("\\'; DROP TABLE transactions; --", "E'\\\\''; DROP TABLE transactions; --'"),
        ("ünïcødé ✓", "E'ünïcødé ✓'"),
    ],
)
def test_strings_cannot_end_their_literal_early(value: str, expected: str) -> None:
    rendered = literal(value)
    assert rendered == expected
    # Inside the quotes: every quote doubled, every backslash doubled.
    body = rendered[2:-1]
    assert re.fullmatch(r"(?:[^'\\]|''|\\\\)*", body)


def test_nul_and_non_finite_and_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        literal("a\x00b")
    with pytest.raises(ValueError, match="nan"):
        literal(math.nan)
    with pytest.raises(TypeError):
        literal(object())
    with pytest.raises(TypeError):
        literal(Rows([(object(),)]))
    with pytest.raises(ValueError, match="JSON"):
        literal(Rows([(math.inf,)]))


def test_arrays_row_sets_and_json() -> None:
    tid = uuid.UUID(int=5)
    assert literal([]) == "'{}'"
    assert literal(["a", "b'"]) == "ARRAY[E'a', E'b''']"
    assert literal((tid,)) == f"ARRAY['{tid}'::uuid]"
    rows = Rows([(tid, "o'k", 1, None, b"\x01\xff", Json({"k": "v"}))])
    # JSON escapes the bytea's backslash, then the literal doubles both.
    four = "\\" * 4
    assert literal(rows) == f"""E'[["{tid}","o''k",1,null,"{four}x01ff",{{"k":"v"}}]]'"""
    assert literal(Json({"a": [1, "x"]})) == """E'{"a":[1,"x"]}'::jsonb"""


def test_rowset_reads_columns_in_order() -> None:
    sql = rowset("uuid", "jsonb", "bigint")
    assert sql == (
        "(SELECT (r->>0)::uuid, NULLIF(r->1, 'null'::jsonb), (r->>2)::bigint"
        " FROM paystream_rows(%s::jsonb) AS r OFFSET 0)"
    )


def test_render_substitutes_each_placeholder_once() -> None:
    # A value holding "%s" stays as it is: substitution happens once.
    assert render("SELECT %s, %s", ("%s", 1)) == "SELECT E'%s', 1"
    assert render("SELECT 1") == "SELECT 1"


def test_the_payment_statements_are_single_statements_with_plain_placeholders() -> None:
    """Several statements go in one simple query, joined by ';': a statement holding its own
    ';' would shift every result after it, and a '%' other than '%s' would break rendering."""
    statements = {
        name: value
        for name, value in vars(payments).items()
        if name.startswith("_") and name.isupper() and isinstance(value, str)
    }
    assert len(statements) > 20
    for name, sql in statements.items():
        assert ";" not in sql, name
        assert "%" not in sql.replace("%s", ""), name
