"""The fast (Rust) validator says "valid" exactly when jsonschema does.

`SchemaRegistry.validate` trusts the fast validator's "valid" on the hot path and asks
jsonschema only about data the fast one refuses; if the two ever disagreed on something
jsonschema refuses, bad data would pass. Hypothesis mutates every schema example (missing
fields, wrong types, near-miss formats, extra fields) and checks both give the same answer.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from paystream_messaging.schemas import FAST_FORMATS, SchemaRegistry, iter_examples

REGISTRY = SchemaRegistry()
EXAMPLES = list(iter_examples(REGISTRY))

NEAR_MISSES = [
    "",
    " ",
    "x",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00+01:00",
    "2026-01-01t00:00:00z",
    "2026-13-01T00:00:00Z",
    "2026-01-01T25:00:00Z",
    "2026-01-01 00:00:00Z",
    "2026-01-01T00:00Z",
    "0f8fad5b-d9cb-469f-a165-70867728950e",
    "0f8fad5bd9cb469fa16570867728950e",
    "0F8FAD5B-D9CB-469F-A165-70867728950E",
    "{0f8fad5b-d9cb-469f-a165-70867728950e}",
    "https://bank.example/3ds",
    "http://",
    "https://bank example/3ds",
    "ftp://bank.example/x",
    "https:///path",
    "EUR",
    "eur",
    "DE",
    "user-42",
    "user 42",
    "a" * 65,
    "a" * 300,
    "paystream.transaction.succeeded.v1",
    "succeeded",
    "deposit",
    "insufficient_funds",
    "INSUFFICIENT FUNDS",
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NEAR_MISSES),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            paths.append((*prefix, key))
            paths += _paths(value, (*prefix, key))
    return paths


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any]:
    event_type, example = draw(st.sampled_from(EXAMPLES))
    data: Any = copy.deepcopy(example)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.sampled_from(["extra", "x", path[-1]]))] = draw(VALUES)
    return event_type, data


@settings(max_examples=400, deadline=None)
@given(case=mutated())
def test_both_validators_agree(case: tuple[str, Any]) -> None:
    event_type, data = case
    fast = REGISTRY._fast[event_type].is_valid(data)
    slow = not list(REGISTRY._validators[event_type].iter_errors(data))
    assert fast == slow, (event_type, data)


def test_every_example_passes_both() -> None:
    for event_type, example in EXAMPLES:
        assert REGISTRY._fast[event_type].is_valid(example), event_type
        REGISTRY.validate(event_type, example)


def test_the_fast_validator_knows_every_format_the_schemas_use() -> None:
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("format"), str):
                used.add(node["format"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in Path(REGISTRY.directory).glob("*.json"):
        walk(json.loads(path.read_text()))
    assert used <= set(FAST_FORMATS), used - set(FAST_FORMATS)
