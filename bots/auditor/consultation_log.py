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

The log proves itself only against its own file: whoever can rewrite the whole
file can rebuild a consistent chain. To detect that, record ``head_hash`` of
``verify()`` somewhere else from time to time (an auditor room, the operator's
ticket); a later chain must still contain that hash at that sequence number.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import attrs

#: ``prev_hash`` of the first entry ever made.
GENESIS_HASH = "0" * 64

#: ``PRAGMA user_version`` of the schema below.
SCHEMA_VERSION = 2

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
    "seq, time_ms, auditor, action, case_ref, reason, recipient, query, result_count, prev_hash, entry_hash"
)


class Action(StrEnum):
    """What an auditor did; the values are stored in the log."""

    SEARCH = "search"
    SHOW = "show"
    EXPORT_REQUEST = "export_request"
    EXPORT_APPROVE = "export_approve"
    EXPORT_DENY = "export_deny"
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
    #: The entry is intact but stands at another position than it was made at.
    REORDERED = "reordered"


class NotAConsultationLog(Exception):
    """The file is not a consultation log (or of an unknown schema version)."""


class ChainBroken(Exception):
    """Refused to purge: the chain is broken where entries would be deleted."""

    def __init__(self, result: VerifyResult) -> None:
        super().__init__(result.describe())
        self.result = result


@attrs.frozen
class Entry:
    """One log entry. ``query`` is JSON text (the search parameters, event IDs, ...)."""

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

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)

    def computed_hash(self, *, seq: int | None = None) -> str:
        """SHA-256 over the canonical encoding of all fields but ``entry_hash``.

        ``seq`` overrides the sequence number (to find where a moved entry came from).
        """
        fields = attrs.asdict(self)
        del fields["entry_hash"]
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


class ConsultationLog:
    """The log in one SQLite file; the schema is created on first use.

    ``read_only`` opens an existing log without creating or changing anything
    (for verification); it raises ``NotAConsultationLog`` for other files and
    ``sqlite3.Error`` for unreadable ones.
    """

    def __init__(
        self, path: str | Path, *, read_only: bool = False, clock: Callable[[], int] = _now_ms
    ) -> None:
        self._clock = clock
        if read_only:
            uri = Path(path).resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
        else:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            self._check_or_create_schema(read_only)
        except BaseException:
            self._db.close()
            raise

    def _check_or_create_schema(self, read_only: bool) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == 1 and not read_only:
            self._db.executescript(f"BEGIN; {_ANSWERED} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            version = SCHEMA_VERSION
        if version in (1, SCHEMA_VERSION):
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if {"consultations", "consultation_chain"} <= tables:
                return
        elif version == 0 and not read_only:
            (objects,) = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if objects == 0:
                self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
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
            head_seq, head_hash = self._db.execute(
                "SELECT head_seq, head_hash FROM consultation_chain WHERE id = 1"
            ).fetchone()
            unhashed = Entry(
                seq=head_seq + 1,
                time_ms=self._clock(),
                auditor=auditor,
                action=action.value,
                case_ref=case_ref,
                reason=reason,
                recipient=recipient,
                query=query_text,
                result_count=result_count,
                prev_hash=head_hash,
                entry_hash="",
            )
            entry = attrs.evolve(unhashed, entry_hash=unhashed.computed_hash())
            self._db.execute(
                f"INSERT INTO consultations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        return entry

    def entries(self, auditor: str | None = None) -> list[Entry]:
        """All entries in sequence order, or those of one auditor."""
        if auditor is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM consultations ORDER BY seq")
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM consultations WHERE auditor = ? ORDER BY seq", (auditor,)
            )
        return [Entry(*row) for row in rows]

    def _iter_entries(self) -> Iterator[Entry]:
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM consultations ORDER BY seq"):
            yield Entry(*row)

    def _chain_state(self) -> tuple[int, str, int, str]:
        return self._db.execute(
            "SELECT anchor_seq, anchor_hash, head_seq, head_hash FROM consultation_chain WHERE id = 1"
        ).fetchone()

    def _seq_of_hash(self, entry_hash: str) -> int | None:
        row = self._db.execute(
            "SELECT seq FROM consultations WHERE entry_hash = ? ORDER BY seq LIMIT 1", (entry_hash,)
        ).fetchone()
        return None if row is None else row[0]

    def verify(self) -> VerifyResult:
        """Walk the chain from the checkpoint to the head; stop at the first broken entry."""
        anchor_seq, anchor_hash, head_seq, head_hash = self._chain_state()
        checked = 0
        expected_seq, expected_prev = anchor_seq + 1, anchor_hash

        def broken(seq: int, problem: Problem, detail: str) -> VerifyResult:
            return VerifyResult(False, checked, anchor_seq, head_seq, head_hash, seq, problem, detail)

        for entry in self._iter_entries():
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
            expected_seq, expected_prev = entry.seq + 1, entry.entry_hash

        last_seq = expected_seq - 1
        if last_seq < head_seq:
            missing = f"{expected_seq}" if head_seq == expected_seq else f"{expected_seq}-{head_seq}"
            return broken(expected_seq, Problem.GAP, f"entries {missing} at the end are missing (deleted)")
        if last_seq > head_seq:
            return broken(head_seq + 1, Problem.EDITED, "added behind the recorded head, not by append")
        if expected_prev != head_hash:
            return broken(last_seq, Problem.EDITED, "the last entry is not the recorded head")
        return VerifyResult(True, checked, anchor_seq, head_seq, head_hash)

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
                "SELECT seq, entry_hash FROM consultations WHERE seq < coalesce(?, seq + 1)"
                " ORDER BY seq DESC LIMIT 1",
                (first_kept,),
            ).fetchone()
            if last_purged_row is None:
                self._db.execute("ROLLBACK")
                return 0
            last_purged, anchor_hash = last_purged_row
            result = self.verify()
            if not result.ok and result.broken_seq is not None and result.broken_seq <= last_purged:
                raise ChainBroken(result)
            self._db.execute(
                "UPDATE consultation_chain SET anchor_seq = ?, anchor_hash = ? WHERE id = 1",
                (last_purged, anchor_hash),
            )
            deleted = self._db.execute("DELETE FROM consultations WHERE seq <= ?", (last_purged,)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return deleted
