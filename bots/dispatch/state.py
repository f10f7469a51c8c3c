"""The dispatch bot's state on disk (SQLite): everything a restart needs.

Incidents and their units, alerts with addressees, acknowledgements and the
next escalation time, officers' statuses and positions, the diary, the board
message per control room, rooms the bot made, messages still to send (the
outbox) and the events already handled (a replayed sync acts once).
Deadlines are stored as wall-clock times, so escalation is on time after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, prio INTEGER NOT NULL,
    location TEXT, room_id TEXT, control_room TEXT NOT NULL, created_by TEXT NOT NULL,
    created_at REAL NOT NULL, closed_at REAL, closed_by TEXT);
CREATE TABLE IF NOT EXISTS incident_units (
    incident_id INTEGER NOT NULL, unit TEXT NOT NULL, assigned_at REAL NOT NULL,
    PRIMARY KEY (incident_id, unit));
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id INTEGER, control_room TEXT NOT NULL,
    sender TEXT NOT NULL, text TEXT NOT NULL, created_at REAL NOT NULL, period REAL NOT NULL,
    due_at REAL, rounds INTEGER NOT NULL DEFAULT 1, closed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS addressees (
    alert_id INTEGER NOT NULL, user_id TEXT NOT NULL, units TEXT NOT NULL, room_id TEXT NOT NULL,
    acked_at REAL, ack_via TEXT, PRIMARY KEY (alert_id, user_id));
CREATE TABLE IF NOT EXISTS alert_events (event_id TEXT PRIMARY KEY, alert_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS statuses (user_id TEXT PRIMARY KEY, code INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS locations (user_id TEXT PRIMARY KEY, geo TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS diary (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id INTEGER NOT NULL, at REAL NOT NULL,
    author TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (key TEXT PRIMARY KEY, room_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS boards (room_id TEXT PRIMARY KEY, event_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL, content TEXT NOT NULL,
    alert_id INTEGER, event_type TEXT NOT NULL DEFAULT 'm.room.message');
CREATE TABLE IF NOT EXISTS handled (event_id TEXT PRIMARY KEY);
"""


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


class State:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self.db)

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
        cursor = self.db.execute(
            "INSERT INTO incidents (title, prio, location, control_room, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (title, prio, location, control_room, by, at),
        )
        assert cursor.lastrowid is not None
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
        return Incident(*row, units=units)

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
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (incident_id, control_room, sender, text, at, period, at + period),
            )
            alert_id = cursor.lastrowid
            assert alert_id is not None
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
        return AlertView(*row[:9], closed=bool(row[9]), addressees=addressees)

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
            "INSERT OR REPLACE INTO locations (user_id, geo, at) VALUES (?, ?, ?)", (user_id, geo, at)
        )

    def locations(self) -> dict[str, tuple[str, float]]:
        return {
            user: (geo, at) for user, geo, at in self.db.execute("SELECT user_id, geo, at FROM locations")
        }

    # -- diary ----------------------------------------------------------------------------------

    def add_diary(self, incident_id: int, at: float, author: str, kind: str, text: str) -> None:
        self.db.execute(
            "INSERT INTO diary (incident_id, at, author, kind, text) VALUES (?, ?, ?, ?, ?)",
            (incident_id, at, author, kind, text),
        )

    def diary(self, incident_id: int) -> list[DiaryEntry]:
        return [
            DiaryEntry(*row)
            for row in self.db.execute(
                "SELECT at, author, kind, text FROM diary WHERE incident_id = ? ORDER BY at, id",
                (incident_id,),
            )
        ]

    # -- rooms, board, outbox -------------------------------------------------------------------

    def room(self, key: str) -> str | None:
        row = self.db.execute("SELECT room_id FROM rooms WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_room(self, key: str, room_id: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO rooms (key, room_id) VALUES (?, ?)", (key, room_id))

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
    ) -> int:
        cursor = self.db.execute(
            "INSERT INTO outbox (room_id, content, alert_id, event_type) VALUES (?, ?, ?, ?)",
            (room_id, json.dumps(content), alert_id, event_type),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def outbox(self) -> list[Outgoing]:
        return [
            Outgoing(id_, room, json.loads(content), alert, event_type)
            for id_, room, content, alert, event_type in self.db.execute(
                "SELECT id, room_id, content, alert_id, event_type FROM outbox ORDER BY id"
            )
        ]

    def sent(self, outgoing_id: int, event_id: str | None, alert_id: int | None) -> None:
        """An outbox message went out; an alert message is remembered for the acknowledgements."""
        with self._transaction():
            if alert_id is not None and event_id is not None:
                self.add_alert_event(event_id, alert_id)
            self.db.execute("DELETE FROM outbox WHERE id = ?", (outgoing_id,))


class _Tx:
    """BEGIN ... COMMIT (or ROLLBACK on an exception) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
