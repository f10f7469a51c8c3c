"""Room policy: every room is end-to-end encrypted, invite-only, closed to
guests and never world-readable.

Pure functions over plain data (the creation request, an event's type, state
key and content) so each rule can be read and tested without a homeserver.
The callbacks in ``module.py`` only feed them and act on the answer.

Room creation is lenient where that is safe: stock clients ask for settings the
policy refuses (Element sends ``guest_access: can_join`` with every room and
direct chat, and ``join_rule: restricted`` for a room in a space), so the
creation request gets the policy's value instead and the change is logged
(``Rewrite``). Only a room asked to be public is refused. Changes to an
existing room's settings stay refused (``check_event``).

Every new room also names the service users the policy seats in it
(``io.element.functional_members``): Element leaves them out of the room's name,
its avatar and direct-chat detection. That list may name service users only, so
nobody can use it to hide a person (``check_functional_members``).

Clear text is refused by allow-list (``check_clear_text``): the server stores
whatever is not encrypted, so only event types known to carry no free text
(or, for state, which cannot be encrypted, the types clients need) may be sent
in clear; the operator extends the lists in the config.

Power levels at creation go through the rule later changes go through
(``seating.check_power_levels``), with the service users merged into them
(``seat_service_users``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs

from ..config import MEGOLM, RoomsConfig
from ..decisions import Denial, quote
from ..retention import rules as retention
from . import seating

CREATE = "m.room.create"
MEMBER = "m.room.member"
ENCRYPTED = "m.room.encrypted"
REDACTION = "m.room.redaction"
ENCRYPTION = "m.room.encryption"
JOIN_RULES = "m.room.join_rules"
GUEST_ACCESS = "m.room.guest_access"
HISTORY_VISIBILITY = "m.room.history_visibility"
POWER_LEVELS = "m.room.power_levels"
#: Element's list of a room's service members (bots, bridges): left out of the room's
#: name, avatar and direct-chat detection, still shown in the member list
FUNCTIONAL_MEMBERS = "io.element.functional_members"
TRUSTED_PRIVATE_CHAT = "trusted_private_chat"

#: Non-state events allowed in clear whatever ``rooms.clear_event_types`` says:
#: ciphertext, and redactions (the retention sweep and the auditor bot send them;
#: the server must read which event they remove).
MODULE_CLEAR_EVENT_TYPES = frozenset({ENCRYPTED, REDACTION})
#: State allowed to carry content whatever ``rooms.clear_state_types`` says: what
#: the module sets in every room or governs with its own rules.
MODULE_CLEAR_STATE_TYPES = frozenset(
    {
        CREATE,
        MEMBER,
        POWER_LEVELS,
        JOIN_RULES,
        HISTORY_VISIBILITY,
        GUEST_ACCESS,
        ENCRYPTION,
        retention.RETENTION,
        FUNCTIONAL_MEMBERS,
    }
)
#: Matrix state a room has once (state key ""): under another state key no
#: client reads it, so its content would be text stored for nobody.
ROOM_LEVEL_STATE_TYPES = frozenset(
    {
        CREATE,
        POWER_LEVELS,
        JOIN_RULES,
        HISTORY_VISIBILITY,
        GUEST_ACCESS,
        ENCRYPTION,
        retention.RETENTION,
        "m.room.name",
        "m.room.topic",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.pinned_events",
        "m.room.server_acl",
        "m.room.tombstone",
    }
)
#: the state events Synapse makes from these createRoom fields
_CREATION_FIELDS = {
    "name": "m.room.name",
    "topic": "m.room.topic",
    "room_alias_name": "m.room.canonical_alias",
}


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
    config: RoomsConfig,
    event_type: str,
    state_key: str | None,
    content: Mapping[str, Any],
    service_users: Collection[str] = frozenset(),
) -> Denial | None:
    """The rule for any event a local user sends into an existing room;
    ``service_users`` are the users ``io.element.functional_members`` may list."""
    if state_key is not None and event_type == FUNCTIONAL_MEMBERS:
        return check_functional_members(service_users, content)
    denial = check_clear_text(config, event_type, state_key, content)
    if denial is not None or state_key != "":
        return denial
    return check_state(config, event_type, content)


def check_clear_text(
    config: RoomsConfig, event_type: str, state_key: str | None, content: Mapping[str, Any]
) -> Denial | None:
    """Whatever is not encrypted is stored as it is, so an event in clear must
    be of a type known to carry no free text. Non-state events: ciphertext,
    redactions and ``rooms.clear_event_types``. State cannot be encrypted: it
    may carry content if its type is the module's own or in
    ``rooms.clear_state_types`` (a room-level type under state key "" only);
    empty content (how clients remove state) is always allowed."""
    if not config.refuse_unencrypted_messages:
        return None
    if state_key is None:
        if event_type in MODULE_CLEAR_EVENT_TYPES or event_type in config.clear_event_types:
            return None
        return Denial(
            "rooms.unencrypted_message",
            f"Unencrypted {quote(event_type)} events are not allowed: rooms on this server are "
            "end-to-end encrypted, so the client must send m.room.encrypted (types allowed in clear: "
            "rooms.clear_event_types).",
        )
    if not content:
        return None
    if event_type not in MODULE_CLEAR_STATE_TYPES and event_type not in config.clear_state_types:
        return Denial(
            "rooms.clear_state",
            f"State events of type {quote(event_type)} with content are not allowed: state cannot be "
            "end-to-end encrypted, and this type is not one the server allows in clear "
            "(rooms.clear_state_types).",
        )
    if event_type in ROOM_LEVEL_STATE_TYPES and state_key != "":
        return Denial(
            "rooms.clear_state",
            f"{event_type} in clear text takes the state key '', not {quote(state_key)}: under another "
            "key no client reads it.",
        )
    return None


def _creation_state(request: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(type, state key, content) of the state a creation request asks for:
    its well-formed ``initial_state`` entries and what Synapse makes of its
    ``name``, ``topic`` and ``room_alias_name``."""
    initial_state = request.get("initial_state")
    entries = initial_state if isinstance(initial_state, list) else []
    wanted = [
        (entry["type"], entry.get("state_key", ""), entry["content"])
        for entry in entries
        if isinstance(entry, Mapping)
        and isinstance(entry.get("type"), str)
        and isinstance(entry.get("state_key", ""), str)
        and isinstance(entry.get("content"), Mapping)
    ]
    wanted += [
        (event_type, "", {field: request[field]})
        for field, event_type in _CREATION_FIELDS.items()
        if field in request
    ]
    return wanted


