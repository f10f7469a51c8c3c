"""The dispatch bot's state on disk (SQLite): everything a restart needs.

Incidents and their units, alerts with addressees, acknowledgements and the
next escalation time, officers' statuses and positions, the diary, the board
message per control room, rooms the bot made, messages still to send (the
outbox) and the events already handled (a replayed sync acts once).
Deadlines are stored as wall-clock times, so escalation is on time after a restart.

**Exactly once.** What one event changes is written in one transaction
(``atomic``) together with the mark that it was handled and the messages it
sends; those wait in the outbox, each with its transaction ID (and, once
encrypted, its ciphertext), so a retry after a crash is the same request and
the homeserver answers with the event it made the first time. A command with
steps (``jobs``) records each step; a restart carries on from the last one.
A room the bot creates is announced first (``pending_rooms``: a token the
room carries in its creation content), so a creation cut short by a crash is
found again instead of made twice.

**Encryption at rest** (``bots.common.crypto``). What people wrote or where
they are is AES-256-GCM ciphertext, bound to its row and column (``SEALED``):
incident titles and locations, alert texts, the diary, officers' positions,
the outbox's messages (and their Megolm ciphertexts) and unfinished commands.
In clear: IDs, timestamps, statuses, priorities, unit names, user IDs and
transaction IDs, which the queries need. The main key never touches
the state; the state keeps a random HKDF salt and a key check value, and
opening it with another key raises ``WrongKeyError``. A state written in clear
by an earlier version is encrypted when first opened with a key (its clear
pages are then zeroed and vacuumed away).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag

from ..common import crypto
from ..common.crypto import Cipher

#: the label in every key derivation and every sealed column's associated data
FORMAT = b"police-dispatch-state/v1"
#: the meta entries of the encryption (hex; the salt is not secret, the check value tells keys apart)
KEY_SALT = "key_salt"
KEY_CHECK = "key_check"
#: the encrypted columns: table -> (the column naming the row, the sealed columns)
SEALED: dict[str, tuple[str, tuple[str, ...]]] = {
    "incidents": ("id", ("title", "location")),
    "alerts": ("id", ("text",)),
    "diary": ("id", ("text",)),
    "locations": ("user_id", ("geo",)),
    "outbox": ("id", ("content", "encrypted")),
    "jobs": ("event_id", ("data",)),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, title BLOB NOT NULL, prio INTEGER NOT NULL,
    location BLOB, room_id TEXT, control_room TEXT NOT NULL, created_by TEXT NOT NULL,
    created_at REAL NOT NULL, closed_at REAL, closed_by TEXT);
CREATE TABLE IF NOT EXISTS incident_units (
    incident_id INTEGER NOT NULL, unit TEXT NOT NULL, assigned_at REAL NOT NULL,
    PRIMARY KEY (incident_id, unit));
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id INTEGER, control_room TEXT NOT NULL,
    sender TEXT NOT NULL, text BLOB NOT NULL, created_at REAL NOT NULL, period REAL NOT NULL,
    due_at REAL, rounds INTEGER NOT NULL DEFAULT 1, closed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS addressees (
    alert_id INTEGER NOT NULL, user_id TEXT NOT NULL, units TEXT NOT NULL, room_id TEXT NOT NULL,
    acked_at REAL, ack_via TEXT, PRIMARY KEY (alert_id, user_id));
CREATE TABLE IF NOT EXISTS alert_events (event_id TEXT PRIMARY KEY, alert_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS statuses (user_id TEXT PRIMARY KEY, code INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS locations (user_id TEXT PRIMARY KEY, geo BLOB NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS diary (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id INTEGER NOT NULL, at REAL NOT NULL,
    author TEXT NOT NULL, kind TEXT NOT NULL, text BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (key TEXT PRIMARY KEY, room_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS boards (room_id TEXT PRIMARY KEY, event_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL, content BLOB NOT NULL,
    alert_id INTEGER, event_type TEXT NOT NULL DEFAULT 'm.room.message');
CREATE TABLE IF NOT EXISTS handled (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS jobs (
    event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, step TEXT NOT NULL, data BLOB NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pending_rooms (key TEXT PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS early_acks (
    target TEXT NOT NULL, user_id TEXT NOT NULL, at REAL NOT NULL, via TEXT NOT NULL,
    PRIMARY KEY (target, user_id));
"""
#: columns added after the first version: (table, column, declaration); an older state gets them
ADDED_COLUMNS = (
    # the transaction ID of every attempt to send this message (the homeserver deduplicates by it)
    ("outbox", "txn_id", "TEXT"),
    # the ciphertext of the first attempt (sealed like the content): every retry sends it again
    ("outbox", "encrypted", "BLOB"),
    # what follows the send: 'pin' (the incident card), 'board' (a new board, pinned)
    ("outbox", "after", "TEXT"),
    # the event it became, while what follows is still to do
    ("outbox", "event_id", "TEXT"),
    # the board it replaces (its pin goes to the new one)
    ("outbox", "replaces", "TEXT"),
)
#: what a message ``after`` its send needs: pinned in the room
AFTER_PIN = "pin"
#: a new board: the one edited from now on, pinned in place of the previous
AFTER_BOARD = "board"


