"""Parsing untrusted JSON (provider callbacks and responses) with bounded nesting.

`json.loads` recurses once per level and raises RecursionError near a thousand levels: a
validly signed callback nested 5,000 deep crashed the ingress with a 500. No provider
document nests more than a handful of levels, so depth is measured on the raw bytes first
(brackets inside strings do not count) and anything deeper than `MAX_JSON_DEPTH` is
refused before the parser starts. Strings holding NUL or a lone
surrogate are refused too: PostgreSQL text cannot store them, nor UTF-8 encode the latter,
so an event id or reference carrying one would fail every consumer that stores it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

MAX_JSON_DEPTH: Final = 64

_STRINGS: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # possessive: linear
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE: Final = bytes.maketrans(b"{}", b"[]")  # depth does not care which kind
_RUNS: Final = re.compile(rb"\[+|\]+")
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


class JsonRejected(ValueError):
    """The document was not parsed: malformed, nested too deep, or unstorable text."""


def nesting_depth_exceeds(data: bytes, max_depth: int) -> bool:
    """Whether arrays/objects in `data` nest deeper than `max_depth` (a running count
    that stops at the first level past it).

    Only brackets outside strings are looked at, and in runs, not one by one; one pass of
    `bytes.replace` first drops every innermost pair (lowering the depth by exactly one),
    which leaves few runs of the cheapest hostile shapes ("[][][]..."). A signed body is
    needed to get here, but the callback worker parses it again: 256 KiB of brackets
    costs at most a few tens of milliseconds."""
    if data.count(b"[") + data.count(b"{") <= max_depth:
        # Depth cannot exceed the number of opening brackets (those in strings included):
        # every provider answer ends here, before the regular expression's pass.
        return False
    brackets = _STRINGS.sub(b"", data).translate(_SQUARE, _NOT_BRACKETS)
    if max_depth < 1:
        return b"[" in brackets
    brackets = brackets.replace(b"[]", b"")
    limit = max_depth - 1  # the pass above took one level off
    depth = 0
    for run in _RUNS.finditer(brackets):
        if brackets[run.start()] == ord("["):
            depth += run.end() - run.start()
            if depth > limit:
                return True
        else:
            depth -= run.end() - run.start()
    return False


def parse_json(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed document; JsonRejected if it is not JSON, nests deeper than
    `max_depth`, or holds a string with NUL or a lone surrogate."""
    if nesting_depth_exceeds(data, max_depth):
        raise JsonRejected(f"JSON nested deeper than {max_depth} levels")
    try:
        document = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bad UTF-8
        raise JsonRejected(f"not JSON: {exc}") from None
    _check_strings(document)
    return document


def _check_strings(document: Any) -> None:
    pending = [document]  # a stack, not recursion: the depth is bounded but be plain
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            if _UNSTORABLE.search(node):
                raise JsonRejected("a string holds NUL or a lone surrogate")
        elif isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
