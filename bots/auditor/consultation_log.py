"""The consultation log: who looked at or passed on archived messages, when and why.

§ 76 BDSG requires every consultation and disclosure of the archive to be
logged with its justification, time, person and recipient. This module keeps
that log in SQLite, append-only and hash-chained:

* Each entry's ``entry_hash`` is SHA-256 over a canonical JSON encoding
  (sorted keys, no whitespace, UTF-8) of all its other fields, including
  ``prev_hash``, the hash of the entry before it. The first entry links to
  ``GENESIS_HASH``. Changing, removing or moving any entry breaks the chain
  from that entry on, and ``verify()`` names the first broken sequence number.
* Triggers refuse ``UPDATE`` on entries and ``DELETE`` of entries ahead of the
  checkpoint. They guard against mistakes; someone with write access to the
  file can drop them, and the hash chain is what shows that afterwards.
* Retention: an entry is kept until the end of the year after the one it was
  made in (made 2026-03-05, kept until 2027-12-31 23:59:59 UTC, deleted from
  2028-01-01 on). ``purge_expired`` deletes the oldest entries, always a
  prefix of the chain, and first stores a **checkpoint** in
  ``consultation_chain``: the sequence number and hash of the last purged
  entry. The first remaining entry links to that hash, so verification starts
  at the checkpoint instead of ``GENESIS_HASH``.
* ``consultation_chain`` also records the head (the last appended entry), so
  deleting the newest entries shows up as a gap at the end.

* The checkpoint may only stand where the retention rule allowed a purge:
  ``consultation_chain.anchor_time_ms`` is the time of the last purged entry,
  and each entry (from schema version 3) hashes ``prev_time_ms``, the time of
  the entry before it, so the first remaining entry vouches for the
  checkpoint's time. ``verify()`` refuses a checkpoint whose entry was still
  under retention: moving the checkpoint forward to delete the newest entries
  is detected while any entry remains after it.
* Search parameters (``query``) are sealed with AES-256-GCM under a key
  derived from the archive's main key (given as ``key``; salt and key check in
  ``log_meta``), bound to the entry's sequence number: the log holds no
  search words in clear. The hash covers the sealed text, so ``verify()``
  needs no key. Entries of earlier versions keep their clear text.

The log proves itself only against its own file: whoever can rewrite the whole
file can rebuild a consistent chain. ``chain_heads.py`` signs the chain head
(sequence number and hash) into a file the operator ships off the host;
``chain_heads.check_heads`` checks that every exported head is still in the chain, or
was purged lawfully.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag

from ..common import crypto

#: ``prev_hash`` of the first entry ever made.
GENESIS_HASH = "0" * 64

#: ``PRAGMA user_version`` of the schema below.
SCHEMA_VERSION = 3

#: the label of the log's key derivations and sealed queries
KEY_LABEL = b"police-auditor-log/v1"
#: how a sealed query starts in the ``query`` column (base64 of nonce || AES-GCM follows)
SEALED_PREFIX = "sealed:"

#: version 3: sealed queries (log_meta: key salt and check), the time of each entry's
#: predecessor and of the checkpoint, so the checkpoint's place can be held to the retention rule
_V3 = """
CREATE TABLE IF NOT EXISTS log_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
ALTER TABLE consultations ADD COLUMN prev_time_ms INTEGER;
ALTER TABLE consultation_chain ADD COLUMN anchor_time_ms INTEGER;
INSERT INTO log_meta (name, value)
    SELECT 'legacy_anchor_seq', CAST(anchor_seq AS TEXT) FROM consultation_chain WHERE anchor_seq > 0;
CREATE TRIGGER IF NOT EXISTS consultation_chain_anchor_time BEFORE UPDATE OF anchor_seq ON consultation_chain
WHEN NEW.anchor_seq != OLD.anchor_seq AND NEW.anchor_time_ms IS NULL
BEGIN
    SELECT RAISE(ABORT, 'the checkpoint moves with the time of its entry (purge_expired)');
END;
"""

#: version 2: commands the bot has taken on, so a replayed sync never runs
#: (and logs) a consultation twice
_ANSWERED = """
CREATE TABLE IF NOT EXISTS answered_commands (
    event_id TEXT PRIMARY KEY,
    time_ms INTEGER NOT NULL
);
"""
#: how long a command's event ID is remembered; replays come within minutes
ANSWERED_KEEP_MS = 7 * 24 * 3600 * 1000

_SCHEMA = (
    f"""
