"""Room policy rules: pure functions over creation requests and event data."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synapse_police_policy.config import MEGOLM, RoomsConfig
from synapse_police_policy.decisions import Denial, quote
from synapse_police_policy.rooms import seating
from synapse_police_policy.rooms.rules import (
    MODULE_CLEAR_EVENT_TYPES,
    MODULE_CLEAR_STATE_TYPES,
    ROOM_LEVEL_STATE_TYPES,
    check_clear_text,
    check_directory_publication,
    check_event,
    check_room_creation,
    check_room_finished,
    check_state,
    malformed_initial_state,
    malformed_request,
    missing_initial_state,
    seat_service_users,
    secure_initial_state,
)
from tests import element_requests as element
from tests.room_request_strategies import (
    CLEAR_CONFIGS,
    CONFIGS,
    EVENT_CONTENTS,
    EVENT_TYPES,
    POLICY_TYPES,
    REQUESTS,
    STATE_KEYS,
    power_levels,
)

DEFAULT = RoomsConfig()
LENIENT = RoomsConfig(refuse_unencrypted_messages=False)
LONG_VALUE = "x" * 200


def state(event_type: str, content: Any, state_key: str | None = "") -> dict[str, Any]:
    event: dict[str, Any] = {"type": event_type, "content": content}
    if state_key is not None:
        event["state_key"] = state_key
    return event


def creation_rule(request: dict[str, Any], config: RoomsConfig = DEFAULT) -> str | None:
    denial = check_room_creation(config, request)
    return None if denial is None else denial.rule


def by_type(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert all(event["state_key"] == "" for event in events)
    assert len({event["type"] for event in events}) == len(events)
    return {event["type"]: event["content"] for event in events}


# --- room creation -----------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"preset": "private_chat"},
        {"preset": "trusted_private_chat", "visibility": "private"},
        {"visibility": "private", "name": "Lage", "topic": "Einsatz"},
        {"initial_state": [state("m.room.join_rules", {"join_rule": "invite"})]},
        {"initial_state": [state("m.room.guest_access", {"guest_access": "forbidden"})]},
        {"initial_state": [state("m.room.history_visibility", {"history_visibility": "joined"})]},
        {"initial_state": [state("m.room.encryption", {"algorithm": MEGOLM})]},
        {"initial_state": [state("m.room.name", {"name": "Lage"})]},
    ],
)
def test_private_creation_requests_pass(request_: dict[str, Any]) -> None:
    assert check_room_creation(DEFAULT, request_) is None


def test_public_preset_refused() -> None:
    denial = check_room_creation(DEFAULT, {"preset": "public_chat"})
    assert denial is not None
    assert denial.rule == "rooms.public_room"
    assert "private_chat" in denial.reason  # tells the client what to use instead


def test_public_visibility_refused() -> None:
    denial = check_room_creation(DEFAULT, {"visibility": "public", "preset": "private_chat"})
    assert denial is not None
    assert denial.rule == "rooms.public_room"
    assert "room directory" in denial.reason


@pytest.mark.parametrize(
    ("event", "rule", "content"),
    [
        (state("m.room.join_rules", {"join_rule": "public"}), "rooms.join_rules", {"join_rule": "invite"}),
        (state("m.room.join_rules", {}), "rooms.join_rules", {"join_rule": "invite"}),
        (
            state("m.room.join_rules", {"join_rule": "restricted", "allow": [{"room_id": "!s:hs.test"}]}),
            "rooms.join_rules",
            {"join_rule": "invite"},
        ),
        (
            state("m.room.guest_access", {"guest_access": "can_join"}),
            "rooms.guest_access",
            {"guest_access": "forbidden"},
        ),
        (
            state("m.room.history_visibility", {"history_visibility": "world_readable"}),
            "rooms.history_visibility",
            {"history_visibility": "shared"},
        ),
        (
            state("m.room.encryption", {"algorithm": "m.olm.v1.curve25519-aes-sha2"}),
            "rooms.encryption",
            {"algorithm": MEGOLM},
        ),
        (state("m.room.encryption", {}), "rooms.encryption", {"algorithm": MEGOLM}),
        # the state_key may be left out: Synapse then uses "", and so does the rewrite
        (
            state("m.room.join_rules", {"join_rule": "public"}, state_key=None),
            "rooms.join_rules",
            {"join_rule": "invite"},
        ),
    ],
)
def test_initial_state_breaking_the_policy_gets_the_policy_value(
    event: dict[str, Any], rule: str, content: dict[str, Any]
) -> None:
    request = {"preset": "private_chat", "initial_state": [event]}
    assert check_room_creation(DEFAULT, request) is None, "made safe, not refused"
    secured, rewrites = secure_initial_state(DEFAULT, request)
    assert secured[0] == {**event, "content": content}
    assert [r.rule for r in rewrites] == [rule]
    # the log line says what was asked, that it is not allowed, and what the room gets
    assert check_state(DEFAULT, event["type"], event["content"]).reason in rewrites[0].reason
    assert rewrites[0].reason.endswith(f"The room gets {quote(next(iter(content.values())))} instead.")
    assert secured_is_safe(secured)


def secured_is_safe(initial_state: list[Any], config: RoomsConfig = DEFAULT) -> bool:
    """What Synapse makes of the entries (the last one of a type and state key
    wins) is encrypted, invite-only, closed to guests, not world-readable."""
    final: dict[str, Any] = {}
    for entry in initial_state:
        if isinstance(entry, dict) and entry.get("state_key", "") == "":
            final[entry["type"]] = entry["content"]
    return (
        final.get("m.room.encryption", {}).get("algorithm") == MEGOLM
        and final.get("m.room.join_rules", {}).get("join_rule") in config.allowed_join_rules
        and final.get("m.room.guest_access", {}).get("guest_access") != "can_join"
        and final.get("m.room.history_visibility", {}).get("history_visibility") != "world_readable"
        and all(check_state(config, t, c) is None for t, c in final.items())
    )


def test_every_breaking_entry_is_rewritten_past_allowed_ones() -> None:
    request = {
        "initial_state": [
            state("m.room.name", {"name": "ok"}),
            state("m.room.guest_access", {"guest_access": "can_join"}),
            state("m.room.join_rules", {"join_rule": "invite"}),
            state("m.room.guest_access", {"guest_access": "can_join"}),
        ]
    }
    secured, rewrites = secure_initial_state(DEFAULT, request)
    assert [r.rule for r in rewrites] == ["rooms.guest_access", "rooms.guest_access"]
    assert secured[:4] == [
        state("m.room.name", {"name": "ok"}),
        state("m.room.guest_access", {"guest_access": "forbidden"}),
        state("m.room.join_rules", {"join_rule": "invite"}),
        state("m.room.guest_access", {"guest_access": "forbidden"}),
    ]
    assert by_type(secured[4:]) == {
        "m.room.encryption": {"algorithm": MEGOLM},
        "m.room.history_visibility": {"history_visibility": "shared"},
    }


def test_allowed_entries_are_kept_unchanged_and_not_logged() -> None:
    entries = [
        state("m.room.encryption", {"algorithm": MEGOLM, "rotation_period_ms": 604800000}),
        state("m.room.history_visibility", {"history_visibility": "joined"}),
        state("m.room.guest_access", {"guest_access": "forbidden"}),
        state("m.room.join_rules", {"join_rule": "invite"}),
    ]
    secured, rewrites = secure_initial_state(DEFAULT, {"initial_state": entries})
    assert secured == entries
    assert rewrites == []


def test_rewritten_history_visibility_follows_config() -> None:
    request = {
        "initial_state": [state("m.room.history_visibility", {"history_visibility": "world_readable"})]
    }
    secured, _ = secure_initial_state(RoomsConfig(default_history_visibility="joined"), request)
    assert secured[0]["content"] == {"history_visibility": "joined"}


@pytest.mark.parametrize("event_type", ["m.room.join_rules", "m.room.guest_access", "m.room.encryption"])
def test_entries_with_another_state_key_are_not_room_settings(event_type: str) -> None:
    event = state(event_type, {"join_rule": "public", "guest_access": "can_join"}, state_key="other")
    secured, rewrites = secure_initial_state(DEFAULT, {"initial_state": [event]})
    assert secured[0] == event
    assert rewrites == []


def test_join_rule_allowed_by_config_is_kept() -> None:
    request = {"initial_state": [state("m.room.join_rules", {"join_rule": "knock"})]}
    assert [r.rule for r in secure_initial_state(DEFAULT, request)[1]] == ["rooms.join_rules"]
    knock = RoomsConfig(allowed_join_rules=frozenset({"invite", "knock"}))
    secured, rewrites = secure_initial_state(knock, request)
    assert rewrites == []
    assert secured[0]["content"] == {"join_rule": "knock"}


@pytest.mark.parametrize("join_rule", [["invite"], {"invite": True}, ("invite",), 1, None])
def test_join_rule_that_is_not_a_string_is_rewritten_not_crashing(join_rule: Any) -> None:
    request = {"initial_state": [state("m.room.join_rules", {"join_rule": join_rule})]}
    secured, rewrites = secure_initial_state(DEFAULT, request)
    assert secured[0]["content"] == {"join_rule": "invite"}
    assert [r.rule for r in rewrites] == ["rooms.join_rules"]
    # after creation the same value is refused
    denial = check_event(DEFAULT, "m.room.join_rules", "", {"join_rule": join_rule})
    assert denial is not None and denial.rule == "rooms.join_rules"


def test_rewrite_reason_quotes_long_values_truncated() -> None:
    request = {"initial_state": [state("m.room.encryption", {"algorithm": LONG_VALUE})]}
    [rewrite] = secure_initial_state(DEFAULT, request)[1]
    assert quote(LONG_VALUE) in rewrite.reason
    assert LONG_VALUE not in rewrite.reason


# --- Element Web's own requests ----------------------------------------------


ELEMENT_MADE_SAFE = {
    "new_room": (element.new_room("Einsatz 4711"), ["rooms.guest_access"]),
    "new_room_unencrypted": (element.new_room("Lage", encrypted=False), ["rooms.guest_access"]),
    "direct_chat": (element.direct_chat("@b:hs.test"), ["rooms.guest_access"]),
    "direct_chat_peer_without_keys": (
        element.direct_chat("@b:hs.test", encrypted=False),
        ["rooms.guest_access"],
    ),
    "group_chat": (element.group_chat(["@b:hs.test", "@c:hs.test"]), ["rooms.guest_access"]),
    "video_room": (element.video_room("Lagebild"), ["rooms.guest_access"]),
    "call_room": (element.call_room("Funk"), ["rooms.guest_access"]),
    "private_space": (element.private_space("Dienststelle"), ["rooms.guest_access"]),
    "room_in_space": (
        element.room_in_space("Schicht", "!space:hs.test", "hs.test"),
        ["rooms.guest_access", "rooms.join_rules"],
    ),
    "first_space_room": (
        element.first_space_room("General", "!space:hs.test", "hs.test"),
        ["rooms.guest_access", "rooms.join_rules"],
    ),
    "knock_room": (element.knock_room("Anfragen"), ["rooms.guest_access", "rooms.join_rules"]),
}


@pytest.mark.parametrize("name", list(ELEMENT_MADE_SAFE))
def test_element_requests_are_made_safe(name: str) -> None:
    request, rules = ELEMENT_MADE_SAFE[name]
    assert malformed_request(request) is None
    assert check_room_creation(DEFAULT, request) is None
    secured, rewrites = secure_initial_state(DEFAULT, request)
    assert [r.rule for r in rewrites] == rules
    assert secured_is_safe(secured)
    # what Element set and the policy allows stays (the space's history, its parent)
    for entry in request["initial_state"]:
        if check_state(DEFAULT, entry["type"], entry["content"]) is None:
            assert entry in secured


@pytest.mark.parametrize(
    "request_",
    [
        element.public_room("Offen", "offen"),
        element.public_space("Alle", "alle"),
        element.knock_room("Anfragen", listed=True),
    ],
    ids=["public_room", "public_space", "listed_knock_room"],
)
def test_element_public_rooms_are_refused(request_: dict[str, Any]) -> None:
    denial = check_room_creation(DEFAULT, request_)
    assert denial is not None
    assert denial.rule == "rooms.public_room"
    assert denial.reason.startswith("Public rooms are not allowed")


# --- missing_initial_state ---------------------------------------------------


def test_missing_initial_state_for_an_empty_request() -> None:
    added = by_type(missing_initial_state(DEFAULT, {}))
    assert added == {
        "m.room.encryption": {"algorithm": MEGOLM},
        "m.room.join_rules": {"join_rule": "invite"},
        "m.room.guest_access": {"guest_access": "forbidden"},
        "m.room.history_visibility": {"history_visibility": "shared"},
    }


def test_missing_history_visibility_follows_config() -> None:
    added = by_type(missing_initial_state(RoomsConfig(default_history_visibility="joined"), {}))
    assert added["m.room.history_visibility"] == {"history_visibility": "joined"}


def test_missing_initial_state_does_not_override_the_request() -> None:
    request = {
        "initial_state": [
            state("m.room.join_rules", {"join_rule": "knock"}),
            state("m.room.history_visibility", {"history_visibility": "invited"}),
        ]
    }
    added = by_type(missing_initial_state(DEFAULT, request))
    assert set(added) == {"m.room.encryption", "m.room.guest_access"}


def test_missing_initial_state_nothing_when_all_given() -> None:
    request = {
        "initial_state": [
            state("m.room.encryption", {"algorithm": MEGOLM}),
            state("m.room.join_rules", {"join_rule": "invite"}),
            state("m.room.guest_access", {"guest_access": "forbidden"}, state_key=None),
            state("m.room.history_visibility", {"history_visibility": "joined"}),
        ]
    }
    assert missing_initial_state(DEFAULT, request) == []


def test_missing_initial_state_ignores_entries_that_are_not_room_level() -> None:
    request = {
        "initial_state": [
            state("m.room.guest_access", {"guest_access": "forbidden"}, state_key="other"),
            {"state_key": "", "content": {"algorithm": MEGOLM}},
            "m.room.join_rules",
        ]
    }
    added = by_type(missing_initial_state(DEFAULT, request))
    assert set(added) == {
        "m.room.encryption",
        "m.room.join_rules",
        "m.room.guest_access",
        "m.room.history_visibility",
    }


def test_element_like_direct_message_request() -> None:
    request = {
        "preset": "trusted_private_chat",
        "is_direct": True,
        "visibility": "private",
        "invite": ["@b:hs.test"],
        "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
    }
    assert check_room_creation(DEFAULT, request) is None
    added = by_type(missing_initial_state(DEFAULT, request))
    assert added == {
        "m.room.join_rules": {"join_rule": "invite"},
        "m.room.guest_access": {"guest_access": "forbidden"},
        "m.room.history_visibility": {"history_visibility": "shared"},
    }


def test_completed_request_passes_the_rules() -> None:
    request: dict[str, Any] = {"preset": "private_chat"}
    request["initial_state"] = missing_initial_state(DEFAULT, request)
    assert check_room_creation(DEFAULT, request) is None
    assert missing_initial_state(DEFAULT, request) == []


# --- events in existing rooms ------------------------------------------------


CONTENT_TYPES = [
    "m.room.message",
    "m.sticker",
    "m.poll.start",
    "m.poll.response",
    "m.poll.end",
    "org.matrix.msc3381.poll.start",
    "org.matrix.msc3381.poll.response",
    "org.matrix.msc3381.poll.end",
]


@pytest.mark.parametrize("event_type", CONTENT_TYPES)
def test_unencrypted_content_events_refused(event_type: str) -> None:
    denial = check_event(DEFAULT, event_type, None, {"msgtype": "m.text", "body": "secret"})
    assert denial is not None
    assert denial.rule == "rooms.unencrypted_message"
    assert event_type in denial.reason
    assert "m.room.encrypted" in denial.reason
    assert "secret" not in denial.reason  # never echoes message content


@pytest.mark.parametrize("event_type", CONTENT_TYPES)
def test_unencrypted_content_events_allowed_when_configured(event_type: str) -> None:
    assert check_event(LENIENT, event_type, None, {"msgtype": "m.text", "body": "hi"}) is None


@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        ("m.room.encrypted", {"algorithm": MEGOLM, "ciphertext": "AwgA", "session_id": "s"}),
        ("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}}),
        ("m.room.redaction", {"redacts": "$e"}),
    ],
)
@pytest.mark.parametrize("config", [DEFAULT, LENIENT], ids=["refuse", "allow"])
def test_encrypted_and_reaction_events_allowed(
    event_type: str, content: dict[str, Any], config: RoomsConfig
) -> None:
    assert check_event(config, event_type, None, content) is None


# --- clear text: an allow-list -------------------------------------------------

SECRET = "Treffpunkt 14 Uhr Hauptstraße"
#: what issue 18 found accepted in clear: a custom message type, custom state, a state m.room.message
CLEAR_TEXT_CASES = {
    "custom_message_type": ("com.example.chat", None, {"msgtype": "m.text", "body": SECRET}),
    "custom_state": ("com.example.note", "", {"text": SECRET}),
    "message_as_state": ("m.room.message", "", {"msgtype": "m.text", "body": SECRET}),
    "message_as_keyed_state": ("m.room.message", "x", {"msgtype": "m.text", "body": SECRET}),
    "topic_under_another_key": ("m.room.topic", "notes", {"topic": SECRET}),
    "server_notice": ("m.room.message", None, {"msgtype": "m.server_notice", "body": SECRET}),
}


@pytest.mark.parametrize("case", list(CLEAR_TEXT_CASES))
def test_clear_text_outside_the_allow_list_is_refused(case: str) -> None:
    event_type, state_key, content = CLEAR_TEXT_CASES[case]
    denial = check_event(DEFAULT, event_type, state_key, content)
    assert denial is not None
    assert denial.rule == ("rooms.unencrypted_message" if state_key is None else "rooms.clear_state")
    assert event_type in denial.reason
    assert "clear" in denial.reason
    assert SECRET not in denial.reason
    assert check_event(LENIENT, event_type, state_key, content) is None


@pytest.mark.parametrize(
    ("event_type", "state_key", "content"),
    [
        ("m.room.name", "", {"name": "Einsatz 4711"}),
        ("m.room.topic", "", {"topic": "Lage"}),
        ("m.room.avatar", "", {"url": "mxc://hs.test/a"}),
        ("m.room.canonical_alias", "", {"alias": "#leitstelle:hs.test"}),
        ("m.room.pinned_events", "", {"pinned": ["$e"]}),
        ("m.room.server_acl", "", {"allow": ["hs.test"], "deny": []}),
        ("m.room.tombstone", "", {"body": "This room has been replaced", "replacement_room": "!n:hs.test"}),
        ("m.space.child", "!room:hs.test", {"via": ["hs.test"], "suggested": True}),
        ("m.space.parent", "!space:hs.test", {"via": ["hs.test"], "canonical": True}),
        ("m.room.power_levels", "", {"users": {"@a:hs.test": 100}}),
        ("m.room.retention", "", {"max_lifetime": 1000}),
        ("m.room.member", "@a:hs.test", {"membership": "join", "displayname": "A"}),
        ("io.element.functional_members", "", {"service_members": []}),
        ("com.example.note", "", {}),  # removing custom state
        ("m.room.topic", "notes", {}),
        ("m.room.encrypted", None, {"algorithm": MEGOLM, "ciphertext": "AwgA"}),
        ("m.reaction", None, {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}}),
        ("m.room.redaction", None, {"redacts": "$e", "reason": "Retention policy"}),
    ],
)
def test_what_clients_need_passes_in_clear(event_type: str, state_key: str | None, content: dict) -> None:
    assert check_event(DEFAULT, event_type, state_key, content) is None


def test_the_operator_extends_and_shortens_the_lists() -> None:
    widgets = RoomsConfig(clear_state_types=DEFAULT.clear_state_types | {"im.vector.modular.widgets"})
    widget = {"type": "jitsi", "url": "https://jitsi.hs.test", "name": "Jitsi"}
    assert check_event(DEFAULT, "im.vector.modular.widgets", "w1", widget) is not None
    assert check_event(widgets, "im.vector.modular.widgets", "w1", widget) is None
    strict = RoomsConfig(clear_event_types=frozenset(), clear_state_types=frozenset())
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}}
    assert check_event(strict, "m.reaction", None, reaction) is not None
    assert check_event(strict, "m.room.topic", "", {"topic": "Lage"}) is not None
    # the module's own events stay allowed whatever the lists say
    assert check_event(strict, "m.room.redaction", None, {"redacts": "$e"}) is None
    assert check_event(strict, "m.room.retention", "", {"max_lifetime": 1000}) is None
    assert check_event(strict, "m.room.join_rules", "", {"join_rule": "invite"}) is None


@settings(max_examples=400, deadline=None, database=None)
@given(config=CLEAR_CONFIGS, event_type=EVENT_TYPES, state_key=STATE_KEYS, content=EVENT_CONTENTS)
def test_clear_text_rule_refuses_whatever_it_does_not_know(
    config: RoomsConfig, event_type: str, state_key: str | None, content: dict[str, Any]
) -> None:
    denial = check_clear_text(config, event_type, state_key, content)
    if denial is not None:
        assert config.refuse_unencrypted_messages
        assert denial.rule in ("rooms.unencrypted_message", "rooms.clear_state")
        assert len(denial.reason) < 400
    # the room rules for an existing room refuse at least as much
    if event_type != "io.element.functional_members":
        assert (denial is None) or check_event(config, event_type, state_key, content) == denial
    if not config.refuse_unencrypted_messages:
        assert denial is None
        return
    if state_key is None:
        known = MODULE_CLEAR_EVENT_TYPES | config.clear_event_types
        assert (denial is None) == (event_type in known)
        return
    known = MODULE_CLEAR_STATE_TYPES | config.clear_state_types
    if not content:
        assert denial is None  # removing state never carries text
    elif event_type not in known:
        assert denial is not None
    else:
        assert (denial is None) == (event_type not in ROOM_LEVEL_STATE_TYPES or state_key == "")


@pytest.mark.parametrize(
    "request_",
    [
        {"initial_state": [state("com.example.note", {"text": SECRET})]},
        {"initial_state": [state("m.room.message", {"msgtype": "m.text", "body": SECRET})]},
        {"initial_state": [state("m.room.name", {"name": SECRET}, state_key="x")]},
        {"initial_state": [state("com.example.note", {"text": SECRET}, state_key=None)]},
    ],
    ids=["custom_state", "message_as_state", "name_under_another_key", "no_state_key"],
)
def test_clear_text_in_a_creation_request_is_refused(request_: dict[str, Any]) -> None:
    denial = check_room_creation(DEFAULT, request_)
    assert denial is not None
    assert denial.rule == "rooms.clear_state"
    assert SECRET not in denial.reason
    assert check_room_creation(LENIENT, request_) is None


def test_name_and_topic_of_a_creation_request_follow_the_state_list() -> None:
    request = {"name": "Einsatz 4711", "topic": "Lage", "room_alias_name": "einsatz"}
    assert check_room_creation(DEFAULT, request) is None
    for field, event_type in [
        ("name", "m.room.name"),
        ("topic", "m.room.topic"),
        ("room_alias_name", "m.room.canonical_alias"),
    ]:
        config = RoomsConfig(clear_state_types=DEFAULT.clear_state_types - {event_type})
        denial = check_room_creation(config, {field: request[field]})
        assert denial is not None and event_type in denial.reason, field


@pytest.mark.parametrize(
    ("event_type", "content", "rule"),
    [
        ("m.room.join_rules", {"join_rule": "public"}, "rooms.join_rules"),
        ("m.room.guest_access", {"guest_access": "can_join"}, "rooms.guest_access"),
        ("m.room.history_visibility", {"history_visibility": "world_readable"}, "rooms.history_visibility"),
        ("m.room.encryption", {"algorithm": "m.none"}, "rooms.encryption"),
        ("m.room.encryption", {}, "rooms.encryption"),
    ],
)
def test_room_level_state_changes(event_type: str, content: dict[str, Any], rule: str) -> None:
    denial = check_event(DEFAULT, event_type, "", content)
    assert denial is not None
    assert denial.rule == rule
    # check_event delegates room-level state to check_state
    assert check_state(DEFAULT, event_type, content) == denial
    # under another state key no client reads it: content there is clear text for nobody
    other = check_event(DEFAULT, event_type, "sub", content)
    assert (other is None) == (content == {})
    assert other is None or other.rule == "rooms.clear_state"


@pytest.mark.parametrize(
    ("event_type", "content"),
    [
        ("m.room.history_visibility", {"history_visibility": "joined"}),
        ("m.room.history_visibility", {"history_visibility": "invited"}),
        ("m.room.history_visibility", {"history_visibility": "shared"}),
        ("m.room.name", {"name": "Neuer Name"}),
        ("m.room.topic", {"topic": "Lage"}),
        ("m.room.join_rules", {"join_rule": "invite"}),
        ("m.room.guest_access", {"guest_access": "forbidden"}),
        ("m.room.encryption", {"algorithm": MEGOLM, "rotation_period_ms": 604800000}),
        ("m.room.power_levels", {"users": {"@a:hs.test": 100}}),
    ],
)
def test_allowed_state_changes(event_type: str, content: dict[str, Any]) -> None:
    assert check_event(DEFAULT, event_type, "", content) is None


def test_member_events_are_not_checked_as_room_state() -> None:
    assert check_event(DEFAULT, "m.room.member", "@a:hs.test", {"membership": "join"}) is None


# --- reasons -----------------------------------------------------------------


def test_encryption_reason_quotes_long_algorithm_truncated() -> None:
    denial = check_state(DEFAULT, "m.room.encryption", {"algorithm": LONG_VALUE})
    assert denial is not None
    assert quote(LONG_VALUE) in denial.reason
    assert LONG_VALUE not in denial.reason
    assert len(quote(LONG_VALUE)) == 64
    assert quote(LONG_VALUE).endswith("...")


def test_join_rule_reason_quotes_long_value_truncated() -> None:
    denial = check_state(DEFAULT, "m.room.join_rules", {"join_rule": LONG_VALUE})
    assert denial is not None
    assert quote(LONG_VALUE) in denial.reason
    assert LONG_VALUE[:100] not in denial.reason
    assert "allowed join rules: invite" in denial.reason


def test_short_values_are_quoted_whole() -> None:
    denial = check_state(DEFAULT, "m.room.join_rules", {"join_rule": "public"})
    assert denial is not None
    assert "'public'" in denial.reason


@pytest.mark.parametrize("value", ["x" * 62, "x" * 63, "x" * 100, list(range(100)), None])
def test_quote_is_at_most_64_characters(value: Any) -> None:
    text = quote(value)
    assert len(text) <= 64
    if len(repr(value)) <= 64:
        assert text == repr(value)
    else:
        assert text == repr(value)[:61] + "..."


def test_directory_publication_always_refused() -> None:
    denial = check_directory_publication()
    assert isinstance(denial, Denial)
    assert denial.rule == "rooms.directory"
    assert "directory" in denial.reason
    assert denial.http_status == 403
    assert denial.errcode == "M_FORBIDDEN"


@pytest.mark.parametrize(
    ("request_body", "problem"),
    [
        ({"initial_state": "x"}, "initial_state: expected a list of state events"),
        ({"initial_state": [None]}, "initial_state[0]: expected an object"),
        ({"initial_state": [{"content": {}}]}, "initial_state[0].type: expected a string"),
        (
            {"initial_state": [{"type": "m.room.name", "state_key": 1, "content": {}}]},
            "initial_state[0].state_key",
        ),
        ({"initial_state": [{"type": "m.room.name", "content": "x"}]}, "initial_state[0].content"),
    ],
)
def test_malformed_initial_state_names_the_entry(request_body: dict, problem: str) -> None:
    assert (malformed_initial_state(request_body) or "").startswith(problem)


@pytest.mark.parametrize(
    "request_body",
    [{}, {"initial_state": []}, {"initial_state": [{"type": "m.room.name", "content": {"name": "x"}}]}],
)
def test_well_formed_initial_state_passes(request_body: dict) -> None:
    assert malformed_initial_state(request_body) is None


@pytest.mark.parametrize(
    ("request_body", "problem"),
    [
        ({"initial_state": None}, "initial_state: expected a list"),
        ({"preset": ["private_chat"]}, "preset: expected a string"),
        ({"preset": None}, "preset: expected a string"),
        ({"visibility": {"private": True}}, "visibility: expected 'private'"),
        ({"room_version": 10}, "room_version: expected a string"),
        ({"creation_content": ["m.federate"]}, "creation_content: expected an object"),
        ({"creation_content": None}, "creation_content: expected an object"),
        ({"power_level_content_override": "all"}, "power_level_content_override: expected an object"),
        ({"power_level_content_override": {"users": "x"}}, "power_level_content_override.users"),
        (
            {
                "initial_state": [
                    state("m.room.name", {}),
                    state("m.room.power_levels", {"users": ["@a:hs.test"]}),
                ]
            },
            "initial_state[1].content.users",
        ),
    ],
)
def test_malformed_request_names_the_field(request_body: dict, problem: str) -> None:
    assert (malformed_request(request_body) or "").startswith(problem)


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"power_level_content_override": None},
        {"power_level_content_override": {"users": None}},
        {"power_level_content_override": {"users": {"@a:hs.test": 2**53 - 1, "@b:hs.test": -(2**53 - 1)}}},
        {"initial_state": [state("m.room.power_levels", {"users": ["x"]}, state_key="other")]},
        *(body for body, _ in ELEMENT_MADE_SAFE.values()),
    ],
)
def test_well_formed_requests_pass(request_body: dict) -> None:
    assert malformed_request(request_body) is None


@pytest.mark.parametrize("content", [None, "megolm", ["algorithm"], 42])
def test_non_mapping_content_is_treated_as_empty(content: Any) -> None:
    """The module answers such entries with a 400 first; the rule still copes."""
    secured, rewrites = secure_initial_state(
        DEFAULT, {"initial_state": [state("m.room.encryption", content)]}
    )
    assert [r.rule for r in rewrites] == ["rooms.encryption"]
    assert secured[0]["content"] == {"algorithm": MEGOLM}
    _, rewrites = secure_initial_state(DEFAULT, {"initial_state": [state("m.room.guest_access", content)]})
    assert rewrites == []  # for guest access an empty content is harmless


@pytest.mark.parametrize(
    "initial_state",
    [
        "not a list",
        {"type": "m.room.join_rules"},
        ["m.room.join_rules"],
        [None],
        [{"content": {"join_rule": "public"}}],
        [{"type": None, "state_key": "", "content": {"join_rule": "public"}}],
        [{"type": 7, "state_key": "", "content": {"algorithm": "none"}}],
    ],
)
def test_malformed_initial_state_entries_are_passed_on_unread(initial_state: Any) -> None:
    assert check_room_creation(DEFAULT, {"initial_state": initial_state}) is None
    secured, rewrites = secure_initial_state(DEFAULT, {"initial_state": initial_state})
    assert rewrites == []
    if isinstance(initial_state, list):
        assert secured[: len(initial_state)] == initial_state


# --- power levels in initial_state --------------------------------------------


SEATED = ["@policy:hs.test", "@auditor:hs.test"]


def test_power_levels_in_initial_state_seat_the_service_users() -> None:
    """Synapse ignores power_level_content_override when initial_state has power levels."""
    levels = state("m.room.power_levels", {"users": {"@a:hs.test": 100, "@policy:hs.test": 0}, "ban": 50})
    secured, denial = seating.seat_in_initial_state([levels], "@a:hs.test", SEATED, creator_listed=True)
    assert denial is None
    assert secured == [
        state(
            "m.room.power_levels",
            {"users": {"@a:hs.test": 100, "@policy:hs.test": 100, "@auditor:hs.test": 100}, "ban": 50},
        )
    ]


def test_power_levels_in_initial_state_keep_the_creator_where_listed() -> None:
    levels = state("m.room.power_levels", {})
    listed, _ = seating.seat_in_initial_state([levels], "@a:hs.test", SEATED, creator_listed=True)
    assert listed[0]["content"]["users"]["@a:hs.test"] == 100
    unlisted, _ = seating.seat_in_initial_state([levels], "@a:hs.test", SEATED, creator_listed=False)
    assert "@a:hs.test" not in unlisted[0]["content"]["users"]


@pytest.mark.parametrize(
    "content",
    [{"redact": 101}, {"events": {"m.room.redaction": 200}}, {"events_default": 150}, {"redact": "50"}],
)
def test_power_levels_in_initial_state_that_keep_the_service_users_from_redacting_are_refused(
    content: dict[str, Any],
) -> None:
    _, denial = seating.seat_in_initial_state(
        [state("m.room.power_levels", content)], "@a:hs.test", SEATED, creator_listed=True
    )
    assert denial is not None
    assert denial.rule == "retention.system_user_power"


@pytest.mark.parametrize(
    ("levels", "refused"),
    [({}, False), ({"events_default": 100}, False), ({"events_default": 101}, True), ({"redact": 150}, True)],
)
def test_power_override_is_checked_like_power_levels(levels: dict[str, Any], refused: bool) -> None:
    override = seating.power_override(
        {"power_level_content_override": levels}, "@a:hs.test", SEATED, creator_listed=False
    )
    assert (seating.check_seated_power(override, SEATED) is not None) == refused


def test_other_entries_are_not_power_levels() -> None:
    entries = [
        state("m.room.power_levels", {"redact": 500}, state_key="x"),
        state("m.room.name", {"name": "n"}),
    ]
    secured, denial = seating.seat_in_initial_state(entries, "@a:hs.test", SEATED, creator_listed=True)
    assert (secured, denial) == (entries, None)


# --- power levels at creation: seat_service_users ------------------------------

CREATOR = "@a:hs.test"
SYSTEM, AUDITOR = SEATED


def seat(request: dict[str, Any], *, creator_listed: bool) -> tuple[list[Any], dict[str, Any], Denial | None]:
    initial_state, _ = secure_initial_state(DEFAULT, request)
    return seat_service_users(request, initial_state, CREATOR, SEATED, creator_listed)


def levels_in(initial_state: list[Any]) -> list[dict[str, Any]]:
    return [
        e["content"] for e in initial_state if e["type"] == "m.room.power_levels" and e["state_key"] == ""
    ]


@pytest.mark.parametrize("event_type", ["m.room.encrypted", "m.room.power_levels", "m.room.encryption", "x"])
def test_a_room_without_power_levels_takes_nothing_but_membership(event_type: str) -> None:
    """What Synapse leaves of a creation it refused halfway."""
    denial = check_room_finished(event_type, has_power_levels=False)
    assert denial is not None and denial.rule == "rooms.unfinished_room"
    assert check_room_finished(event_type, has_power_levels=True) is None
    for membership in ("m.room.create", "m.room.member"):
        assert check_room_finished(membership, has_power_levels=False) is None


def test_hostile_initial_state_power_levels_get_the_service_users_seated() -> None:
    """Issue 18: valid in room version 12, where creators have unlimited power."""
    request = {"initial_state": [state("m.room.power_levels", {"users": {}, "redact": 100})]}
    initial_state, _, denial = seat(request, creator_listed=False)
    assert denial is None
    assert levels_in(initial_state) == [{"users": {SYSTEM: 100, AUDITOR: 100}, "redact": 100}]


@pytest.mark.parametrize(
    "request_",
    [
        {"initial_state": [state("m.room.power_levels", {"users": {CREATOR: 0}, "invite": 50})]},
        {"initial_state": [state("m.room.power_levels", {"invite": 101})]},
        {"power_level_content_override": {"invite": 101}},
        {"power_level_content_override": {"users": {CREATOR: 10}, "invite": 50}},
        {"initial_state": [state("m.room.power_levels", {"users": {CREATOR: "100"}})]},
    ],
    ids=["creator_below_invite", "invite_above_100", "override_invite", "override_creator", "string_level"],
)
def test_where_creators_are_listed_the_creator_must_be_able_to_invite(request_: dict[str, Any]) -> None:
    """The creator invites the service users; a room they cannot enter is never swept."""
    _, _, denial = seat(request_, creator_listed=True)
    assert denial is not None
    assert denial.rule == "retention.system_user_power"
    assert "invite" in denial.reason
    # from room version 12 on the creator's power is unlimited (Synapse refuses a listed creator)
    _, _, unlisted = seat(request_, creator_listed=False)
    assert unlisted is None


def test_a_creator_at_level_zero_may_create_where_anyone_may_invite() -> None:
    request = {"initial_state": [state("m.room.power_levels", {"users": {CREATOR: 0}, "state_default": 0})]}
    initial_state, _, denial = seat(request, creator_listed=True)
    assert denial is None
    assert levels_in(initial_state)[0]["users"] == {CREATOR: 0, SYSTEM: 100, AUDITOR: 100}


def test_a_direct_chat_with_the_auditor_bot_makes_it_a_creator_not_a_listed_user() -> None:
    """Room version 12: Synapse makes a trusted private chat's invitees creators and
    refuses power levels that list a creator (a 400 before this rule)."""
    request = {"preset": "trusted_private_chat", "is_direct": True, "invite": [AUDITOR]}
    _, override, denial = seat(request, creator_listed=False)
    assert denial is None
    assert override["users"] == {SYSTEM: 100}
    request = {"creation_content": {"additional_creators": [SYSTEM, 7]}}
    _, override, denial = seat(request, creator_listed=False)
    assert (override["users"], denial) == ({AUDITOR: 100}, None)
    # before version 12 nobody but the creator is a creator: both are listed
    _, override, _ = seat(request, creator_listed=True)
    assert override["users"] == {CREATOR: 100, SYSTEM: 100, AUDITOR: 100}


def test_a_trusted_private_chat_keeps_its_invitees_at_100_before_version_12() -> None:
    """Synapse gives them 100 in its default users, which an override's users replace."""
    request = {"preset": "trusted_private_chat", "invite": ["@b:hs.test"]}
    _, override, _ = seat(request, creator_listed=True)
    assert override["users"] == {CREATOR: 100, "@b:hs.test": 100, SYSTEM: 100, AUDITOR: 100}
    own = {**request, "power_level_content_override": {"users": {CREATOR: 100, "@b:hs.test": 50}}}
    _, override, _ = seat(own, creator_listed=True)
    assert override["users"]["@b:hs.test"] == 50, "the request's own users map is kept"


