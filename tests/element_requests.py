"""The /createRoom bodies Element Web 1.12.7 sends, as its bundle builds them.

Read from ``src/createRoom.ts`` (``createRoom``), ``CreateRoomDialog.tsx``
(``roomCreateOptions``), ``utils/direct-messages.ts`` (the DM started from
"Start chat"), ``SpaceCreateMenu.tsx`` (``createSpace``) and ``SpaceRoomView.tsx``
(the first rooms of a new space) in element-web-1.12.7.tar.gz. What all of
them share (``createRoom`` in createRoom.ts):

- ``preset`` is ``trusted_private_chat`` for a DM with one user, else
  ``private_chat`` unless the caller set one; ``visibility`` ``private``
  unless the caller set one;
- ``guestAccess`` defaults to true, so ``initial_state`` gets
  ``m.room.guest_access: can_join`` (only the "Public room" option turns it off);
- ``encryption`` (the dialog's toggle; for a DM, whether every device of the
  peer has keys) adds ``m.room.encryption`` with Megolm;
- entries Element adds itself (join rules, history visibility, space parent)
  carry no ``state_key``.

Keys JSON.stringify drops (``undefined``) are left out here too.
"""

from __future__ import annotations

from typing import Any

MEGOLM = "m.megolm.v1.aes-sha2"
GUEST_CAN_JOIN = {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
#: createRoom.ts: power levels of video and call rooms (``DEFAULT_EVENT_POWER_LEVELS``)
DEFAULT_EVENT_POWER_LEVELS = {
    "m.room.name": 50,
    "m.room.avatar": 50,
    "m.room.power_levels": 100,
    "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50,
    "m.room.tombstone": 100,
    "m.room.server_acl": 100,
    "m.room.encryption": 100,
}


def new_room(name: str, *, encrypted: bool = True, topic: str | None = None) -> dict[str, Any]:
    """ "New room", the dialog's default "Private room (invite only)"."""
    body: dict[str, Any] = {
        "preset": "private_chat",
        "visibility": "private",
        "initial_state": [GUEST_CAN_JOIN, *([ENCRYPTION] if encrypted else [])],
        "name": name,
    }
    if topic:
        body["topic"] = topic
    return body


def public_room(name: str, alias_localpart: str) -> dict[str, Any]:
    """ "New room" with "Public room (anyone)": guest access off, no encryption
    toggle, an address in the room directory."""
    return {
        "visibility": "public",
        "preset": "public_chat",
        "room_alias_name": alias_localpart,
        "initial_state": [],
        "name": name,
    }


def knock_room(name: str, *, listed: bool = False) -> dict[str, Any]:
    """ "Ask to join" (labs ``feature_ask_to_join``), optionally listed in the directory."""
    return {
        "visibility": "public" if listed else "private",
        "preset": "private_chat",
        "initial_state": [
            GUEST_CAN_JOIN,
            ENCRYPTION,
            {"type": "m.room.join_rules", "content": {"join_rule": "knock"}},
        ],
        "name": name,
    }


def direct_chat(peer: str, *, encrypted: bool = True) -> dict[str, Any]:
    """ "Start chat" with one user (direct-messages.ts: ``dmUserId``)."""
    return {
        "preset": "trusted_private_chat",
        "visibility": "private",
        "invite": [peer],
        "is_direct": True,
        "initial_state": [GUEST_CAN_JOIN, *([ENCRYPTION] if encrypted else [])],
    }


def group_chat(peers: list[str]) -> dict[str, Any]:
    """ "Start chat" with several users: no ``dmUserId``, so a private chat with invites."""
    return {
        "invite": list(peers),
        "invite_3pid": [],
        "preset": "private_chat",
        "visibility": "private",
        "initial_state": [GUEST_CAN_JOIN, ENCRYPTION],
    }


def video_room(name: str) -> dict[str, Any]:
    """ "New video room" (labs ``feature_video_rooms``; Jitsi-based ``io.element.video``)."""
    return {
        "preset": "private_chat",
        "visibility": "private",
        "creation_content": {"type": "io.element.video"},
        "power_level_content_override": {
            "events": {
                **DEFAULT_EVENT_POWER_LEVELS,
                "io.element.video.member": 0,
                "im.vector.modular.widgets": 100,
            }
        },
        "initial_state": [GUEST_CAN_JOIN, ENCRYPTION],
        "name": name,
    }


def call_room(name: str) -> dict[str, Any]:
    """A video room on Element Call (``org.matrix.msc3417.call``)."""
    return {
        "preset": "private_chat",
        "visibility": "private",
        "creation_content": {"type": "org.matrix.msc3417.call"},
        "power_level_content_override": {
            "events": {
                **DEFAULT_EVENT_POWER_LEVELS,
                "org.matrix.msc3401.call.member": 0,
                "im.vector.modular.widgets": 100,
            }
        },
        "initial_state": [GUEST_CAN_JOIN, ENCRYPTION],
        "name": name,
    }


def private_space(name: str) -> dict[str, Any]:
    """ "Create a space", private: timeline closed to all but admins, history for invitees."""
    return {
        "name": name,
        "preset": "private_chat",
        "visibility": "private",
        "power_level_content_override": {"events_default": 100, "invite": 50},
        "creation_content": {"type": "m.space"},
        "initial_state": [
            GUEST_CAN_JOIN,
            {"type": "m.room.history_visibility", "content": {"history_visibility": "invited"}},
        ],
    }


def public_space(name: str, alias_localpart: str) -> dict[str, Any]:
    """ "Create a space", public: listed, world-readable history."""
    return {
        "name": name,
        "preset": "public_chat",
        "visibility": "public",
        "power_level_content_override": {"events_default": 100, "invite": 0},
        "room_alias_name": alias_localpart,
        "creation_content": {"type": "m.space"},
        "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}},
        ],
    }


def room_in_space(name: str, space_id: str, server_name: str, *, encrypted: bool = True) -> dict[str, Any]:
    """ "Add room" > "New room" in a space: the dialog's default join rule there is
    "Space members" (restricted to the space), and the room names its parent."""
    return {
        "preset": "private_chat",
        "visibility": "private",
        "initial_state": [
            GUEST_CAN_JOIN,
            *([ENCRYPTION] if encrypted else []),
            {
                "type": "m.space.parent",
                "content": {"via": [server_name], "canonical": True},
                "state_key": space_id,
            },
            {
                "type": "m.room.join_rules",
                "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space_id}],
                },
            },
        ],
        "name": name,
    }


def first_space_room(name: str, space_id: str, server_name: str) -> dict[str, Any]:
    """The rooms a new private space offers to create ("General", "Random"):
    encryption off, restricted to the space."""
    return room_in_space(name, space_id, server_name, encrypted=False)
