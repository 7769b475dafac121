"""The AES-256-GCM key ring: one home for its settings, sealing, dev files and rotation.

Import names from the package (`from paystream_keyring import KeyRing`); the modules are
how the code is organised, not part of the interface:

- `settings`: `PAYSTREAM_KEYRING` / `PAYSTREAM_ACTIVE_KEY_ID` and the `kid:base64key` format
- `ring`: `KeyRing`, which seals and opens values bound to a tenant and a record
- `dev_files`: the private key file `paystream dev` keeps under its home
- `rotation`: `paystream keys rotate`, re-encrypting every sealed column
"""

from paystream_keyring.dev_files import (
    DEV_KEYRING_FILE,
    add_dev_key,
    ensure_dev_keyring,
    read_keyring_file,
)
from paystream_keyring.ring import (
    NONCE_BYTES,
    TAG_BYTES,
    DecryptionError,
    KeyRing,
    Sealed,
    associated_data,
)
from paystream_keyring.rotation import RotationReport, count_by_key, rotate_keys
from paystream_keyring.settings import KEY_BYTES, KEY_ID_PATTERN, KeyRingSettings, new_key_entry

__all__ = [
    "DEV_KEYRING_FILE",
    "KEY_BYTES",
    "KEY_ID_PATTERN",
    "NONCE_BYTES",
    "TAG_BYTES",
    "DecryptionError",
    "KeyRing",
    "KeyRingSettings",
    "RotationReport",
    "Sealed",
    "add_dev_key",
    "associated_data",
    "count_by_key",
    "ensure_dev_keyring",
    "new_key_entry",
    "read_keyring_file",
    "rotate_keys",
]
