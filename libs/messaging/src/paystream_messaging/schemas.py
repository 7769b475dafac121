"""JSON Schema registry for the ``data`` of every paystream CloudEvent type.

The schemas live in the repository's ``schemas/`` directory, one ``<event type>.json`` per
type (see ``schemas/README.md``). Files whose name is not an event type (no ``.vN`` suffix,
e.g. ``paystream.transaction.common.json``) are shared definitions: they are loaded only so
that ``$ref`` resolves offline, through a ``referencing`` registry (never the network).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit
from uuid import UUID

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "SCHEMAS_DIR_ENV",
    "SCHEMA_ID_BASE",
    "SchemaError",
    "SchemaRegistry",
    "SchemaViolation",
    "SchemasDirectoryNotFound",
    "UnknownEventType",
    "find_schemas_dir",
    "iter_examples",
]

SCHEMAS_DIR_ENV: Final = "PAYSTREAM_SCHEMAS_DIR"
SCHEMA_ID_BASE: Final = "https://schemas.paystream.dev/"
_EVENT_TYPE_FILE = re.compile(r"^paystream(\.[a-z0-9_]+)+\.v[0-9]+$")
_MAX_ERRORS: Final = 8
_MAX_MESSAGE_CHARS: Final = 300


class SchemaViolation(ValueError):
    """``data`` does not match its event type's schema. ``reason`` is operator-readable."""

    def __init__(self, event_type: str, errors: tuple[str, ...]) -> None:
        self.event_type = event_type
        self.errors = errors
        self.reason = f"data does not match schema {event_type}: " + "; ".join(errors)
        super().__init__(self.reason)


class UnknownEventType(LookupError):
    """No schema exists for this event type."""

    def __init__(self, event_type: str, known: tuple[str, ...]) -> None:
        self.event_type = event_type
        self.reason = f"unknown event type {event_type!r} (no schema; known: {', '.join(known)})"
        super().__init__(self.reason)


class SchemasDirectoryNotFound(FileNotFoundError):
    """The schemas directory could not be located."""


# --- format checking -----------------------------------------------------------------------
# jsonschema checks "uuid" with the stdlib, but "date-time" and "uri" only when the optional
# packages rfc3339-validator / rfc3987 are installed; without them those formats silently pass.
# We do not want the contract to depend on what happens to be installed, so both are checked
# here with the stdlib.

_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats only constrain strings
    if not _RFC3339.match(instance):
        return False
    try:
        datetime.fromisoformat(instance.upper())  # rejects e.g. month 13, hour 25
    except ValueError:
        return False
    return True


