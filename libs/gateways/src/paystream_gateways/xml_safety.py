"""Parsing untrusted XML (provider responses and callbacks).

DTDs are refused outright: a payment API never needs one, and refusing them removes the
whole family of entity attacks (billion laughs, external entities reading local files or
fetching URLs) before any expansion can start. defusedxml enforces the same again inside
the parser, so an encoding trick that hides `<!DOCTYPE` from the byte scan still fails.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as _safe_et  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException

MAX_XML_BYTES = 256 * 1024


class XmlRejected(ValueError):
    """Base class: the document was not parsed."""


class UnsafeXml(XmlRejected):
    """DTD, entity declaration, external reference, or oversized document."""


class MalformedXml(XmlRejected):
    """Not well-formed XML."""


def parse_xml(data: bytes, *, max_bytes: int = MAX_XML_BYTES) -> Element:
    if len(data) > max_bytes:
        raise UnsafeXml(f"document of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    # Cheap early exit for the common attack shapes, before the parser sees anything.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise UnsafeXml("DTDs and entity declarations are not accepted")
    try:
        root = _safe_et.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as exc:
        raise UnsafeXml(f"{type(exc).__name__}: DTDs and entities are not accepted") from None
    except ParseError as exc:
        raise MalformedXml(f"not well-formed XML: {exc}") from None
    if not isinstance(root, Element):  # pragma: no cover - defusedxml returns an Element
        raise MalformedXml("no root element")
    return root
