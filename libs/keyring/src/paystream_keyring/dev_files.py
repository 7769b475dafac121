"""The development key ring, kept in a private file under `paystream dev`'s home.

For `paystream dev`, the benchmarks and tests only: production rings come from a secret
store via the environment (`KeyRingSettings`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import SecretStr

from paystream_keyring.settings import KeyRingSettings, new_key_entry

DEV_KEYRING_FILE = "keyring.env"


def read_keyring_file(path: Path) -> KeyRingSettings:
    """Load a ring from a `KEY=value` file; its values win over the environment."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return KeyRingSettings(
        keyring=SecretStr(values.get("PAYSTREAM_KEYRING", "")),
        active_key_id=values.get("PAYSTREAM_ACTIVE_KEY_ID", ""),
    )


def _write_private(path: Path, settings: KeyRingSettings) -> None:
    body = "".join(f"{k}={v}\n" for k, v in settings.environment_with_key_material().items())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(body)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written ring


def ensure_dev_keyring(directory: Path) -> KeyRingSettings:
    """The development ring in `directory/keyring.env` (mode 0600), created on first use."""
    path = directory / DEV_KEYRING_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        entry = new_key_entry("dev-1")
        _write_private(path, KeyRingSettings(keyring=SecretStr(entry), active_key_id="dev-1"))
    return read_keyring_file(path)


def add_dev_key(directory: Path) -> KeyRingSettings:
    """Append a new key to the development ring and make it active (to try `keys rotate`)."""
    current = ensure_dev_keyring(directory)
    number = 1 + max(
        (int(k.rsplit("-", 1)[1]) for k in current.key_ids if re.fullmatch(r"dev-\d+", k)),
        default=0,
    )
    kid = f"dev-{number}"
    ring = current.keyring.get_secret_value() + "," + new_key_entry(kid)
    updated = KeyRingSettings(keyring=SecretStr(ring), active_key_id=kid)
    _write_private(directory / DEV_KEYRING_FILE, updated)
    return updated
