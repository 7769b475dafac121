"""RFC 3339 timestamps as every paystream event carries them (UTC renders as `Z`)."""

from __future__ import annotations

from datetime import datetime


def render_timestamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