@settings(max_examples=400, deadline=None, database=None)
@given(
    levels=power_levels([CREATOR, SYSTEM, AUDITOR, "@b:hs.test"]),
    in_initial_state=st.booleans(),
    creator_listed=st.booleans(),
)
def test_power_levels_at_creation_are_safe_or_refused(
    levels: dict[str, Any], in_initial_state: bool, creator_listed: bool
) -> None:
    """Whatever a creator asks for, the power levels Synapse takes seat the service
    users with the power the later-change rule demands, or the request is refused."""
    if in_initial_state:
        request: dict[str, Any] = {"initial_state": [state("m.room.power_levels", levels)]}
    else:
        request = {"power_level_content_override": levels}
    initial_state, override, denial = seat(request, creator_listed=creator_listed)
    if denial is not None:
        assert denial.rule == "retention.system_user_power"
        # refused only what breaks a rule: a power level above 100 for redacting, or a
        # creator (where listed) below the invite level
        needs = [levels.get("redact", 50), levels.get("events", {}).get("m.room.redaction")]
        needs.append(levels.get("events_default", 0) if needs[1] is None else None)
        creator = levels.get("users", {}).get(CREATOR, 100)
        assert any(n is not None and n > 100 for n in needs) or (
            creator_listed and creator < levels.get("invite", 0)
        )
        return
    taken = levels_in(initial_state)[-1] if in_initial_state else override
    for user in SEATED:
        assert seating.check_power_levels(taken, user) is None
    if creator_listed:
        assert taken["users"][CREATOR] >= taken.get("invite", 0)
    else:
        assert CREATOR not in taken["users"] or CREATOR in levels.get("users", {})


