"""A bot's cross-signing identity: kept sealed at rest, checked against the server at every start.

The private keys are sealed with AES-256-GCM under a subkey of the bot's main
key (the same key that protects its state or archive, kept outside the
store), in a file of their own (``identity_file``, by default in the store):
the public keys stand beside them in clear, so an operator can tell which
identity a backup holds without the key.

At every start ``ensure_identity`` makes the server agree with the file:
a new bot uploads a new identity; a bot whose device is not signed by it
(first start, new device keys after a lost store) signs it; a server whose
identity is not the file's, or a file that is missing while the server has
one, stops the bot with ``IdentityError`` saying what happened and what the
operator does (docs/operator.md, "The bots' identities"). Only an explicit
reset (``--reset-identity``) replaces the server's identity.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
from cryptography.exceptions import InvalidTag
from unpaddedbase64 import decode_base64, encode_base64

from .cross_signing import CrossSigningKeys, key_of, verify
from .crypto import Cipher, check_value, derive_subkey, new_salt

FORMAT = "police-bot cross-signing identity v1"
_LABEL = FORMAT.encode()
#: where the operator guide explains every refusal below
GUIDE = 'docs/operator.md, "The bots\' identities"'
RESET_FLAG = "--reset-identity"


class IdentityError(RuntimeError):
    """The bot must not start: its identity and the server's disagree, or the file is unusable.
    The message says what happened and what the operator does; it never holds a secret."""


# -- the file -------------------------------------------------------------------------------------


@attrs.frozen
class IdentityFile:
    """The sealed private keys of one account, at ``path``, opened with the bot's main key."""

    path: Path
    user_id: str
    main_key: bytes = attrs.field(repr=False)

    def load(self) -> CrossSigningKeys | None:
        """The keys, or None when there is no file; ``IdentityError`` when it cannot be used."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise IdentityError(f"{self.path}: cannot read the bot's identity: {error}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IdentityError(f"{self.path}: not a bot identity file (expected format {FORMAT!r})")
        if data.get("user_id") != self.user_id:
            raise IdentityError(
                f"{self.path}: holds the identity of {data.get('user_id')!r}, not of {self.user_id}; "
                f"point identity_file at this bot's own file (see {GUIDE})"
            )
        try:
            salt, check, sealed = (decode_base64(data[name]) for name in ("salt", "check", "sealed"))
        except (KeyError, TypeError, ValueError, AttributeError):  # AttributeError: not a string
            raise IdentityError(f"{self.path}: damaged (salt, check or sealed keys unreadable)") from None
        cipher, expected = self._cipher(salt)
        if check != expected:
            raise IdentityError(
                f"{self.path}: the bot's key does not open it: it was sealed with another key. "
                f"Start the bot with the key it was made with (see {GUIDE})"
            )
        try:
            keys = CrossSigningKeys.from_seeds(cipher.open(sealed, self.user_id, "keys"))
        except (InvalidTag, ValueError):
            raise IdentityError(f"{self.path}: damaged (the sealed keys fail authentication)") from None
        if keys.master_public != data.get("master_key"):
            raise IdentityError(f"{self.path}: damaged (the sealed keys do not match master_key)")
        return keys

    def save(self, keys: CrossSigningKeys) -> None:
        """Written 0600 and replaced atomically; a new salt each time."""
        salt = new_salt()
        cipher, check = self._cipher(salt)
        data = {
            "format": FORMAT,
            "user_id": self.user_id,
            "master_key": keys.master_public,
            "self_signing_key": keys.self_signing_public,
            "salt": encode_base64(salt),
            "check": encode_base64(check),
            "sealed": encode_base64(cipher.seal(keys.seeds(), self.user_id, "keys")),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(self.path.name + ".tmp")
        descriptor = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self.path)

    def _cipher(self, salt: bytes) -> tuple[Cipher, bytes]:
        seal = derive_subkey(self.main_key, salt, _LABEL, b"seal", what="bot's main key")
        check = derive_subkey(self.main_key, salt, _LABEL, b"check", what="bot's main key")
        return Cipher(seal, _LABEL), check_value(check, _LABEL)


# -- the server -----------------------------------------------------------------------------------


class KeysServer(Protocol):
    """The three requests of the client-server API that cross-signing needs."""

    async def query(self, user_id: str) -> Mapping[str, Any]:
        """``POST /keys/query`` for ``user_id``: the response body."""
        ...

    async def upload_signing_keys(self, body: Mapping[str, Any]) -> None:
        """``POST /keys/device_signing/upload``, with user-interactive auth where asked."""
        ...

    async def upload_signatures(self, body: Mapping[str, Any]) -> None:
        """``POST /keys/signatures/upload``; raises if the server refused a signature."""
        ...


@attrs.frozen
class ServerIdentity:
    """What ``/keys/query`` says of the bot's account and device."""

    master: str | None
    self_signing: str | None
    device_keys: Mapping[str, Any] | None

    @classmethod
    def from_query(cls, body: Any, user_id: str, device_id: str) -> ServerIdentity:
        """The parts of a ``/keys/query`` answer about ``user_id``; whatever is missing or not
        shaped as the spec says counts as absent (and is then refused or replaced)."""

        def part(name: str) -> Any:
            section = body.get(name) if isinstance(body, Mapping) else None
            return section.get(user_id) if isinstance(section, Mapping) else None

        devices = part("device_keys")
        device = devices.get(device_id) if isinstance(devices, Mapping) else None
        return cls(
            master=key_of(part("master_keys")),
            self_signing=key_of(part("self_signing_keys")),
            device_keys=device if isinstance(device, Mapping) else None,
        )

    def device_ed25519(self, device_id: str) -> str | None:
        """The device's own signing key as the server lists it."""
        keys = self.device_keys.get("keys") if isinstance(self.device_keys, Mapping) else None
        key = keys.get(f"ed25519:{device_id}") if isinstance(keys, Mapping) else None
        return key if isinstance(key, str) else None


