"""Every room carries the retention policy: ``m.room.retention`` at the
device lifetime, and the system user joined with the power to redact, which
nobody can take away, not even with the power levels of the creation request."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.homeserver import Homeserver, SynapseError
from tests.room_request_strategies import power_levels
from tests.waiting import wait_for

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


def wait_for_system_user(
    hs: Homeserver, token: str, room_id: str, timeout: float = 15, user: str | None = None
) -> None:
    user = user or system_user(hs)
    deadline = time.monotonic() + timeout
    while True:
        status, member = hs.request(
            "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(user)}", token=token
        )
        if status == 200 and member.get("membership") == "join":
            return
        assert time.monotonic() < deadline, f"{user} did not join {room_id}"
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


DEVICE_S = 3


@pytest.fixture(scope="module")
def audited(start_homeserver) -> Homeserver:
    """The auditor bot configured: it is seated in every room like the system
    user. Lifetimes of seconds, so the sweep's redactions show within a test."""
    hs = start_homeserver(
        "audited",
        module_config={
            "auditor": {"user_id": "@auditor:audited.test"},
            "retention": {
                "device_lifetime": f"{DEVICE_S}s",
                "audit_lifetime": "120s",
                "sweep_interval": "1s",
            },
        },
    )
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


# --- power levels of the creation request ---------------------------------------------


def send_encrypted_looking(hs: Homeserver, token: str, room_id: str) -> str:
    """An m.room.encrypted event as a client sends it (the server cannot read it anyway)."""
    content = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": uuid.uuid4().hex, "session_id": "s"}
    status, body = hs.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.encrypted/{uuid.uuid4().hex}",
        content,
        token=token,
    )
    assert status == 200, body
    return body["event_id"]


def redacted_by(hs: Homeserver, admin_token: str, room_id: str, event_id: str) -> str | None:
    """Who redacted the event, as Synapse hands it out (the admin API shows
    events past the room's max_lifetime; a redaction that did not take effect
    leaves the event as it was)."""
    status, body = hs.request(
        "GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/messages?dir=b&limit=100", token=admin_token
    )
    assert status == 200, body
    for event in body["chunk"]:
        if event["event_id"] == event_id:
            because = event.get("unsigned", {}).get("redacted_because")
            return because["sender"] if because and event["content"] == {} else None
    raise AssertionError(f"{event_id} is not in {room_id}")


def hostile_requests(hs: Homeserver, creator: str) -> dict[str, dict[str, Any]]:
    system, auditor = system_user(hs), hs.user_id("auditor")

    def levels(content: dict[str, Any], **request: Any) -> dict[str, Any]:
        entry = {"type": "m.room.power_levels", "state_key": "", "content": content}
        return {"initial_state": [entry], **request}

    return {
        # issue 18: valid in room version 12, where creators have unlimited power
        "users_empty_redact_100": levels({"users": {}, "redact": 100}),
        "service_users_demoted": levels(
            {"users": {system: 0, auditor: -1}, "redact": 100, "events": {"m.room.redaction": 100}, "kick": 0}
        ),
        "room_version_10": levels(
            {"users": {creator: 100, system: 0}, "redact": 100, "invite": 100}, room_version="10"
        ),
        "override": {"power_level_content_override": {"users": {}, "redact": 100, "events_default": 100}},
        # Synapse makes the invitee of a trusted private chat a creator (room version 12)
        "direct_chat_with_the_auditor_bot": {
            "preset": "trusted_private_chat",
            "is_direct": True,
            "invite": [auditor],
        },
    }


