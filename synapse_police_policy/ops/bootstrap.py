"""Enroll a device straight in the database, on the server host.

The admin API needs an admin on an enrolled device, so the first device has
to come from somewhere else: whoever can read ``homeserver.yaml`` (and so the
database credentials) already controls the server, which makes this no new
way in. The same steps serve the bots' and the MDM's service accounts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from ..clock import now_ms
from ..devices.rules import Enrollment, validate_device_id, validate_label, validate_user_id
from ..devices.store import enroll_txn
from ..schema import migrate

BOOTSTRAP_ACTOR = "bootstrap (server host)"
#: connection pool settings Synapse reads from database.args that psycopg2 does not know
_POOL_ARGS = {"cp_min", "cp_max", "cp_reconnect", "cp_noisy", "cp_openfun"}


class BootstrapError(Exception):
    """Why the device could not be enrolled, in words for the operator."""


class _QmarkCursor:
    """Lets the store's ``?`` statements run on psycopg2 (``%s``)."""

    def __init__(self, cursor: Any, qmark: bool) -> None:
        self._cursor = cursor
        self._qmark = qmark

    def execute(self, sql: str, args: Any = ()) -> None:
        self._cursor.execute(sql if self._qmark else sql.replace("?", "%s"), args)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> Any:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        rowcount: int = self._cursor.rowcount  # DB-API: an int (-1: unknown)
        return rowcount


def connect_database(database: Any) -> tuple[Any, bool]:
    """A DB-API connection to a homeserver's ``database`` section, and whether
    it takes ``?`` placeholders (SQLite) rather than ``%s`` (psycopg2)."""
    if not isinstance(database, Mapping):
        raise BootstrapError("database: expected the homeserver's database section (name and args)")
    name = database.get("name", "sqlite3")
    args = dict(database.get("args") or {})
    if name == "sqlite3":
        path = args.get("database")
        if not isinstance(path, str):
            raise BootstrapError("database.args.database: expected the path of the SQLite file")
        try:
            # mode=rw: a wrong path must not create an empty database
            return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30), True
        except sqlite3.Error as error:
            raise BootstrapError(f"database.args.database: cannot open {path}: {error}") from None
    if name in ("psycopg2", "psycopg"):
        try:
            import psycopg2
        except ImportError:
            raise BootstrapError("database.name is psycopg2, but psycopg2 is not installed") from None
        try:
            return psycopg2.connect(**{k: v for k, v in args.items() if k not in _POOL_ARGS}), False
        except psycopg2.Error as error:
            raise BootstrapError(f"cannot connect to PostgreSQL: {str(error).strip()}") from None
    raise BootstrapError(f"database.name: expected sqlite3 or psycopg2, got {name!r}")


def enroll_directly(homeserver: Mapping[str, Any], user_id: str, device_id: str, label: str) -> Enrollment:
    """Enroll (user, device) in the database named by a homeserver config."""
    server_name = homeserver.get("server_name")
    if not isinstance(server_name, str):
        raise BootstrapError("server_name: missing from the homeserver config")
    try:
        user_id = validate_user_id(user_id, server_name)
        device_id = validate_device_id(device_id)
        label = validate_label(label)
    except ValueError as error:
        raise BootstrapError(str(error)) from None
    connection, qmark = connect_database(homeserver.get("database", {"name": "sqlite3", "args": {}}))
    try:
        cursor = _QmarkCursor(connection.cursor(), qmark)
        cursor.execute("SELECT name FROM users WHERE name = ?", (user_id,))
        if cursor.fetchone() is None:
            raise BootstrapError(f"user_id: there is no user {user_id} on this server; create it first")
        migrate(cursor, postgres=not qmark)
        record, _ = enroll_txn(cursor, user_id, device_id, label, None, BOOTSTRAP_ACTOR, now_ms())
        connection.commit()
        return record
    except Exception as error:
        connection.rollback()
        if isinstance(error, BootstrapError):
            raise
        # sqlite3.Error or psycopg2.Error: most often Synapse never ran on this database
        raise BootstrapError(
            f"the database refused the enrollment ({type(error).__name__}: {str(error).strip()}); "
            "is this the database of a Synapse that has started at least once?"
        ) from None
    finally:
        connection.close()
