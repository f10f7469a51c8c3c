"""Room creation on a real Synapse: every room comes out encrypted, invite-only,
closed to guests and not world-readable; settings that ask otherwise get the
policy's value, public rooms get 403. Element's own requests:
test_element_rooms.py."""

from __future__ import annotations

import uuid

import pytest

from devtools.homeserver import Homeserver


def create(hs: Homeserver, token: str, request: dict) -> tuple[int, dict]:
    return hs.request("POST", "/_matrix/client/v3/createRoom", request, token=token)


def room_state(hs: Homeserver, token: str, room_id: str) -> dict[str, dict]:
    status, events = hs.request("GET", f"/_matrix/client/v3/rooms/{room_id}/state", token=token)
    assert status == 200, events
    return {event["type"]: event["content"] for event in events if event.get("state_key") == ""}


@pytest.fixture(scope="module")
def plain_synapse_defaults(start_homeserver) -> Homeserver:
    """Synapse's own encryption default switched off: what remains is the module's doing."""
    return start_homeserver("no_synapse_e2ee", extra={"encryption_enabled_by_default_for_room_type": "off"})


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"preset": "private_chat"},
        {"preset": "trusted_private_chat", "is_direct": True},
        {"visibility": "private", "name": "Einsatz 4711"},
    ],
    ids=["empty", "private_chat", "trusted_private_chat", "named"],
)
def test_every_room_comes_out_closed_and_encrypted(plain_synapse_defaults, make_user, request_body):
    hs = plain_synapse_defaults
    user = make_user("creator", homeserver=hs)
    status, body = create(hs, user.token, request_body)
    assert status == 200, body
    state = room_state(hs, user.token, body["room_id"])
    assert state["m.room.encryption"] == {"algorithm": "m.megolm.v1.aes-sha2"}
    assert state["m.room.join_rules"] == {"join_rule": "invite"}
    assert state["m.room.guest_access"] == {"guest_access": "forbidden"}
    assert state["m.room.history_visibility"] == {"history_visibility": "shared"}


def test_element_style_direct_chat_keeps_its_own_settings(hs, make_user):
    user, peer = make_user("officer"), make_user("peer")
    status, body = create(
        hs,
        user.token,
        {
            "preset": "trusted_private_chat",
            "is_direct": True,
            "invite": [peer.user_id],
            "initial_state": [
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": 604800000},
                },
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "joined"},
                },
            ],
        },
    )
    assert status == 200, body
    state = room_state(hs, user.token, body["room_id"])
    assert state["m.room.encryption"]["rotation_period_ms"] == 604800000
    assert state["m.room.history_visibility"] == {"history_visibility": "joined"}
    assert state["m.room.guest_access"] == {"guest_access": "forbidden"}


@pytest.mark.parametrize(
    ("request_body", "rule_words"),
    [
        ({"preset": "public_chat"}, "Public rooms are not allowed"),
        ({"visibility": "public"}, "room directory"),
    ],
    ids=["public_preset", "public_visibility"],
)
def test_public_rooms_are_refused(hs, make_user, request_body, rule_words):
    user = make_user("creator")
    status, body = create(hs, user.token, request_body)
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert rule_words in body["error"]


