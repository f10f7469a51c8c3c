"""The auditor's archive on PostgreSQL: the same archive as ``archive.py``, for installations
that run Synapse on PostgreSQL and back up one database server rather than a SQLite file.

Everything but the storage is shared with the SQLite archive (``Archive``):
encryption at rest, the blind index's tokens, row IDs in time order, the
attachment files (``files``: a directory on the bot's host), redaction and
violation marks with their enforcement state, the purge. What differs:

- the blind index is a ``text[]`` column of tokens with a GIN index; a search
  is array containment (``@>``) over the tokens of the words and filters;
- write transactions take a transaction-scoped advisory lock, as SQLite's
  ``BEGIN IMMEDIATE`` does, so row IDs of one millisecond never collide, also
  between several bots writing into one archive (shards); they run in READ
  COMMITTED whatever the server's default, so each sees what the writer before
  it committed; reads run in one ``REPEATABLE READ`` snapshot;
- a purge ends with ``VACUUM`` of the archive's tables, so the space of
  purged rows is reused. Unlike SQLite's ``secure_delete`` this does not zero
  the freed pages: old ciphertexts and tokens may stay on disk until they are
  overwritten (they stay encrypted; use disk encryption on the server).

The connection string (libpq: ``host=... dbname=... user=...``) should carry
no password: libpq reads it from ``~/.pgpass``, ``PGPASSFILE`` or
``PGPASSWORD``, so no secret sits in the bot's config.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from .archive import _M_COLUMNS, Archive, ArchiveError, Message, now_ms, room_list

#: the advisory lock the archive's writers share ("AUDITARC")
WRITE_LOCK = 0x4155_4449_5441_5243

#: Step N brings the schema from version N-1 to N. Append, never edit.
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE archive_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
        """
        CREATE TABLE messages (
            id BIGINT PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            device_id TEXT,
            origin_server_ts BIGINT NOT NULL,
            event_type TEXT NOT NULL,
            msgtype TEXT,
            body BYTEA NOT NULL,
            attachments INTEGER NOT NULL,
            archived_at BIGINT NOT NULL,
            redacted_at BIGINT,
            redacted_by TEXT,
            violation TEXT
        )
        """,
        "CREATE INDEX messages_room ON messages (room_id, id)",
        """
        CREATE TABLE attachments (
            message_id BIGINT NOT NULL,
            idx INTEGER NOT NULL,
            name BYTEA NOT NULL,
            mimetype TEXT NOT NULL,
            size INTEGER NOT NULL,
            file TEXT NOT NULL,
            PRIMARY KEY (message_id, idx)
        )
        """,
        "CREATE TABLE message_tokens (message_id BIGINT PRIMARY KEY, tokens TEXT[] NOT NULL)",
        "CREATE INDEX message_tokens_tokens ON message_tokens USING GIN (tokens)",
        """
        CREATE TABLE pending_redactions (
            event_id TEXT PRIMARY KEY,
            redacted_at BIGINT NOT NULL,
            redacted_by TEXT NOT NULL
        )
        """,
    ),
    # as the SQLite archive's third step: the enforcement of each violation
    (
        """
        CREATE TABLE enforcements (
            message_id BIGINT PRIMARY KEY,
            details BYTEA,
            notified_at BIGINT,
            enforced_at BIGINT,
            attempts INTEGER NOT NULL DEFAULT 0,
            retry_at BIGINT NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX enforcements_due ON enforcements (retry_at, message_id) WHERE enforced_at IS NULL",
        "INSERT INTO enforcements (message_id, enforced_at) "
        "SELECT id, archived_at FROM messages WHERE violation IS NOT NULL",
    ),
    # as the SQLite archive's fourth step: full events, relations, row MACs, held events
    (
        "ALTER TABLE messages ADD COLUMN content BYTEA",
        "ALTER TABLE messages ADD COLUMN relates_to TEXT",
        "ALTER TABLE messages ADD COLUMN rel_type TEXT",
        "ALTER TABLE messages ADD COLUMN mac BYTEA",
        "CREATE INDEX messages_relates ON messages (relates_to, id) WHERE relates_to IS NOT NULL",
        """
        CREATE TABLE held_events (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            event BYTEA NOT NULL,
            received_at BIGINT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX held_events_received ON held_events (received_at)",
    ),
)
_TABLES = (
    "messages",
    "attachments",
    "message_tokens",
    "pending_redactions",
    "enforcements",
    "held_events",
    "archive_meta",
)


def _bytes(value: Any, cursor: Any) -> bytes | None:
    """BYTEA as ``bytes`` (psycopg2 gives memoryview), as sqlite3 gives BLOBs."""
    data = psycopg2.BINARY(value, cursor)
    return None if data is None else bytes(data)


_BYTES = psycopg2.extensions.new_type(psycopg2.BINARY.values, "AUDITOR_BYTES", _bytes)


class _Connection:
    """psycopg2 behind the part of sqlite3's interface the archive uses: ``?`` placeholders,
    and ``execute`` returning its cursor."""

    def __init__(self, dsn: str) -> None:
        self.raw = psycopg2.connect(dsn)
        psycopg2.extensions.register_type(_BYTES, self.raw)

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.raw.cursor()
        if params:
            cursor.execute(self._sql(sql), tuple(params))
        else:
            cursor.execute(sql)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cursor = self.raw.cursor()
        cursor.executemany(self._sql(sql), [tuple(row) for row in rows])
        return cursor

    def close(self) -> None:
        self.raw.close()


class PostgresArchive(Archive):
    """An archive in the PostgreSQL database ``dsn``, its attachment files in ``files``.

    ``create``: make the tables when the database has none (else raise
    ``ArchiveError``).
    """

    migrations = PG_MIGRATIONS
    _mac_version = 3
    _database_errors = (psycopg2.DatabaseError,)

    def __init__(
        self,
        dsn: str,
        key: bytes,
        *,
        files: str | Path,
        create: bool = True,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.dsn = dsn
        self.path = Path(files)
        self._open(key, files=Path(files), create=create, clock=clock)

    @property
    def _where(self) -> str:
        # the database's name and host, never its password
        try:
            info = self._db.raw.info
            return f"PostgreSQL database {info.dbname} on {info.host}:{info.port}"
        except Exception:
            return "the PostgreSQL archive"

    def _connect(self, create: bool) -> _Connection:
        try:
            connection = _Connection(self.dsn)
            # whatever the server's default: a writer's statements after the write lock must see
            # what the writer before it committed (under REPEATABLE READ or SERIALIZABLE the
            # snapshot predates the lock, and two writers would take the same row ID)
            connection.raw.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED)
        except psycopg2.Error as error:
            raise ArchiveError(f"cannot connect to the PostgreSQL archive: {error}".strip()) from None
        if not create:
            tables = self._tables(connection)
            connection.raw.rollback()
            if "archive_schema_version" not in tables:
                connection.close()
                raise ArchiveError("no archive in the PostgreSQL database")
        return connection

    def _tables(self, db: Any) -> set[str]:
        return {
            name
            for (name,) in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        }

    def _configure(self) -> None:
        pass

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction, the archive's writers one at a time."""
        with self._lock:
            try:
                self._db.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
                yield self._db
            except BaseException:
                self._db.raw.rollback()
                raise
            self._db.raw.commit()

    @contextmanager
    def _read(self) -> Iterator[Any]:
        """One read-only transaction: the statements in it see one snapshot."""
        with self._lock:
            try:
                self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield self._db
            finally:
                self._db.raw.rollback()

    def _erase_leftovers(self) -> None:
        """Let PostgreSQL reuse the purged rows' space now rather than at the next autovacuum."""
        with self._lock:
            self._db.raw.autocommit = True
            try:
                self._db.execute(f"VACUUM {', '.join(_TABLES)}")
            finally:
                self._db.raw.autocommit = False

    def _database_bytes(self) -> int:
        with self._read() as db:
            sizes = " + ".join(f"pg_total_relation_size('{table}')" for table in _TABLES)
            (total,) = db.execute(f"SELECT {sizes}").fetchone()
        return int(total)

    def _in_rooms(self, column: str, rooms: Collection[str] | None) -> tuple[str, tuple[Any, ...]]:
        """As SQLite's, with an array parameter (PostgreSQL hashes a long one for the lookups)."""
        if rooms is None:
            return "1 = 1", ()
        return f"{column} = ANY(?::text[])", (room_list(rooms),)

    # -- the blind index: a token array per message, GIN-indexed ------------------------------------

    def _index_row(self, row_id: int, message: Message) -> tuple[Any, ...]:
        return (row_id, self._index.document(message.body, message.room_id, message.sender).split())

    def _index_insert(self, db: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        db.executemany("INSERT INTO message_tokens (message_id, tokens) VALUES (?, ?)", rows)

    def _index_delete_below(self, db: Any, end: int) -> None:
        db.execute("DELETE FROM message_tokens WHERE message_id < ?", (end,))

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
        tokens = [self._index.word_token(word) for word in query_words]
        if room_id is not None:
            tokens.append(self._index.room_token(room_id))
        if sender is not None:
            tokens.append(self._index.sender_token(sender))
        return db.execute(
            f"SELECT {_M_COLUMNS} "
            "FROM message_tokens AS t JOIN messages AS m ON m.id = t.message_id "
            "WHERE t.tokens @> ?::text[] AND t.message_id BETWEEN ? AND ? "
            "AND (?::text IS NULL OR m.room_id = ?) AND (?::text IS NULL OR m.sender = ?) "
            "ORDER BY t.message_id DESC LIMIT ? OFFSET ?",
            (tokens, *id_range, room_id, room_id, sender, sender, limit, offset),
        ).fetchall()


__all__ = ["PostgresArchive"]
