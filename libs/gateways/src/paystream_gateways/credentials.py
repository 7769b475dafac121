"""A connection's provider credentials: field names and values, never printed.

They travel sealed by the key ring (`paystream_keyring`); this is the opened form the
adapters read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from paystream_keyring import DecryptionError


class Credentials(Mapping[str, str]):
    """A connection's credential fields. The repr names fields only, never values."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        for name, value in values.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError("credential names and values must be strings")
        self._values = dict(values)

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Credentials(fields={sorted(self._values)!r})"

    __str__ = __repr__

    def to_bytes(self) -> bytes:
        return json.dumps(self._values, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Credentials:
        try:
            values = json.loads(data)
        except ValueError:
            raise DecryptionError("decrypted credentials are not JSON") from None
        if not isinstance(values, dict):
            raise DecryptionError("decrypted credentials are not a JSON object")
        return cls(values)

    def merged(self, changes: Mapping[str, str]) -> Credentials:
        return Credentials({**self._values, **changes})