def test_rooms_created_with_hostile_power_levels_are_swept(audited, make_user):
    """Whatever power levels the creation request carries, the service users
    sit in the room with power to redact, and the sweep redacts its messages."""
    hs = audited
    alice, admin = make_user("alice", homeserver=hs), make_user("admin", admin=True, homeserver=hs)
    system, auditor = system_user(hs), hs.user_id("auditor")
    messages = {}
    for name, request in hostile_requests(hs, alice.user_id).items():
        room_id = create(hs, alice.token, request)
        for user in (system, auditor):
            wait_for_system_user(hs, alice.token, room_id, user=user)
        levels = state(hs, alice.token, room_id, "m.room.power_levels")
        assert levels["users"][system] == 100, name
        if name == "direct_chat_with_the_auditor_bot":
            assert auditor in state(hs, alice.token, room_id, "m.room.create")["additional_creators"]
        else:
            assert levels["users"][auditor] == 100, name
        messages[name] = (room_id, send_encrypted_looking(hs, alice.token, room_id))
    for name, (room_id, event_id) in messages.items():
        wait_for(
            lambda room_id=room_id, event_id=event_id: (
                redacted_by(hs, admin.token, room_id, event_id) == system
            ),
            DEVICE_S + 30,
            f"the sweep did not redact the message in the room made with {name}",
        )


def test_a_creator_who_could_not_invite_the_service_users_is_refused(audited, make_user):
    hs = audited
    alice = make_user("alice", homeserver=hs)
    content = {"users": {alice.user_id: 0}, "state_default": 0, "invite": 50}
    entry = {"type": "m.room.power_levels", "state_key": "", "content": content}
    status, body = hs.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"room_version": "10", "initial_state": [entry]},
        token=alice.token,
    )
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
    assert "creator must be able to invite" in body["error"]


def test_a_room_whose_creation_failed_halfway_takes_nothing_but_membership(audited, make_user):
    """Synapse keeps the create event and the creator's join of a creation it
    refused halfway: a room without power levels, retention or service users."""
    hs = audited
    alice = make_user("alice", homeserver=hs)
    entry = {"type": "m.room.power_levels", "state_key": "", "content": {"users": {alice.user_id: 0}}}
    status, body = hs.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"room_version": "10", "initial_state": [entry]},
        token=alice.token,
    )
    assert status == 403 and "You don't have permission to post" in body["error"], body
    status, body = hs.request("GET", "/_matrix/client/v3/joined_rooms", token=alice.token)
    assert status == 200 and len(body["joined_rooms"]) == 1, body
    room_id = body["joined_rooms"][0]
    content = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "session_id": "s"}
    attempts = [
        ("send/m.room.encrypted/t1", content),
        ("state/m.room.power_levels/", {"users": {alice.user_id: 100}}),
        ("state/m.room.encryption/", {"algorithm": "m.megolm.v1.aes-sha2"}),
    ]
    for path, content in attempts:
        status, body = hs.request(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/{path}", content, token=alice.token
        )
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), (path, body)
        assert "creation did not finish" in body["error"], (path, body)


@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), room_version=st.sampled_from([None, "10"]))
def test_any_power_levels_at_creation_seat_the_service_users_or_are_refused(
    audited, make_user, data, room_version
):
    hs = audited
    alice = make_user("alice", homeserver=hs)
    system, auditor = system_user(hs), hs.user_id("auditor")
    # from room version 12 on Synapse refuses power levels that list a creator
    listed = [system, auditor, hs.user_id("someone")] + ([alice.user_id] if room_version else [])
    content = data.draw(power_levels(listed))
    in_initial_state = data.draw(st.booleans())
    entry = {"type": "m.room.power_levels", "state_key": "", "content": content}
    request: dict[str, Any] = (
        {"initial_state": [entry]} if in_initial_state else {"power_level_content_override": content}
    )
    if room_version:
        request["room_version"] = room_version
    status, body = hs.request("POST", "/_matrix/client/v3/createRoom", request, token=alice.token)
    if status == 403:
        # the module's rule, or Synapse's own refusal of a creator below the levels
        # its initial state needs (the room it leaves behind: the next test)
        words = ("must keep power level 100", "must be able to invite", "You don't have permission to post")
        assert any(w in body["error"] for w in words), body
        return
    assert status == 200, body
    room_id = body["room_id"]
    for user in (system, auditor):
        wait_for_system_user(hs, alice.token, room_id, user=user)
    levels = state(hs, alice.token, room_id, "m.room.power_levels")
    assert levels["users"][system] == levels["users"][auditor] == 100
    redaction = levels.get("events", {}).get("m.room.redaction", levels.get("events_default", 0))
    assert levels.get("redact", 50) <= 100 and redaction <= 100