CREATE TABLE IF NOT EXISTS consultations (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    auditor TEXT NOT NULL,
    action TEXT NOT NULL,
    case_ref TEXT,
    reason TEXT NOT NULL,
    recipient TEXT NOT NULL,
    query TEXT NOT NULL,
    result_count INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consultations_by_auditor ON consultations (auditor, seq);
CREATE INDEX IF NOT EXISTS consultations_by_hash ON consultations (entry_hash);

-- One row. anchor: the checkpoint, i.e. the last purged entry (seq 0 and the
-- genesis hash while nothing was purged). head: the last appended entry.
CREATE TABLE IF NOT EXISTS consultation_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    anchor_seq INTEGER NOT NULL,
    anchor_hash TEXT NOT NULL,
    head_seq INTEGER NOT NULL,
    head_hash TEXT NOT NULL
);
INSERT OR IGNORE INTO consultation_chain (id, anchor_seq, anchor_hash, head_seq, head_hash)
    VALUES (1, 0, '{GENESIS_HASH}', 0, '{GENESIS_HASH}');

CREATE TRIGGER IF NOT EXISTS consultations_append_only BEFORE UPDATE ON consultations
BEGIN
    SELECT RAISE(ABORT, 'consultation log entries cannot be changed');
END;
CREATE TRIGGER IF NOT EXISTS consultations_purge_only BEFORE DELETE ON consultations
WHEN OLD.seq > (SELECT anchor_seq FROM consultation_chain WHERE id = 1)
BEGIN
    SELECT RAISE(ABORT, 'only entries behind the checkpoint can be deleted');
END;
CREATE TRIGGER IF NOT EXISTS consultation_chain_forward BEFORE UPDATE ON consultation_chain
WHEN NEW.anchor_seq < OLD.anchor_seq OR NEW.head_seq < OLD.head_seq
BEGIN
    SELECT RAISE(ABORT, 'the checkpoint and the head only move forward');
END;
"""
    + _ANSWERED
)

_COLUMNS = (
    "seq, time_ms, auditor, action, case_ref, reason, recipient, query, result_count, prev_hash, entry_hash, "
    "prev_time_ms"
)
#: the same for a log of schema version 1 or 2, read as it is
_OLD_COLUMNS = _COLUMNS.replace("prev_time_ms", "NULL")


class Action(StrEnum):
    """What an auditor did; the values are stored in the log."""

    SEARCH = "search"
    SHOW = "show"
    EXPORT_REQUEST = "export_request"
    EXPORT_APPROVE = "export_approve"
    EXPORT_DENY = "export_deny"
    #: The approved bundle reached the requester's room: the disclosure itself.
    EXPORT_DELIVER = "export_deliver"
    #: An approved delivery was stopped (others could read the room), or a request expired.
    EXPORT_STOP = "export_stop"
    #: The bot refused a request (no reason given, out of the auditor's scope, ...).
    REFUSAL = "refusal"
    #: Someone read this log.
    LOG_VIEW = "log_view"


class Problem(StrEnum):
    """Why ``verify()`` stopped at an entry."""

    #: The entry's fields do not match its hash, or it was replaced by one that
    #: does not link to its predecessor.
    EDITED = "edited"
    #: Sequence numbers are missing: entries were deleted.
    GAP = "gap"
    #: The checkpoint stands where the retention rule allowed no purge (moved forward), or its
    #: time does not match the entry after it.
    CHECKPOINT = "checkpoint"
    #: A head exported earlier (``chain_heads``) is no longer in the chain.
    HEAD = "exported head"
    #: The entry is intact but stands at another position than it was made at.
    REORDERED = "reordered"


class NotAConsultationLog(Exception):
    """The file is not a consultation log (or of an unknown schema version)."""


class LogKeyError(Exception):
    """The key given is not the key the log's queries were sealed with."""


class ChainBroken(Exception):
    """Refused to purge: the chain is broken where entries would be deleted."""

    def __init__(self, result: VerifyResult) -> None:
        super().__init__(result.describe())
        self.result = result


