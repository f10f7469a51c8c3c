"""The consultation log's head, signed, kept where the archive's writer cannot rewrite it.

Whoever can write the log's file can rebuild a consistent chain (delete the
newest entries, recompute every hash). What they cannot rebuild is a copy of
the chain head kept elsewhere. The bot therefore appends, periodically, one
line per head to ``chain_heads_file``:

    {"anchor_seq":0,"exported_at_ms":...,"fingerprint":"<sha256 of the key>",
     "format":"police-audit-chain-head/1","hash":"<entry_hash>","public_key":"<base64>",
     "seq":42,"signature":"<base64 Ed25519>","time_ms":...}

signed with the export signing key (Ed25519, over the canonical JSON of every
other field). The operator ships the file off the host (log shipping, a
write-once share, the data-protection officer's mailbox); the same line is
what a signed notice to the data-protection officer's room carries
(``head_notice``).

``check_heads`` holds a log against such lines: each head must still be in
the chain with the same hash, or lie behind the checkpoint and have expired
under the retention rule (``consultation_log.expires_at``). ``police-audit
verify-log --heads FILE`` runs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .consultation_log import ChainBroken, ConsultationLog, canonical_json, expires_at

FORMAT = "police-audit-chain-head/1"
#: a line longer than this is not parsed
MAX_LINE = 4096
_FIELDS = {"anchor_seq", "exported_at_ms", "fingerprint", "format", "hash", "public_key", "seq", "time_ms"}


@attrs.frozen
class ChainHead:
    """One exported head whose signature was checked."""

    seq: int
    hash: str
    #: the head entry's time (None: not known, e.g. an empty log)
    time_ms: int | None
    anchor_seq: int
    exported_at_ms: int
    fingerprint: str


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signed_head(log: ConsultationLog, signing_key: Ed25519PrivateKey, now_ms: int) -> str:
    """The log's current head as one signed line (no newline); ``ChainBroken`` when the chain
    does not verify: a broken chain's head is not vouched for."""
    result = log.verify(now_ms=now_ms)
    if not result.ok:
        raise ChainBroken(result)
    public = _raw_public(signing_key.public_key())
    payload = {
        "anchor_seq": result.anchor_seq,
        "exported_at_ms": now_ms,
        "fingerprint": hashlib.sha256(public).hexdigest(),
        "format": FORMAT,
        "hash": result.head_hash,
        "public_key": base64.b64encode(public).decode("ascii"),
        "seq": result.head_seq,
        "time_ms": result.head_time_ms,
    }
    signature = signing_key.sign(canonical_json(payload).encode("utf-8"))
    return canonical_json({**payload, "signature": base64.b64encode(signature).decode("ascii")})


