"""AES-256-GCM sealing of provider credentials and payout destinations under the key ring.

Ciphertext format (one bytea column, with the key id in its own column):

    nonce (12 random bytes) || AES-GCM ciphertext || tag (16 bytes)

Associated data: `"<tenant uuid>|<subject uuid>|<key id>"` (UTF-8), where the subject is
the connection id for credentials and the transaction id for payout destinations. A row
copied to another tenant or connection, or relabelled with another key id, fails
authentication instead of decrypting.

Nonces are random 96-bit values: NIST SP 800-38D allows 2^32 encryptions per key that
way, far more than one key encrypts between rotations here.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from paystream_keyring.settings import KEY_BYTES, KeyRingSettings

NONCE_BYTES = 12
TAG_BYTES = 16


class DecryptionError(Exception):
    """The ciphertext cannot be opened; the message says why without revealing data."""


@dataclass(frozen=True, slots=True)
class Sealed:
    key_id: str
    ciphertext: bytes = field(repr=False)


def associated_data(tenant_id: uuid.UUID, subject_id: uuid.UUID, key_id: str) -> bytes:
    return f"{tenant_id}|{subject_id}|{key_id}".encode()


class KeyRing:
    """All keys decrypt; the active key encrypts. Holds raw keys: never log or pickle it."""

    __slots__ = ("_active", "_ciphers")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        if active_key_id not in keys:
            raise ValueError(f"active key id {active_key_id!r} is not in the key ring")
        for kid, key in keys.items():
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r} must be {KEY_BYTES} bytes (AES-256)")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = active_key_id

    @classmethod
    def from_settings(cls, settings: KeyRingSettings) -> KeyRing:
        return cls(settings.key_material(), settings.active_key_id)

    @property
    def active_key_id(self) -> str:
        return self._active

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active!r}, key_ids={self.key_ids!r})"

    def seal(self, tenant_id: uuid.UUID, subject_id: uuid.UUID, plaintext: bytes) -> Sealed:
        kid = self._active
        nonce = secrets.token_bytes(NONCE_BYTES)
        body = self._ciphers[kid].encrypt(
            nonce, plaintext, associated_data(tenant_id, subject_id, kid)
        )
        return Sealed(kid, nonce + body)

    def open(self, tenant_id: uuid.UUID, subject_id: uuid.UUID, sealed: Sealed) -> bytes:
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise DecryptionError(
                f"key id {sealed.key_id!r} is not in the key ring"
                f" (have: {', '.join(self.key_ids)}); was it removed before rotation finished?"
            )
        if len(sealed.ciphertext) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("ciphertext too short to be AES-GCM output")
        nonce, body = sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:]
        try:
            return cipher.decrypt(
                nonce, body, associated_data(tenant_id, subject_id, sealed.key_id)
            )
        except InvalidTag:
            # GCM cannot tell these apart, so the message names all of them.
            raise DecryptionError(
                f"authentication failed under key {sealed.key_id!r}: the ciphertext was"
                " altered, belongs to another tenant or record, or the key material for"
                " this key id is wrong"
            ) from None

    def reseal(self, tenant_id: uuid.UUID, subject_id: uuid.UUID, sealed: Sealed) -> Sealed:
        """Re-encrypt under the active key (no-op when already there)."""
        if sealed.key_id == self._active:
            return sealed
        return self.seal(tenant_id, subject_id, self.open(tenant_id, subject_id, sealed))