def check_functional_members(service_users: Collection[str], content: Mapping[str, Any]) -> Denial | None:
    """An ``io.element.functional_members`` event (any state key: Element reads the
    first it finds) may list only the server's service users. Element leaves listed
    members out of the room's name and treats a room as a direct chat when two
    unlisted members remain: a member who listed themselves or a colleague would
    read as absent to everyone else in the room."""
    listed = content.get("service_members", [])
    if not isinstance(listed, list) or not all(isinstance(user, str) for user in listed):
        return Denial(
            "rooms.functional_members",
            f"{FUNCTIONAL_MEMBERS}: service_members must be a list of user IDs, got {quote(listed)}.",
        )
    others = [user for user in listed if user not in service_users]
    if not others:
        return None
    return Denial(
        "rooms.functional_members",
        f"{FUNCTIONAL_MEMBERS} may list only this server's service users, not {quote(others[0])}: "
        "Element leaves listed members out of the room's name, so a person listed there reads as absent.",
    )


def with_functional_members(
    initial_state: Sequence[Any], service_users: Sequence[str]
) -> tuple[list[Any], list[Rewrite]]:
    """``initial_state`` with the module's ``io.element.functional_members`` (the
    service users) in place of any the request carried (with any state key); an
    entry that named someone else is logged as a ``Rewrite``."""
    kept: list[Any] = []
    rewrites: list[Rewrite] = []
    for entry in initial_state:
        if isinstance(entry, Mapping) and entry.get("type") == FUNCTIONAL_MEMBERS:
            content = entry.get("content")
            denial = check_functional_members(service_users, content if isinstance(content, Mapping) else {})
            if denial is not None:
                rewrites.append(
                    Rewrite(denial.rule, f"{denial.reason} The room lists the service users instead.")
                )
            continue
        kept.append(entry)
    listed = {
        "type": FUNCTIONAL_MEMBERS,
        "state_key": "",
        "content": {"service_members": list(service_users)},
    }
    return [*kept, listed], rewrites