@attrs.frozen
class Incident:
    id: int
    title: str
    prio: int
    location: str | None
    room_id: str | None
    control_room: str
    created_by: str
    created_at: float
    closed_at: float | None
    units: tuple[str, ...] = ()

    @property
    def open(self) -> bool:
        return self.closed_at is None


@attrs.frozen
class Addressee:
    user_id: str
    #: names of the units through which the user was addressed (their supervisors hear of misses)
    units: tuple[str, ...]
    room_id: str
    acked_at: float | None = None
    via: str | None = None


@attrs.frozen
class AlertView:
    id: int
    incident_id: int | None
    control_room: str
    sender: str
    text: str
    created_at: float
    #: seconds between alert rounds
    period: float
    #: the next escalation check (None: nothing more to do)
    due_at: float | None
    #: alerts sent so far (1 after the first)
    rounds: int
    closed: bool
    addressees: tuple[Addressee, ...]

    @property
    def missing(self) -> tuple[Addressee, ...]:
        return tuple(a for a in self.addressees if a.acked_at is None)

    @property
    def acknowledged(self) -> tuple[Addressee, ...]:
        return tuple(a for a in self.addressees if a.acked_at is not None)


@attrs.frozen
class DiaryEntry:
    at: float
    author: str
    kind: str
    text: str


@attrs.frozen
class Outgoing:
    id: int
    room_id: str
    content: dict[str, Any]
    alert_id: int | None
    event_type: str
    #: the same for every attempt, across restarts (the homeserver answers a repeat with the first event)
    txn_id: str = ""
    #: the ciphertext of the first attempt in an encrypted room (None: not encrypted yet)
    encrypted: dict[str, Any] | None = None
    #: ``AFTER_PIN``, ``AFTER_BOARD`` or None
    after: str | None = None
    #: set once sent while what comes ``after`` is still to do
    event_id: str | None = None
    #: the board this one replaces (``AFTER_BOARD``)
    replaces: str | None = None


@attrs.frozen
class Job:
    """A command between its steps: what it came with (``data``: room, sender, body, time, and
    what its steps recorded) and the last step done."""

    event_id: str
    kind: str
    step: str
    data: dict[str, Any]


@attrs.frozen
class EarlyAck:
    """An acknowledgement of an event the bot does not know yet: perhaps an alert whose send
    was cut short before its event ID was recorded (it counts once it is)."""

    user_id: str
    at: float
    via: str


class StateError(Exception):
    """The state cannot be used as it is; the message says why (never what it holds)."""


class WrongKeyError(StateError):
    """The state was encrypted with another key."""


