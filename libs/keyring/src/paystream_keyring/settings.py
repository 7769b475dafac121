"""Which AES-256 keys exist and which one encrypts new data, as the environment says.

    PAYSTREAM_KEYRING="2025-01:<base64 32 bytes>,2025-06:<base64 32 bytes>"
    PAYSTREAM_ACTIVE_KEY_ID="2025-06"

Every key in the ring decrypts; only the active one encrypts. Rotating is: add a key,
make it active, restart, run `paystream keys rotate`, and drop the old key only once the
rotation reports nothing left under it.

Key material never appears in a repr, an error message or a log line: the ring is a
SecretStr, validation errors name the entry and key id only (and pydantic is told to hide
inputs), and helpers that return material say so in their name.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KEY_BYTES = 32
KEY_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_KEY_ID = re.compile(KEY_ID_PATTERN)


def _parse(ring: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    entries = [e.strip() for e in ring.split(",") if e.strip()]
    if not entries:
        raise ValueError("no keys: expected 'kid:base64key[,kid:base64key...]'")
    for position, entry in enumerate(entries, start=1):
        kid, sep, encoded = entry.partition(":")
        kid = kid.strip()
        if not sep:
            raise ValueError(f"entry {position}: expected 'kid:base64key'")
        if not _KEY_ID.match(kid):
            raise ValueError(f"entry {position}: key id must match {KEY_ID_PATTERN}")
        if kid in keys:
            raise ValueError(f"entry {position}: duplicate key id {kid!r}")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"entry {position} ({kid!r}): key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"entry {position} ({kid!r}): key must be {KEY_BYTES} bytes (AES-256),"
                f" got {len(key)}"
            )
        keys[kid] = key
    return keys


class KeyRingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PAYSTREAM_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    keyring: SecretStr = Field(description="kid:base64key[,kid:base64key...]")
    active_key_id: str = Field(pattern=KEY_ID_PATTERN)

    @field_validator("keyring")
    @classmethod
    def _well_formed(cls, value: SecretStr) -> SecretStr:
        _parse(value.get_secret_value())
        return value

    @field_validator("active_key_id")
    @classmethod
    def _active_is_in_ring(cls, value: str, info: ValidationInfo) -> str:
        ring = info.data.get("keyring")
        if isinstance(ring, SecretStr):  # absent when the ring itself failed validation
            kids = list(_parse(ring.get_secret_value()))
            if value not in kids:
                raise ValueError(
                    f"{value!r} is not in PAYSTREAM_KEYRING (key ids: {', '.join(kids)})"
                )
        return value

    @property
    def key_ids(self) -> list[str]:
        return list(_parse(self.keyring.get_secret_value()))

    def key_material(self) -> dict[str, bytes]:
        """key id -> raw key. Key material: hand it to the cipher, nowhere else."""
        return _parse(self.keyring.get_secret_value())

    def environment_with_key_material(self) -> dict[str, str]:
        """The two variables a child process needs. Contains key material."""
        return {
            "PAYSTREAM_KEYRING": self.keyring.get_secret_value(),
            "PAYSTREAM_ACTIVE_KEY_ID": self.active_key_id,
        }


def new_key_entry(key_id: str) -> str:
    """A fresh `kid:base64key` entry (key material: goes straight to a secret store)."""
    if not _KEY_ID.match(key_id):
        raise ValueError(f"key id must match {KEY_ID_PATTERN}")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"
