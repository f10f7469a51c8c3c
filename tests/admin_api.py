"""Calls to the module's admin API (``/_synapse/client/police/v1/``) for tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from devtools.homeserver import Homeserver

PREFIX = "/_synapse/client/police/v1"


def call(hs: Homeserver, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    return hs.request(method, f"{PREFIX}/{path}", body, token=token)


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
