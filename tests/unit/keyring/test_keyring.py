"""AES-256-GCM key ring: what decrypts, what must not, and what the errors say."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from paystream_config import SettingsError, load
from paystream_gateways import Credentials
from paystream_keyring import (
    NONCE_BYTES,
    DecryptionError,
    KeyRing,
    KeyRingSettings,
    Sealed,
    add_dev_key,
    associated_data,
    ensure_dev_keyring,
    new_key_entry,
    read_keyring_file,
)

T1, T2 = uuid.uuid4(), uuid.uuid4()
C1, C2 = uuid.uuid4(), uuid.uuid4()
K1, K2 = os.urandom(32), os.urandom(32)


def ring(active: str = "k1", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"k1": K1, "k2": K2}, active)


def test_round_trip_binds_tenant_connection_and_key_id() -> None:
    sealed = ring().seal(T1, C1, b'{"api_key":"sk"}')

    assert sealed.key_id == "k1"
    assert ring().open(T1, C1, sealed) == b'{"api_key":"sk"}'
    assert associated_data(T1, C1, "k1") == f"{T1}|{C1}|k1".encode()


def test_nonces_are_random() -> None:
    a, b = ring().seal(T1, C1, b"same"), ring().seal(T1, C1, b"same")
    assert a.ciphertext[:NONCE_BYTES] != b.ciphertext[:NONCE_BYTES]
    assert a.ciphertext != b.ciphertext


@pytest.mark.parametrize("where", ["nonce", "body", "tag"])
def test_tampered_ciphertext_fails_clearly(where: str) -> None:
    sealed = ring().seal(T1, C1, b"secret credentials")
    blob = bytearray(sealed.ciphertext)
    index = {"nonce": 0, "body": NONCE_BYTES + 1, "tag": len(blob) - 1}[where]
    blob[index] ^= 0x01

    with pytest.raises(DecryptionError, match="authentication failed under key 'k1'"):
        ring().open(T1, C1, Sealed("k1", bytes(blob)))


def test_ciphertext_moved_to_another_tenant_fails() -> None:
    sealed = ring().seal(T1, C1, b"secret")
    with pytest.raises(DecryptionError, match="belongs to another tenant or record"):
        ring().open(T2, C1, sealed)


def test_ciphertext_moved_to_another_connection_fails() -> None:
    sealed = ring().seal(T1, C1, b"secret")
    with pytest.raises(DecryptionError, match="belongs to another tenant or record"):
        ring().open(T1, C2, sealed)


def test_wrong_key_material_for_the_key_id_fails() -> None:
    sealed = ring().seal(T1, C1, b"secret")
    impostor = KeyRing({"k1": os.urandom(32)}, "k1")
    with pytest.raises(DecryptionError, match="key material for this key id is wrong"):
        impostor.open(T1, C1, sealed)


def test_relabelled_key_id_fails() -> None:
    """Both keys exist, but the key id is part of the associated data."""
    sealed = ring().seal(T1, C1, b"secret")
    with pytest.raises(DecryptionError):
        ring().open(T1, C1, Sealed("k2", sealed.ciphertext))


def test_unknown_key_id_names_the_problem() -> None:
    sealed = KeyRing({"old": K1}, "old").seal(T1, C1, b"secret")
    with pytest.raises(
        DecryptionError, match=r"key id 'old' is not in the key ring \(have: k1, k2\)"
    ):
        ring().open(T1, C1, sealed)


def test_truncated_ciphertext() -> None:
    with pytest.raises(DecryptionError, match="too short"):
        ring().open(T1, C1, Sealed("k1", b"\x00" * 20))


def test_rotation_reseals_under_the_active_key_and_old_stays_readable() -> None:
    old = ring(active="k1").seal(T1, C1, b"secret")
    rotated_ring = ring(active="k2")

    assert rotated_ring.open(T1, C1, old) == b"secret"  # old rows readable after switching
    resealed = rotated_ring.reseal(T1, C1, old)
    assert resealed.key_id == "k2"
    assert rotated_ring.open(T1, C1, resealed) == b"secret"
    assert rotated_ring.reseal(T1, C1, resealed) is resealed  # already current
    with pytest.raises(DecryptionError):
        KeyRing({"k1": K1}, "k1").open(T1, C1, resealed)  # k1 alone cannot read it


def test_reprs_carry_no_secrets() -> None:
    kr = ring()
    creds = Credentials({"api_key": "sk_live_supersecret"})
    sealed = kr.seal(T1, C1, creds.to_bytes())

    for text in (repr(kr), str(kr), repr(creds), str(creds), repr(sealed)):
        assert "supersecret" not in text
        assert K1.hex() not in text
    assert repr(creds) == "Credentials(fields=['api_key'])"
    assert Credentials.from_bytes(kr.open(T1, C1, sealed)) == {"api_key": "sk_live_supersecret"}


def test_keyring_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match="must be 32 bytes"):
        KeyRing({"k": b"short"}, "k")
    with pytest.raises(ValueError, match="not in the key ring"):
        KeyRing({"k": K1}, "other")


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=512), flip=st.integers(min_value=0))
def test_any_single_bit_flip_is_detected(plaintext: bytes, flip: int) -> None:
    kr = ring()
    sealed = kr.seal(T1, C1, plaintext)
    assert kr.open(T1, C1, sealed) == plaintext
    blob = bytearray(sealed.ciphertext)
    bit = flip % (len(blob) * 8)
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionError):
        kr.open(T1, C1, Sealed("k1", bytes(blob)))


# --- settings ------------------------------------------------------------------------------


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


def test_settings_parse_the_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYSTREAM_KEYRING", f"k1:{_b64(K1)}, k2:{_b64(K2)}")
    monkeypatch.setenv("PAYSTREAM_ACTIVE_KEY_ID", "k2")

    s = load(KeyRingSettings)

    assert s.key_ids == ["k1", "k2"]
    assert s.key_material() == {"k1": K1, "k2": K2}
    assert _b64(K1) not in repr(s)
    assert KeyRing.from_settings(s).active_key_id == "k2"


@pytest.mark.parametrize(
    ("ring_value", "active", "message"),
    [
        ("k1:" + _b64(K1[:16]), "k1", "entry 1 ('k1'): key must be 32 bytes (AES-256), got 16"),
        ("k1:not base64!", "k1", "entry 1 ('k1'): key is not valid base64"),
        (f"k1:{_b64(K1)},k1:{_b64(K2)}", "k1", "entry 2: duplicate key id 'k1'"),
        (f"k1{_b64(K1)}", "k1", "entry 1: expected 'kid:base64key'"),
        (f"bad id:{_b64(K1)}", "k1", "entry 1: key id must match"),
        (f"k1:{_b64(K1)}", "k9", "PAYSTREAM_ACTIVE_KEY_ID: Value error, 'k9' is not in"),
    ],
)
def test_settings_errors_are_clear_and_never_show_keys(
    monkeypatch: pytest.MonkeyPatch, ring_value: str, active: str, message: str
) -> None:
    monkeypatch.setenv("PAYSTREAM_KEYRING", ring_value)
    monkeypatch.setenv("PAYSTREAM_ACTIVE_KEY_ID", active)

    with pytest.raises(SettingsError) as caught:
        load(KeyRingSettings)
    with pytest.raises(ValidationError) as raw:
        KeyRingSettings()

    assert message in str(caught.value)
    for text in (str(caught.value), str(raw.value), repr(raw.value)):
        assert _b64(K1) not in text
        assert _b64(K1[:16]) not in text
        assert "not base64!" not in text


def test_dev_keyring_is_private_stable_and_rotatable(tmp_path: Path) -> None:
    first = ensure_dev_keyring(tmp_path / "home")
    again = ensure_dev_keyring(tmp_path / "home")
    path = tmp_path / "home" / "keyring.env"

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert again.key_material() == first.key_material()
    assert first.active_key_id == "dev-1"

    rotated = add_dev_key(tmp_path / "home")

    assert rotated.active_key_id == "dev-2"
    assert rotated.key_material()["dev-1"] == first.key_material()["dev-1"]
    assert read_keyring_file(path).active_key_id == "dev-2"
    assert set(rotated.environment_with_key_material()) == {
        "PAYSTREAM_KEYRING",
        "PAYSTREAM_ACTIVE_KEY_ID",
    }


def test_new_key_entry_is_valid() -> None:
    entry = new_key_entry("2025-06")
    s = KeyRingSettings(keyring=SecretStr(entry), active_key_id="2025-06")
    assert len(s.key_material()["2025-06"]) == 32
    with pytest.raises(ValueError, match="key id must match"):
        new_key_entry("no spaces")
