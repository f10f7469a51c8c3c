"""Encryption at rest both bots share: the main key, its subkeys and AES-256-GCM.

One 32-byte main key, kept outside the store it protects (a file or an
environment variable, ``load_key``), gives subkeys through HKDF-SHA256, salted
with the store's random salt (kept in the store, not secret) and labelled with
the store's format, so the same key never yields the same subkey for two
stores or two purposes. A check subkey gives the key check value a store keeps
(``check_value``): a wrong key is refused when the store is opened instead of
failing on every record.

Each sealed item is ``nonce (12 random bytes) || ciphertext || tag (16
bytes)``. The associated data names the format, the item's role and the
record it belongs to: a ciphertext copied to another record, or to another
role in the same record, fails authentication like an altered one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: bytes of the main key and of every subkey
KEY_BYTES = 32
#: bytes of the random AES-GCM nonce in front of each ciphertext
NONCE_BYTES = 12


class KeyLoadError(ValueError):
    """A main key could not be read; the message names where it was looked for."""


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def new_key() -> bytes:
    """A fresh random main key (for operators: ``base64.b64encode(new_key())``)."""
    return secrets.token_bytes(KEY_BYTES)


def derive_subkey(main_key: bytes, salt: bytes, label: bytes, purpose: bytes, *, what: str = "key") -> bytes:
    """The subkey for ``purpose`` of the store with format ``label`` and salt ``salt``."""
    if len(main_key) != KEY_BYTES:
        raise ValueError(f"the {what} must be {KEY_BYTES} bytes, got {len(main_key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=label + b" " + purpose)
    return hkdf.derive(main_key)


def check_value(check_key: bytes, label: bytes) -> bytes:
    """What a store keeps to recognise its key: HMAC-SHA256(check subkey, ``label`` key check)."""
    return hmac.digest(check_key, label + b" key check", "sha256")


class Cipher:
    """AES-256-GCM with a random nonce per item, bound to the store's format, its record and role."""

    def __init__(self, key: bytes, label: bytes) -> None:
        self._aead = AESGCM(key)
        self._label = label

    def seal(self, plaintext: bytes, record: str, role: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._associated_data(record, role))

    def open(self, sealed: bytes, record: str, role: str) -> bytes:
        """The plaintext; ``cryptography.exceptions.InvalidTag`` when ``sealed`` was
        altered, truncated or sealed for another record or role."""
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, self._associated_data(record, role))

    def _associated_data(self, record: str, role: str) -> bytes:
        return b"\x00".join((self._label, role.encode(), record.encode()))


def load_key(
    file: str | os.PathLike[str] | None = None, env: str | None = None, *, what: str = "key"
) -> bytes:
    """The 32-byte main key from ``file`` (a path) or from the environment variable ``env``.

    Exactly one source must be given. The text is the key in hex (64 digits)
    or base64 (standard or URL-safe alphabet); surrounding whitespace is
    ignored. Errors name the source (``what``, e.g. "archive key"), never the key.
    """
    if (file is None) == (env is None):
        raise KeyLoadError(f"give the {what} as a file or as an environment variable (exactly one)")
    if file is not None:
        source = f"{what} file {os.fspath(file)}"
        try:
            text = Path(file).read_text(encoding="ascii")
        except FileNotFoundError:
            raise KeyLoadError(f"{source}: no such file") from None
        except UnicodeDecodeError:
            raise KeyLoadError(f"{source}: expected hex or base64 text, found binary data") from None
        except OSError as error:
            raise KeyLoadError(f"{source}: cannot read it: {error.strerror}") from None
    else:
        assert env is not None
        source = f"{what} environment variable {env}"
        if env not in os.environ:
            raise KeyLoadError(f"{source}: not set")
        text = os.environ[env]
    return _decode_key(text.strip(), source)


def _decode_key(text: str, source: str) -> bytes:
    if not text:
        raise KeyLoadError(f"{source}: empty")
    if len(text) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        key = base64.b64decode(_pad(text.replace("-", "+").replace("_", "/")), validate=True)
    except (binascii.Error, ValueError):
        raise KeyLoadError(
            f"{source}: not hex or base64 "
            f"(expected {KEY_BYTES} bytes as 64 hex digits or 44 base64 characters)"
        ) from None
    if len(key) != KEY_BYTES:
        raise KeyLoadError(
            f"{source}: the key is {len(key)} bytes long, expected {KEY_BYTES} "
            f"(64 hex digits or 44 base64 characters)"
        )
    return key


def _pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "Cipher",
    "KeyLoadError",
    "check_value",
    "derive_subkey",
    "load_key",
    "new_key",
    "new_salt",
]
