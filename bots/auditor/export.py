"""Export bundles: archived messages handed out after an approved export request.

A bundle is a zip file holding

* ``messages.json``: the messages (without attachment bytes), oldest first;
* ``messages.html``: the same for reading in a browser, its times in the
  auditor bot's zone (``timezone``). Every value from a message is
  HTML-escaped (bodies, names and IDs are hostile input), the page
  carries a Content-Security-Policy that forbids scripts, and attachments are
  named, not linked;
* ``attachments/NNNNN-M-NAME``: the attachment bytes. NNNNN is the message's
  position, M the attachment's; NAME is the original name reduced to
  ``[A-Za-z0-9._-]`` (the original name is in ``messages.json``);
* ``manifest.json``: every other file with its SHA-256 and size, the request's
  metadata and the signer's public key;
* ``manifest.sig``: the raw 64-byte Ed25519 signature over the exact bytes of
  ``manifest.json``.

A verifier without this code can check a bundle with OpenSSL::

    unzip bundle.zip manifest.json manifest.sig
    openssl pkeyutl -verify -pubin -inkey auditor-export.pub.pem -rawin \\
        -in manifest.json -sigfile manifest.sig
    sha256sum messages.json messages.html attachments/*   # compare with manifest.json

The public key embedded in the manifest only shows that the bundle was not
changed after signing by whoever signed it; who that was is shown by checking
against the auditor bot's published key (``public_key_pem``, ``--public-key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import io
import json
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..common.clock import moment, zone_name
from .requests import ExportRequest  # the one record of a request; a bundle answers an approved one

logger = logging.getLogger(__name__)

FORMAT = "police-audit-export/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MESSAGES_JSON = "messages.json"
MESSAGES_HTML = "messages.html"
ATTACHMENTS_DIR = "attachments/"

#: A manifest larger than this is not read (a zip bomb would otherwise be unpacked into memory).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_CHARS = 80
#: No scripts, no fetching, no forms: the page only shows text.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'"


# --- keys --------------------------------------------------------------------------------------


class SigningKeyError(ValueError):
    """The export signing key cannot be used: missing, undecryptable, or not the pinned key."""


def _pem(key: Ed25519PrivateKey, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def generate_signing_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """Create a new Ed25519 key and write it as PKCS8 PEM, mode 0600, encrypted with
    ``password`` (the signing key's own key, kept apart from the archive) when given.

    Refuses to overwrite an existing file: losing the key makes old bundles
    unverifiable against it.
    """
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(_pem(key, password))
    return key


def load_signing_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PKCS8 PEM Ed25519 private key (encrypted with ``password`` or not); ``ValueError``
    (``SigningKeyError``) if it is something else or does not decrypt."""
    path = Path(path)
    mode = path.stat().st_mode
    if mode & 0o077:
        logger.warning(
            "Signing key %s is readable by others (mode %o); it should be 0600", path, mode & 0o777
        )
    data = path.read_bytes()
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    try:
        key = serialization.load_pem_private_key(data, password=password if encrypted else None)
    except (ValueError, TypeError) as error:
        if encrypted and not password:
            raise SigningKeyError(
                f"{path}: the signing key is encrypted; give its key (signing_key_password_file or "
                "signing_key_password_env)"
            ) from None
        raise SigningKeyError(f"{path}: cannot read the signing key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 private key")
    if password and not encrypted:
        # written by an earlier version: encrypt it in place (a new file, then an atomic rename)
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(_pem(key, password))
            file.flush()
            os.fsync(file.fileno())
        os.replace(fresh, path)
        logger.warning("Signing key %s was stored unencrypted; it is now encrypted with its own key", path)
    return key


def open_signing_key(
    path: str | Path, password: bytes | None = None, pinned_fingerprint: str | None = None
) -> Ed25519PrivateKey:
    """The bot's export signing key: created at the first start (unless a fingerprint is
    pinned: then the pinned key must exist), loaded after, and refused when its fingerprint is
    not the pinned one (the key file was swapped)."""
    path = Path(path)
    if not path.exists():
        if pinned_fingerprint:
            raise SigningKeyError(
                f"{path}: no signing key, but signing_key_fingerprint pins {pinned_fingerprint}: restore "
                "the key from the backup (a new key would not match the pin)"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_signing_key(path, password)
        logger.info("generated the export signing key %s", path)
    else:
        key = load_signing_key(path, password)
    fingerprint = key_fingerprint(key.public_key())
    if pinned_fingerprint and fingerprint != pinned_fingerprint.strip().lower():
        raise SigningKeyError(
            f"{path}: holds the signing key {fingerprint}, but signing_key_fingerprint pins "
            f"{pinned_fingerprint}: the key file was replaced"
        )
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM, for verifiers and the manifest."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key_pem(pem: str | bytes) -> Ed25519PublicKey:
    """Parse a PEM public key; ``ValueError`` if it is not an Ed25519 key."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii") if isinstance(pem, str) else pem)
    except UnsupportedAlgorithm as error:
        raise ValueError(f"unsupported key type ({error})") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex: short enough to compare by phone."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# --- building ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_name(name: str) -> str:
    # Always behind the "NNNNN-M-" prefix, so a leading dot neither hides nor climbs.
    safe = _UNSAFE_NAME_CHARS.sub("_", name)[-_MAX_NAME_CHARS:]
    return safe or "attachment"


def _local(ms: int | None, zone: tzinfo) -> str:
    """A time for the reader of ``messages.html``: ``2025-07-01 08:02:24 CEST``."""
    if ms is None:
        return ""
    try:
        return moment(ms / 1000, zone)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ms)  # not a plausible time (timestamps come from clients): shown as it is


def _message_json(message: Mapping[str, Any], attachment_files: Sequence[Mapping[str, Any]]) -> dict:
    return {
        "event_id": message["event_id"],
        "room_id": message["room_id"],
        "sender": message["sender"],
        "device_id": message.get("device_id"),
        "origin_server_ts": message["origin_server_ts"],
        "body": message.get("body"),
        "redacted_at": message.get("redacted_at"),
        "policy_violation": message.get("policy_violation"),
        "attachments": list(attachment_files),
    }


def _render_html(request: ExportRequest, messages: Sequence[Mapping[str, Any]], zone: tzinfo) -> str:
    def esc(value: Any) -> str:
        return html.escape("" if value is None else str(value), quote=True)

    meta_rows = [
        ("Request", request.request_id),
        ("Room", request.room_id),
        ("From", _local(request.from_ms, zone)),
        ("To (excluded)", _local(request.to_ms, zone)),
        ("Case reference", request.case_ref),
        ("Reason", request.reason),
        ("Requested by", request.requested_by),
        ("Approved by", request.approved_by),
        ("Created", _local(request.created_at_ms, zone)),
        ("Times in", zone_name(zone)),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="de"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>Export {esc(request.request_id)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:.3em .5em;vertical-align:top;text-align:left}"
        ".body{white-space:pre-wrap;overflow-wrap:anywhere}.redacted{color:#a00}</style>",
        "</head><body>",
        f"<h1>Export {esc(request.request_id)}</h1>",
        "<table>",
        *(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in meta_rows),
        "</table>",
        f"<h2>Messages: {len(messages)}</h2>",
        f"<table><tr><th>Time ({esc(zone_name(zone))})</th>"
        "<th>Sender</th><th>Device</th><th>Message</th></tr>",
    ]
    for message in messages:
        cells = [f'<div class="body">{esc(message["body"])}</div>']
        if message["redacted_at"] is not None:
            cells.append(
                f'<div class="redacted">Redacted at {esc(_local(message["redacted_at"], zone))}</div>'
            )
        if message.get("policy_violation"):
            cells.append(f'<div class="redacted">Policy violation: {esc(message["policy_violation"])}</div>')
        for attachment in message["attachments"]:
            cells.append(
                f"<div>Attachment: {esc(attachment['name'])} ({esc(attachment['mimetype'])},"
                f" {esc(attachment['size'])} bytes) in <code>{esc(attachment['path'])}</code></div>"
            )
        cells.append(f"<div><small>{esc(message['event_id'])}</small></div>")
        parts.append(
            f"<tr><td>{esc(_local(message['origin_server_ts'], zone))}</td><td>{esc(message['sender'])}</td>"
            f"<td>{esc(message['device_id'])}</td><td>{''.join(cells)}</td></tr>"
        )
    parts += ["</table>", "</body></html>", ""]
    return "\n".join(parts)


def build_export(
    messages: Iterable[Mapping[str, Any]],
    request: ExportRequest,
    signing_key: Ed25519PrivateKey,
    *,
    zone: tzinfo = UTC,
) -> bytes:
    """The signed bundle for ``request`` as zip bytes.

    ``messages`` are archive records: event_id, room_id, sender, device_id,
    origin_server_ts, body, attachments ([{name, mimetype, data}]) and
    redacted_at; they are sorted by origin_server_ts. ``zone``: the zone of the
    times people read (``messages.html``, the files' times in the zip); the
    JSON files keep milliseconds since the epoch.
    """
    ordered = sorted(messages, key=lambda message: message["origin_server_ts"])
    files: dict[str, bytes] = {}
    message_docs = []
    for number, message in enumerate(ordered, start=1):
        attachment_files = []
        for index, attachment in enumerate(message.get("attachments") or (), start=1):
            data = bytes(attachment["data"])
            path = f"{ATTACHMENTS_DIR}{number:05d}-{index}-{_safe_name(str(attachment['name']))}"
            files[path] = data
            attachment_files.append(
                {
                    "name": attachment["name"],
                    "mimetype": attachment.get("mimetype"),
                    "size": len(data),
                    "sha256": _sha256(data),
                    "path": path,
                }
            )
        message_docs.append(_message_json(message, attachment_files))

    files = {
        MESSAGES_JSON: (json.dumps(message_docs, ensure_ascii=False, indent=1) + "\n").encode("utf8"),
        MESSAGES_HTML: _render_html(request, message_docs, zone).encode("utf8"),
        **files,
    }
    manifest = {
        "format": FORMAT,
        "request": request.manifest(),
        "message_count": len(message_docs),
        "files": [{"path": path, "sha256": _sha256(data), "size": len(data)} for path, data in files.items()],
        "signing_key": {
            "algorithm": "Ed25519",
            "public_key_pem": public_key_pem(signing_key),
            "fingerprint": key_fingerprint(signing_key.public_key()),
        },
    }
    manifest_bytes = (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode(
        "utf8"
    )

    # zip tools show an entry's time as it is (no zone): the auditor's local time
    created = datetime.fromtimestamp(request.created_at_ms / 1000, tz=zone)
    date_time = (
        max(created.year, 1980),
        created.month,
        created.day,
        created.hour,
        created.minute,
        created.second,
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path, data in {
            MANIFEST: manifest_bytes,
            SIGNATURE: signing_key.sign(manifest_bytes),
            **files,
        }.items():
            info = zipfile.ZipInfo(path, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            bundle.writestr(info, data)
    return buffer.getvalue()


def write_export(
    path: str | Path,
    messages: Iterable[Mapping[str, Any]],
    request: ExportRequest,
    signing_key: Ed25519PrivateKey,
    *,
    zone: tzinfo = UTC,
) -> None:
    """Write the bundle to a new file, mode 0600 (it holds plaintext messages); never overwrites."""
    data = build_export(messages, request, signing_key, zone=zone)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


# --- verifying ---------------------------------------------------------------------------------


class ExportUnreadable(Exception):
    """The file cannot be read or is not a zip file at all."""


@attrs.frozen
class ExportVerification:
    """The outcome of ``verify_export``.

    ``signature`` says what the signature was checked against: ``"trusted"``
    (valid under the trusted key given), ``"embedded"`` (valid under the key
    in the manifest, no trusted key given: proves integrity, not origin) or
    ``"invalid"``.
    """

    ok: bool
    problems: list[str]
    signature: str
    #: Fingerprint of the key embedded in the manifest, if it could be read.
    embedded_fingerprint: str | None = None
    request: dict | None = None


def _read_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | str:
    """The member's bytes, or why they cannot be read."""
    try:
        return bundle.read(info)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as error:
        return f"cannot be read from the zip ({error})"


def _check_signature(
    manifest_bytes: bytes, signature: bytes, embedded_pem: Any, trusted: Ed25519PublicKey | None
) -> tuple[str, list[str], str | None]:
    problems = []
    embedded = None
    if isinstance(embedded_pem, str):
        with contextlib.suppress(ValueError, UnicodeEncodeError):
            embedded = load_public_key_pem(embedded_pem)
    if embedded is None:
        problems.append(f"{MANIFEST}: no readable Ed25519 public key in signing_key.public_key_pem")
    embedded_fingerprint = key_fingerprint(embedded) if embedded else None

    def valid(key: Ed25519PublicKey) -> bool:
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            return False
        return True

    if trusted is not None:
        if valid(trusted):
            if embedded is not None and embedded_fingerprint != key_fingerprint(trusted):
                problems.append(
                    f"{MANIFEST}: signed by the trusted key but names another key ({embedded_fingerprint})"
                )
            return "trusted", problems, embedded_fingerprint
        if embedded is not None and valid(embedded):
            problems.append(
                f"{SIGNATURE}: signed by key {embedded_fingerprint} (embedded in the manifest), not by the"
                f" trusted key {key_fingerprint(trusted)}"
            )
        else:
            problems.append(f"{SIGNATURE}: the signature does not match {MANIFEST} under the trusted key")
        return "invalid", problems, embedded_fingerprint
    if embedded is not None and valid(embedded):
        return "embedded", problems, embedded_fingerprint
    if embedded is not None:
        problems.append(f"{SIGNATURE}: the signature does not match {MANIFEST} under the embedded key")
    return "invalid", problems, embedded_fingerprint


def _check_files(bundle: zipfile.ZipFile, manifest: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in bundle.infolist():
        if info.filename in infos:
            problems.append(f"{info.filename}: appears more than once in the zip")
        infos[info.filename] = info

    listed = manifest.get("files")
    if not isinstance(listed, list):
        return [*problems, f"{MANIFEST}: no list of files"]
    seen = {MANIFEST, SIGNATURE}
    for item in listed:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and isinstance(item.get("sha256"), str)
            and isinstance(item.get("size"), int)
        ):
            problems.append(f"{MANIFEST}: malformed file entry {json.dumps(item)[:100]}")
            continue
        path = item["path"]
        if path in seen:
            problems.append(f"{path}: listed more than once in the manifest")
            continue
        seen.add(path)
        member = infos.get(path)
        if member is None:
            problems.append(f"{path}: listed in the manifest but missing from the zip")
            continue
        if member.file_size != item["size"]:
            # Checked before reading, so a huge member is never unpacked.
            problems.append(f"{path}: size {member.file_size} bytes, the manifest says {item['size']}")
            continue
        data = _read_member(bundle, member)
        if isinstance(data, str):
            problems.append(f"{path}: {data}")
        elif _sha256(data) != item["sha256"]:
            problems.append(f"{path}: SHA-256 does not match the manifest (the content was changed)")
    problems += [f"{name}: in the zip but not listed in the manifest" for name in infos if name not in seen]
    return problems


def verify_export(
    zip_path: str | Path,
    trusted_public_key_pem: str | bytes | None = None,
    *,
    trusted_fingerprint: str | None = None,
) -> ExportVerification:
    """Check a bundle's signature, every listed file's hash and size, and that nothing else is in it.

    The signer is trusted when it is ``trusted_public_key_pem`` or, given
    ``trusted_fingerprint`` (the pin of the config), the embedded key has that
    fingerprint. Without either, ``signature`` is at best "embedded" (the
    bundle is unchanged, its origin unknown).

    Raises ``ExportUnreadable`` if the file cannot be read as a zip, and
    ``ValueError`` if ``trusted_public_key_pem`` is not an Ed25519 public key.
    """
    trusted = None if trusted_public_key_pem is None else load_public_key_pem(trusted_public_key_pem)
    try:
        bundle = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ExportUnreadable(f"cannot read {zip_path} as a zip file: {error}") from error
    with bundle:
        names = bundle.namelist()
        missing = [name for name in (MANIFEST, SIGNATURE) if name not in names]
        if missing:
            return ExportVerification(False, [f"{name}: missing from the zip" for name in missing], "invalid")
        manifest_info = bundle.getinfo(MANIFEST)
        if manifest_info.file_size > MAX_MANIFEST_BYTES:
            return ExportVerification(False, [f"{MANIFEST}: implausibly large"], "invalid")
        manifest_bytes = _read_member(bundle, manifest_info)
        if isinstance(manifest_bytes, str):
            return ExportVerification(False, [f"{MANIFEST}: {manifest_bytes}"], "invalid")
        signature = _read_member(bundle, bundle.getinfo(SIGNATURE))
        if isinstance(signature, str):
            return ExportVerification(False, [f"{SIGNATURE}: {signature}"], "invalid")
        try:
            manifest = json.loads(manifest_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return ExportVerification(False, [f"{MANIFEST}: not valid JSON ({error})"], "invalid")
        if not isinstance(manifest, dict):
            return ExportVerification(False, [f"{MANIFEST}: not a JSON object"], "invalid")

        problems: list[str] = []
        if manifest.get("format") != FORMAT:
            problems.append(f"{MANIFEST}: unknown format {str(manifest.get('format'))[:60]!r}")
        signing_key = manifest.get("signing_key")
        embedded_pem = signing_key.get("public_key_pem") if isinstance(signing_key, dict) else None
        verdict, signature_problems, fingerprint = _check_signature(
            manifest_bytes, signature, embedded_pem, trusted
        )
        if trusted_fingerprint is not None and trusted is None and verdict == "embedded":
            pinned = trusted_fingerprint.strip().lower()
            if fingerprint == pinned:
                verdict = "trusted"
            else:
                verdict = "invalid"
                signature_problems.append(
                    f"{SIGNATURE}: signed by key {fingerprint}, not by the pinned key {pinned}"
                )
        problems += signature_problems
        problems += _check_files(bundle, manifest)
        request = manifest.get("request") if isinstance(manifest.get("request"), dict) else None
        return ExportVerification(not problems, problems, verdict, fingerprint, request)
