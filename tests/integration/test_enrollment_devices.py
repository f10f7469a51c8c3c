"""No other way in: devices that appear without the login gate (``/register``,
Synapse's admin API) are refused from their first request (see
``test_device_binding.py``) and removed by the sweep."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import pytest

from devtools.homeserver import Homeserver
from tests.integration.test_decision_log import decisions_for

SWEEP_SECONDS = 2


@pytest.fixture(scope="module")
def open_hs(start_homeserver) -> Homeserver:
    """Open registration (as an operator might have left it) and a fast sweep."""
    return start_homeserver(
        "open_registration",
        module_config={"devices": {"sweep_interval": f"{SWEEP_SECONDS}s"}},
        extra={"enable_registration": True, "enable_registration_without_verification": True},
    )


@pytest.fixture(scope="module")
def admin(open_hs):
    localpart = f"admin-{uuid.uuid4().hex[:6]}"
    token, _ = open_hs.register_enrolled_user(localpart, "admin-pw", admin=True)
    return token


def devices_of(hs: Homeserver, admin_token: str, user_id: str) -> set[str]:
    status, body = hs.request("GET", f"/_synapse/admin/v2/users/{quote(user_id)}/devices", token=admin_token)
    assert status == 200, body
    return {device["device_id"] for device in body["devices"]}


def wait_until_gone(
    hs: Homeserver, admin_token: str, user_id: str, device_id: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while device_id in devices_of(hs, admin_token, user_id):
        assert time.monotonic() < deadline, f"the sweep did not remove {device_id} within {timeout}s"
        time.sleep(0.3)


def create_room(hs: Homeserver, token: str) -> tuple[int, dict]:
    return hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)


def register_via_client_api(hs: Homeserver, localpart: str) -> dict:
    body = {"username": localpart, "password": "pw-" + localpart, "auth": {"type": "m.login.dummy"}}
    status, answer = hs.request("POST", "/_matrix/client/v3/register", body)
    if status == 401:  # first leg of user-interactive auth
        body["auth"]["session"] = answer["session"]
        status, answer = hs.request("POST", "/_matrix/client/v3/register", body)
    assert status == 200, answer
    return answer


def test_device_from_register_is_refused_and_swept(open_hs, admin):
    hs = open_hs
    registered = register_via_client_api(hs, f"walkin-{uuid.uuid4().hex[:6]}")
    status, body = create_room(hs, registered["access_token"])
    if status == 403:
        assert "not enrolled" in body["error"]
        [entry] = [
            e
            for e in decisions_for(hs, registered["user_id"])
            if e.get("rule") == "devices.request_from_unenrolled_device"
        ]
        assert entry["device"] == registered["device_id"]
    else:
        # On a loaded machine the sweep may remove the device between /register and the
        # request: then the token is gone (401, or Synapse's 404 when it vanished while
        # Synapse was reading it) and the device never got anything done either.
        assert (status, body["errcode"]) in {(401, "M_UNKNOWN_TOKEN"), (404, "M_UNKNOWN")}, body
        assert registered["device_id"] not in devices_of(hs, admin, registered["user_id"])
    wait_until_gone(hs, admin, registered["user_id"], registered["device_id"])
    status, body = hs.request("GET", "/_matrix/client/v3/account/whoami", token=registered["access_token"])
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


def test_device_from_shared_secret_registration_is_refused_and_swept(open_hs, admin):
    hs = open_hs
    localpart = f"provisioned-{uuid.uuid4().hex[:6]}"
    token = hs.register_user(localpart, "pw")
    assert create_room(hs, token)[0] == 403
    [device_id] = [
        row[0]
        for row in hs.query("SELECT device_id FROM devices WHERE user_id = ?", (hs.user_id(localpart),))
    ]
    wait_until_gone(hs, admin, hs.user_id(localpart), device_id)


def test_device_created_by_the_admin_api_is_swept(open_hs, admin):
    hs = open_hs
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    _, enrolled_device = hs.register_enrolled_user(localpart, "pw")
    user_id = hs.user_id(localpart)
    status, body = hs.request(
        "POST", f"/_synapse/admin/v2/users/{quote(user_id)}/devices", {"device_id": "SNEAKED-IN"}, token=admin
    )
    assert status == 201, body
    wait_until_gone(hs, admin, user_id, "SNEAKED-IN")
    assert enrolled_device in devices_of(hs, admin, user_id)


def test_tokens_without_a_device_are_cut_by_the_sweep(open_hs, admin):
    """Synapse's admin 'log in as user' issues tokens without a device; they
    are not a way around enrollment for long."""
    hs = open_hs
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    hs.register_enrolled_user(localpart, "pw")
    status, body = hs.request(
        "POST", f"/_synapse/admin/v1/users/{quote(hs.user_id(localpart))}/login", {}, token=admin
    )
    assert status == 200, body
    puppet = body["access_token"]
    deadline = time.monotonic() + 15
    while hs.request("GET", "/_matrix/client/v3/account/whoami", token=puppet)[0] == 200:
        assert time.monotonic() < deadline, "the device-less token still works"
        time.sleep(0.3)


def test_enrolled_devices_survive_the_sweep(open_hs):
    hs = open_hs
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    token, _ = hs.register_enrolled_user(localpart, "pw")
    time.sleep(SWEEP_SECONDS * 3)
    assert create_room(hs, token)[0] == 200