def _is_uri(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if any(ch.isspace() for ch in instance):
        return False
    try:
        parts = urlsplit(instance)
    except ValueError:
        return False
    if not _URI_SCHEME.match(parts.scheme):
        return False
    return not (parts.scheme.lower() in ("http", "https") and not parts.hostname)


def _is_uuid(instance: object) -> bool:
    """As jsonschema checks it: parses, and is in the hyphenated 8-4-4-4-12 form."""
    if not isinstance(instance, str):
        return True
    try:
        UUID(instance)
    except ValueError:
        return False
    return len(instance) == 36 and all(instance[i] == "-" for i in (8, 13, 18, 23))


def _format_checker() -> FormatChecker:
    checker = FormatChecker()  # copies the checkers known to jsonschema (uuid, date, ...)
    checker.checks("date-time")(_is_date_time)
    checker.checks("uri")(_is_uri)
    return checker


# The formats our schemas use, checked by the fast validator with exactly the functions
# above (a unit test keeps the list complete and both validators in agreement).
FAST_FORMATS = {"date-time": _is_date_time, "uri": _is_uri, "uuid": _is_uuid}


# --- discovery -----------------------------------------------------------------------------


def find_schemas_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate the schemas directory: explicit path, ``$PAYSTREAM_SCHEMAS_DIR``, then a
    ``schemas/`` directory in an ancestor of this module or of the working directory."""
    if explicit is not None:
        return _must_be_dir(Path(explicit), "explicit path")
    from_env = os.environ.get(SCHEMAS_DIR_ENV)
    if from_env:
        return _must_be_dir(Path(from_env), SCHEMAS_DIR_ENV)
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for ancestor in (start, *start.parents):
            candidate = ancestor / "schemas"
            if candidate.is_dir() and any(candidate.glob("paystream.*.json")):
                return candidate
    raise SchemasDirectoryNotFound(
        f"no schemas/ directory found above {Path(__file__).parent} or {Path.cwd()}; "
        f"set {SCHEMAS_DIR_ENV}"
    )


def _must_be_dir(path: Path, origin: str) -> Path:
    if not path.is_dir():
        raise SchemasDirectoryNotFound(f"schemas directory {path} (from {origin}) does not exist")
    return path


# --- registry ------------------------------------------------------------------------------


class SchemaRegistry:
    """All event-data schemas of one directory, with compiled (cached) validators.

    Every schema is checked against the 2020-12 metaschema at load time, so a broken contract
    fails at startup, not on the first message.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = find_schemas_dir(directory)
        documents: dict[str, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("*.json")):
            documents[path.stem] = _load(path)
        resources = [
            (doc["$id"], Resource.from_contents(doc, default_specification=DRAFT202012))
            for doc in documents.values()
        ]
        refs: Registry[Any] = Registry().with_resources(resources)
        checker = _format_checker()
        by_id = {doc["$id"]: doc for doc in documents.values()}
        inlined = {
            name: _inline_refs(doc, doc["$id"], by_id)
            for name, doc in documents.items()
            if _EVENT_TYPE_FILE.match(name)
        }
        self._validators: dict[str, Draft202012Validator] = {
            name: Draft202012Validator(doc, registry=refs, format_checker=checker)
            for name, doc in inlined.items()
        }
        # Compiled in Rust, about a hundred times faster: it answers "valid?" on the hot
        # path; only data it refuses goes through jsonschema, which has the last word and
        # explains what is wrong.
        self._fast = {
            name: jsonschema_rs.Draft202012Validator(
                doc, formats=FAST_FORMATS, validate_formats=True, ignore_unknown_formats=False
            )
            for name, doc in inlined.items()
        }
        self._schemas = {name: documents[name] for name in self._validators}

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(sorted(self._validators))

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._validators

    def schema(self, event_type: str) -> Mapping[str, Any]:
        """The raw schema document of ``event_type``."""
        self._validator(event_type)
        return self._schemas[event_type]

    def validate(self, event_type: str, data: object) -> None:
        """Raise ``SchemaViolation`` unless ``data`` matches ``event_type``'s schema."""
        validator = self._validator(event_type)
        try:
            if self._fast[event_type].is_valid(data):
                return
        except UnicodeEncodeError as exc:
            # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 text can hold:
            # neither PostgreSQL nor a provider could take it, so it is a violation here
            # rather than a crash of whoever validates.
            where = f"{exc.object[max(exc.start - 20, 0) : exc.start]!r}"
            raise SchemaViolation(
                event_type, (f"a string holds a lone surrogate after {where}",)
            ) from None
        errors = sorted(validator.iter_errors(data), key=_error_order)
        if errors:
            messages = tuple(_describe(error) for error in errors[:_MAX_ERRORS])
            if len(errors) > _MAX_ERRORS:
                messages += (f"... and {len(errors) - _MAX_ERRORS} more",)
            raise SchemaViolation(event_type, messages)

    def _validator(self, event_type: str) -> Draft202012Validator:
        try:
            return self._validators[event_type]
        except KeyError:
            raise UnknownEventType(event_type, self.event_types) from None


def _inline_refs(node: Any, base: str, by_id: Mapping[str, Mapping[str, Any]]) -> Any:
    """Replace each ``$ref`` by ``allOf: [target]``: same meaning, but resolved once at load.

    Resolving refs per validation through ``referencing`` cost ~60% of the validation time.
    """
    if isinstance(node, list):
        return [_inline_refs(item, base, by_id) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline_refs(v, base, by_id) for k, v in node.items() if k != "$ref"}
    ref = node.get("$ref")
    if isinstance(ref, str):
        doc_uri, _, pointer = urljoin(base, ref).partition("#")
        try:
            target: Any = by_id[doc_uri]
            for part in filter(None, pointer.split("/")):
                target = target[part.replace("~1", "/").replace("~0", "~")]
        except (KeyError, IndexError, TypeError):
            raise SchemaError(
                f"Unresolvable $ref {ref!r} in {base} (refs never go online)"
            ) from None
        out.setdefault("allOf", [])
        out["allOf"] = [*out["allOf"], _inline_refs(target, doc_uri, by_id)]
    return out


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise SchemaError(f"{path}: a schema must be a JSON object")
    expected_id = f"{SCHEMA_ID_BASE}{path.name}"
    if document.get("$id") != expected_id:
        raise SchemaError(f"{path}: $id must be {expected_id!r}, got {document.get('$id')!r}")
    Draft202012Validator.check_schema(document)
    return document


def _error_order(error: ValidationError) -> tuple[str, ...]:
    return tuple(str(part) for part in error.absolute_path)


def _describe(error: ValidationError) -> str:
    message = error.message
    if len(message) > _MAX_MESSAGE_CHARS:
        # jsonschema puts the offending value first and the rule last: keep both ends
        half = _MAX_MESSAGE_CHARS // 2
        message = f"{message[:half]} ... {message[-half:]}"
    return f"{error.json_path}: {message}"


def iter_examples(registry: SchemaRegistry) -> Iterator[tuple[str, object]]:
    """Every ``examples`` entry of every event schema, as ``(event_type, example)``."""
    for event_type in registry.event_types:
        for example in registry.schema(event_type).get("examples", []):
            yield event_type, example
