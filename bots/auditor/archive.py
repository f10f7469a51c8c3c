"""The auditor's archive: every decrypted message and attachment, encrypted at rest, searchable.

The auditor bot is a member of every room; what it decrypts goes here, so an
auditor can search it for the audit lifetime (90 days) after the phones
deleted it (7 days). The archive never deletes on redaction: it records who
redacted when and keeps the original. ``purge_older_than`` is the only way
content leaves it.

**Storage.** One SQLite file (WAL mode), its schema created and migrated
here (``archive_schema_version``). Attachment bytes live in files next to it,
under ``<archive>-attachments/xx/<32 random hex digits>`` (``xx``: the first
two digits), one file per attachment, so the database stays small while
videos come and go; names are random and say nothing about the message. A
file is written (and fsync'ed) before the row that names it is committed,
and unlinked after the row's deletion is committed: a crash in between can
leave a file without a row, never a row without its file, and
``purge_older_than`` removes such orphans (when older than an hour).

**Encryption at rest** (``crypto.py``). The main key never touches the
archive; the archive keeps a random HKDF salt and a key check value, and
opening it with another key raises ``WrongKeyError``. Bodies, the full event
content, attachment names and attachment bytes, and events held for their
keys are AES-256-GCM ciphertexts bound to their event ID and role. In clear
on disk: event and room IDs, senders, device IDs, timestamps, event types
and msgtypes, relations (``relates_to``, ``rel_type``), attachment mimetypes
and sizes, redaction marks and policy-violation marks (a rule and a detected type) with
the state of their enforcement: what the search filters, the purge and the
bot's enforcement need. What enforcing a violation needs later (the media IDs
to quarantine, the reason the sender is told) is sealed like a body. Clear
text never enters SQLite, so no journal, WAL or temporary file can hold it.
A purge zeroes the pages it frees (``secure_delete``), merges the index and
truncates the WAL, so neither ciphertexts nor tokens of purged messages stay
in the files (the file system may still hold their old blocks).

**Authentication.** Each message row carries ``mac``: HMAC-SHA256 (its own
subkey) over every clear column (IDs, sender, device, times, type, redaction
and violation marks, relation) and its attachment rows (index, mimetype,
size, file name). Reading a row checks it: an SQL edit of a sender, device or
redaction mark raises ``CorruptRecordError``, and ``verify_records`` lists
every such row. A redaction re-computes the MAC only after checking the old
one. Rows of archives from before the MACs get theirs when the archive is
first opened by this version; ``archive_meta`` then holds a marker (a MAC)
saying so, and an archive at this schema without it is refused. What a MAC
cannot show: a whole row deleted (the purge deletes rows too).

**Full events and edits.** ``content`` is the event's whole decrypted content;
``body`` the text Element displays, which the blind index indexes (each
version of an edited message is a row and searchable). ``relates_to`` and
``rel_type`` link threads, replies and edits; ``versions`` gives an edited
message's history, and ``replaced_by`` / ``SearchHit.current`` say whether a
row is the current version.

**Search** (``blind_index.py``). An FTS5 table holds each message's word
tokens (keyed hashes, not words) plus a room and a sender token; a query is
the AND of its words' tokens and the filters' tokens. Equal words have equal
tokens and only whole words match (no prefixes): see ``blind_index``.

**Order.** A message's row ID is ``origin_server_ts << 16 | n`` (``n``
numbers messages of the same millisecond), in the FTS5 table as well: row ID
order is time order, so FTS5 returns matches newest first and stops at the
page's end, time filters are row ID ranges, and the purge deletes a range.
``origin_server_ts`` must lie in [0, 2⁴⁷) (until the year 6429).

**Use.** One process writes (the bot); others may read at the same time
(WAL). An ``Archive`` object may be shared between threads: a lock lets one
call run at a time. On PostgreSQL several bots ("shards", ``shard.py``) write
into one archive; ``rooms=`` keeps a bot's enforcement and held events to its
own rooms.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag

from .blind_index import BlindIndex, snippet, words
from .crypto import (
    FORMAT,
    KEY_BYTES,
    ArchiveKeys,
    Cipher,
    KeyLoadError,
    derive_keys,
    load_key,
    new_key,
    new_salt,
)

__all__ = [
    "REPLACE",
    "Archive",
    "ArchiveError",
    "ArchiveStats",
    "ArchivedMessage",
    "Attachment",
    "CorruptRecordError",
    "Enforcement",
    "HeldEvent",
    "KeyLoadError",
    "Message",
    "PendingEnforcement",
    "SearchHit",
    "StoredAttachment",
    "WrongKeyError",
    "canonical_content",
    "load_key",
    "new_key",
]

#: origin_server_ts must be below this (the row ID is origin_server_ts << SEQ_BITS | n)
TS_LIMIT = 1 << 47
SEQ_BITS = 16
#: messages deleted per transaction by ``purge_older_than``
PURGE_BATCH = 5_000
#: files without a row are removed by the purge once they are this old (seconds)
ORPHAN_AGE = 3_600.0
#: a failed enforcement is due again after this (ms), doubling with each failure up to the maximum
RETRY_FIRST_MS = 60_000
RETRY_MAX_MS = 3_600_000

#: Step N brings the schema from version N-1 to N. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE archive_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
        # id: origin_server_ts << 16 | n (see "Order"); body: nonce || AES-GCM(UTF-8 body)
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            device_id TEXT,
            origin_server_ts INTEGER NOT NULL,
            event_type TEXT NOT NULL,
            msgtype TEXT,
            body BLOB NOT NULL,
            attachments INTEGER NOT NULL,
            archived_at INTEGER NOT NULL,
            redacted_at INTEGER,
            redacted_by TEXT
        )
        """,
        "CREATE INDEX messages_room ON messages (room_id, id)",
        # name: nonce || AES-GCM(UTF-8 name); file: the random name of the file holding the bytes
        """
        CREATE TABLE attachments (
            message_id INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            name BLOB NOT NULL,
            mimetype TEXT NOT NULL,
            size INTEGER NOT NULL,
            file TEXT NOT NULL,
            PRIMARY KEY (message_id, idx)
        ) WITHOUT ROWID
        """,
        # The blind index: rowid = messages.id; hex tokens only, no positions, no sizes.
        "CREATE VIRTUAL TABLE message_tokens USING fts5(tokens, detail=none, columnsize=0, tokenize='ascii')",
        # Redactions seen before their event was archived (its keys came late); applied on add.
        """
        CREATE TABLE pending_redactions (
            event_id TEXT PRIMARY KEY,
            redacted_at INTEGER NOT NULL,
            redacted_by TEXT NOT NULL
        )
        """,
    ),
    # A policy violation found in the message (an attachment of a type the media rules refuse),
    # in clear: a rule and a detected MIME type, never content.
    ("ALTER TABLE messages ADD COLUMN violation TEXT",),
    # The enforcement of each violation (redaction, quarantine, notice), so that a crash between
    # archiving and enforcing loses nothing. details: nonce || AES-GCM(JSON of ``Enforcement``);
    # NULL for the violations of earlier versions, which enforced them when archiving them.
    (
        """
        CREATE TABLE enforcements (
            message_id INTEGER PRIMARY KEY,
            details BLOB,
            notified_at INTEGER,
            enforced_at INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            retry_at INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX enforcements_due ON enforcements (retry_at, message_id) WHERE enforced_at IS NULL",
        "INSERT INTO enforcements (message_id, enforced_at) "
        "SELECT id, archived_at FROM messages WHERE violation IS NOT NULL",
    ),
    # The full event (issue 19): content: nonce || AES-GCM(canonical JSON of the decrypted
    # content), NULL for messages of earlier versions; relates_to/rel_type: the thread, reply
    # or edit it belongs to; mac: HMAC-SHA256 over every clear column (see "Authentication"),
    # filled for the existing rows when the archive is next opened with its key. held_events:
    # Megolm events waiting for their keys (event: nonce || AES-GCM(the event's JSON)).
    (
        "ALTER TABLE messages ADD COLUMN content BLOB",
        "ALTER TABLE messages ADD COLUMN relates_to TEXT",
        "ALTER TABLE messages ADD COLUMN rel_type TEXT",
        "ALTER TABLE messages ADD COLUMN mac BLOB",
        "CREATE INDEX messages_relates ON messages (relates_to, id) WHERE relates_to IS NOT NULL",
        """
        CREATE TABLE held_events (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            event BLOB NOT NULL,
            received_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX held_events_received ON held_events (received_at)",
    ),
)