class State:
    def __init__(self, path: Path | str, key: bytes) -> None:
        """Open (or create) the state at ``path`` with the 32-byte main ``key``."""
        self.path = str(path)
        if self.path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self._tx = _Tx(self.db)
        try:
            # freed pages are zeroed: no clear text of a state encrypted in place stays behind
            self.db.execute("PRAGMA secure_delete=ON")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._migrate()
            self._unlock(key)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        """Columns a later version added; outbox rows of an earlier one get their transaction ID."""
        for table, column, declaration in ADDED_COLUMNS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        for (row,) in self.db.execute("SELECT id FROM outbox WHERE txn_id IS NULL").fetchall():
            self.db.execute("UPDATE outbox SET txn_id = ? WHERE id = ?", (new_txn_id(), row))

    def _transaction(self) -> _Tx:
        return self._tx

    def atomic(self) -> _Tx:
        """One transaction for everything inside (nested ones join it): what an event changes,
        its handled mark and the messages it queues are written together or not at all.
        Nothing inside may await: another task would write into the same transaction."""
        return self._tx

    # -- encryption -----------------------------------------------------------------------------

    def _unlock(self, key: bytes) -> None:
        """Set up the cipher of this state's content key, after the key check; a new state (or
        one written in clear before) gets a salt and check value, and its clear rows are sealed."""
        salt, check = self.get(KEY_SALT), self.get(KEY_CHECK)
        if salt is not None and check is not None:
            content, check_key = _subkeys(key, bytes.fromhex(salt))
            if not secrets.compare_digest(crypto.check_value(check_key, FORMAT), bytes.fromhex(check)):
                raise WrongKeyError(
                    f"the state key does not match the state {self.path}; give the key it was created "
                    "with (check state_key_file or state_key_env in the bot's config)"
                )
            self._cipher = Cipher(content, FORMAT)
            return
        new_salt = crypto.new_salt()
        content, check_key = _subkeys(key, new_salt)
        self._cipher = Cipher(content, FORMAT)
        with self._transaction():
            sealed = self._seal_clear_rows()
            self.put(KEY_SALT, new_salt.hex())
            self.put(KEY_CHECK, crypto.check_value(check_key, FORMAT).hex())
        if sealed:
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _seal_clear_rows(self) -> int:
        """Encrypt what an earlier version wrote in clear (text where ciphertext belongs)."""
        count = 0
        for table, (key_column, columns) in SEALED.items():
            for column in columns:
                rows = self.db.execute(
                    f"SELECT {key_column}, {column} FROM {table} WHERE typeof({column}) = 'text'"
                ).fetchall()
                for record, text in rows:
                    self._store_sealed(table, record, **{column: text})
                count += len(rows)
        return count

    def _seal(self, text: str | None, table: str, column: str, record: object) -> bytes | None:
        """``text`` encrypted for this row and column (None stays None)."""
        if text is None:
            return None
        return self._cipher.seal(text.encode(), str(record), f"{table}.{column}")

    def _open(self, sealed: bytes | None, table: str, column: str, record: object) -> str | None:
        if sealed is None:
            return None
        try:
            return self._cipher.open(bytes(sealed), str(record), f"{table}.{column}").decode()
        except InvalidTag:
            raise StateError(
                f"{self.path}: {table}.{column} of {record} cannot be decrypted (altered or copied)"
            ) from None

    def _store_sealed(self, table: str, record: object, **texts: str | None) -> None:
        """Write ``texts`` sealed into the row named ``record`` (a new row is inserted with
        placeholders first: the seal is bound to its row ID, known only then)."""
        key_column = SEALED[table][0]
        assignments = ", ".join(f"{column} = ?" for column in texts)
        values = [self._seal(text, table, column, record) for column, text in texts.items()]
        self.db.execute(f"UPDATE {table} SET {assignments} WHERE {key_column} = ?", (*values, record))

    # -- meta -----------------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def first_time(self, event_id: str) -> bool:
        """Mark an event handled; False when it was handled before (a replayed sync)."""
        cursor = self.db.execute("INSERT OR IGNORE INTO handled (event_id) VALUES (?)", (event_id,))
        return cursor.rowcount == 1

    # -- incidents ------------------------------------------------------------------------------

    def new_incident(
        self, title: str, prio: int, location: str | None, control_room: str, by: str, at: float
    ) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO incidents (title, prio, control_room, created_by, created_at)"
                " VALUES (x'', ?, ?, ?, ?)",
                (prio, control_room, by, at),
            )
            assert cursor.lastrowid is not None
            self._store_sealed("incidents", cursor.lastrowid, title=title, location=location)
        return cursor.lastrowid

    def set_incident_room(self, incident_id: int, room_id: str) -> None:
        self.db.execute("UPDATE incidents SET room_id = ? WHERE id = ?", (room_id, incident_id))

    def drop_incident(self, incident_id: int) -> None:
        """Undo a creation that failed half-way."""
        with self._transaction():
            for table, column in (
                ("incidents", "id"),
                ("incident_units", "incident_id"),
                ("diary", "incident_id"),
            ):
                self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (incident_id,))

    def incident(self, incident_id: int) -> Incident | None:
        row = self.db.execute(
            "SELECT id, title, prio, location, room_id, control_room, created_by, created_at, closed_at"
            " FROM incidents WHERE id = ?",
            (incident_id,),
        ).fetchone()
        return self._incident(row) if row else None

    def _incident(self, row: tuple[Any, ...]) -> Incident:
        units = tuple(
            unit
            for (unit,) in self.db.execute(
                "SELECT unit FROM incident_units WHERE incident_id = ? ORDER BY assigned_at, unit", (row[0],)
            )
        )
        title = self._open(row[1], "incidents", "title", row[0])
        location = self._open(row[3], "incidents", "location", row[0])
        assert title is not None
        room_id, control_room, created_by, created_at, closed_at = row[4:]
        return Incident(
            row[0],
            title,
            row[2],
            location,
            room_id,
            control_room,
            created_by,
            created_at,
            closed_at,
            units=units,
        )

    def open_incidents(self) -> list[Incident]:
        rows = self.db.execute(
            "SELECT id, title, prio, location, room_id, control_room, created_by, created_at, closed_at"
            " FROM incidents WHERE closed_at IS NULL ORDER BY prio, id"
        ).fetchall()
        return [self._incident(row) for row in rows]

    def incident_by_room(self, room_id: str) -> Incident | None:
        row = self.db.execute("SELECT id FROM incidents WHERE room_id = ?", (room_id,)).fetchone()
        return self.incident(row[0]) if row else None

    def close_incident(self, incident_id: int, by: str, at: float) -> None:
        with self._transaction():
            self.db.execute(
                "UPDATE incidents SET closed_at = ?, closed_by = ? WHERE id = ?", (at, by, incident_id)
            )
            self.db.execute(
                "UPDATE alerts SET closed = 1, due_at = NULL WHERE incident_id = ? AND closed = 0",
                (incident_id,),
            )

    def assign(self, incident_id: int, unit: str, at: float) -> bool:
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO incident_units (incident_id, unit, assigned_at) VALUES (?, ?, ?)",
            (incident_id, unit, at),
        )
        return cursor.rowcount == 1

    def release(self, incident_id: int, unit: str) -> bool:
        cursor = self.db.execute(
            "DELETE FROM incident_units WHERE incident_id = ? AND unit = ?", (incident_id, unit)
        )
        return cursor.rowcount == 1

    # -- alerts ---------------------------------------------------------------------------------

    def new_alert(
        self,
        *,
        incident_id: int | None,
        control_room: str,
        sender: str,
        text: str,
        at: float,
        period: float,
        addressees: Iterable[Addressee],
    ) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO alerts (incident_id, control_room, sender, text, created_at, period, due_at)"
                " VALUES (?, ?, ?, x'', ?, ?, ?)",
                (incident_id, control_room, sender, at, period, at + period),
            )
            alert_id = cursor.lastrowid
            assert alert_id is not None
            self._store_sealed("alerts", alert_id, text=text)
            self.db.executemany(
                "INSERT INTO addressees (alert_id, user_id, units, room_id) VALUES (?, ?, ?, ?)",
                [(alert_id, a.user_id, json.dumps(list(a.units)), a.room_id) for a in addressees],
            )
        return alert_id

    def add_alert_event(self, event_id: str, alert_id: int) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO alert_events (event_id, alert_id) VALUES (?, ?)", (event_id, alert_id)
        )

    def alert_of_event(self, event_id: str) -> int | None:
        row = self.db.execute("SELECT alert_id FROM alert_events WHERE event_id = ?", (event_id,)).fetchone()
        return row[0] if row else None

    def acknowledge(self, alert_id: int, user_id: str, at: float, via: str) -> bool:
        """Record an acknowledgement; False when the user is no addressee or acknowledged already."""
        cursor = self.db.execute(
            "UPDATE addressees SET acked_at = ?, ack_via = ? WHERE alert_id = ? AND user_id = ?"
            " AND acked_at IS NULL",
            (at, via, alert_id, user_id),
        )
        return cursor.rowcount == 1

    def alert(self, alert_id: int) -> AlertView | None:
        row = self.db.execute(
            "SELECT id, incident_id, control_room, sender, text, created_at, period, due_at, rounds, closed"
            " FROM alerts WHERE id = ?",
            (alert_id,),
        ).fetchone()
        return self._alert(row) if row else None

    def _alert(self, row: tuple[Any, ...]) -> AlertView:
        addressees = tuple(
            Addressee(user, tuple(json.loads(units)), room, acked, via)
            for user, units, room, acked, via in self.db.execute(
                "SELECT user_id, units, room_id, acked_at, ack_via FROM addressees WHERE alert_id = ?"
                " ORDER BY user_id",
                (row[0],),
            )
        )
        text = self._open(row[4], "alerts", "text", row[0])
        assert text is not None
        alert_id, incident_id, control_room, sender = row[:4]
        created_at, period, due_at, rounds = row[5:9]
        return AlertView(
            alert_id,
            incident_id,
            control_room,
            sender,
            text,
            created_at,
            period,
            due_at,
            rounds,
            closed=bool(row[9]),
            addressees=addressees,
        )

    def open_alerts(self) -> list[AlertView]:
        """Alerts not closed: still escalating or with someone missing."""
        rows = self.db.execute(
            "SELECT id, incident_id, control_room, sender, text, created_at, period, due_at, rounds, closed"
            " FROM alerts WHERE closed = 0 ORDER BY id"
        ).fetchall()
        return [self._alert(row) for row in rows]

    def board_alerts(self, since: float) -> list[AlertView]:
        """Alerts on the board: open ones, and those answered since ``since`` unless their incident closed."""
        rows = self.db.execute(
            "SELECT id, incident_id, control_room, sender, text, created_at, period, due_at, rounds, closed"
            " FROM alerts WHERE closed = 0 OR (created_at >= ? AND (incident_id IS NULL OR incident_id IN"
            " (SELECT id FROM incidents WHERE closed_at IS NULL))) ORDER BY id",
            (since,),
        ).fetchall()
        return [self._alert(row) for row in rows]

    def set_due(self, alert_id: int, due_at: float | None, rounds: int) -> None:
        self.db.execute("UPDATE alerts SET due_at = ?, rounds = ? WHERE id = ?", (due_at, rounds, alert_id))

    def close_alert(self, alert_id: int) -> None:
        self.db.execute("UPDATE alerts SET closed = 1, due_at = NULL WHERE id = ?", (alert_id,))

    # -- officers -------------------------------------------------------------------------------

    def set_status(self, user_id: str, code: int, at: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO statuses (user_id, code, at) VALUES (?, ?, ?)", (user_id, code, at)
        )

    def statuses(self) -> dict[str, tuple[int, float]]:
        return {
            user: (code, at) for user, code, at in self.db.execute("SELECT user_id, code, at FROM statuses")
        }

    def set_location(self, user_id: str, geo: str, at: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO locations (user_id, geo, at) VALUES (?, ?, ?)",
            (user_id, self._seal(geo, "locations", "geo", user_id), at),
        )

    def locations(self) -> dict[str, tuple[str, float]]:
        rows = self.db.execute("SELECT user_id, geo, at FROM locations").fetchall()
        return {user: (str(self._open(geo, "locations", "geo", user)), at) for user, geo, at in rows}

    # -- diary ----------------------------------------------------------------------------------

    def add_diary(self, incident_id: int, at: float, author: str, kind: str, text: str) -> None:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO diary (incident_id, at, author, kind, text) VALUES (?, ?, ?, ?, x'')",
                (incident_id, at, author, kind),
            )
            self._store_sealed("diary", cursor.lastrowid, text=text)

    def diary(self, incident_id: int) -> list[DiaryEntry]:
        rows = self.db.execute(
            "SELECT id, at, author, kind, text FROM diary WHERE incident_id = ? ORDER BY at, id",
            (incident_id,),
        ).fetchall()
        return [
            DiaryEntry(at, author, kind, str(self._open(text, "diary", "text", id_)))
            for id_, at, author, kind, text in rows
        ]

    # -- rooms, board, outbox -------------------------------------------------------------------

    def room(self, key: str) -> str | None:
        row = self.db.execute("SELECT room_id FROM rooms WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_room(self, key: str, room_id: str) -> None:
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO rooms (key, room_id) VALUES (?, ?)", (key, room_id))
            self.db.execute("DELETE FROM pending_rooms WHERE key = ?", (key,))

    def drop_pending_room(self, key: str) -> None:
        """A creation the homeserver refused: the next attempt starts afresh."""
        self.db.execute("DELETE FROM pending_rooms WHERE key = ?", (key,))

    def board(self, room_id: str) -> str | None:
        row = self.db.execute("SELECT event_id FROM boards WHERE room_id = ?", (room_id,)).fetchone()
        return row[0] if row else None

    def set_board(self, room_id: str, event_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO boards (room_id, event_id) VALUES (?, ?)", (room_id, event_id)
        )

    def boards(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT room_id, event_id FROM boards"))

    def queue(
        self,
        room_id: str,
        content: dict[str, Any],
        alert_id: int | None = None,
        event_type: str = "m.room.message",
        after: str | None = None,
    ) -> int:
        """Put a message in the outbox with its transaction ID, before any attempt to send it."""
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO outbox (room_id, content, alert_id, event_type, txn_id, after)"
                " VALUES (?, x'', ?, ?, ?, ?)",
                (room_id, alert_id, event_type, new_txn_id(), after),
            )
            assert cursor.lastrowid is not None
            self._store_sealed("outbox", cursor.lastrowid, content=json.dumps(content))
        return cursor.lastrowid

    def outbox(self) -> list[Outgoing]:
        rows = self.db.execute(
            "SELECT id, room_id, content, alert_id, event_type, txn_id, encrypted, after, event_id, replaces"
            " FROM outbox ORDER BY id"
        ).fetchall()
        found: list[Outgoing] = []
        for id_, room, content, alert, kind, txn_id, encrypted, after, event_id, replaces in rows:
            sealed = self._open(encrypted, "outbox", "encrypted", id_)
            found.append(
                Outgoing(
                    id_,
                    room,
                    json.loads(str(self._open(content, "outbox", "content", id_))),
                    alert,
                    kind,
                    txn_id,
                    None if sealed is None else json.loads(sealed),
                    after,
                    event_id,
                    replaces,
                )
            )
        return found

    def keep_ciphertext(self, outgoing_id: int, encrypted: dict[str, Any]) -> None:
        """The ciphertext of the first attempt: a retry sends exactly these bytes again."""
        self._store_sealed("outbox", outgoing_id, encrypted=json.dumps(encrypted))

    def sent(self, outgoing_id: int, event_id: str | None, alert_id: int | None) -> list[EarlyAck]:
        """An outbox message went out (``event_id``; None: given up). An alert's event is
        remembered for the acknowledgements, and those given before it was known are returned
        (they count now). A message with something to do ``after`` stays until ``finished``."""
        with self._transaction():
            early: list[EarlyAck] = []
            if alert_id is not None and event_id is not None:
                self.add_alert_event(event_id, alert_id)
                early = [
                    EarlyAck(user, at, via)
                    for user, at, via in self.db.execute(
                        "SELECT user_id, at, via FROM early_acks WHERE target = ? ORDER BY at", (event_id,)
                    )
                ]
                self.db.execute("DELETE FROM early_acks WHERE target = ?", (event_id,))
            row = self.db.execute("SELECT room_id, after FROM outbox WHERE id = ?", (outgoing_id,)).fetchone()
            if row is None:
                return early
            room_id, after = row
            if after is None or event_id is None:
                self.db.execute("DELETE FROM outbox WHERE id = ?", (outgoing_id,))
            else:
                replaces = None
                if after == AFTER_BOARD:
                    replaces = self.board(room_id)
                    self.set_board(room_id, event_id)
                self.db.execute(
                    "UPDATE outbox SET event_id = ?, replaces = ? WHERE id = ?",
                    (event_id, replaces, outgoing_id),
                )
            if not self.unconfirmed_alert_messages():
                self.db.execute("DELETE FROM early_acks")
        return early

    def finished(self, outgoing_id: int) -> None:
        """What came after the send is done: the message leaves the outbox."""
        self.db.execute("DELETE FROM outbox WHERE id = ?", (outgoing_id,))

    def unconfirmed_alert_messages(self) -> bool:
        """Alert messages in the outbox whose event is not known yet (perhaps sent already)."""
        row = self.db.execute(
            "SELECT 1 FROM outbox WHERE alert_id IS NOT NULL AND event_id IS NULL LIMIT 1"
        ).fetchone()
        return row is not None

    def early_ack(self, target: str, user_id: str, at: float, via: str) -> bool:
        """Keep an acknowledgement of an event not known as an alert while an alert message may
        be on its way (its event ID not recorded yet); False (nothing kept) otherwise."""
        if not self.unconfirmed_alert_messages():
            return False
        self.db.execute(
            "INSERT OR IGNORE INTO early_acks (target, user_id, at, via) VALUES (?, ?, ?, ?)",
            (target, user_id, at, via),
        )
        return True

    # -- jobs: commands with steps ----------------------------------------------------------------

    def receive(self, event_id: str, kind: str, data: dict[str, Any], at: float) -> bool:
        """Mark the event handled and record it as a job at its first step ('received');
        False when it was handled before (a replayed sync)."""
        with self._transaction():
            if not self.first_time(event_id):
                return False
            self.db.execute(
                "INSERT INTO jobs (event_id, kind, step, data, at) VALUES (?, ?, 'received', x'', ?)",
                (event_id, kind, at),
            )
            self._store_sealed("jobs", event_id, data=json.dumps(data))
        return True

    def jobs(self) -> list[Job]:
        """The jobs not finished, oldest first."""
        rows = self.db.execute("SELECT event_id, kind, step, data FROM jobs ORDER BY at, rowid").fetchall()
        return [
            Job(event_id, kind, step, json.loads(str(self._open(data, "jobs", "data", event_id))))
            for event_id, kind, step, data in rows
        ]

    def advance(self, job: Job, step: str, **data: Any) -> Job:
        """Record that ``job`` reached ``step`` (with what the step found out)."""
        merged = {**job.data, **data}
        with self._transaction():
            self.db.execute("UPDATE jobs SET step = ? WHERE event_id = ?", (step, job.event_id))
            self._store_sealed("jobs", job.event_id, data=json.dumps(merged))
        return Job(job.event_id, job.kind, step, merged)

    def finish(self, job: Job) -> None:
        """The job's last step is done: it leaves the table (its text with it)."""
        self.db.execute("DELETE FROM jobs WHERE event_id = ?", (job.event_id,))

    # -- rooms being created ----------------------------------------------------------------------

    def room_token(self, key: str) -> tuple[str, bool]:
        """The token of the room ``key`` is created with, and whether an earlier attempt had it
        already (that room may exist: look for it before creating another)."""
        row = self.db.execute("SELECT token FROM pending_rooms WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return row[0], True
        token = secrets.token_hex(16)
        self.db.execute("INSERT INTO pending_rooms (key, token) VALUES (?, ?)", (key, token))
        return token, False

    def known_rooms(self) -> set[str]:
        """Every room the state names (its own rooms, incident rooms, boards)."""
        rooms = {room for (room,) in self.db.execute("SELECT room_id FROM rooms")}
        rooms |= {
            room for (room,) in self.db.execute("SELECT room_id FROM incidents WHERE room_id IS NOT NULL")
        }
        return rooms

    def rooms_named(self, prefix: str) -> dict[str, str]:
        """Rooms the bot made whose key starts with ``prefix`` ('dm:', 'unit:'): key -> room ID."""
        rows = self.db.execute(
            "SELECT key, room_id FROM rooms WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return dict(rows)

    def incident_rooms(self) -> dict[int, str]:
        """Incident number -> its room, open or closed (the rooms stay)."""
        return dict(
            self.db.execute("SELECT id, room_id FROM incidents WHERE room_id IS NOT NULL ORDER BY id")
        )


def _subkeys(main_key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """The content key and the check key of the state whose salt is ``salt``."""
    return (
        crypto.derive_subkey(main_key, salt, FORMAT, b"content", what="state key"),
        crypto.derive_subkey(main_key, salt, FORMAT, b"check", what="state key"),
    )


def new_txn_id() -> str:
    """A transaction ID for one outgoing message (random: unique for the device, never reused)."""
    return f"dispatch-{secrets.token_hex(16)}"


class _Tx:
    """BEGIN ... COMMIT (or ROLLBACK on an exception) on an autocommit connection; a nested
    use joins the outer transaction (the outermost commits or rolls back)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.depth = 0

    def __enter__(self) -> None:
        if self.depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        self.depth += 1

    def __exit__(self, kind: object, *_: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