async def ensure_identity(
    server: KeysServer,
    file: IdentityFile,
    *,
    device_id: str,
    device_ed25519: str,
    reset: bool = False,
    log: logging.Logger,
) -> CrossSigningKeys:
    """Make the server hold the file's identity and the device carry its signature.

    ``device_ed25519`` is the device's own signing key (from the E2EE store): keys on the
    server that are not the device's are never signed."""
    user_id = file.user_id
    found = ServerIdentity.from_query(await server.query(user_id), user_id, device_id)
    keys = None if reset else file.load()
    if reset or (keys is None and found.master is None):
        keys = CrossSigningKeys.generate()
        file.save(keys)  # first, so a crash before the upload re-uploads the same identity
        await server.upload_signing_keys(keys.upload_body(user_id))
        what = (
            f"replaced the cross-signing identity ({RESET_FLAG})"
            if reset
            else "made a cross-signing identity"
        )
        log.info("%s (master key %s)", what, keys.master_public)
        found = ServerIdentity.from_query(await server.query(user_id), user_id, device_id)
    elif keys is None:
        raise IdentityError(
            f"the server holds a cross-signing identity for {user_id} (master key {found.master}), "
            f"but {file.path} with its private keys is missing. Restore that file from the bot's "
            f"backup, or start the bot once with {RESET_FLAG} to make a new identity (users then "
            f"see that the bot's identity changed). See {GUIDE}"
        )
    elif found.master is None or (
        found.master == keys.master_public
        and found.self_signing is not None
        and found.self_signing != keys.self_signing_public
    ):
        # the file's keys never reached the server (a crash between saving and uploading)
        usages = ("master", "self_signing", "user_signing") if found.master is None else ("self_signing",)
        await server.upload_signing_keys(keys.upload_body(user_id, usages))
        log.info("uploaded the kept cross-signing identity (master key %s)", keys.master_public)
        found = ServerIdentity.from_query(await server.query(user_id), user_id, device_id)
    if (found.master, found.self_signing) != (keys.master_public, keys.self_signing_public):
        raise IdentityError(
            f"the cross-signing identity of {user_id} on the server (master key {found.master}) is "
            f"not the one in {file.path} (master key {keys.master_public}): someone reset it, or the "
            f"file belongs to another server. If nobody on your side did, treat the bot's password "
            f"as stolen: change it and log out its other sessions, then start the bot once with "
            f"{RESET_FLAG}. See {GUIDE}"
        )
    device = found.device_keys
    if not isinstance(device, Mapping) or found.device_ed25519(device_id) != device_ed25519:
        raise IdentityError(
            f"the keys of device {device_id} on the server are not the ones in this bot's store; "
            f"the bot does not sign them. If the store is the bot's own, someone replaced them: "
            f"change the bot's password and log out its other sessions. See {GUIDE}"
        )
    if verify(device, user_id, keys.self_signing_public):
        log.info("device %s is signed by cross-signing identity %s", device_id, keys.master_public)
        return keys
    signatures = device.get("signatures")
    ours = signatures.get(user_id) if isinstance(signatures, Mapping) else None
    if isinstance(ours, Mapping) and f"ed25519:{keys.self_signing_public}" in ours:
        # a signature of earlier keys of this device ID (a lost store): the server keeps the first
        # signature by a self-signing key for good, so the identity gets a new self-signing key
        keys = keys.with_new_self_signing_key()
        file.save(keys)
        await server.upload_signing_keys(keys.upload_body(user_id, ("self_signing",)))
        log.info("new self-signing key for device %s's new keys (master key unchanged)", device_id)
    await server.upload_signatures({user_id: {device_id: keys.sign_device(device, user_id)}})
    log.info("signed device %s with the cross-signing identity", device_id)
    return keys


__all__ = [
    "FORMAT",
    "RESET_FLAG",
    "IdentityError",
    "IdentityFile",
    "KeysServer",
    "ServerIdentity",
    "ensure_identity",
]