@attrs.frozen
class Entry:
    """One log entry. ``query`` is JSON text (the search parameters, event IDs, ...), or
    ``sealed:...`` as stored when sealed (``ConsultationLog.entries`` opens it)."""

    seq: int
    time_ms: int
    auditor: str
    action: str
    case_ref: str | None
    reason: str
    recipient: str
    query: str
    result_count: int
    prev_hash: str
    entry_hash: str
    #: the time of the entry before (None: the first entry, or made before schema version 3)
    prev_time_ms: int | None = None

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)

    def computed_hash(self, *, seq: int | None = None) -> str:
        """SHA-256 over the canonical encoding of all fields but ``entry_hash``.

        ``seq`` overrides the sequence number (to find where a moved entry came from).
        """
        fields = attrs.asdict(self)
        del fields["entry_hash"]
        if fields["prev_time_ms"] is None:  # entries of earlier versions hashed without it
            del fields["prev_time_ms"]
        if seq is not None:
            fields["seq"] = seq
        return hashlib.sha256(canonical_json(fields).encode("utf8")).hexdigest()


@attrs.frozen
class VerifyResult:
    """``ok``, or the first broken sequence number with the kind of problem and a sentence."""

    ok: bool
    entries_checked: int
    #: The checkpoint verification started from (0 while nothing was purged).
    anchor_seq: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    problem: Problem | None = None
    detail: str = ""
    #: the time of the head entry (None: no entry made yet, or not known)
    head_time_ms: int | None = None

    def describe(self) -> str:
        if self.ok:
            start = f"after checkpoint {self.anchor_seq}" if self.anchor_seq else "from the start"
            return (
                f"chain intact: {self.entries_checked} entries checked {start},"
                f" head {self.head_seq} {self.head_hash}"
            )
        return f"entry {self.broken_seq}: {self.problem}: {self.detail}"


