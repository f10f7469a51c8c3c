"""Cross-signing keys: a bot's identity that makes its device "signed by its owner".

Clients that exclude insecure devices (MSC4153) send room keys only to devices
that their owner's self-signing key signed, and decrypt nothing from other
devices. matrix-nio has no cross-signing, so the bots make their own: a master
key, a self-signing key and a user-signing key (Ed25519), the latter two
signed by the master key, and their device signed by the self-signing key.

Signatures follow the spec's "Signing JSON": the object without ``signatures``
and ``unsigned``, in canonical JSON, signed with Ed25519; the signature is
unpadded base64 under ``signatures[user_id]["ed25519:<public key>"]``.
Everything here is pure: no I/O, no server.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs
from canonicaljson import encode_canonical_json
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from unpaddedbase64 import decode_base64, encode_base64

#: bytes of an Ed25519 private key (its seed)
SEED_BYTES = 32
#: the three keys in the order they are stored
USAGES = ("master", "self_signing", "user_signing")


def public_key(private: Ed25519PrivateKey) -> str:
    """The public key as Matrix writes it: unpadded base64 of the 32 raw bytes."""
    return encode_base64(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: ``obj`` without ``signatures`` and ``unsigned``, canonical JSON."""
    return encode_canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def sign(obj: Mapping[str, Any], user_id: str, private: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``obj`` with ``user_id``'s signature by ``private`` added to those it has."""
    signed = copy.deepcopy(dict(obj))
    signature = encode_base64(private.sign(canonical(obj)))
    signed.setdefault("signatures", {}).setdefault(user_id, {})[f"ed25519:{public_key(private)}"] = signature
    return signed


def verify(obj: Mapping[str, Any], user_id: str, public: str) -> bool:
    """Whether ``obj`` carries a valid signature of ``user_id`` by the Ed25519 key ``public``
    (unpadded base64); False for anything malformed rather than an exception."""
    try:
        signature = obj["signatures"][user_id][f"ed25519:{public}"]
        key = Ed25519PublicKey.from_public_bytes(decode_base64(public))
        key.verify(decode_base64(signature), canonical(obj))
    except (KeyError, TypeError, ValueError, AttributeError, InvalidSignature):
        return False  # unpaddedbase64 raises AttributeError for a non-string
    return True


def key_of(cross_signing_key: Any) -> str | None:
    """The one Ed25519 public key of a cross-signing key object as the server lists it."""
    if not isinstance(cross_signing_key, Mapping):
        return None
    keys = cross_signing_key.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        return None
    (name, value), *_ = keys.items()
    return value if isinstance(value, str) and name == f"ed25519:{value}" else None


@attrs.frozen
class CrossSigningKeys:
    """A bot's three private cross-signing keys."""

    master: Ed25519PrivateKey = attrs.field(repr=False)
    self_signing: Ed25519PrivateKey = attrs.field(repr=False)
    user_signing: Ed25519PrivateKey = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(*(Ed25519PrivateKey.generate() for _ in USAGES))

    @classmethod
    def from_seeds(cls, seeds: bytes) -> CrossSigningKeys:
        """The keys from their three concatenated 32-byte seeds (``seeds()``)."""
        if len(seeds) != SEED_BYTES * len(USAGES):
            raise ValueError(f"expected {SEED_BYTES * len(USAGES)} bytes of seeds, got {len(seeds)}")
        return cls(
            *(
                Ed25519PrivateKey.from_private_bytes(seeds[i * SEED_BYTES : (i + 1) * SEED_BYTES])
                for i in range(len(USAGES))
            )
        )

    def with_new_self_signing_key(self) -> CrossSigningKeys:
        """The same identity (master key) with a new self-signing key: what a device needs whose
        ID carries a stale signature the server will not replace (see ``identity``)."""
        return attrs.evolve(self, self_signing=Ed25519PrivateKey.generate())

    def seeds(self) -> bytes:
        """The private keys as bytes, for sealing at rest: never log or send them."""
        return b"".join(
            key.private_bytes_raw() for key in (self.master, self.self_signing, self.user_signing)
        )

    @property
    def master_public(self) -> str:
        return public_key(self.master)

    @property
    def self_signing_public(self) -> str:
        return public_key(self.self_signing)

    def upload_body(self, user_id: str, usages: tuple[str, ...] = USAGES) -> dict[str, Any]:
        """The body of ``/keys/device_signing/upload`` (auth is added by the caller): the keys
        named in ``usages``, the self-signing and user-signing keys signed by the master key.
        Send only keys the server does not hold: Synapse fails on a key it has already."""
        body: dict[str, Any] = {}
        for usage in usages:
            private = getattr(self, usage)
            public = public_key(private)
            key = {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}
            body[f"{usage}_key"] = key if usage == "master" else sign(key, user_id, self.master)
        return body

    def sign_device(self, device_keys: Mapping[str, Any], user_id: str) -> dict[str, Any]:
        """The device's keys signed by the self-signing key, as ``/keys/signatures/upload`` takes
        them: the object without ``unsigned``, only the new signature (the server merges)."""
        bare = {k: v for k, v in device_keys.items() if k not in ("signatures", "unsigned")}
        return sign(bare, user_id, self.self_signing)


__all__ = ["SEED_BYTES", "CrossSigningKeys", "canonical", "key_of", "public_key", "sign", "verify"]
