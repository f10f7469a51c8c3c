"""Calls to the module's admin API (``/_synapse/client/police/v1/``) for tests."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import yaml

from devtools.homeserver import Homeserver, send
from synapse_police_policy.api import ADMIN_PREFIX
from synapse_police_policy.ops.bootstrap import connect_database

PREFIX = ADMIN_PREFIX
#: what the module writes: its registry and login requests, and Synapse's devices
#: (a revocation deletes the device). Columns Synapse updates on every request
#: (a device's last_seen) are left out.
WRITTEN_TABLES = {
    "enrollments": "SELECT * FROM police_policy_enrollments ORDER BY user_id, device_id",
    "pending": "SELECT * FROM police_policy_pending_logins ORDER BY request_id",
    "links": "SELECT * FROM police_policy_login_links ORDER BY token_hash",
    "devices": "SELECT user_id, device_id FROM devices ORDER BY user_id, device_id",
}


def call(hs: Homeserver, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    return hs.request(method, f"{PREFIX}/{path}", body, token=token)


def raw_call(
    hs: Homeserver, method: str, path: str, token: str | None, data: bytes | None = None
) -> tuple[int, Any]:
    """Any bytes as the body and a path (with query) sent as given: it must be
    ASCII, percent-encoded by the caller. Returns (status, JSON or text)."""
    request = urllib.request.Request(f"{hs.url}{PREFIX}/{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return send(request, timeout=60)


def device_path(user_id: str, device_id: str) -> str:
    return f"devices/{quote(user_id, safe='')}/{quote(device_id, safe='')}"


def enroll(hs: Homeserver, token: str, user_id: str, device_id: str, **body: Any) -> dict[str, Any]:
    status, answer = call(hs, "PUT", device_path(user_id, device_id), token, body)
    assert status == 200, answer
    return answer


def pending(hs: Homeserver, token: str, state: str = "open") -> list[dict[str, Any]]:
    status, answer = call(hs, "GET", f"pending?state={state}", token)
    assert status == 200, answer
    return answer["pending"]


def enrollments(hs: Homeserver, token: str, user_id: str) -> dict[str, dict[str, Any]]:
    """The user's enrollments by device ID."""
    status, answer = call(hs, "GET", f"devices?user_id={quote(user_id, safe='')}", token)
    assert status == 200, answer
    return {entry["device_id"]: entry for entry in answer["enrollments"]}


class WrittenTables:
    """Reads what the module writes, over one connection (SQLite or PostgreSQL),
    to show that a refused request changed nothing."""

    def __init__(self, hs: Homeserver) -> None:
        database = yaml.safe_load(hs.config_path.read_text())["database"]
        self._connection, self._qmark = connect_database(database)
        if not self._qmark:
            self._connection.autocommit = True  # each read sees what Synapse committed

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        cursor = self._connection.cursor()
        tables = {}
        for name, sql in WRITTEN_TABLES.items():
            cursor.execute(sql)
            tables[name] = [tuple(row) for row in cursor.fetchall()]
        return tables

    def close(self) -> None:
        self._connection.close()