def canonical_json(value: Any) -> str:
    """The one JSON encoding that hashes are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def expires_at(time_ms: int) -> datetime:
    """The first moment an entry made at ``time_ms`` may be deleted: 1 January, two years on (UTC)."""
    made = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    return datetime(made.year + 2, 1, 1, tzinfo=UTC)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _iso(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat(timespec="seconds")


class ConsultationLog:
    """The log in one SQLite file; the schema is created on first use.

    ``read_only`` opens an existing log without creating or changing anything
    (for verification); it raises ``NotAConsultationLog`` for other files and
    ``sqlite3.Error`` for unreadable ones.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        clock: Callable[[], int] = _now_ms,
        key: bytes | None = None,
    ) -> None:
        """``key``: the archive's main key; the log seals queries under a key derived from
        it (without: queries are stored in clear, and sealed ones cannot be read)."""
        self._clock = clock
        self._cipher: crypto.Cipher | None = None
        self._columns = _COLUMNS
        if read_only:
            uri = Path(path).resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
        else:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            self._check_or_create_schema(read_only)
            if key is not None:
                self._cipher = self._open_key(key, read_only)
        except BaseException:
            self._db.close()
            raise

    def _open_key(self, key: bytes, read_only: bool) -> crypto.Cipher:
        if self._columns is _OLD_COLUMNS:
            raise NotAConsultationLog("a log of schema version 1 or 2 has no sealed queries")
        meta = dict(self._db.execute("SELECT name, value FROM log_meta").fetchall())
        if "key_salt" not in meta:
            if read_only:
                raise LogKeyError("the log has no sealed queries yet")
            salt = crypto.new_salt()
            check = crypto.check_value(crypto.derive_subkey(key, salt, KEY_LABEL, b"check"), KEY_LABEL)
            self._db.executemany(
                "INSERT INTO log_meta (name, value) VALUES (?, ?)", [("key_salt", salt), ("key_check", check)]
            )
            meta = {"key_salt": salt, "key_check": check}
        salt = bytes(meta["key_salt"])
        check = crypto.check_value(crypto.derive_subkey(key, salt, KEY_LABEL, b"check"), KEY_LABEL)
        if not hmac.compare_digest(check, bytes(meta["key_check"])):
            raise LogKeyError("the key does not match the consultation log's (use the archive's main key)")
        return crypto.Cipher(crypto.derive_subkey(key, salt, KEY_LABEL, b"query"), KEY_LABEL)

    def _seal_query(self, text: str, seq: int) -> str:
        if self._cipher is None:
            return text
        sealed = self._cipher.seal(text.encode("utf-8", "surrogatepass"), str(seq), "query")
        return SEALED_PREFIX + base64.b64encode(sealed).decode("ascii")

    def open_query(self, entry: Entry) -> str:
        """The entry's query as JSON text (sealed ones need the key; ``LogKeyError`` without it)."""
        if not entry.query.startswith(SEALED_PREFIX):
            return entry.query
        if self._cipher is None:
            raise LogKeyError(f"entry {entry.seq}: its query is sealed; open the log with the key")
        try:
            sealed = base64.b64decode(entry.query[len(SEALED_PREFIX) :], validate=True)
            return self._cipher.open(sealed, str(entry.seq), "query").decode("utf-8", "surrogatepass")
        except (InvalidTag, binascii.Error, ValueError):
            raise LogKeyError(f"entry {entry.seq}: its sealed query does not open (altered)") from None

    def _check_or_create_schema(self, read_only: bool) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version in (1, 2) and not read_only:
            self._db.executescript(
                f"BEGIN; {_ANSWERED} {_V3} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
            version = SCHEMA_VERSION
        if version in (1, 2, SCHEMA_VERSION):
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if {"consultations", "consultation_chain"} <= tables:
                if version != SCHEMA_VERSION:
                    self._columns = _OLD_COLUMNS
                return
        elif version == 0 and not read_only:
            (objects,) = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if objects == 0:
                self._db.executescript(
                    f"BEGIN; {_SCHEMA} {_V3} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
                return
        raise NotAConsultationLog(f"not a consultation log (schema version {version})")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ConsultationLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def append(
        self,
        *,
        auditor: str,
        action: Action | str,
        reason: str,
        recipient: str,
        case_ref: str | None = None,
        query: Mapping[str, Any] | None = None,
        result_count: int = 0,
    ) -> Entry:
        """Add one entry at the head of the chain and return it.

        ``reason`` is the justification and must not be empty; ``recipient``
        is who received the data (the auditor themselves for a search, the
        requester for an export).
        """
        action = Action(action)
        for name, value in (("auditor", auditor), ("reason", reason), ("recipient", recipient)):
            if not value or not value.strip():
                raise ValueError(f"{name} must not be empty")
        if result_count < 0:
            raise ValueError("result_count must not be negative")
        query_text = canonical_json(dict(query or {}))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            head_seq, head_hash, anchor_time = self._db.execute(
                "SELECT head_seq, head_hash, anchor_time_ms FROM consultation_chain WHERE id = 1"
            ).fetchone()
            head = self._db.execute("SELECT time_ms FROM consultations WHERE seq = ?", (head_seq,)).fetchone()
            unhashed = Entry(
                seq=head_seq + 1,
                time_ms=self._clock(),
                auditor=auditor,
                action=action.value,
                case_ref=case_ref,
                reason=reason,
                recipient=recipient,
                query=self._seal_query(query_text, head_seq + 1),
                result_count=result_count,
                prev_hash=head_hash,
                entry_hash="",
                prev_time_ms=head[0] if head is not None else anchor_time,
            )
            entry = attrs.evolve(unhashed, entry_hash=unhashed.computed_hash())
            self._db.execute(
                f"INSERT INTO consultations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                attrs.astuple(entry),
            )
            self._db.execute(
                "UPDATE consultation_chain SET head_seq = ?, head_hash = ? WHERE id = 1",
                (entry.seq, entry.entry_hash),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return attrs.evolve(entry, query=query_text)

    def entries(self, auditor: str | None = None) -> list[Entry]:
        """All entries in sequence order, or those of one auditor, their queries opened
        (sealed queries stay as stored when the log was opened without its key)."""
        if auditor is None:
            rows = self._db.execute(f"SELECT {self._columns} FROM consultations ORDER BY seq")
        else:
            rows = self._db.execute(
                f"SELECT {self._columns} FROM consultations WHERE auditor = ? ORDER BY seq", (auditor,)
            )
        entries = [Entry(*row) for row in rows]
        if self._cipher is None:
            return entries
        return [attrs.evolve(entry, query=self._shown_query(entry)) for entry in entries]

    def _shown_query(self, entry: Entry) -> str:
        """The opened query; an altered one stays as stored (``verify`` reports the entry)."""
        try:
            return self.open_query(entry)
        except LogKeyError:
            return entry.query

    def _iter_entries(self) -> Iterator[Entry]:
        for row in self._db.execute(f"SELECT {self._columns} FROM consultations ORDER BY seq"):
            yield Entry(*row)

    def entry(self, seq: int) -> Entry | None:
        """The entry ``seq`` as stored (its query sealed), None when not (or no longer) in the log."""
        row = self._db.execute(f"SELECT {self._columns} FROM consultations WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else Entry(*row)

    def chain_state(self) -> tuple[int, str, int, str]:
        """(checkpoint seq, checkpoint hash, head seq, head hash) as the log records them."""
        return self._chain_state()

    def _chain_state(self) -> tuple[int, str, int, str]:
        return self._db.execute(
            "SELECT anchor_seq, anchor_hash, head_seq, head_hash FROM consultation_chain WHERE id = 1"
        ).fetchone()

    def _anchor_time(self) -> tuple[int | None, bool]:
        """The checkpoint's time (None: unknown) and whether an earlier version set the checkpoint."""
        if self._columns is _OLD_COLUMNS:
            return None, True
        (anchor_time,) = self._db.execute(
            "SELECT anchor_time_ms FROM consultation_chain WHERE id = 1"
        ).fetchone()
        legacy = self._db.execute("SELECT value FROM log_meta WHERE name = 'legacy_anchor_seq'").fetchone()
        (anchor_seq,) = self._db.execute("SELECT anchor_seq FROM consultation_chain WHERE id = 1").fetchone()
        return anchor_time, legacy is not None and str(legacy[0]) == str(anchor_seq)

    def _seq_of_hash(self, entry_hash: str) -> int | None:
        row = self._db.execute(
            "SELECT seq FROM consultations WHERE entry_hash = ? ORDER BY seq LIMIT 1", (entry_hash,)
        ).fetchone()
        return None if row is None else row[0]

    def verify(self, now_ms: int | None = None) -> VerifyResult:
        """Walk the chain from the checkpoint to the head; stop at the first broken entry.

        ``now_ms`` (default: the clock) is when the retention rule is applied to the
        checkpoint: its entry must have expired by then."""
        now_ms = self._clock() if now_ms is None else now_ms
        anchor_seq, anchor_hash, head_seq, head_hash = self._chain_state()
        anchor_time, legacy_anchor = self._anchor_time()
        checked = 0
        expected_seq, expected_prev = anchor_seq + 1, anchor_hash
        expected_time = anchor_time

        def broken(seq: int, problem: Problem, detail: str) -> VerifyResult:
            return VerifyResult(False, checked, anchor_seq, head_seq, head_hash, seq, problem, detail)

        def checkpoint_problem(made_ms: int | None) -> VerifyResult | None:
            if anchor_seq == 0:
                return None
            if made_ms is None:
                if legacy_anchor:
                    return None
                return broken(
                    anchor_seq, Problem.CHECKPOINT, "the checkpoint has no time: it was set by hand"
                )
            if _ms(expires_at(made_ms)) > now_ms:
                return broken(
                    anchor_seq,
                    Problem.CHECKPOINT,
                    f"the checkpoint is at entry {anchor_seq}, made {_iso(made_ms)} and kept until"
                    f" {expires_at(made_ms).date().isoformat()}: entries up to it were deleted before"
                    " their retention ended (the checkpoint was moved forward)",
                )
            return None

        for entry in self._iter_entries():
            if entry.seq == anchor_seq + 1 and anchor_seq > 0:
                if entry.prev_time_ms is not None:
                    if anchor_time is not None and entry.prev_time_ms != anchor_time:
                        return broken(
                            anchor_seq,
                            Problem.CHECKPOINT,
                            f"the checkpoint's time does not match entry {entry.seq}'s record of it",
                        )
                    expected_time = entry.prev_time_ms
                problem = checkpoint_problem(expected_time)
                if problem is not None:
                    return problem
            if entry.seq < expected_seq:
                return broken(
                    entry.seq, Problem.EDITED, f"lies behind the checkpoint at {anchor_seq}: it was moved"
                )
            if entry.seq > expected_seq:
                missing = (
                    f"{expected_seq}" if entry.seq == expected_seq + 1 else f"{expected_seq}-{entry.seq - 1}"
                )
                return broken(expected_seq, Problem.GAP, f"entries {missing} are missing (deleted)")
            if entry.computed_hash() != entry.entry_hash:
                made_at = self._original_seq(entry, anchor_seq, max(head_seq, entry.seq))
                if made_at is not None:
                    return broken(
                        entry.seq, Problem.REORDERED, f"the entry made as {made_at} is stored as {entry.seq}"
                    )
                return broken(entry.seq, Problem.EDITED, "its fields do not match its hash")
            if entry.prev_hash != expected_prev:
                links_to = self._seq_of_hash(entry.prev_hash)
                if links_to is not None:
                    return broken(
                        entry.seq,
                        Problem.REORDERED,
                        f"it follows entry {links_to}, not the entry before it",
                    )
                return broken(
                    entry.seq,
                    Problem.EDITED,
                    f"it does not link to entry {entry.seq - 1}: one of the two was replaced",
                )
            checked += 1
            expected_seq, expected_prev, expected_time = entry.seq + 1, entry.entry_hash, entry.time_ms

        if checked == 0:
            problem = checkpoint_problem(anchor_time)
            if problem is not None:
                return problem
        last_seq = expected_seq - 1
        if last_seq < head_seq:
            missing = f"{expected_seq}" if head_seq == expected_seq else f"{expected_seq}-{head_seq}"
            return broken(expected_seq, Problem.GAP, f"entries {missing} at the end are missing (deleted)")
        if last_seq > head_seq:
            return broken(head_seq + 1, Problem.EDITED, "added behind the recorded head, not by append")
        if expected_prev != head_hash:
            return broken(last_seq, Problem.EDITED, "the last entry is not the recorded head")
        head_time = expected_time if checked else anchor_time
        return VerifyResult(True, checked, anchor_seq, head_seq, head_hash, head_time_ms=head_time)

    @staticmethod
    def _original_seq(entry: Entry, anchor_seq: int, last_seq: int) -> int | None:
        """The sequence number an intact but moved entry was made with, if any."""
        for seq in range(anchor_seq + 1, last_seq + 1):
            if seq != entry.seq and entry.computed_hash(seq=seq) == entry.entry_hash:
                return seq
        return None

    def claim_command(self, event_id: str) -> bool:
        """Take on the command in ``event_id``; False if it was taken on before.
        At most once: a bot killed after claiming does not answer it again,
        rather than answering (and logging) it twice."""
        now = self._clock()
        self._db.execute("DELETE FROM answered_commands WHERE time_ms < ?", (now - ANSWERED_KEEP_MS,))
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO answered_commands (event_id, time_ms) VALUES (?, ?)", (event_id, now)
        )
        return cursor.rowcount == 1

    def purge_expired(self, now: datetime) -> int:
        """Delete the entries whose retention ended before ``now``; return how many.

        Deletes the longest run of expired entries from the start of the chain
        and moves the checkpoint to the last one deleted, so ``verify()`` keeps
        working. An expired entry after an unexpired one (the clock went back)
        waits for that one. Refuses with ``ChainBroken`` if the chain is broken
        among the entries to delete, rather than destroying the evidence.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        cutoff_ms = _ms(datetime(now.astimezone(UTC).year - 1, 1, 1, tzinfo=UTC))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (first_kept,) = self._db.execute(
                "SELECT min(seq) FROM consultations WHERE time_ms >= ?", (cutoff_ms,)
            ).fetchone()
            last_purged_row = self._db.execute(
                "SELECT seq, entry_hash, time_ms FROM consultations WHERE seq < coalesce(?, seq + 1)"
                " ORDER BY seq DESC LIMIT 1",
                (first_kept,),
            ).fetchone()
            if last_purged_row is None:
                self._db.execute("ROLLBACK")
                return 0
            last_purged, anchor_hash, anchor_time = last_purged_row
            result = self.verify(now_ms=_ms(now))
            if not result.ok and result.broken_seq is not None and result.broken_seq <= last_purged:
                raise ChainBroken(result)
            self._db.execute(
                "UPDATE consultation_chain SET anchor_seq = ?, anchor_hash = ?, anchor_time_ms = ? "
                "WHERE id = 1",
                (last_purged, anchor_hash, anchor_time),
            )
            deleted = self._db.execute("DELETE FROM consultations WHERE seq <= ?", (last_purged,)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return deleted
