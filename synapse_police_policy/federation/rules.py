"""Closed federation: our users talk to allow-listed police homeservers only.

Pure functions over server names. The allowlist is a frozenset of normalised
names (host lower-cased, port kept) and every check is one set lookup, because
some run on every inbound federated event and every federation request.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..decisions import Denial, quote


def server_of(user_id: str) -> str:
    """The normalised server name of a Matrix user ID ('@a:Host:8448' -> 'host:8448')."""
    return user_id.partition(":")[2].lower()


def allowed_set(own_server: str, allowed_servers: Iterable[str]) -> frozenset[str]:
    """The servers we may talk to: the configured ones and always our own."""
    return frozenset({own_server.lower(), *allowed_servers})


def _check(allowed: frozenset[str], server: str, rule: str, what: str) -> Denial | None:
    if server in allowed:
        return None
    return Denial(rule, f"{what}: server {quote(server)} is not an allowed police homeserver.")


def check_invite_target(allowed: frozenset[str], invitee: str) -> Denial | None:
    """A local user invites ``invitee``."""
    return _check(allowed, server_of(invitee), "federation.invite", f"Cannot invite {quote(invitee)}")


def check_remote_inviter(allowed: frozenset[str], inviter: str) -> Denial | None:
    """An invite arrives over federation from ``inviter``."""
    return _check(
        allowed, server_of(inviter), "federation.invite", f"Invites from {quote(inviter)} are refused"
    )


def check_room_members(allowed: frozenset[str], member_ids: Iterable[str]) -> Denial | None:
    """A local user joins a room whose current members are ``member_ids``."""
    foreign = sorted({server_of(user_id) for user_id in member_ids} - allowed)
    if not foreign:
        return None
    return _check(
        allowed, foreign[0], "federation.join", "Cannot join a room with members of a foreign server"
    )


def check_uninvited_unknown_room() -> Denial:
    """A local user joins, without an invite, a room this server is not in.

    Its members cannot be known before joining, so such joins are refused;
    invites reach our users only from allowed servers.
    """
    return Denial(
        "federation.join",
        "Cannot join a room this server is not part of without an invite: its members "
        "cannot be checked against the allowed police homeservers.",
    )


def check_knock_on_unknown_room() -> Denial:
    """A local user knocks on a room this server is not in. As with an uninvited
    join, the members cannot be known first, and the knock (with the user's
    name) would reach all of them."""
    return Denial(
        "federation.join",
        "Cannot knock on a room this server is not part of: its members cannot be checked "
        "against the allowed police homeservers. Ask a member to invite you instead.",
    )


def check_remote_joiner(allowed: frozenset[str], user_id: str) -> Denial | None:
    """A remote user asks to join (or knock on) a local room."""
    return _check(
        allowed, server_of(user_id), "federation.join", f"{quote(user_id)} cannot join rooms on this server"
    )


def check_remote_sender(allowed: frozenset[str], sender: str) -> Denial | None:
    """An event arrives over federation, directly or relayed by another server."""
    return _check(allowed, server_of(sender), "federation.event", "Event dropped")


def check_media_origin(allowed: frozenset[str], server_name: str) -> Denial | None:
    """Media of ``server_name`` is to be fetched or served."""
    return _check(allowed, server_name.lower(), "federation.media", "Media refused")


def check_origin(allowed: frozenset[str], origin: str) -> Denial | None:
    """A federation request arrives signed in the name of ``origin`` (checked
    before the signature, as Synapse checks its whitelist: a refused server
    costs no key lookup)."""
    return _check(allowed, origin.lower(), "federation.origin", "Federation request refused")


def check_destination(allowed: frozenset[str], destination: str) -> Denial | None:
    """Our server is about to send a federation request to ``destination``."""
    return _check(allowed, destination.lower(), "federation.destination", "Federation request not sent")