# --- properties: the whole input surface of createRoom ------------------------


@settings(max_examples=500, deadline=None, database=None)
@given(config=CONFIGS, request_=REQUESTS)
def test_the_creation_rules_never_raise_and_leave_a_safe_room(config: RoomsConfig, request_: dict) -> None:
    problem = malformed_request(request_)
    denial = check_room_creation(config, request_)
    secured, rewrites = secure_initial_state(config, request_)
    seated, power_denial = seating.seat_in_initial_state(secured, "@a:hs.test", SEATED, creator_listed=True)
    if problem is not None or denial is not None:
        return  # the module answers 400 or 403 before anything is created
    assert secured_is_safe(secured, config)
    assert all(isinstance(r.reason, str) and len(r.reason) < 400 for r in rewrites)
    # a second pass changes nothing: what the rule leaves is within the policy
    again, more = secure_initial_state(config, {"initial_state": secured})
    assert (again, more) == (secured, [])
    if power_denial is None:
        assert secured_is_safe(seated, config)


@settings(max_examples=200, deadline=None, database=None)
@given(
    text=st.text(min_size=1000, max_size=5000),
    event_type=st.sampled_from(POLICY_TYPES),
)
def test_huge_values_are_quoted_short(text: str, event_type: str) -> None:
    content = {
        "join_rule": text,
        "guest_access": "can_join",
        "history_visibility": "world_readable",
        "algorithm": text,
    }
    _, rewrites = secure_initial_state(DEFAULT, {"initial_state": [state(event_type, content)]})
    assert len(rewrites) == 1
    assert len(rewrites[0].reason) < 300


def test_a_deeply_nested_number_is_named_in_a_short_message() -> None:
    content: Any = 0.5
    for _ in range(200):
        content = {"level": content}
    problem = malformed_request({"initial_state": [state("m.room.name", content)]})
    assert problem is not None
    assert problem.startswith("initial_state[0].content['level']['level']")
    assert len(problem) < 300