@pytest.mark.parametrize(
    ("entry", "event_type", "content"),
    [
        (
            {"type": "m.room.join_rules", "content": {"join_rule": "public"}},
            "m.room.join_rules",
            {"join_rule": "invite"},
        ),
        (
            {"type": "m.room.join_rules", "content": {"join_rule": "knock"}},
            "m.room.join_rules",
            {"join_rule": "invite"},
        ),
        (
            {"type": "m.room.join_rules", "content": {"join_rule": ["public"]}},
            "m.room.join_rules",
            {"join_rule": "invite"},
        ),
        (
            {"type": "m.room.guest_access", "content": {"guest_access": "can_join"}},
            "m.room.guest_access",
            {"guest_access": "forbidden"},
        ),
        (
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}},
            "m.room.history_visibility",
            {"history_visibility": "shared"},
        ),
        (
            {"type": "m.room.encryption", "content": {"algorithm": "m.olm.v1.curve25519"}},
            "m.room.encryption",
            {"algorithm": "m.megolm.v1.aes-sha2"},
        ),
        (
            {"type": "m.room.encryption", "content": {}},
            "m.room.encryption",
            {"algorithm": "m.megolm.v1.aes-sha2"},
        ),
    ],
    ids=[
        "public_join_rule",
        "knock_not_configured",
        "join_rule_list",
        "guest_can_join",
        "world_readable",
        "other_algorithm",
        "no_algorithm",
    ],
)
def test_initial_state_breaking_the_policy_gets_the_policy_value(
    plain_synapse_defaults, make_user, entry, event_type, content
):
    hs = plain_synapse_defaults
    user = make_user("creator", homeserver=hs)
    status, body = create(hs, user.token, {"initial_state": [entry]})
    assert status == 200, body
    state = room_state(hs, user.token, body["room_id"])
    assert state[event_type] == content
    assert state["m.room.encryption"] == {"algorithm": "m.megolm.v1.aes-sha2"}
    assert state["m.room.join_rules"] == {"join_rule": "invite"}
    assert state["m.room.guest_access"] == {"guest_access": "forbidden"}
    assert state["m.room.history_visibility"] == {"history_visibility": "shared"}


def test_server_admins_cannot_create_public_rooms_either(hs, make_user):
    admin = make_user("admin", admin=True)
    status, body = create(hs, admin.token, {"preset": "public_chat"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body


@pytest.mark.parametrize(
    ("initial_state", "named"),
    [
        ({"type": "m.room.join_rules"}, "initial_state: expected a list"),
        ([1], "initial_state[0]: expected an object"),
        (
            [{"type": "m.room.topic", "content": {"topic": "x"}}, {"type": 5, "content": {}}],
            "initial_state[1].type",
        ),
        ([{"type": "m.room.join_rules", "content": ["public"]}], "initial_state[0].content"),
    ],
    ids=["not_a_list", "not_an_object", "type_not_a_string", "content_not_an_object"],
)
def test_malformed_initial_state_is_a_clear_400(hs, make_user, initial_state, named):
    user = make_user("creator")
    status, body = create(hs, user.token, {"initial_state": initial_state})
    assert status == 400, body
    assert body["errcode"] == "M_BAD_JSON"
    assert named in body["error"]


@pytest.mark.parametrize(
    ("request_body", "named"),
    [
        ({"preset": ["private_chat"]}, "preset: expected a string"),
        ({"creation_content": ["m.space"]}, "creation_content: expected an object"),
        ({"power_level_content_override": "all"}, "power_level_content_override: expected an object"),
        (
            {"room_version": "1", "power_level_content_override": {"x": 2**63}},
            "expected an integer between",
        ),
    ],
    ids=["preset_list", "creation_content_list", "override_string", "integer_too_large"],
)
def test_other_malformed_fields_are_a_clear_400(hs, make_user, request_body, named):
    """Synapse answers each of these with a 500 on its own."""
    user = make_user("creator")
    status, body = create(hs, user.token, request_body)
    assert status == 400, body
    assert body["errcode"] == "M_BAD_JSON"
    assert named in body["error"]


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "com.example.note", "state_key": "", "content": {"text": "{secret}"}},
        {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "{secret}"}},
    ],
    ids=["custom_state", "message_as_state"],
)
def test_clear_text_in_initial_state_is_refused_and_not_stored(hs, make_user, entry):
    """Synapse runs no spam check on a creation request's events: the module's
    creation gate applies the clear-text rule itself."""
    user = make_user("creator")
    secret = f"Treffpunkt-{uuid.uuid4().hex}"
    entry = {**entry, "content": {k: v.replace("{secret}", secret) for k, v in entry["content"].items()}}
    status, body = create(hs, user.token, {"name": "Lage", "initial_state": [entry]})
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
    assert "rooms.clear_state_types" in body["error"]
    assert hs.query("SELECT COUNT(*) FROM event_json WHERE json LIKE ?", (f"%{secret}%",)) == [(0,)]