_COLUMNS = (
    "id, event_id, room_id, sender, device_id, origin_server_ts, event_type, msgtype, body, "
    "attachments, archived_at, redacted_at, redacted_by, violation, content, relates_to, rel_type, mac"
)
#: the same, qualified for a join with the messages table as ``m``
_M_COLUMNS = ", ".join(f"m.{column}" for column in _COLUMNS.split(", "))
_COLUMN_COUNT = len(_COLUMNS.split(", "))
_MARKS = ", ".join("?" * _COLUMN_COUNT)
#: the edit relation: a row with it replaces the displayed content of ``relates_to``
REPLACE = "m.replace"
#: the encoding the row MAC is computed over: compact JSON, ASCII only (never changes)
_MAC_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
#: what ``archive_meta`` holds once every row carries its MAC: HMAC(MAC key, this label)
_MACS_LABEL = b"police-auditor-archive rows authenticated"


class ArchiveError(Exception):
    """The archive cannot be used as asked; the message says why."""


class WrongKeyError(ArchiveError):
    """The key given is not the key the archive was created with."""


class CorruptRecordError(ArchiveError):
    """A stored ciphertext failed authentication: altered, or moved from another record."""


def _timestamp(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or not 0 <= value < TS_LIMIT:
        raise ValueError(f"{attribute.name} must be an integer in [0, 2**47) (milliseconds), got {value!r}")


def _nonempty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


_str = attrs.validators.instance_of(str)
_optional_str = attrs.validators.optional(_str)


# ``tuple`` as attrs converters, one per item type: mypy's attrs plugin cannot take the
# item type from a generic converter (the builtin or a TypeVar), only from a concrete one.
def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _json_object(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{attribute.name} must be JSON text, got {type(value).__name__}")
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise ValueError(f"{attribute.name} is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{attribute.name} must be a JSON object, got {type(parsed).__name__}")


def canonical_content(content: Any) -> str:
    """The one JSON text of an event's content the archive stores (``Message.content``)."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@attrs.frozen
class Attachment:
    """A decrypted attachment to archive."""

    name: str = attrs.field(validator=_str)
    mimetype: str = attrs.field(validator=_str)
    data: bytes = attrs.field(validator=attrs.validators.instance_of(bytes), repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


def _attachment_tuple(values: Iterable[Attachment]) -> tuple[Attachment, ...]:
    return tuple(values)


@attrs.frozen
class Enforcement:
    """What enforcing a policy violation needs after a restart; kept encrypted with the message."""

    #: the server's copies to quarantine (mxc URLs: the file and its thumbnail)
    media: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    #: why the attachment is refused, as the sender is told ("type ... is not allowed; allowed: ...")
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen
class Message:
    """A decrypted event to archive (the bot builds it from what it received)."""

    event_id: str = attrs.field(validator=_nonempty)
    room_id: str = attrs.field(validator=_nonempty)
    sender: str = attrs.field(validator=_nonempty)
    device_id: str | None = attrs.field(validator=_optional_str)
    origin_server_ts: int = attrs.field(validator=_timestamp)
    body: str = attrs.field(validator=_str)
    event_type: str = attrs.field(default="m.room.message", validator=_nonempty)
    msgtype: str | None = attrs.field(default=None, validator=_optional_str)
    attachments: tuple[Attachment, ...] = attrs.field(default=(), converter=_attachment_tuple)
    #: the policy rule it breaks and what was found ("media.type: application/x-executable")
    violation: str | None = attrs.field(default=None, validator=_optional_str)
    #: with a violation: what enforcing it needs (see ``Archive.unenforced``)
    enforcement: Enforcement | None = attrs.field(default=None)
    #: the event's whole decrypted content, canonical JSON (``canonical_content``); sealed
    content: str = attrs.field(default="{}", validator=_json_object)
    #: the event this one relates to (``m.relates_to.event_id`` or a reply's ``m.in_reply_to``)
    relates_to: str | None = attrs.field(default=None, validator=_optional_str)
    #: "m.replace", "m.thread", "m.reference", "m.annotation" or "m.in_reply_to" (a plain reply)
    rel_type: str | None = attrs.field(default=None, validator=_optional_str)


@attrs.frozen
class StoredAttachment:
    """An archived attachment's description; ``Archive.read_attachment`` gives its bytes."""

    index: int
    name: str
    mimetype: str
    size: int


@attrs.frozen
class ArchivedMessage:
    """A message as the archive returns it, decrypted."""

    event_id: str
    room_id: str
    sender: str
    device_id: str | None
    origin_server_ts: int
    event_type: str
    msgtype: str | None
    body: str
    attachments: tuple[StoredAttachment, ...]
    #: when the bot stored it (ms)
    archived_at: int
    redacted_at: int | None
    redacted_by: str | None
    #: the policy rule the message broke and what was found; None: none
    violation: str | None = None
    #: the event's whole decrypted content as archived (canonical JSON; "{}" for messages
    #: archived before full events were)
    content: str = "{}"
    relates_to: str | None = None
    rel_type: str | None = None
    #: the newest edit (by the same sender) that supersedes this version; None: this is the
    #: current version. For an edit row: a newer edit of the same original, if any.
    replaced_by: str | None = None

    @property
    def redacted(self) -> bool:
        return self.redacted_at is not None

    @property
    def current(self) -> bool:
        """This version is what Element shows now (not superseded by a later edit)."""
        return self.replaced_by is None

    @property
    def edit_of(self) -> str | None:
        """The original's event ID when this row is an edit."""
        return self.relates_to if self.rel_type == REPLACE else None


@attrs.frozen
class PendingEnforcement:
    """An archived violation not yet enforced (``Archive.unenforced``)."""

    message: ArchivedMessage
    enforcement: Enforcement
    #: the sender was told already (by an earlier attempt)
    notified: bool
    #: failed attempts so far
    attempts: int


@attrs.frozen
class SearchHit:
    message: ArchivedMessage
    #: about 120 characters of the body around the first matching word
    snippet: str
    #: False when the hit is a version a later edit superseded
    current: bool = True


@attrs.frozen
class HeldEvent:
    """An encrypted event waiting for its keys (``Archive.hold_undecrypted``)."""

    event_id: str
    room_id: str
    #: the event as received (Megolm ciphertext), JSON
    event_json: str
    #: when the bot first received it (ms)
    received_at: int
    #: how often it was held again (each failed retry counts one)
    attempts: int


@attrs.frozen
class ArchiveStats:
    messages: int
    redacted: int
    attachments: int
    attachment_bytes: int
    rooms: int
    senders: int
    oldest_ts: int | None
    newest_ts: int | None
    pending_redactions: int
    #: messages kept as evidence of a policy violation (refused attachments)
    violations: int
    #: the database file with its WAL, without the attachment files
    database_bytes: int
    #: violations whose enforcement (redaction, quarantine) has not succeeded yet
    unenforced_violations: int = 0
    #: encrypted events waiting for their keys (``hold_undecrypted``)
    held_events: int = 0


def _utf8(text: str) -> bytes:
    # JSON may carry lone surrogates ("\ud800"); keep them rather than refuse the message
    return text.encode("utf-8", "surrogatepass")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def room_list(rooms: Collection[str]) -> list[str]:
    """The room IDs of a ``rooms`` filter as a list; a single string is refused (it would be
    taken as a collection of one-character room IDs)."""
    if isinstance(rooms, str | bytes) or not isinstance(rooms, Collection):
        raise TypeError(f"rooms must be a collection of room IDs, got {type(rooms).__name__}")
    listed = list(rooms)
    for room_id in listed:
        if not isinstance(room_id, str):
            raise TypeError(f"rooms must hold room IDs (strings), got {type(room_id).__name__}")
    return listed


@attrs.define
class _BatchRows:
    """What ``add_many`` inserts at the end of a batch, and the row IDs it gave out."""

    messages: list[tuple[Any, ...]] = attrs.Factory(list)
    index: list[tuple[Any, ...]] = attrs.Factory(list)
    #: the last row ID given to each millisecond in this transaction
    assigned: dict[int, int] = attrs.Factory(dict)


class Archive:
    """An open archive; ``with Archive(path, key) as archive: ...`` closes it.

    ``create``: make a new archive when ``path`` does not exist (else raise
    ``ArchiveError``). ``clock``: milliseconds since the epoch, for
    ``archived_at``.
    """

    #: the schema steps of this backend (``archive_pg`` has its own)
    migrations: tuple[tuple[str, ...], ...] = MIGRATIONS
    #: the schema version whose step added the row MACs
    _mac_version = 4

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: bytes,
        *,
        create: bool = True,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.path = Path(path)
        self._open(key, files=Path(f"{self.path}-attachments"), create=create, clock=clock)

    def _open(self, key: bytes, *, files: Path, create: bool, clock: Callable[[], int]) -> None:
        """Connect, migrate and check the key: the part every backend shares."""
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"the archive key must be {KEY_BYTES} bytes (see load_key)")
        self.files = files
        self._clock = clock
        self._lock = threading.RLock()
        self._db = self._connect(create)
        try:
            self._configure()
            # one transaction: a bot opening the archive at the same moment (a shard starting
            # beside this one), or a restart after a crash, never finds the schema migrated
            # but the key or the row MAC marker not yet stored (that marker missing is taken
            # for tampering)
            with self._write() as db:
                migrated_from = self._migrate(db)
                keys = self._keys(db, key)
                self._cipher = Cipher(keys.content, FORMAT)
                self._mac_key = keys.mac
                self._mac_base = hmac.new(keys.mac, digestmod=hashlib.sha256)
                self._authenticate_rows(db, migrated_from)
        except self._database_errors as error:
            self._db.close()
            raise ArchiveError(f"{self._where}: not an auditor archive ({error})") from error
        except BaseException:
            self._db.close()
            raise
        self._index = BlindIndex(keys.index)

    # -- opening (the SQLite backend; ``archive_pg.PostgresArchive`` overrides these) ----------------

    #: errors of the database driver that mean "this is no archive"
    _database_errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)

    @property
    def _where(self) -> str:
        """The archive's location in messages."""
        return str(self.path)

    def _connect(self, create: bool) -> Any:
        if not self.path.exists():
            if not create:
                raise ArchiveError(f"no archive at {self.path}")
            # owner-only; SQLite gives its -wal and -shm files the same mode
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)

    def _tables(self, db: Any) -> set[str]:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _configure(self) -> None:
        for pragma in (
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "secure_delete = ON",
            "temp_store = MEMORY",
            "cache_size = -32768",
        ):
            self._db.execute(f"PRAGMA {pragma}")

    def _migrate(self, db: Any) -> int:
        """Bring the schema up to date (in the opening's transaction); the version it had (0: new)."""
        tables = self._tables(db)
        if tables and "archive_schema_version" not in tables:
            raise ArchiveError(f"{self._where}: not an auditor archive (it holds other tables)")
        db.execute("CREATE TABLE IF NOT EXISTS archive_schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM archive_schema_version").fetchone()
        version = row[0] if row else 0
        migrations = self.migrations
        if version > len(migrations):
            raise ArchiveError(
                f"{self._where}: archive schema version {version} is newer than this code "
                f"(knows up to {len(migrations)}); update the auditor bot"
            )
        for step in migrations[version:]:
            for statement in step:
                db.execute(statement)
        if row is None:
            db.execute("INSERT INTO archive_schema_version VALUES (?)", (len(migrations),))
        else:
            db.execute("UPDATE archive_schema_version SET version = ?", (len(migrations),))
        return int(version)

    def _keys(self, db: Any, key: bytes) -> ArchiveKeys:
        meta = dict(db.execute("SELECT name, value FROM archive_meta").fetchall())
        if "key_check" not in meta:
            salt = new_salt()
            keys = derive_keys(key, salt)
            db.executemany(
                "INSERT INTO archive_meta VALUES (?, ?)",
                [
                    ("key_salt", salt),
                    ("key_check", keys.check_value()),
                    ("created_at", str(self._clock()).encode()),
                ],
            )
            return keys
        keys = derive_keys(key, meta["key_salt"])
        if not secrets.compare_digest(keys.check_value(), meta["key_check"]):
            raise WrongKeyError(
                f"the archive key does not match this archive ({self._where}); give the key it was "
                "created with (check the key file or environment variable in the bot's config)"
            )
        return keys

    def _authenticate_rows(self, db: Any, migrated_from: int) -> None:
        """Give every row of an archive from before the MACs its MAC, once.

        The marker in ``archive_meta`` (a MAC itself) says it was done. Missing
        from an archive that was already at the MAC step, it was deleted: MACs
        are then never recomputed, or clearing them would launder an edit.
        """
        marker = hmac.digest(self._mac_key, _MACS_LABEL, "sha256")
        row = db.execute("SELECT value FROM archive_meta WHERE name = 'row_macs'").fetchone()
        if row is not None:
            if not secrets.compare_digest(bytes(row[0]), marker):
                raise CorruptRecordError(f"{self._where}: the row authentication marker was altered")
            return
        if migrated_from >= self._mac_version:
            raise CorruptRecordError(
                f"{self._where}: the row authentication marker is missing: the archive was altered"
            )
        last = -1
        while True:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?", (last, PURGE_BATCH)
            ).fetchall()
            if not rows:
                break
            attachments = self._attachment_rows(db, rows)
            for row in rows:
                mac = self._row_mac(row, attachments.get(row[0], ()))
                db.execute("UPDATE messages SET mac = ? WHERE id = ?", (mac, row[0]))
            last = rows[-1][0]
        db.execute("INSERT INTO archive_meta VALUES ('row_macs', ?)", (marker,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taking the write lock at once)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # a full disk may have ended the transaction already: the first error counts
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the statements in it see one snapshot."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------------

    def add(self, message: Message) -> bool:
        """Archive ``message``; False when its event ID is archived already (nothing changes).

        Raises on any failure to write (a full disk, a lost database): nothing
        is then stored, and the caller must not take the event as archived."""
        return self.add_many([message]) == 1

    def add_many(self, messages: Iterable[Message]) -> int:
        """Archive ``messages`` in one transaction; the number that were new."""
        batch = list(messages)
        written: list[Path] = []
        new = 0
        try:
            with self._write() as db:
                known, pending = self._batch_lookup(db, [message.event_id for message in batch])
                rows = _BatchRows()
                for message in batch:
                    new += self._insert(db, message, written, known, pending, rows)
                # one statement each for the batch's messages and index entries
                db.executemany(f"INSERT INTO messages ({_COLUMNS}) VALUES ({_MARKS})", rows.messages)
                self._index_insert(db, rows.index)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return new

    @staticmethod
    def _batch_lookup(db: Any, event_ids: Sequence[str]) -> tuple[set[str], dict[str, tuple[int, str]]]:
        """The event IDs of a batch archived already, and the redactions waiting for them: two
        queries per 500 messages instead of two per message."""
        known: set[str] = set()
        pending: dict[str, tuple[int, str]] = {}
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            known.update(
                event_id
                for (event_id,) in db.execute(
                    f"SELECT event_id FROM messages WHERE event_id IN ({marks})", chunk
                )
            )
            for event_id, redacted_at, redacted_by in db.execute(
                "SELECT event_id, redacted_at, redacted_by FROM pending_redactions "
                f"WHERE event_id IN ({marks})",
                chunk,
            ):
                pending[event_id] = (redacted_at, redacted_by)
        return known, pending

    def _insert(
        self,
        db: sqlite3.Connection,
        message: Message,
        written: list[Path],
        known: set[str],
        pending: dict[str, tuple[int, str]],
        rows: _BatchRows,
    ) -> bool:
        if message.event_id in known:
            return False
        known.add(message.event_id)
        row_id = self._next_id(db, message.origin_server_ts, rows.assigned)
        redaction = pending.pop(message.event_id, None)
        if redaction:
            db.execute("DELETE FROM pending_redactions WHERE event_id = ?", (message.event_id,))
        stored_attachments: list[tuple] = []
        for index, attachment in enumerate(message.attachments):
            file = self._write_file(
                self._cipher.seal(attachment.data, message.event_id, f"attachment-data/{index}"), written
            )
            stored_attachments.append(
                (
                    row_id,
                    index,
                    self._cipher.seal(_utf8(attachment.name), message.event_id, f"attachment-name/{index}"),
                    attachment.mimetype,
                    attachment.size,
                    file,
                )
            )
        row = (
            row_id,
            message.event_id,
            message.room_id,
            message.sender,
            message.device_id,
            message.origin_server_ts,
            message.event_type,
            message.msgtype,
            self._cipher.seal(_utf8(message.body), message.event_id, "body"),
            len(message.attachments),
            self._clock(),
            *(redaction or (None, None)),
            message.violation,
            self._cipher.seal(_utf8(message.content), message.event_id, "content"),
            message.relates_to,
            message.rel_type,
        )
        rows.messages.append((*row, self._row_mac(row, stored_attachments)))
        rows.index.append(self._index_row(row_id, message))
        if message.violation is not None:
            enforcement = message.enforcement or Enforcement()
            details = json.dumps({"media": list(enforcement.media), "reason": enforcement.reason})
            db.execute(
                "INSERT INTO enforcements (message_id, details) VALUES (?, ?)",
                (row_id, self._cipher.seal(_utf8(details), message.event_id, "enforcement")),
            )
        if stored_attachments:
            db.executemany("INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?)", stored_attachments)
        return True

    @staticmethod
    def _next_id(db: sqlite3.Connection, ts: int, assigned: dict[int, int]) -> int:
        """The next free row ID of millisecond ``ts`` (its sequence bits count up); ``assigned``
        holds the last one given in this transaction, whose rows are not inserted yet."""
        first = ts << SEQ_BITS
        last = first | ((1 << SEQ_BITS) - 1)
        top = assigned.get(ts)
        if top is None:
            query = "SELECT max(id) FROM messages WHERE id BETWEEN ? AND ?"
            (top,) = db.execute(query, (first, last)).fetchone()
        if top is None:
            row_id = first
        elif top == last:
            raise ArchiveError(f"more than {1 << SEQ_BITS} messages with origin_server_ts {ts}")
        else:
            row_id = top + 1
        assigned[ts] = row_id
        return row_id

    def _file_path(self, file: str) -> Path:
        return self.files / file[:2] / file

    def _write_file(self, data: bytes, written: list[Path]) -> str:
        file = secrets.token_hex(16)
        path = self._file_path(file)
        self.files.mkdir(mode=0o700, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        written.append(path)
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return file

    def mark_redacted(self, event_id: str, redacted_at: int, redacted_by: str) -> bool:
        """Record that ``redacted_by`` redacted ``event_id`` at ``redacted_at`` (ms); the
        content stays. The first redaction recorded wins. False when the event is
        not archived (yet): the redaction is kept and applied when it arrives."""
        with self._write() as db:
            found = db.execute(f"SELECT {_COLUMNS} FROM messages WHERE event_id = ?", (event_id,)).fetchone()
            if found is not None:
                attachments = self._attachment_rows(db, [found]).get(found[0], ())
                # check before re-computing: a new MAC must never bless an altered row
                self._check_mac(found, attachments)
                if found[11] is None:
                    row = (*found[:11], redacted_at, redacted_by, *found[13 : _COLUMN_COUNT - 1])
                    db.execute(
                        "UPDATE messages SET redacted_at = ?, redacted_by = ?, mac = ? WHERE id = ?",
                        (redacted_at, redacted_by, self._row_mac(row, attachments), found[0]),
                    )
                return True
            db.execute(
                "INSERT INTO pending_redactions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (event_id, redacted_at, redacted_by),
            )
            return False

    def record_enforcement(self, event_id: str, *, enforced: bool, notified: bool = False) -> None:
        """Record an attempt to enforce the violation of ``event_id``: ``enforced``, it is done
        (``unenforced`` lists it no more); else it is due again after a back-off
        (``RETRY_FIRST_MS``, doubling up to ``RETRY_MAX_MS``). ``notified``: the sender
        was told (the first time counts)."""
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT e.attempts FROM enforcements AS e JOIN messages AS m ON m.id = e.message_id "
                "WHERE m.event_id = ?",
                (event_id,),
            ).fetchone()
            if row is None:
                raise KeyError(f"no violation of {event_id} in the archive")
            attempts = row[0] if enforced else row[0] + 1
            delay = min(RETRY_MAX_MS, RETRY_FIRST_MS << min(attempts - 1, 32)) if not enforced else 0
            db.execute(
                "UPDATE enforcements SET attempts = ?, retry_at = ?, "
                "enforced_at = CASE WHEN ? THEN coalesce(enforced_at, ?) ELSE enforced_at END, "
                "notified_at = CASE WHEN ? THEN coalesce(notified_at, ?) ELSE notified_at END "
                "WHERE message_id = (SELECT id FROM messages WHERE event_id = ?)",
                (attempts, now + delay, enforced, now, notified, now, event_id),
            )

    def purge_older_than(self, cutoff_ms: int) -> int:
        """Delete every message with origin_server_ts < ``cutoff_ms``, its index tokens and
        attachments (and redactions still waiting from before the cutoff); the number
        of messages deleted."""
        limit = max(0, min(cutoff_ms, TS_LIMIT)) << SEQ_BITS
        deleted = 0
        while True:
            with self._write() as db:
                row = db.execute(
                    "SELECT id FROM messages WHERE id < ? ORDER BY id LIMIT 1 OFFSET ?",
                    (limit, PURGE_BATCH - 1),
                ).fetchone()
                end = row[0] + 1 if row else limit
                files = [
                    file
                    for (file,) in db.execute("SELECT file FROM attachments WHERE message_id < ?", (end,))
                ]
                db.execute("DELETE FROM attachments WHERE message_id < ?", (end,))
                db.execute("DELETE FROM enforcements WHERE message_id < ?", (end,))
                self._index_delete_below(db, end)
                count = db.execute("DELETE FROM messages WHERE id < ?", (end,)).rowcount
                if row is None:
                    db.execute("DELETE FROM pending_redactions WHERE redacted_at < ?", (cutoff_ms,))
                    db.execute("DELETE FROM held_events WHERE received_at < ?", (cutoff_ms,))
            for file in files:
                self._file_path(file).unlink(missing_ok=True)
            deleted += count
            if row is None:
                break
        if deleted:
            self._erase_leftovers()
        self._remove_orphan_files()
        return deleted

    def _erase_leftovers(self) -> None:
        """Make the purge final in the files, not only in the answers.

        An FTS5 delete only marks the row's tokens as deleted; the old segments
        keep them until merged, so ``optimize`` merges the whole index now (the
        whole index is rewritten: seconds for a million messages). Freed pages
        are zeroed (``secure_delete``), but their earlier versions stay in the WAL
        file until it is truncated.
        """
        with self._write() as db:
            db.execute("INSERT INTO message_tokens (message_tokens) VALUES ('optimize')")
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _remove_orphan_files(self) -> None:
        if not self.files.is_dir():
            return
        with self._read() as db:
            known = {file for (file,) in db.execute("SELECT file FROM attachments")}
        too_young = time.time() - ORPHAN_AGE
        for directory in self.files.iterdir():
            for path in directory.iterdir() if directory.is_dir() else ():
                if path.name in known:
                    continue
                try:
                    old = path.stat().st_mtime < too_young
                except FileNotFoundError:  # unlinked meanwhile: another bot's purge, a failed write
                    continue
                if old:
                    path.unlink(missing_ok=True)

    # -- a bot's rooms (several bots sharing an archive each work on their own rooms) ---------------

    def _in_rooms(self, column: str, rooms: Collection[str] | None) -> tuple[str, tuple[Any, ...]]:
        """An SQL condition keeping the rows whose ``column`` is one of ``rooms`` (None: every
        row), and its parameters: one, however many rooms (here a JSON array that SQLite
        reads into a temporary index once per statement). The unary ``+`` keeps SQLite from
        driving the query through the room index (every message of every room listed) rather
        than through the few due or held rows."""
        if rooms is None:
            return "1 = 1", ()
        return f"+{column} IN (SELECT value FROM json_each(?))", (json.dumps(room_list(rooms)),)

    # -- the blind index (SQLite: an FTS5 table whose row ID is the message's) ----------------------

    def _index_row(self, row_id: int, message: Message) -> tuple[Any, ...]:
        return (row_id, self._index.document(message.body, message.room_id, message.sender))

    def _index_insert(self, db: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        db.executemany("INSERT INTO message_tokens (rowid, tokens) VALUES (?, ?)", rows)

    def _index_delete_below(self, db: Any, end: int) -> None:
        db.execute("DELETE FROM message_tokens WHERE rowid < ?", (end,))

    def _index_search(
        self,
        db: Any,
        query_words: Sequence[str],
        room_id: str | None,
        sender: str | None,
        id_range: tuple[int, int],
        limit: int,
        offset: int,
    ) -> list[tuple]:
        # CROSS JOIN: the FTS5 table drives, in its row ID order (newest first)
        return db.execute(
            f"SELECT {_M_COLUMNS} "
            "FROM message_tokens AS t CROSS JOIN messages AS m ON m.id = t.rowid "
            "WHERE t.message_tokens MATCH ? AND t.rowid BETWEEN ? AND ? "
            "AND (? IS NULL OR m.room_id = ?) AND (? IS NULL OR m.sender = ?) "
            "ORDER BY t.rowid DESC LIMIT ? OFFSET ?",
            (
                self._index.query(query_words, room_id, sender),
                *id_range,
                room_id,
                room_id,
                sender,
                sender,
                limit,
                offset,
            ),
        ).fetchall()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, event_id: str) -> ArchivedMessage | None:
        with self._read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM messages WHERE event_id = ?", (event_id,)).fetchall()
            return self._messages(db, rows)[0] if rows else None

    def context(self, event_id: str, before: int = 3, after: int = 3) -> list[ArchivedMessage]:
        """Up to ``before`` messages of the same room before ``event_id``, the message,
        and up to ``after`` after it, oldest first; empty when it is not archived."""
        with self._read() as db:
            target = db.execute("SELECT id, room_id FROM messages WHERE event_id = ?", (event_id,)).fetchone()
            if target is None:
                return []
            row_id, room_id = target
            earlier = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (room_id, row_id, before),
            ).fetchall()
            rest = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room_id = ? AND id >= ? ORDER BY id LIMIT ?",
                (room_id, row_id, after + 1),
            ).fetchall()
            return self._messages(db, [*reversed(earlier), *rest])

    def search(
        self,
        query: str = "",
        *,
        room_id: str | None = None,
        sender: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Messages containing every word of ``query`` (whole words, any case), newest first.

        Filters: ``room_id``, ``sender``, and origin_server_ts in [``since``,
        ``until``) (ms). An empty query lists the messages the filters let
        through. ``limit``/``offset`` page through the results. Redacted
        messages are found like any other. The words are looked up in the
        blind index: whole words only, no prefixes or phrases (``blind_index``).
        """
        if limit < 1 or offset < 0:
            raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit} and {offset}")
        query_words = list(dict.fromkeys(words(query)))
        if query.strip() and not query_words:
            raise ValueError(f"the query {query!r} has no words to search for")
        low = min(TS_LIMIT, max(0, since or 0)) << SEQ_BITS
        high = (min(TS_LIMIT, until if until is not None else TS_LIMIT) << SEQ_BITS) - 1
        with self._read() as db:
            if query_words or room_id is not None or sender is not None:
                rows = self._index_search(db, query_words, room_id, sender, (low, high), limit, offset)
            else:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE id BETWEEN ? AND ? "
                    "ORDER BY id DESC LIMIT ? OFFSET ?",
                    (low, high, limit, offset),
                ).fetchall()
            found = set(query_words)
            return [
                SearchHit(message, snippet(message.body, found), message.current)
                for message in self._messages(db, rows)
            ]

    def unenforced(
        self, limit: int = 20, *, rooms: Collection[str] | None = None
    ) -> list[PendingEnforcement]:
        """Up to ``limit`` violations not yet enforced and due (new, or their back-off is
        over), those due longest first. ``rooms``: only those of these rooms (a bot's own,
        on an archive several bots share); None: of every room."""
        in_rooms, room_params = self._in_rooms("m.room_id", rooms)
        return self._pending(
            f"e.retry_at <= ? AND {in_rooms} ORDER BY e.retry_at, e.message_id LIMIT ?",
            (self._clock(), *room_params, limit),
        )

    def enforcement(
        self, event_id: str, *, rooms: Collection[str] | None = None
    ) -> PendingEnforcement | None:
        """The violation of ``event_id`` if it is not enforced yet (due or not) and, with
        ``rooms``, in one of them; else None."""
        in_rooms, room_params = self._in_rooms("m.room_id", rooms)
        found = self._pending(f"m.event_id = ? AND {in_rooms}", (event_id, *room_params))
        return found[0] if found else None

    def _pending(self, condition: str, params: tuple[Any, ...]) -> list[PendingEnforcement]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_M_COLUMNS}, e.details, e.notified_at, e.attempts "
                "FROM enforcements AS e JOIN messages AS m ON m.id = e.message_id "
                f"WHERE e.enforced_at IS NULL AND {condition}",
                params,
            ).fetchall()
            messages = self._messages(db, [row[:_COLUMN_COUNT] for row in rows])
        pending = []
        for message, (sealed, notified_at, attempts) in zip(
            messages, (row[_COLUMN_COUNT:] for row in rows), strict=True
        ):
            details = (
                json.loads(_text(self._decrypt(sealed, message.event_id, "enforcement"))) if sealed else {}
            )
            enforcement = Enforcement(media=details.get("media", ()), reason=details.get("reason", ""))
            pending.append(PendingEnforcement(message, enforcement, notified_at is not None, attempts))
        return pending

    def read_attachment(self, event_id: str, index: int) -> bytes:
        """The decrypted bytes of attachment ``index`` of ``event_id``; KeyError when there is none."""
        with self._read() as db:
            row = db.execute(
                "SELECT a.file FROM attachments AS a JOIN messages AS m ON m.id = a.message_id "
                "WHERE m.event_id = ? AND a.idx = ?",
                (event_id, index),
            ).fetchone()
        if row is None:
            raise KeyError(f"no attachment {index} of {event_id} in the archive")
        path = self._file_path(row[0])
        try:
            sealed = path.read_bytes()
        except FileNotFoundError:
            raise CorruptRecordError(
                f"attachment {index} of {event_id}: its file {path} is missing"
            ) from None
        return self._decrypt(sealed, event_id, f"attachment-data/{index}")

    def count(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])

    def stats(self) -> ArchiveStats:
        with self._read() as db:
            messages, redacted, violations, oldest, newest = db.execute(
                "SELECT count(*), count(redacted_at), count(violation), min(id), max(id) FROM messages"
            ).fetchone()
            attachments, attachment_bytes = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM attachments"
            ).fetchone()
            (rooms,) = db.execute("SELECT count(DISTINCT room_id) FROM messages").fetchone()
            (senders,) = db.execute("SELECT count(DISTINCT sender) FROM messages").fetchone()
            (pending,) = db.execute("SELECT count(*) FROM pending_redactions").fetchone()
            (unenforced,) = db.execute(
                "SELECT count(*) FROM enforcements WHERE enforced_at IS NULL"
            ).fetchone()
            (held,) = db.execute("SELECT count(*) FROM held_events").fetchone()
        return ArchiveStats(
            messages=messages,
            redacted=redacted,
            attachments=attachments,
            attachment_bytes=attachment_bytes,
            rooms=rooms,
            senders=senders,
            oldest_ts=None if oldest is None else oldest >> SEQ_BITS,
            newest_ts=None if newest is None else newest >> SEQ_BITS,
            pending_redactions=pending,
            violations=violations,
            database_bytes=self._database_bytes(),
            unenforced_violations=unenforced,
            held_events=held,
        )

    def _database_bytes(self) -> int:
        files = (self.path, Path(f"{self.path}-wal"))
        return sum(path.stat().st_size for path in files if path.exists())

    # -- decrypting ------------------------------------------------------------------------------

    def _decrypt(self, sealed: bytes, event_id: str, role: str) -> bytes:
        try:
            return self._cipher.open(bytes(sealed), event_id, role)
        except InvalidTag:
            raise CorruptRecordError(
                f"{event_id}: the archived {role} does not decrypt: it was altered or belongs to "
                "another record"
            ) from None

    def _attachment_rows(self, db: Any, rows: Sequence[tuple]) -> dict[int, list[tuple]]:
        """The attachment rows (message_id, idx, name, mimetype, size, file) of ``rows``."""
        with_files = [row[0] for row in rows if row[9]]
        attachments: dict[int, list[tuple]] = {}
        if with_files:
            marks = ", ".join("?" * len(with_files))
            for attachment in db.execute(
                "SELECT message_id, idx, name, mimetype, size, file FROM attachments "
                f"WHERE message_id IN ({marks}) ORDER BY message_id, idx",
                with_files,
            ):
                attachments.setdefault(attachment[0], []).append(attachment)
        return attachments

    def _row_mac(self, row: Sequence[Any], attachments: Iterable[Sequence[Any]]) -> bytes:
        """HMAC-SHA256 over every clear column of a message row and of its attachment rows.

        The ciphertexts are bound to the event ID by their own AES-GCM tag; the
        MAC covers whether the content is there (NULL for older rows)."""
        fields = [*row[:8], *row[9:14], *row[15:17], row[14] is not None]
        described = [[a[1], a[3], a[4], a[5]] for a in attachments]
        data = _MAC_ENCODER.encode([fields, described]).encode("ascii")
        mac = self._mac_base.copy()  # keyed once: ``hmac.digest`` looks SHA-256 up each time
        mac.update(data)
        return mac.digest()

    def _check_mac(self, row: Sequence[Any], attachments: Iterable[Sequence[Any]]) -> None:
        stored = row[_COLUMN_COUNT - 1]
        if stored is None or not hmac.compare_digest(bytes(stored), self._row_mac(row, attachments)):
            raise CorruptRecordError(
                f"{row[1]}: the archived record was altered (its columns do not match their MAC: "
                "sender, device, times, redaction or violation marks, relations or attachments)"
            )

    def _messages(self, db: Any, rows: Sequence[tuple]) -> list[ArchivedMessage]:
        attachments = self._attachment_rows(db, rows)
        newest = self._newest_edits(db, rows)
        messages = []
        for row in rows:
            own = attachments.get(row[0], ())
            self._check_mac(row, own)
            event_id, sender, rel_type, relates_to = row[1], row[3], row[16], row[15]
            target = relates_to if rel_type == REPLACE and relates_to else event_id
            edit = newest.get((target, sender))
            replaced_by = edit[1] if edit is not None and edit[0] > row[0] else None
            messages.append(self._message(row, own, replaced_by))
        return messages

    def _newest_edits(self, db: Any, rows: Sequence[tuple]) -> dict[tuple[str, str], tuple[int, str]]:
        """(original's event ID, sender) -> (row ID, event ID) of the newest edit, for ``rows``."""
        targets = sorted({row[15] if row[16] == REPLACE and row[15] else row[1] for row in rows})
        newest: dict[tuple[str, str], tuple[int, str]] = {}
        for start in range(0, len(targets), 500):
            chunk = targets[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for row_id, event_id, sender, relates_to in db.execute(
                "SELECT id, event_id, sender, relates_to FROM messages "
                f"WHERE relates_to IN ({marks}) AND rel_type = ?",
                (*chunk, REPLACE),
            ):
                known = newest.get((relates_to, sender))
                if known is None or row_id > known[0]:
                    newest[(relates_to, sender)] = (row_id, event_id)
        return newest

    def _message(
        self, row: tuple, attachments: Iterable[tuple], replaced_by: str | None = None
    ) -> ArchivedMessage:
        (
            _row_id,
            event_id,
            room_id,
            sender,
            device_id,
            ts,
            event_type,
            msgtype,
            body,
            _count,
            archived_at,
            redacted_at,
            redacted_by,
            violation,
            content,
            relates_to,
            rel_type,
            _mac,
        ) = row
        return ArchivedMessage(
            event_id=event_id,
            room_id=room_id,
            sender=sender,
            device_id=device_id,
            origin_server_ts=ts,
            event_type=event_type,
            msgtype=msgtype,
            body=_text(self._decrypt(body, event_id, "body")),
            attachments=tuple(
                StoredAttachment(
                    index=idx,
                    name=_text(self._decrypt(name, event_id, f"attachment-name/{idx}")),
                    mimetype=mimetype,
                    size=size,
                )
                for _id, idx, name, mimetype, size, _file in attachments
            ),
            archived_at=archived_at,
            redacted_at=redacted_at,
            redacted_by=redacted_by,
            violation=violation,
            content="{}" if content is None else _text(self._decrypt(content, event_id, "content")),
            relates_to=relates_to,
            rel_type=rel_type,
            replaced_by=replaced_by,
        )

    # -- versions ----------------------------------------------------------------------------------

    def versions(self, event_id: str) -> list[ArchivedMessage]:
        """The original of ``event_id`` (its own ID or an edit's) and its edits by the original's
        sender, oldest first: the last is the current version. Empty when not archived."""
        with self._read() as db:
            found = db.execute(
                "SELECT event_id, sender, relates_to, rel_type FROM messages WHERE event_id = ?", (event_id,)
            ).fetchone()
            if found is None:
                return []
            original_id, sender, relates_to, rel_type = found
            if rel_type == REPLACE and relates_to:
                original = db.execute(
                    "SELECT event_id, sender FROM messages WHERE event_id = ?", (relates_to,)
                ).fetchone()
                # an edit whose original is not archived: the edits of its sender
                original_id, sender = original if original is not None else (relates_to, sender)
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE event_id = ? "
                f"UNION ALL SELECT {_COLUMNS} FROM messages WHERE relates_to = ? AND rel_type = ? "
                "AND sender = ? ORDER BY id",
                (original_id, original_id, REPLACE, sender),
            ).fetchall()
            return self._messages(db, rows)

    # -- events waiting for their keys ---------------------------------------------------------------

    @staticmethod
    def _held_role(room_id: str, received_at: int) -> str:
        return f"held-event/{received_at}/{room_id}"

    def hold_undecrypted(self, event_id: str, room_id: str, event_json: str, received_at: int) -> None:
        """Keep an event the bot cannot decrypt yet, across restarts; holding it again counts an
        attempt (the first ``received_at`` and JSON stay)."""
        for name, value in (("event_id", event_id), ("room_id", room_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(event_json, str):
            raise ValueError("event_json must be JSON text")
        if not isinstance(received_at, int) or not 0 <= received_at < TS_LIMIT:
            raise ValueError(f"received_at must be an integer in [0, 2**47) (ms), got {received_at!r}")
        sealed = self._cipher.seal(_utf8(event_json), event_id, self._held_role(room_id, received_at))
        with self._write() as db:
            db.execute(
                "INSERT INTO held_events (event_id, room_id, event, received_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (event_id) DO UPDATE SET attempts = held_events.attempts + 1",
                (event_id, room_id, sealed, received_at),
            )

    def undecrypted(self, *, rooms: Collection[str] | None = None) -> list[HeldEvent]:
        """Every held event (``rooms``: of these rooms only), received longest ago first."""
        in_rooms, room_params = self._in_rooms("room_id", rooms)
        with self._read() as db:
            rows = db.execute(
                "SELECT event_id, room_id, event, received_at, attempts FROM held_events "
                f"WHERE {in_rooms} ORDER BY received_at, event_id",
                room_params,
            ).fetchall()
        return [
            HeldEvent(
                event_id=event_id,
                room_id=room_id,
                event_json=_text(self._decrypt(sealed, event_id, self._held_role(room_id, received_at))),
                received_at=received_at,
                attempts=attempts,
            )
            for event_id, room_id, sealed, received_at, attempts in rows
        ]

    def release_undecrypted(self, event_id: str) -> None:
        """Forget a held event (decrypted and archived, or given up)."""
        with self._write() as db:
            db.execute("DELETE FROM held_events WHERE event_id = ?", (event_id,))

    def undecryptable_counts(
        self, older_than_ms: int, *, rooms: Collection[str] | None = None
    ) -> dict[str, int]:
        """Room ID -> number of held events received before ``older_than_ms`` (``rooms``: of
        these rooms only)."""
        in_rooms, room_params = self._in_rooms("room_id", rooms)
        with self._read() as db:
            return {
                room_id: int(count)
                for room_id, count in db.execute(
                    f"SELECT room_id, count(*) FROM held_events WHERE received_at < ? AND {in_rooms} "
                    "GROUP BY room_id",
                    (older_than_ms, *room_params),
                )
            }

    # -- verification ------------------------------------------------------------------------------

    def verify_records(self, batch: int = PURGE_BATCH) -> Iterator[str]:
        """Check every message (its MAC, body, content and attachment names) and every held event;
        yield one sentence per altered record. Nothing yielded: the archive is intact."""
        last = -1
        while True:
            with self._read() as db:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?", (last, batch)
                ).fetchall()
                attachments = self._attachment_rows(db, rows)
            if not rows:
                break
            for row in rows:
                try:
                    self._check_mac(row, attachments.get(row[0], ()))
                    self._message(row, attachments.get(row[0], ()))
                except CorruptRecordError as error:
                    yield str(error)
            last = rows[-1][0]
        with self._read() as db:
            held = db.execute("SELECT event_id, room_id, event, received_at FROM held_events").fetchall()
        for event_id, room_id, sealed, received_at in held:
            try:
                self._decrypt(sealed, event_id, self._held_role(room_id, received_at))
            except CorruptRecordError as error:
                yield str(error)
