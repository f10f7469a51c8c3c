"""``devices.login_networks`` behind a reverse proxy: the client address
Synapse takes from X-Forwarded-For is the one checked."""

from __future__ import annotations

import uuid

import pytest

from devtools.homeserver import Homeserver, HomeserverSpec, SynapseError, free_port
from tests.integration.test_decision_log import decisions_for

MDM_VPN = "10.8.0.0/16"


@pytest.fixture(scope="module")
def proxied(start_homeserver) -> Homeserver:
    return start_homeserver(
        "login_networks", module_config={"devices": {"login_networks": [MDM_VPN]}}, x_forwarded=True
    )


@pytest.fixture
def officer(proxied) -> tuple[str, str]:
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    proxied.register_user(localpart, "pw")
    proxied.enroll(localpart, "IPHONE-1")
    return localpart, "IPHONE-1"


def login_from(hs: Homeserver, officer: tuple[str, str], address: str | None) -> tuple[int, dict]:
    headers = {"X-Forwarded-For": address} if address else None
    return hs.try_login(officer[0], "pw", officer[1], headers=headers)


def test_enrolled_device_inside_the_network_logs_in(proxied, officer):
    status, body = login_from(proxied, officer, "10.8.3.4")
    assert status == 200, body


@pytest.mark.parametrize("address", ["192.0.2.7", "10.9.0.1", None])
def test_logins_from_elsewhere_are_refused(proxied, officer, address):
    status, body = login_from(proxied, officer, address)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    shown = address or "127.0.0.1"
    assert f"logins from {shown} are not allowed" in body["error"]
    entries = [e for e in decisions_for(proxied, proxied.user_id(officer[0])) if e.get("rule")]
    assert entries[-1]["rule"] == "devices.login_network"


# --- devices.auto_approve_networks ----------------------------------------------------------------

CONTROL_ROOM = "10.30.0.0/24"
AUTO_DISPATCHER = "leitstelle-auto"


@pytest.fixture(scope="module")
def control_room(start_homeserver) -> Homeserver:
    """The control-room LAN enrolls the listed dispatchers' stock-client logins at once."""
    return start_homeserver(
        "auto_approve",
        module_config={
            "devices": {
                "auto_approve_networks": [CONTROL_ROOM],
                "auto_approve_users": [f"@{AUTO_DISPATCHER}:auto-approve.test"],
            }
        },
        x_forwarded=True,
    )


@pytest.fixture(scope="module")
def auto_dispatcher(control_room) -> str:
    assert control_room.server_name == "auto-approve.test"
    control_room.register_user(AUTO_DISPATCHER, "pw")
    return AUTO_DISPATCHER


def stock_login(hs: Homeserver, localpart: str, address: str) -> tuple[int, dict]:
    return hs.try_login(localpart, "pw", headers={"X-Forwarded-For": address})


def test_a_listed_dispatcher_in_the_control_room_is_enrolled_at_once(control_room, auto_dispatcher):
    hs = control_room
    status, login = stock_login(hs, auto_dispatcher, "10.30.0.17")
    assert status == 200, login
    device_id, token = login["device_id"], login["access_token"]
    user_id = hs.user_id(auto_dispatcher)
    [(state, enrolled_by, label)] = hs.query(
        "SELECT state, enrolled_by, label FROM police_policy_enrollments WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    )
    assert (state, enrolled_by) == ("enrolled", "auto_approve")
    [request] = hs.query(
        "SELECT state, ip, bound_device_id FROM police_policy_pending_logins WHERE user_id = ?"
        " AND decided_by = 'auto_approve' AND bound_device_id = ?",
        (user_id, device_id),
    )
    assert request == ("consumed", "10.30.0.17", device_id)
    assert hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)[0] == 200
    [approval] = [
        e for e in decisions_for(hs, user_id, decision="auto_approve_login") if e["request_id"] in label
    ]
    assert (approval["actor"], approval["ip"]) == ("auto_approve", "10.30.0.17")
    [enrolled] = [e for e in decisions_for(hs, user_id, decision="enroll") if e["device"] == device_id]
    assert enrolled["actor"] == "auto_approve"


def test_auto_approval_needs_the_network_and_the_list(control_room, auto_dispatcher):
    hs = control_room
    status, body = stock_login(hs, auto_dispatcher, "10.31.0.17")
    assert (status, body["errcode"]) == (403, "M_RESOURCE_LIMIT_EXCEEDED"), body
    other = f"dispatcher-{uuid.uuid4().hex[:6]}"
    hs.register_user(other, "pw")
    status, body = stock_login(hs, other, "10.30.0.17")
    assert (status, body["errcode"]) == (403, "M_RESOURCE_LIMIT_EXCEEDED"), body
    # A device ID nobody enrolled stays refused, also for a listed dispatcher.
    status, body = hs.try_login(auto_dispatcher, "pw", "NAMED-1", headers={"X-Forwarded-For": "10.30.0.17"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body


def test_auto_approve_users_must_be_local(tmp_path):
    module_config = {
        "devices": {"auto_approve_networks": [CONTROL_ROOM], "auto_approve_users": ["@d:elsewhere.example"]}
    }
    spec = HomeserverSpec(
        directory=tmp_path, server_name="bad.test", http_port=free_port(), module_config=module_config
    )
    with pytest.raises(SynapseError, match="exited with code"):
        Homeserver(spec).start(timeout=60)
    output = (tmp_path / "stdout.log").read_text()
    assert (
        "devices.auto_approve_users: expected users of this server (bad.test), got '@d:elsewhere.example'"
        in output
    )