def policy_state(config: RoomsConfig) -> dict[str, tuple[str, str]]:
    """The room-level settings the policy governs: event type -> (content key,
    the value a new room gets when its request leaves it out or breaks the rule)."""
    return {
        ENCRYPTION: ("algorithm", MEGOLM),
        JOIN_RULES: ("join_rule", "invite"),
        GUEST_ACCESS: ("guest_access", "forbidden"),
        HISTORY_VISIBILITY: ("history_visibility", config.default_history_visibility),
    }


@attrs.frozen
class Rewrite:
    """A setting of a creation request the module replaced by the policy's
    value instead of refusing the request. ``reason`` says what was asked and
    what the room gets; it goes to the decision log, not to the client."""

    rule: str
    reason: str


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


def malformed_request(request: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a /createRoom request where Synapse would
    answer with a 500 or the module could not read it (a 400 names the field)."""
    problem = malformed_initial_state(request)
    if problem is not None:
        return problem
    if "preset" in request and not isinstance(request["preset"], str):
        return "preset: expected a string such as 'private_chat'"
    if "visibility" in request and not isinstance(request["visibility"], str):
        return "visibility: expected 'private'"
    if "room_version" in request and not isinstance(request["room_version"], str):
        return "room_version: expected a string such as '10'"
    if "creation_content" in request and not isinstance(request["creation_content"], Mapping):
        return "creation_content: expected an object"
    override = request.get("power_level_content_override")
    if override is not None:
        if not isinstance(override, Mapping):
            return "power_level_content_override: expected an object"
        if not _users_map_ok(override):
            return "power_level_content_override.users: expected an object of user IDs to power levels"
    for index, event in enumerate(request.get("initial_state", [])):
        if (
            event["type"] == POWER_LEVELS
            and event.get("state_key", "") == ""
            and not _users_map_ok(event["content"])
        ):
            return f"initial_state[{index}].content.users: expected an object of user IDs to power levels"
    contents = [
        (f"initial_state[{i}].content", e["content"]) for i, e in enumerate(request.get("initial_state", []))
    ]
    contents += [
        (key, request[key]) for key in ("power_level_content_override", "creation_content") if key in request
    ]
    for path, content in contents:
        problem = _not_canonical(content, path)
        if problem is not None:
            return problem
    return None


#: canonical JSON's integer range (room versions 6 and later enforce it; in
#: older ones a larger number stops Synapse's push rules with a 500)
_CANONICAL_INT = 2**53 - 1
#: how much of a deeply nested path an error names
_PATH_LIMIT = 200


def _not_canonical(value: Any, path: str) -> str | None:
    """Where a value that becomes event content has a number canonical JSON
    does not allow (a float, or an integer out of range)."""
    pending = [(path, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        where = where if len(where) <= _PATH_LIMIT else where[: _PATH_LIMIT - 3] + "..."
        if isinstance(item, int):
            if abs(item) > _CANONICAL_INT:
                return f"{where}: expected an integer between -(2**53 - 1) and 2**53 - 1, got {quote(item)}"
        elif isinstance(item, float):
            return f"{where}: expected an integer, got {quote(item)} (event content allows no fractions)"
        elif isinstance(item, Mapping):
            pending.extend((f"{where}[{quote(key)}]", child) for key, child in item.items())
        elif isinstance(item, list):
            pending.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
    return None


def _users_map_ok(levels: Mapping[str, Any]) -> bool:
    return levels.get("users") is None or isinstance(levels["users"], Mapping)


def check_room_creation(config: RoomsConfig, request: Mapping[str, Any]) -> Denial | None:
    """What no rewrite can make safe in a /createRoom request: a room asked to
    be public, or state in clear text (``check_clear_text``). A public room
    would be listed in the room directory and open to anyone who finds it; an
    invite-only room in its place is not what the creator chose, so the
    request is refused rather than quietly changed. (Synapse runs no spam
    check on the events of a creation request, so the clear-text rule is
    applied here.)"""
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
    for event_type, state_key, content in _creation_state(request):
        denial = check_clear_text(config, event_type, state_key, content)
        if denial is not None:
            return denial
    return None


def secure_initial_state(config: RoomsConfig, request: Mapping[str, Any]) -> tuple[list[Any], list[Rewrite]]:
    """The ``initial_state`` a creation request gets, and what was changed in it.

    Every room-level entry the room rules would refuse (``check_state``) gets
    the policy's value in its place: guest access ``forbidden``, the configured
    history visibility, join rule ``invite``, Megolm encryption. Each such
    change is a ``Rewrite``. Then what the request left out is added
    (``missing_initial_state``): Synapse's presets would otherwise give guests
    ``can_join`` and the preset's join rule. Entries the rules do not govern
    (other types, other state keys) are kept as they are and in order.
    """
    initial_state = request.get("initial_state")
    entries = initial_state if isinstance(initial_state, list) else []
    wanted = policy_state(config)
    secured: list[Any] = []
    rewrites: list[Rewrite] = []
    for entry in entries:
        if _is_room_level(entry):
            content = entry.get("content")
            denial = check_state(config, entry["type"], content if isinstance(content, Mapping) else {})
            if denial is not None:
                key, value = wanted[entry["type"]]
                entry = {**entry, "content": {key: value}}
                rewrites.append(
                    Rewrite(denial.rule, f"{denial.reason} The room gets {quote(value)} instead.")
                )
        secured.append(entry)
    return [*secured, *missing_initial_state(config, {"initial_state": secured})], rewrites


def missing_initial_state(config: RoomsConfig, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """State events the module adds to a creation request that left them out.

    Synapse's private presets would otherwise give guests ``can_join`` and
    leave encryption to the client; an explicit initial state wins over them.
    """
    present = {event["type"] for event in _room_level_initial_state(request)}
    return [
        {"type": event_type, "state_key": "", "content": {key: value}}
        for event_type, (key, value) in policy_state(config).items()
        if event_type not in present
    ]


def check_directory_publication() -> Denial:
    """Publishing a room to the room directory is never allowed."""
    return Denial(
        "rooms.directory",
        "Publishing rooms to the room directory is not allowed on this server.",
    )


def _is_room_level(event: Any) -> bool:
    """A state event with state key "" (Synapse's default when it is left out)."""
    return (
        isinstance(event, Mapping) and isinstance(event.get("type"), str) and event.get("state_key", "") == ""
    )


def _room_level_initial_state(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Well-formed room-level entries of ``initial_state``; Synapse rejects the rest itself."""
    initial_state = request.get("initial_state")
    if not isinstance(initial_state, list):
        return []
    return [event for event in initial_state if _is_room_level(event)]


# --- power levels at creation ---------------------------------------------------


def _creators(request: Mapping[str, Any], creator: str) -> frozenset[str]:
    """Who a creation request makes a creator of the room, where creators hold
    unlimited power and are kept out of the power levels (room version 12 on):
    the creator, ``creation_content.additional_creators`` and, as Synapse adds
    them, the invitees of a trusted private chat (an auditor's direct chat
    with the auditor bot makes the bot a creator)."""
    users = {creator}
    content = request.get("creation_content")
    additional = content.get("additional_creators") if isinstance(content, Mapping) else None
    if isinstance(additional, list):
        users.update(user for user in additional if isinstance(user, str))
    invite = request.get("invite")
    if request.get("preset") == TRUSTED_PRIVATE_CHAT and isinstance(invite, list):
        users.update(user for user in invite if isinstance(user, str))
    return frozenset(users)


def seat_service_users(
    request: Mapping[str, Any],
    initial_state: Sequence[Any],
    creator: str,
    seated: Sequence[str],
    creator_listed: bool,
) -> tuple[list[Any], dict[str, Any], Denial | None]:
    """The power levels a creation request gets: ``initial_state`` (whose
    ``m.room.power_levels`` Synapse takes as it is, ignoring the override) and
    ``power_level_content_override``, each with the service users merged in at
    ``seating.SYSTEM_POWER``, and the denial when a request cannot be made
    safe. Both go through the rule later changes go through
    (``seating.check_power_levels``: the service users keep power 100 and
    redacting needs no more), plus what only creation needs: where creators
    are listed (before room version 12), the creator must be able to invite,
    since the creator invites the service users once the room exists. A
    service user the request makes a creator (version 12 on) holds unlimited
    power and stays out of the power levels, as Synapse requires."""
    members = [user for user in seated if creator_listed or user not in _creators(request, creator)]
    secured, denial = seating.seat_in_initial_state(initial_state, creator, members, creator_listed)
    override = seating.power_override(
        _with_synapse_users(request, creator, creator_listed), creator, members, creator_listed=creator_listed
    )
    denial = denial or seating.check_seated_power(override, members)
    if denial is None and creator_listed and members:
        levels = [override, *(entry["content"] for entry in secured if _is_power_levels(entry))]
        denial = next(filter(None, (check_creator_invites(content, creator) for content in levels)), None)
    return secured, override, denial


def check_room_finished(event_type: str, has_power_levels: bool) -> Denial | None:
    """Nothing but membership goes into a room without power levels: Synapse
    keeps the create event and the creator's join of a creation it refused
    halfway (a creator without the power to send the initial state, content
    it finds invalid), and such a room has no retention, no service users and
    no power levels to guard. Every room Synapse finished has them (its
    creation sends them first). The module asks only about events clients
    send, never about those of a creation."""
    if has_power_levels or event_type in (CREATE, MEMBER):
        return None
    return Denial(
        "rooms.unfinished_room",
        "This room's creation did not finish (it has no power levels, so the policy could not seat "
        "its service users): nothing can be sent into it; create a new room.",
    )


def check_creator_invites(levels: Mapping[str, Any], creator: str) -> Denial | None:
    """Where creators are listed in the power levels, the creator's level must
    reach the invite level: the creator invites the service users, and a room
    they cannot enter is a room the retention sweep cannot redact."""
    users = levels.get("users")
    level = users.get(creator) if isinstance(users, Mapping) else None
    invite = levels.get("invite", 0)
    if _is_int(level) and _is_int(invite) and level >= invite:
        return None
    return Denial(
        "retention.system_user_power",
        f"The room's creator must be able to invite (invite level {quote(invite)}, the creator's level "
        f"{quote(level)}): the creator invites the service users the policy seats in every room "
        "(they remove expired content, or archive for the auditors).",
    )


def _with_synapse_users(request: Mapping[str, Any], creator: str, creator_listed: bool) -> Mapping[str, Any]:
    """The request with Synapse's default ``users`` spelled out in its override
    where the override names none: an override's ``users`` replaces Synapse's
    whole map, which lists the invitees of a trusted private chat at 100 in
    room versions before 12."""
    override = request.get("power_level_content_override")
    override = override if isinstance(override, Mapping) else {}
    invite = request.get("invite")
    if not creator_listed or "users" in override or request.get("preset") != TRUSTED_PRIVATE_CHAT:
        return request
    invitees = {user: 100 for user in invite if isinstance(user, str)} if isinstance(invite, list) else {}
    return {**request, "power_level_content_override": {**override, "users": {creator: 100, **invitees}}}


def _is_power_levels(entry: Any) -> bool:
    return _is_room_level(entry) and entry.get("type") == POWER_LEVELS


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
