"""Room policy: every room is end-to-end encrypted, invite-only, closed to
guests and never world-readable.

Pure functions over plain data (the creation request, an event's type, state
key and content) so each rule can be read and tested without a homeserver.
The callbacks in ``module.py`` only feed them and act on the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import MEGOLM, RoomsConfig
from .decisions import Denial, quote

ENCRYPTION = "m.room.encryption"
JOIN_RULES = "m.room.join_rules"
GUEST_ACCESS = "m.room.guest_access"
HISTORY_VISIBILITY = "m.room.history_visibility"

#: Event types whose content is what users write: they must travel encrypted.
#: (Reactions carry only an emoji key and stock clients send them in clear.)
CONTENT_EVENT_TYPES = frozenset(
    {
        "m.room.message",
        "m.sticker",
        "m.poll.start",
        "m.poll.response",
        "m.poll.end",
        "org.matrix.msc3381.poll.start",
        "org.matrix.msc3381.poll.response",
        "org.matrix.msc3381.poll.end",
    }
)


def _join_rule_denial(config: RoomsConfig, join_rule: Any) -> Denial | None:
    if isinstance(join_rule, str) and join_rule in config.allowed_join_rules:
        return None
    allowed = ", ".join(sorted(config.allowed_join_rules))
    return Denial(
        "rooms.join_rules",
        f"Join rule {quote(join_rule)} is not allowed: rooms on this server are "
        f"invite-only (allowed join rules: {allowed}).",
    )


def check_state(config: RoomsConfig, event_type: str, content: Mapping[str, Any]) -> Denial | None:
    """The rule for a room-level state event (state key "") a local user sends."""
    if event_type == JOIN_RULES:
        return _join_rule_denial(config, content.get("join_rule"))
    if event_type == GUEST_ACCESS and content.get("guest_access") == "can_join":
        return Denial(
            "rooms.guest_access",
            "Guest access 'can_join' is not allowed: rooms on this server are closed to guests.",
        )
    if event_type == HISTORY_VISIBILITY and content.get("history_visibility") == "world_readable":
        return Denial(
            "rooms.history_visibility",
            "History visibility 'world_readable' is not allowed: room history is for members only.",
        )
    if event_type == ENCRYPTION and content.get("algorithm") != MEGOLM:
        return Denial(
            "rooms.encryption",
            f"Encryption algorithm {quote(content.get('algorithm'))} is not allowed: every room on "
            f"this server stays end-to-end encrypted with {MEGOLM}.",
        )
    return None


def check_event(
    config: RoomsConfig, event_type: str, state_key: str | None, content: Mapping[str, Any]
) -> Denial | None:
    """The rule for any event a local user sends into an existing room."""
    if state_key is None:
        if config.refuse_unencrypted_messages and event_type in CONTENT_EVENT_TYPES:
            return Denial(
                "rooms.unencrypted_message",
                f"Unencrypted {event_type} events are not allowed: rooms on this server are "
                "end-to-end encrypted, so the client must send m.room.encrypted.",
            )
        return None
    if state_key == "":
        return check_state(config, event_type, content)
    return None


def malformed_initial_state(request: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of ``initial_state``, if anything (Synapse
    itself answers some malformed entries with a 500)."""
    initial_state = request.get("initial_state", [])
    if not isinstance(initial_state, list):
        return "initial_state: expected a list of state events"
    for index, event in enumerate(initial_state):
        if not isinstance(event, Mapping):
            return f"initial_state[{index}]: expected an object with type, state_key and content"
        if not isinstance(event.get("type"), str):
            return f"initial_state[{index}].type: expected a string"
        if not isinstance(event.get("state_key", ""), str):
            return f"initial_state[{index}].state_key: expected a string"
        if not isinstance(event.get("content"), Mapping):
            return f"initial_state[{index}].content: expected an object"
    return None


def check_room_creation(config: RoomsConfig, request: Mapping[str, Any]) -> Denial | None:
    """The rule for a /createRoom request, before the module completes it."""
    if request.get("visibility") == "public":
        return Denial(
            "rooms.public_room",
            "Public rooms are not allowed: rooms on this server cannot be listed in the "
            "room directory (use visibility 'private').",
        )
    if request.get("preset") == "public_chat":
        return Denial(
            "rooms.public_room",
            "Public rooms are not allowed: rooms on this server are invite-only "
            "(use preset 'private_chat' or 'trusted_private_chat').",
        )
    for event in _room_level_initial_state(request):
        content = event.get("content")
        denial = check_state(config, event["type"], content if isinstance(content, Mapping) else {})
        if denial is not None:
            return denial
    return None


def missing_initial_state(config: RoomsConfig, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """State events the module adds to a creation request that left them out.

    Synapse's private presets would otherwise give guests ``can_join`` and
    leave encryption to the client; an explicit initial state wins over them.
    """
    present = {event["type"] for event in _room_level_initial_state(request)}
    wanted = {
        ENCRYPTION: {"algorithm": MEGOLM},
        JOIN_RULES: {"join_rule": "invite"},
        GUEST_ACCESS: {"guest_access": "forbidden"},
        HISTORY_VISIBILITY: {"history_visibility": config.default_history_visibility},
    }
    return [
        {"type": event_type, "state_key": "", "content": content}
        for event_type, content in wanted.items()
        if event_type not in present
    ]


def check_directory_publication() -> Denial:
    """Publishing a room to the room directory is never allowed."""
    return Denial(
        "rooms.directory",
        "Publishing rooms to the room directory is not allowed on this server.",
    )


def _room_level_initial_state(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Well-formed room-level entries of ``initial_state``; Synapse rejects the rest itself."""
    initial_state = request.get("initial_state")
    if not isinstance(initial_state, list):
        return []
    return [
        event
        for event in initial_state
        if isinstance(event, Mapping)
        and isinstance(event.get("type"), str)
        and event.get("state_key", "") == ""
    ]
