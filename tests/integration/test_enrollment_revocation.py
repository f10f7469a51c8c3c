"""Revocation of a lost phone, expiry of enrollments, and enrollments that
survive a restart, on a real Synapse with real nio clients."""

from __future__ import annotations

import time
import uuid

import pytest
from nio import SyncError

from devtools.homeserver import Homeserver
from tests import e2ee
from tests.admin_api import call, device_path, enroll, enrollments, pending


@pytest.fixture(scope="module")
def fast_sweep(start_homeserver) -> Homeserver:
    return start_homeserver("revocation", module_config={"devices": {"sweep_interval": "1s"}})


def whoami(hs: Homeserver, token: str) -> tuple[int, dict]:
    return hs.request("GET", "/_matrix/client/v3/account/whoami", token=token)


def active_devices(client: e2ee.AsyncClient, user_id: str) -> set[str]:
    return {device.id for device in client.device_store.active_user_devices(user_id)}


async def test_revoked_phone_is_cut_off_and_leaves_the_device_lists(fast_sweep, make_user, tmp_path):
    hs = fast_sweep
    admin = make_user("admin", admin=True, homeserver=hs)
    alice, bob = make_user("alice", homeserver=hs), make_user("bob", homeserver=hs)
    alice_client = await e2ee.login(hs, alice.localpart, alice.password, tmp_path / "alice")
    bob_client = await e2ee.login(hs, bob.localpart, bob.password, tmp_path / "bob")
    lost = alice_client.device_id
    try:
        room_id = await e2ee.create_room(alice_client)
        await e2ee.invite_and_join(alice_client, bob_client, room_id)
        await e2ee.sync_until(bob_client, lambda: lost in active_devices(bob_client, alice.user_id))

        status, answer = call(hs, "DELETE", device_path(alice.user_id, lost), admin.token)
        assert status == 200, answer
        assert (answer["enrollment"]["state"], answer["enrollment"]["revoked_by"]) == (
            "revoked",
            admin.user_id,
        )

        # The phone's very next request is refused.
        response = await alice_client.sync(timeout=0)
        assert isinstance(response, SyncError)
        assert response.status_code == "M_UNKNOWN_TOKEN"
        # Its E2E keys are gone from the server ...
        status, keys = hs.request(
            "POST", "/_matrix/client/v3/keys/query", {"device_keys": {alice.user_id: []}}, token=bob.token
        )
        assert status == 200
        assert lost not in keys["device_keys"].get(alice.user_id, {})
        # ... and the other users' clients drop it from the device list.
        await e2ee.sync_until(bob_client, lambda: lost not in active_devices(bob_client, alice.user_id))
        # Logging in again with the revoked device ID does not bring it back.
        status, body = hs.try_login(alice.localpart, alice.password, lost)
        assert status == 403, body
        assert "was revoked" in body["error"]
        # ... and leaves no request an operator could approve by mistake.
        assert not [entry for entry in pending(hs, admin.token) if entry["user_id"] == alice.user_id]
    finally:
        await alice_client.close()
        await bob_client.close()


def test_expired_enrollment_is_revoked_by_the_sweep(fast_sweep, make_user):
    hs = fast_sweep
    admin = make_user("admin", admin=True, homeserver=hs)
    user = make_user("officer", homeserver=hs)
    enroll(hs, admin.token, user.user_id, "TEMP-1", expires_at=int(time.time() * 1000) + 2000)
    token = hs.login(user.localpart, user.password, "TEMP-1")["access_token"]
    assert whoami(hs, token)[0] == 200
    # Refused once expired (403), then deleted by the sweep (401).
    deadline = time.monotonic() + 20
    while whoami(hs, token)[0] != 401:
        assert time.monotonic() < deadline, "the sweep did not delete the expired device"
        time.sleep(0.3)
    status, body = whoami(hs, token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    record = enrollments(hs, admin.token, user.user_id)["TEMP-1"]
    assert (record["state"], record["revoked_by"]) == ("expired", "sweep")
    # The user's other, unexpiring device is untouched.
    assert whoami(hs, user.token)[0] == 200


def test_enrollments_and_requests_survive_a_restart(start_homeserver):
    hs = start_homeserver("restart")
    admin_token, _ = hs.register_enrolled_user("admin", "admin-pw", admin=True)
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    hs.register_user(localpart, "pw")
    enroll(hs, admin_token, hs.user_id(localpart), "KEEP-1", label="asset 1")
    hs.try_login(localpart, "pw")
    [request] = pending(hs, admin_token)

    hs.stop()
    hs.start()

    assert hs.try_login(localpart, "pw", "KEEP-1")[0] == 200
    assert enrollments(hs, admin_token, hs.user_id(localpart))["KEEP-1"]["label"] == "asset 1"
    assert [entry["request_id"] for entry in pending(hs, admin_token)] == [request["request_id"]]
