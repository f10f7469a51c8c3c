"""Every room carries the retention policy: ``m.room.retention`` at the
device lifetime, and the system user joined with the power to redact, which
nobody can take away."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from devtools.homeserver import Homeserver, SynapseError

DEVICE_MS = 7 * 86400 * 1000


def system_user(hs: Homeserver) -> str:
    return hs.user_id("policy")


def create(hs: Homeserver, token: str, body: dict | None = None) -> str:
    status, answer = hs.request("POST", "/_matrix/client/v3/createRoom", body or {}, token=token)
    assert status == 200, answer
    return answer["room_id"]


def state(hs: Homeserver, token: str, room_id: str, event_type: str, key: str = "") -> dict:
    status, answer = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/{quote(key)}", token=token
    )
    assert status == 200, answer
    return answer


def put_state(hs: Homeserver, token: str, room_id: str, event_type: str, content: dict) -> tuple[int, dict]:
    return hs.request(
        "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/", content, token=token
    )


def wait_for_system_user(hs: Homeserver, token: str, room_id: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, member = hs.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(system_user(hs))}",
            token=token,
        )
        if status == 200 and member.get("membership") == "join":
            return
        assert time.monotonic() < deadline, f"the system user did not join {room_id}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "body",
    [{}, {"preset": "trusted_private_chat", "is_direct": True}, {"room_version": "10"}],
    ids=["default", "direct_chat", "room_version_10"],
)
def test_new_rooms_carry_the_policy(hs, make_user, body):
    alice, bob = make_user("alice"), make_user("bob")
    if body.get("is_direct"):
        body = {**body, "invite": [bob.user_id]}
    room_id = create(hs, alice.token, body)
    assert state(hs, alice.token, room_id, "m.room.retention") == {"max_lifetime": DEVICE_MS}
    wait_for_system_user(hs, alice.token, room_id)
    levels = state(hs, alice.token, room_id, "m.room.power_levels")
    assert levels["users"][system_user(hs)] == 100
    if body.get("room_version") == "10":
        assert levels["users"][alice.user_id] == 100, "the creator keeps its power"
    # The system user is a member, not a creator.
    create_event = state(hs, alice.token, room_id, "m.room.create")
    assert system_user(hs) not in create_event.get("additional_creators", [])


def test_retention_cannot_be_changed(hs, make_user):
    alice = make_user("alice")
    room_id = create(hs, alice.token)
    status, body = put_state(hs, alice.token, room_id, "m.room.retention", {"max_lifetime": 10 * DEVICE_MS})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert "retention" in body["error"]
    status, body = hs.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"initial_state": [{"type": "m.room.retention", "state_key": "", "content": {}}]},
        token=alice.token,
    )
    assert status == 403, body


def test_system_user_keeps_its_power_and_its_seat(hs, make_user):
    alice = make_user("alice")
    room_id = create(hs, alice.token)
    wait_for_system_user(hs, alice.token, room_id)
    levels = state(hs, alice.token, room_id, "m.room.power_levels")
    demoted = {**levels, "users": {**levels["users"], system_user(hs): 0}}
    status, body = put_state(hs, alice.token, room_id, "m.room.power_levels", demoted)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert "must keep power level 100" in body["error"]
    # Other changes to the power levels stay possible.
    status, body = put_state(hs, alice.token, room_id, "m.room.power_levels", {**levels, "invite": 50})
    assert status == 200, body
    for action in ("kick", "ban"):
        status, body = hs.request(
            "POST",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/{action}",
            {"user_id": system_user(hs)},
            token=alice.token,
        )
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (action, body)


@pytest.fixture(scope="module")
def audited(start_homeserver) -> Homeserver:
    """The auditor bot configured: it is seated in every room like the system user."""
    hs = start_homeserver("audited", module_config={"auditor": {"user_id": "@auditor:audited.test"}})
    assert hs.server_name == "audited.test"
    hs.register_user("auditor", "auditor-pw", login=False)
    return hs


def test_the_auditor_bot_is_seated_in_every_room_and_stays(audited, make_user):
    hs = audited
    alice = make_user("alice", homeserver=hs)
    room_id = create(hs, alice.token, {"preset": "trusted_private_chat"})
    auditor = hs.user_id("auditor")
    deadline = time.monotonic() + 15
    while True:
        status, member = hs.request(
            "GET",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(auditor)}",
            token=alice.token,
        )
        if status == 200 and member.get("membership") == "join":
            break
        assert time.monotonic() < deadline, "the auditor bot was not seated"
        time.sleep(0.2)
    levels = state(hs, alice.token, room_id, "m.room.power_levels")
    assert levels["users"][auditor] == 100
    demoted = {**levels, "users": {**levels["users"], auditor: 0}}
    status, body = put_state(hs, alice.token, room_id, "m.room.power_levels", demoted)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    status, body = hs.request(
        "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/kick", {"user_id": auditor}, token=alice.token
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body


def test_an_auditor_of_another_server_stops_synapse(start_homeserver):
    with pytest.raises(SynapseError, match="exited") as caught:
        start_homeserver(
            "foreign_auditor", module_config={"auditor": {"user_id": "@auditor:elsewhere.example"}}
        )
    stdout_log = re.search(r"see (\S+stdout\.log)", str(caught.value)).group(1)
    assert "auditor.user_id: expected a user of this server" in Path(stdout_log).read_text()
