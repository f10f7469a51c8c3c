"""The archive's keys (the shared machinery is ``bots.common.crypto``).

One 32-byte main key, kept outside the archive (a file or an environment
variable, ``load_key``), gives three subkeys through HKDF-SHA256, salted with
the archive's random ``key_salt`` (stored in the archive, not secret):

* the content key: AES-256-GCM for message bodies, attachment names and
  attachment bytes (``Cipher`` with ``FORMAT``);
* the index key: HMAC-SHA256 of the blind search index (``blind_index.py``);
* the check key: the key check value the archive stores, so a wrong key is
  refused at start-up instead of failing on every record;
* the MAC key: HMAC-SHA256 over every clear column of a message row, so an
  SQL edit of a sender, a device or a redaction mark is detected on reading.

Each sealed item is bound to its event ID and its role (``body``,
``attachment-name/0``, ...): see ``bots.common.crypto``.
"""

from __future__ import annotations

import os

import attrs

from ..common import crypto
from ..common.crypto import KEY_BYTES, NONCE_BYTES, Cipher, KeyLoadError, new_key, new_salt

#: the label in every derivation and every item's associated data
FORMAT = b"police-auditor-archive/v1"


@attrs.frozen(repr=False)
class ArchiveKeys:
    """The subkeys of one archive (``repr`` shows none of them)."""

    content: bytes
    index: bytes
    check: bytes
    #: HMAC-SHA256 over each message's clear columns (``archive.py``: "Authentication")
    mac: bytes

    def check_value(self) -> bytes:
        """What the archive stores to recognise its key: HMAC-SHA256(check key, fixed label)."""
        return crypto.check_value(self.check, FORMAT)

    def __repr__(self) -> str:
        return "ArchiveKeys(<secret>)"


def derive_keys(main_key: bytes, salt: bytes) -> ArchiveKeys:
    """The subkeys of the archive whose ``key_salt`` is ``salt``."""
    content, index, check, mac = (
        crypto.derive_subkey(main_key, salt, FORMAT, purpose, what="archive key")
        for purpose in (b"content", b"index", b"check", b"mac")
    )
    return ArchiveKeys(content=content, index=index, check=check, mac=mac)


def load_key(file: str | os.PathLike[str] | None = None, env: str | None = None) -> bytes:
    """The archive's 32-byte main key from a file or an environment variable (exactly one)."""
    return crypto.load_key(file, env, what="archive key")


__all__ = [
    "FORMAT",
    "KEY_BYTES",
    "NONCE_BYTES",
    "ArchiveKeys",
    "Cipher",
    "KeyLoadError",
    "derive_keys",
    "load_key",
    "new_key",
    "new_salt",
]
