"""The service users the policy seats in every room (the retention system user, the
auditor bot), as pure functions: their place in a new room's power levels, the
changes that would take it from them, and which of several auditor bots (shards
of one archive) a room gets.

Every listed auditor bot is in a new room's power levels (they are decided before
the room has an ID); only the one ``auditor_for`` picks is invited.

They hold ``SYSTEM_POWER``: the system user redacts expired content with it, the
auditor bot redacts refused attachments. The rule ID of a refusal stays
``retention.system_user_power``, as the decision log has always named it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..decisions import Denial

POWER_LEVELS = "m.room.power_levels"
#: the seated users' power level: enough to redact anyone's events, and equal
#: to a creator's in room versions before 12, so a creator cannot demote them
SYSTEM_POWER = 100


#: the create event's note of the auditor bot its creation request invited (an auditor's
#: direct chat with one of the bots): that bot is the room's, no other is seated, or the
#: direct chat would have a second reader and stop being the auditor's command room.
#: Written by the module only (``note_invited_auditor``), never taken from a client.
INVITED_AUDITOR = "police_policy.invited_auditor"


def note_invited_auditor(
    creation_content: Mapping[str, Any], invite: Any, bots: Sequence[str]
) -> dict[str, Any]:
    """``creation_content`` with ``INVITED_AUDITOR`` set to the first bot ``invite``
    names, or removed (a client's own value never reaches the create event)."""
    content = {key: value for key, value in creation_content.items() if key != INVITED_AUDITOR}
    invited = [user for user in invite if user in bots] if isinstance(invite, list) else []
    if invited:
        content[INVITED_AUDITOR] = invited[0]
    return content


def auditor_to_seat(room_id: str, create_content: Mapping[str, Any], bots: Sequence[str]) -> str | None:
    """The auditor bot a new room gets: the one its creation request invited, or
    ``auditor_for``; None without auditor bots."""
    if not bots:
        return None
    invited = create_content.get(INVITED_AUDITOR)
    return invited if invited in bots else auditor_for(room_id, bots)


def auditor_for(room_id: str, bots: Sequence[str]) -> str:
    """The one auditor bot seated in ``room_id``: rendezvous hashing, so the rule
    needs no stored table, every process picks the same bot, and a bot added to
    the list would take only its share of rooms (new rooms only: a room keeps
    the bot seated at its creation)."""
    if not bots:
        raise ValueError("no auditor bot to seat")
    return max(bots, key=lambda bot: hashlib.sha256(f"{bot}\n{room_id}".encode()).digest())


def power_override(
    request: Mapping[str, Any], creator: str, seated: Sequence[str], creator_listed: bool
) -> dict[str, Any]:
    """``power_level_content_override`` for a creation request: the users the
    policy seats in every room (the system user, the auditor bot) at
    SYSTEM_POWER. Synapse replaces the default ``users`` map with the
    override's, so the creator is kept in it where the room version lists
    creators there (``creator_listed``, before version 12)."""
    return seat_in_power_levels(
        request.get("power_level_content_override") or {}, creator, seated, creator_listed
    )


def seat_in_power_levels(
    levels: Any, creator: str, seated: Sequence[str], creator_listed: bool
) -> dict[str, Any]:
    """Power levels content with the seated users at SYSTEM_POWER (and the
    creator at 100 where it is listed and the content leaves it out). Also for
    an ``m.room.power_levels`` entry of ``initial_state``: Synapse then ignores
    ``power_level_content_override`` and takes that entry as it is."""
    content = dict(levels) if isinstance(levels, Mapping) else {}
    users = content.get("users")
    users = dict(users) if isinstance(users, Mapping) else {}
    if creator_listed:
        users.setdefault(creator, 100)
    for user in seated:
        users[user] = SYSTEM_POWER
    content["users"] = users
    return content


def seat_in_initial_state(
    initial_state: Sequence[Any], creator: str, seated: Sequence[str], creator_listed: bool
) -> tuple[list[Any], Denial | None]:
    """A creation request's ``initial_state`` with the seated users put into
    its room-level ``m.room.power_levels`` entries (Synapse takes such an entry
    as it is and ignores ``power_level_content_override``), and the denial when
    redacting would still need more power than they hold."""
    result = list(initial_state)
    for index, entry in enumerate(result):
        if (
            isinstance(entry, Mapping)
            and entry.get("type") == POWER_LEVELS
            and entry.get("state_key", "") == ""
        ):
            content = seat_in_power_levels(entry.get("content"), creator, seated, creator_listed)
            result[index] = {**entry, "content": content}
            denial = check_seated_power(content, seated)
            if denial is not None:
                return result, denial
    return result, None


def check_seated_power(content: Mapping[str, Any], seated: Sequence[str]) -> Denial | None:
    """``check_power_levels`` for each user the policy seats."""
    for user in seated:
        denial = check_power_levels(content, user)
        if denial is not None:
            return denial
    return None


def _level(value: Any, default: int) -> int | None:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def check_power_levels(content: Mapping[str, Any], system_user: str) -> Denial | None:
    """The system user keeps its power to redact anyone's events: its own
    level, and the levels redacting needs (room creators of version 12 could
    otherwise raise those above it)."""
    users = content.get("users")
    level = _level(users.get(system_user) if isinstance(users, Mapping) else None, -1)
    events = content.get("events")
    events = events if isinstance(events, Mapping) else {}
    needed = (
        _level(content.get("redact"), 50),
        _level(events.get("m.room.redaction"), _level(content.get("events_default"), 0) or 0),
    )
    if (
        level is not None
        and level >= SYSTEM_POWER
        and all(need is not None and need <= SYSTEM_POWER for need in needed)
    ):
        return None
    return Denial(
        rule="retention.system_user_power",
        reason=f"{system_user} must keep power level {SYSTEM_POWER}, and redacting must not need more: "
        "the policy seats it in every room (it removes expired content, or archives for the auditors)",
    )


def check_system_user_removal(membership: str, system_user: str) -> Denial | None:
    """Others may invite the system user, never kick or ban it."""
    if membership not in ("leave", "ban"):
        return None
    return Denial(
        rule="retention.system_user_power",
        reason=f"{system_user} cannot be removed from a room: the policy seats it in every room "
        "(it removes expired content, or archives for the auditors)",
    )
