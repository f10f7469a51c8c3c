"""The login gate on a real Synapse: enrolled devices get in, others are
refused, and a stock client that names no device gets in once an operator
approved its request."""

from __future__ import annotations

import time
import uuid

import pytest
from nio import LoginError

from devtools.homeserver import Homeserver
from tests import e2ee
from tests.admin_api import call, enroll, enrollments, pending
from tests.integration.test_decision_log import decisions_for

ELEMENT_WEB = "Mozilla/5.0 (X11; Linux x86_64) Element/1.11"


@pytest.fixture(scope="module")
def short_window(start_homeserver) -> Homeserver:
    """Approvals lapse after two seconds."""
    return start_homeserver("approval_window", module_config={"devices": {"approval_window": "2s"}})


@pytest.fixture
def admin(make_user):
    return make_user("admin", admin=True)


def create_room_status(hs: Homeserver, token: str) -> int:
    return hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)[0]


async def test_nio_client_on_an_enrolled_device_logs_in_and_talks(hs, make_user, tmp_path):
    alice, bob = make_user("alice"), make_user("bob")
    alice_client = await e2ee.login(hs, alice.localpart, alice.password, tmp_path / "alice")
    bob_client = await e2ee.login(hs, bob.localpart, bob.password, tmp_path / "bob")
    try:
        room_id = await e2ee.create_room(alice_client)
        await e2ee.invite_and_join(alice_client, bob_client, room_id)
        event_id = await e2ee.send(alice_client, room_id, {"msgtype": "m.text", "body": "Einsatz 17"})
        [message] = await e2ee.receive(bob_client, room_id, event_id)
        assert message.body == "Einsatz 17"
    finally:
        await alice_client.close()
        await bob_client.close()


async def test_nio_client_on_a_device_nobody_enrolled_is_refused(hs, make_user, tmp_path):
    user = make_user("officer")
    client = e2ee.AsyncClient(hs.url, user.user_id, device_id="PRIVATE-PHONE", store_path=str(tmp_path))
    try:
        response = await client.login(user.password)
    finally:
        await client.close()
    assert isinstance(response, LoginError)
    assert response.status_code == "M_FORBIDDEN"
    assert "'PRIVATE-PHONE' is not enrolled" in response.message
    [entry] = [e for e in decisions_for(hs, user.user_id) if e.get("rule") == "devices.not_enrolled"]
    assert entry["device"] == "PRIVATE-PHONE"


def test_login_with_a_device_of_another_user_is_refused(hs, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    status, body = hs.try_login(bob.localpart, bob.password, alice.device_id)
    assert status == 403, body
    assert "not enrolled" in body["error"]


def test_stock_client_goes_through_pending_and_approval(hs, make_user, admin):
    user = make_user("dispatcher")
    status, body = hs.try_login(user.localpart, user.password, headers={"User-Agent": ELEMENT_WEB})
    assert status == 403, body
    # The shape Element Web shows (test_enrollment_login_page.py has the page).
    assert body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED"
    assert "/_synapse/client/police/login-request/" in body["admin_contact"]
    assert "did not name an enrolled device" in body["error"]
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == user.user_id]
    assert request["request_id"] in body["error"]
    assert request["device_id"] is None
    assert request["ip"] == "127.0.0.1"
    assert request["user_agent"] == ELEMENT_WEB
    assert request["state"] == "open"

    # Trying again does not pile up requests.
    hs.try_login(user.localpart, user.password, headers={"User-Agent": ELEMENT_WEB})
    assert [e["request_id"] for e in pending(hs, admin.token) if e["user_id"] == user.user_id] == [
        request["request_id"]
    ]

    status, answer = call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    assert status == 200, answer
    assert answer["pending"]["state"] == "approved"
    assert answer["pending"]["decided_by"] == admin.user_id

    status, login = hs.try_login(user.localpart, user.password, headers={"User-Agent": ELEMENT_WEB})
    assert status == 200, login
    device_id = login["device_id"]
    record = enrollments(hs, admin.token, user.user_id)[device_id]
    assert record["state"] == "enrolled"
    assert record["enrolled_by"] == admin.user_id
    assert request["request_id"] in record["label"]
    # The new device may talk.
    assert create_room_status(hs, login["access_token"]) == 200

    # The approval was used up: the next stock login is a new request.
    status, body = hs.try_login(user.localpart, user.password)
    assert status == 403
    assert request["request_id"] not in body["error"]
    [used] = [e for e in pending(hs, admin.token, "all") if e["request_id"] == request["request_id"]]
    assert (used["state"], used["bound_device_id"]) == ("consumed", device_id)


def test_approving_a_named_device_enrolls_it(hs, make_user, admin):
    user = make_user("officer")
    status, _ = hs.try_login(user.localpart, user.password, "MDM-LATE-4711")
    assert status == 403
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == user.user_id]
    assert request["device_id"] == "MDM-LATE-4711"
    status, _ = call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    assert status == 200
    status, login = hs.try_login(user.localpart, user.password, "MDM-LATE-4711")
    assert status == 200, login
    assert login["device_id"] == "MDM-LATE-4711"


def test_rejected_request_lets_nobody_in(hs, make_user, admin):
    user = make_user("officer")
    hs.try_login(user.localpart, user.password)
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == user.user_id]
    status, answer = call(hs, "POST", f"pending/{request['request_id']}/reject", admin.token, {})
    assert status == 200
    assert answer["pending"]["state"] == "rejected"
    status, _ = hs.try_login(user.localpart, user.password)
    assert status == 403
    status, answer = call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    assert status == 409, answer
    assert "already rejected" in answer["error"]


def test_approval_is_bound_to_the_address(hs, make_user, admin, start_homeserver):
    user = make_user("dispatcher")
    hs.try_login(user.localpart, user.password)
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == user.user_id]
    call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    # Another user's stock login from the same address gets nothing from it.
    other = make_user("dispatcher")
    status, _ = hs.try_login(other.localpart, other.password)
    assert status == 403
    # The approved user from the same address does.
    status, _ = hs.try_login(user.localpart, user.password)
    assert status == 200


def test_approval_lapses_after_the_window(short_window, make_user):
    hs = short_window
    admin = make_user("admin", admin=True, homeserver=hs)
    user = make_user("dispatcher", homeserver=hs)
    hs.try_login(user.localpart, user.password)
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == user.user_id]
    call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    time.sleep(2.5)
    status, body = hs.try_login(user.localpart, user.password)
    assert status == 403, body


def test_unknown_request_ids(hs, admin):
    status, answer = call(hs, "POST", f"pending/{uuid.uuid4().hex}/approve", admin.token, {})
    assert status == 404
    assert answer["errcode"] == "M_NOT_FOUND"


def test_expired_enrollment_refuses_login(hs, make_user, admin):
    user = make_user("officer")
    enroll(hs, admin.token, user.user_id, "SHORT-LIVED", expires_at=int(time.time() * 1000) + 1500)
    assert hs.try_login(user.localpart, user.password, "SHORT-LIVED")[0] == 200
    time.sleep(2)
    status, body = hs.try_login(user.localpart, user.password, "SHORT-LIVED")
    assert status == 403
    assert "expired" in body["error"]
