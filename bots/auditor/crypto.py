"""The archive's keys and its encryption at rest.

One 32-byte main key, kept outside the archive (a file or an environment
variable, ``load_key``), gives three subkeys through HKDF-SHA256, salted with
the archive's random ``key_salt`` (stored in the archive, not secret):

* the content key: AES-256-GCM for message bodies, attachment names and
  attachment bytes (``Cipher``);
* the index key: HMAC-SHA256 of the blind search index (``blind_index.py``);
* the check key: HMAC-SHA256 of a fixed label gives the key check value the
  archive stores, so a wrong key is refused at start-up instead of failing
  on every record.

Each sealed item is ``nonce (12 random bytes) || ciphertext || tag (16
bytes)``. The associated data names the format, the item's role (``body``,
``attachment-name/0``, ...) and its event ID: a ciphertext copied to another
row, or to another role in the same row, fails authentication like an
altered one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: bytes of the main key and of every subkey
KEY_BYTES = 32
#: bytes of the random AES-GCM nonce in front of each ciphertext
NONCE_BYTES = 12
#: the label in every derivation and every item's associated data
FORMAT = b"police-auditor-archive/v1"
_CHECK_LABEL = FORMAT + b" key check"


class KeyLoadError(ValueError):
    """The archive key could not be read; the message names where it was looked for."""


@attrs.frozen(repr=False)
class ArchiveKeys:
    """The subkeys of one archive (``repr`` shows none of them)."""

    content: bytes
    index: bytes
    check: bytes

    def check_value(self) -> bytes:
        """What the archive stores to recognise its key: HMAC-SHA256(check key, fixed label)."""
        return hmac.digest(self.check, _CHECK_LABEL, "sha256")

    def __repr__(self) -> str:
        return "ArchiveKeys(<secret>)"


def derive_keys(main_key: bytes, salt: bytes) -> ArchiveKeys:
    """The subkeys of the archive whose ``key_salt`` is ``salt``."""
    if len(main_key) != KEY_BYTES:
        raise ValueError(f"the archive key must be {KEY_BYTES} bytes, got {len(main_key)}")

    def derive(purpose: bytes) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=FORMAT + b" " + purpose)
        return hkdf.derive(main_key)

    return ArchiveKeys(content=derive(b"content"), index=derive(b"index"), check=derive(b"check"))


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def new_key() -> bytes:
    """A fresh random main key (for operators: ``base64.b64encode(new_key())``)."""
    return secrets.token_bytes(KEY_BYTES)


class Cipher:
    """AES-256-GCM with a random nonce per item, bound to its event and role."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, event_id: str, role: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, _associated_data(event_id, role))

    def open(self, sealed: bytes, event_id: str, role: str) -> bytes:
        """The plaintext; ``cryptography.exceptions.InvalidTag`` when ``sealed`` was
        altered, truncated or sealed for another event or role."""
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, _associated_data(event_id, role))


def _associated_data(event_id: str, role: str) -> bytes:
    return b"\x00".join((FORMAT, role.encode(), event_id.encode()))


def load_key(file: str | os.PathLike[str] | None = None, env: str | None = None) -> bytes:
    """The 32-byte main key from ``file`` (a path) or from the environment variable ``env``.

    Exactly one source must be given. The text is the key in hex (64 digits)
    or base64 (standard or URL-safe alphabet); surrounding whitespace is
    ignored. Errors name the source, never the key.
    """
    if (file is None) == (env is None):
        raise KeyLoadError("give the archive key as a file or as an environment variable (exactly one)")
    if file is not None:
        source = f"archive key file {os.fspath(file)}"
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
        source = f"archive key environment variable {env}"
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
