"""Closed-federation rules: pure functions over server names."""

from __future__ import annotations

import pytest

from synapse_police_policy.federation import rules as federation

ALLOWED = federation.allowed_set("Ours.Example", {"polizei-by.example", "peer.example:8448"})


@pytest.mark.parametrize(
    ("user_id", "server"),
    [
        ("@a:polizei-by.example", "polizei-by.example"),
        ("@a:Polizei-BY.Example:8448", "polizei-by.example:8448"),
        ("@a:127.0.0.2:4711", "127.0.0.2:4711"),
        ("@a:[::1]:8448", "[::1]:8448"),
    ],
)
def test_server_of_normalises_the_host(user_id: str, server: str) -> None:
    assert federation.server_of(user_id) == server


def test_own_server_is_always_allowed() -> None:
    assert "ours.example" in ALLOWED
    assert federation.check_invite_target(ALLOWED, "@colleague:OURS.example") is None


@pytest.mark.parametrize(
    "user_id",
    ["@a:polizei-by.example", "@a:POLIZEI-BY.example", "@a:peer.example:8448", "@a:ours.example"],
)
def test_allowed_servers_pass_every_check(user_id: str) -> None:
    assert federation.check_invite_target(ALLOWED, user_id) is None
    assert federation.check_remote_inviter(ALLOWED, user_id) is None
    assert federation.check_remote_joiner(ALLOWED, user_id) is None
    assert federation.check_remote_sender(ALLOWED, user_id) is None
    assert federation.check_room_members(ALLOWED, [user_id, "@b:ours.example"]) is None


@pytest.mark.parametrize(
    ("user_id", "server"),
    [
        ("@a:evil.example", "evil.example"),
        ("@a:polizei-by.example:8448", "polizei-by.example:8448"),  # the port is part of the name
        ("@a:peer.example", "peer.example"),  # and so is its absence
        ("@a:polizei-by.example.evil.example", "polizei-by.example.evil.example"),
    ],
)
def test_other_servers_are_refused_and_named(user_id: str, server: str) -> None:
    checks = {
        "federation.invite": [
            federation.check_invite_target(ALLOWED, user_id),
            federation.check_remote_inviter(ALLOWED, user_id),
        ],
        "federation.join": [
            federation.check_remote_joiner(ALLOWED, user_id),
            federation.check_room_members(ALLOWED, ["@b:ours.example", user_id]),
        ],
        "federation.event": [federation.check_remote_sender(ALLOWED, user_id)],
        "federation.media": [federation.check_media_origin(ALLOWED, server)],
    }
    for rule, denials in checks.items():
        for denial in denials:
            assert denial is not None
            assert denial.rule == rule
            assert f"server '{server}' is not an allowed police homeserver" in denial.reason


def test_room_members_name_the_first_foreign_server() -> None:
    denial = federation.check_room_members(
        ALLOWED, ["@x:zeta.example", "@y:alpha.example", "@z:ours.example"]
    )
    assert denial is not None and "'alpha.example'" in denial.reason


def test_media_origin_compares_case_insensitively() -> None:
    assert federation.check_media_origin(ALLOWED, "Polizei-BY.example") is None


def test_uninvited_join_into_unknown_room_is_refused() -> None:
    denial = federation.check_uninvited_unknown_room()
    assert denial.rule == "federation.join"
    assert "without an invite" in denial.reason


def test_knocks_on_rooms_this_server_is_not_in_are_refused() -> None:
    denial = federation.check_knock_on_unknown_room()
    assert denial.rule == "federation.join"
    assert "Ask a member to invite you" in denial.reason


@pytest.mark.parametrize(
    "server", ["polizei-by.example", "POLIZEI-BY.example", "peer.example:8448", "ours.example"]
)
def test_allowed_servers_may_ask_and_be_asked(server: str) -> None:
    assert federation.check_origin(ALLOWED, server) is None
    assert federation.check_destination(ALLOWED, server) is None


@pytest.mark.parametrize(
    "server",
    ["evil.example", "peer.example", "peer.example:8449", "polizei-by.example.evil", "", "ours.example:1"],
)
def test_any_other_server_is_refused_both_ways(server: str) -> None:
    inbound = federation.check_origin(ALLOWED, server)
    outbound = federation.check_destination(ALLOWED, server)
    assert inbound is not None and inbound.rule == "federation.origin"
    assert outbound is not None and outbound.rule == "federation.destination"
    assert inbound.http_status == 403
