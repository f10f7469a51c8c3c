"""Room policy rules: pure functions over creation requests and event data."""

from __future__ import annotations

from typing import Any

import pytest

from synapse_police_policy.config import MEGOLM, RoomsConfig
from synapse_police_policy.decisions import Denial, quote
from synapse_police_policy.rooms import (
    check_directory_publication,
    check_event,
    check_room_creation,
    check_state,
    malformed_initial_state,
    missing_initial_state,
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
    ("event", "rule"),
    [
        (state("m.room.join_rules", {"join_rule": "public"}), "rooms.join_rules"),
        (state("m.room.join_rules", {}), "rooms.join_rules"),
        (state("m.room.guest_access", {"guest_access": "can_join"}), "rooms.guest_access"),
        (
            state("m.room.history_visibility", {"history_visibility": "world_readable"}),
            "rooms.history_visibility",
        ),
        (state("m.room.encryption", {"algorithm": "m.olm.v1.curve25519-aes-sha2"}), "rooms.encryption"),
        (state("m.room.encryption", {}), "rooms.encryption"),
        # the state_key may be left out: Synapse then uses ""
        (state("m.room.join_rules", {"join_rule": "public"}, state_key=None), "rooms.join_rules"),
    ],
)
def test_initial_state_breaking_the_policy_refused(event: dict[str, Any], rule: str) -> None:
    assert creation_rule({"preset": "private_chat", "initial_state": [event]}) == rule


def test_initial_state_is_checked_past_allowed_entries() -> None:
    request = {
        "initial_state": [
            state("m.room.name", {"name": "ok"}),
            state("m.room.join_rules", {"join_rule": "invite"}),
            state("m.room.guest_access", {"guest_access": "can_join"}),
        ]
    }
    assert creation_rule(request) == "rooms.guest_access"


@pytest.mark.parametrize("content", [None, "megolm", ["algorithm"], 42])
def test_non_mapping_content_is_treated_as_empty(content: Any) -> None:
    # an encryption event without a usable content has no algorithm: refused
    assert creation_rule({"initial_state": [state("m.room.encryption", content)]}) == "rooms.encryption"
    # for guest access an empty content is harmless
    assert creation_rule({"initial_state": [state("m.room.guest_access", content)]}) is None


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
def test_malformed_initial_state_entries_are_ignored(initial_state: Any) -> None:
    assert check_room_creation(DEFAULT, {"initial_state": initial_state}) is None


@pytest.mark.parametrize(
    "event",
    [
        state("m.room.join_rules", {"join_rule": "public"}, state_key="x"),
        state("m.room.guest_access", {"guest_access": "can_join"}, state_key="@a:hs.test"),
        state("m.room.encryption", {"algorithm": "none"}, state_key="sub"),
        state("m.room.history_visibility", {"history_visibility": "world_readable"}, state_key=" "),
    ],
)
def test_initial_state_with_non_empty_state_key_is_ignored(event: dict[str, Any]) -> None:
    assert check_room_creation(DEFAULT, {"initial_state": [event]}) is None


def test_join_rule_allowed_by_config() -> None:
    request = {"initial_state": [state("m.room.join_rules", {"join_rule": "knock"})]}
    assert creation_rule(request) == "rooms.join_rules"
    assert creation_rule(request, RoomsConfig(allowed_join_rules=frozenset({"invite", "knock"}))) is None


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


def test_state_event_with_message_type_is_not_a_message() -> None:
    # only non-state events carry what users write
    assert check_event(DEFAULT, "m.room.message", "", {"body": "x"}) is None


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
    # with a non-empty state key it is not room-level state and is ignored
    assert check_event(DEFAULT, event_type, "sub", content) is None


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


@pytest.mark.parametrize("join_rule", [["invite"], {"invite": True}, ("invite",), 1, None])
def test_join_rule_that_is_not_a_string_is_denied_not_crashing(join_rule: Any) -> None:
    request = {"initial_state": [state("m.room.join_rules", {"join_rule": join_rule})]}
    denial = check_room_creation(DEFAULT, request)
    assert denial is not None
    assert denial.rule == "rooms.join_rules"
    assert check_event(DEFAULT, "m.room.join_rules", "", {"join_rule": join_rule}) == denial


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