def append_head(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` to the heads file (created 0640), flushed to disk before returning."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(descriptor, "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def export_head(
    log: ConsultationLog, signing_key: Ed25519PrivateKey, path: str | os.PathLike[str], now_ms: int
) -> str:
    """Sign the log's head and append it to ``path``; the line (for ``head_notice``). The bot
    calls this every ``chain_head_interval``; ``ChainBroken`` when the chain is broken (log it
    and alert: nothing is exported then)."""
    line = signed_head(log, signing_key, now_ms)
    append_head(path, line)
    return line


def head_notice(line: str) -> str:
    """The text of a notice to the data-protection officer's room: readable, and the signed
    line itself so it can be checked (``verify-log --heads`` reads such lines)."""
    head = json.loads(line)
    when = datetime.fromtimestamp(head["exported_at_ms"] / 1000, tz=UTC).isoformat(timespec="seconds")
    return (
        f"Consultation log head at {when}: entry {head['seq']}, hash {head['hash']} "
        f"(signed by {head['fingerprint'][:16]}…). Keep this message; signed record:\n{line}"
    )


def parse_heads(lines: Iterable[str], trusted_fingerprint: str) -> tuple[list[ChainHead], list[str]]:
    """The heads in ``lines`` signed by the key with ``trusted_fingerprint``, and a problem for
    every other non-empty line (unparsable, another key, a bad signature)."""
    trusted = trusted_fingerprint.strip().lower()
    heads: list[ChainHead] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        # prose around the records (a notice's text, comments) is skipped
        text = raw.strip()
        if "{" not in text:
            continue
        text = text[text.find("{") :]
        where = f"heads line {number}"
        if len(text) > MAX_LINE:
            problems.append(f"{where}: too long to be a chain head")
            continue
        try:
            record = json.loads(text)
        except ValueError:
            problems.append(f"{where}: not a chain head (not JSON)")
            continue
        if (
            not isinstance(record, dict)
            or set(record) != _FIELDS | {"signature"}
            or record["format"] != FORMAT
        ):
            problems.append(f"{where}: not a chain head of format {FORMAT}")
            continue
        try:
            public = base64.b64decode(record["public_key"], validate=True)
            signature = base64.b64decode(record["signature"], validate=True)
            key = Ed25519PublicKey.from_public_bytes(public)
        except (TypeError, ValueError, binascii.Error):
            problems.append(f"{where}: unreadable key or signature")
            continue
        fingerprint = hashlib.sha256(public).hexdigest()
        if fingerprint != trusted or record["fingerprint"] != fingerprint:
            problems.append(f"{where}: signed by key {fingerprint}, not by the trusted key {trusted}")
            continue
        payload = {name: value for name, value in record.items() if name != "signature"}
        try:
            key.verify(signature, canonical_json(payload).encode("utf-8"))
        except InvalidSignature:
            problems.append(f"{where}: the signature does not match (the line was altered)")
            continue
        if not (
            isinstance(record["seq"], int)
            and isinstance(record["anchor_seq"], int)
            and _plausible_ms(record["exported_at_ms"])
            and isinstance(record["hash"], str)
            and (record["time_ms"] is None or _plausible_ms(record["time_ms"]))
        ):
            problems.append(f"{where}: malformed fields")
            continue
        heads.append(
            ChainHead(
                seq=record["seq"],
                hash=record["hash"],
                time_ms=record["time_ms"],
                anchor_seq=record["anchor_seq"],
                exported_at_ms=record["exported_at_ms"],
                fingerprint=fingerprint,
            )
        )
    return heads, problems


def _plausible_ms(value: object) -> bool:
    """A time in ms between 1970 and the year 9000 (what ``datetime`` can show)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 221_845_392_000_000


def check_heads(log: ConsultationLog, heads: Iterable[ChainHead], now_ms: int) -> list[str]:
    """A sentence for every exported head the log no longer bears out; empty: all agree."""
    anchor_seq, anchor_hash, head_seq, _head_hash = log.chain_state()
    problems = []
    for head in heads:
        exported = datetime.fromtimestamp(head.exported_at_ms / 1000, tz=UTC).isoformat(timespec="seconds")
        label = f"head {head.seq} exported {exported}"
        if head.seq > head_seq:
            problems.append(
                f"{label}: the log ends at entry {head_seq}; entries {head_seq + 1}-{head.seq} were deleted "
                "or the log was replaced"
            )
        elif head.seq > anchor_seq:
            entry = log.entry(head.seq)
            if entry is None:
                problems.append(f"{label}: entry {head.seq} is missing from the log")
            elif entry.entry_hash != head.hash:
                problems.append(
                    f"{label}: entry {head.seq} is not the entry exported (the chain was rebuilt)"
                )
        elif head.seq > 0:
            # at or behind the checkpoint: purged, which the retention rule must have allowed
            if head.seq == anchor_seq and anchor_hash != head.hash:
                problems.append(f"{label}: the checkpoint is not the entry exported (the chain was rebuilt)")
                continue
            kept_until = expires_at(head.time_ms) if head.time_ms is not None else None
            if kept_until is not None and kept_until.timestamp() * 1000 > now_ms:
                problems.append(
                    f"{label}: entry {head.seq} was purged (the checkpoint is at {anchor_seq}) but is kept "
                    f"until {kept_until.date().isoformat()}: it was deleted before its retention ended"
                )
    return problems


def read_heads(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a heads file (``OSError`` when it cannot be read)."""
    return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()


__all__ = [
    "FORMAT",
    "ChainHead",
    "append_head",
    "check_heads",
    "export_head",
    "head_notice",
    "parse_heads",
    "read_heads",
    "signed_head",
]
