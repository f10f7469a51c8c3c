"""Changes to an existing room on a real Synapse: what would open the room,
drop its encryption or publish it is refused with 403 and the rule's reason;
so is clear text outside the allow-list (custom types, state as message)."""

from __future__ import annotations

import uuid

import pytest

from devtools.homeserver import Homeserver


@pytest.fixture
def room(hs: Homeserver, make_user):
    """A fresh room and its creator (who holds power level 100)."""
    owner = make_user("owner")
    status, body = hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=owner.token)
    assert status == 200, body
    return body["room_id"], owner


def put_state(hs: Homeserver, token: str, room_id: str, event_type: str, content: dict) -> tuple[int, dict]:
    return hs.request("PUT", f"/_matrix/client/v3/rooms/{room_id}/state/{event_type}/", content, token=token)


def send(hs: Homeserver, token: str, room_id: str, event_type: str, content: dict) -> tuple[int, dict]:
    path = f"/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{uuid.uuid4().hex}"
    return hs.request("PUT", path, content, token=token)


@pytest.mark.parametrize(
    ("event_type", "content", "reason"),
    [
        ("m.room.join_rules", {"join_rule": "public"}, "Join rule 'public' is not allowed"),
        ("m.room.join_rules", {"join_rule": "knock"}, "Join rule 'knock' is not allowed"),
        ("m.room.join_rules", {"join_rule": ["public"]}, "Join rule ['public'] is not allowed"),
        ("m.room.guest_access", {"guest_access": "can_join"}, "Guest access 'can_join' is not allowed"),
        (
            "m.room.history_visibility",
            {"history_visibility": "world_readable"},
            "History visibility 'world_readable' is not allowed",
        ),
        ("m.room.encryption", {"algorithm": "m.olm.v1.curve25519"}, "stays end-to-end encrypted"),
        ("m.room.encryption", {}, "stays end-to-end encrypted"),
    ],
    ids=[
        "public",
        "knock",
        "join_rule_list",
        "guests",
        "world_readable",
        "other_algorithm",
        "encryption_off",
    ],
)
def test_opening_changes_are_refused(hs, room, event_type, content, reason):
    room_id, owner = room
    status, body = put_state(hs, owner.token, room_id, event_type, content)
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert reason in body["error"]


def test_room_keeps_its_state_after_refusals(hs, room):
    room_id, owner = room
    put_state(hs, owner.token, room_id, "m.room.join_rules", {"join_rule": "public"})
    put_state(hs, owner.token, room_id, "m.room.encryption", {})
    status, join_rules = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.join_rules/", token=owner.token
    )
    assert status == 200 and join_rules == {"join_rule": "invite"}
    status, encryption = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.encryption/", token=owner.token
    )
    assert status == 200 and encryption == {"algorithm": "m.megolm.v1.aes-sha2"}


@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        ("m.room.history_visibility", {"history_visibility": "joined"}),
        ("m.room.guest_access", {"guest_access": "forbidden"}),
        ("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 50}),
        ("m.room.name", {"name": "Lage Hauptbahnhof"}),
    ],
    ids=["history_joined", "guests_forbidden", "megolm_rotation", "name"],
)
def test_changes_within_the_policy_are_allowed(hs, room, event_type, content):
    room_id, owner = room
    status, body = put_state(hs, owner.token, room_id, event_type, content)
    assert status == 200, body


def test_publishing_to_the_room_directory_is_refused(hs, room):
    room_id, owner = room
    status, body = hs.request(
        "PUT",
        f"/_matrix/client/v3/directory/list/room/{room_id}",
        {"visibility": "public"},
        token=owner.token,
    )
    assert status == 403, body
    assert "room directory is not allowed" in body["error"]


@pytest.mark.parametrize("event_type", ["m.room.message", "m.sticker", "m.poll.start"])
def test_clear_text_content_is_refused(hs, room, event_type):
    room_id, owner = room
    status, body = send(hs, owner.token, room_id, event_type, {"msgtype": "m.text", "body": "Lage ruhig"})
    assert status == 403, body
    assert "must send m.room.encrypted" in body["error"]


def test_encrypted_events_and_reactions_pass(hs, room):
    room_id, owner = room
    status, body = send(
        hs,
        owner.token,
        room_id,
        "m.room.encrypted",
        {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
            "device_id": "RJYKSTBOIE",
            "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
            "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
        },
    )
    assert status == 200, body
    status, body = send(
        hs,
        owner.token,
        room_id,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": body["event_id"], "key": "👍"}},
    )
    assert status == 200, body


def stored_anywhere(hs: Homeserver, text: str) -> int:
    """Events whose stored JSON contains ``text``."""
    return hs.query("SELECT COUNT(*) FROM event_json WHERE json LIKE ?", (f"%{text}%",))[0][0]


@pytest.mark.parametrize(
    ("method", "event_type", "state_key", "content", "words"),
    [
        (
            "send",
            "com.example.chat",
            None,
            {"msgtype": "m.text", "body": "{secret}"},
            "must send m.room.encrypted",
        ),
        ("state", "com.example.note", "", {"text": "{secret}"}, "rooms.clear_state_types"),
        ("state", "m.room.message", "", {"msgtype": "m.text", "body": "{secret}"}, "rooms.clear_state_types"),
        ("state", "m.room.topic", "notes", {"topic": "{secret}"}, "takes the state key ''"),
    ],
    ids=["custom_message_type", "custom_state", "message_as_state", "topic_under_another_key"],
)
def test_clear_text_outside_the_allow_list_is_refused_and_not_stored(
    hs, room, method, event_type, state_key, content, words
):
    room_id, owner = room
    secret = f"Treffpunkt-{uuid.uuid4().hex}"
    content = {key: value.replace("{secret}", secret) for key, value in content.items()}
    if method == "send":
        status, body = send(hs, owner.token, room_id, event_type, content)
    else:
        path = f"/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"
        status, body = hs.request("PUT", path, content, token=owner.token)
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
    assert words in body["error"]
    assert secret not in body["error"]
    assert stored_anywhere(hs, secret) == 0


@pytest.mark.parametrize(
    ("event_type", "state_key", "content"),
    [
        ("m.room.topic", "", {"topic": "Lage ruhig"}),
        ("m.room.pinned_events", "", {"pinned": []}),
        ("m.space.child", "!child:ours.test", {"via": ["ours.test"]}),
        ("com.example.note", "", {}),
    ],
    ids=["topic", "pinned_events", "space_child", "emptied_custom_state"],
)
def test_state_clients_need_passes_in_clear(hs, room, event_type, state_key, content):
    room_id, owner = room
    path = f"/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"
    status, body = hs.request("PUT", path, content, token=owner.token)
    assert status == 200, body
