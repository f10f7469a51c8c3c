"""``io.element.functional_members``: every new room lists the service users (Element leaves
them out of the room's name and direct-chat detection), and nobody can list a person."""

from __future__ import annotations

from typing import Any

import pytest

from synapse_police_policy.config import RoomsConfig
from synapse_police_policy.rooms.rules import (
    FUNCTIONAL_MEMBERS,
    check_event,
    check_functional_members,
    with_functional_members,
)

SERVICE = ("@policy:police.example", "@auditor:police.example", "@dispatch-bot:police.example")
OFFICER = "@officer:police.example"


def listing(users: Any, state_key: str = "") -> dict[str, Any]:
    return {"type": FUNCTIONAL_MEMBERS, "state_key": state_key, "content": {"service_members": users}}


@pytest.mark.parametrize(
    "content",
    [
        {"service_members": list(SERVICE)},
        {"service_members": [SERVICE[1]]},
        {"service_members": []},
        {},  # what a redaction leaves: Element then lists nobody
    ],
    ids=["all", "one", "empty", "redacted"],
)
def test_service_users_may_be_listed(content: dict[str, Any]) -> None:
    assert check_functional_members(SERVICE, content) is None


@pytest.mark.parametrize(
    ("users", "named"),
    [
        ([OFFICER], OFFICER),
        ([*SERVICE, OFFICER], OFFICER),
        (["@policy:peer.example"], "@policy:peer.example"),
    ],
    ids=["a_person", "a_person_among_service_users", "a_foreign_user"],
)
def test_anyone_else_is_refused_naming_them(users: list[str], named: str) -> None:
    denial = check_functional_members(SERVICE, {"service_members": users})
    assert denial is not None and denial.rule == "rooms.functional_members"
    assert f"not {named!r}" in denial.reason and "reads as absent" in denial.reason


@pytest.mark.parametrize("users", ["@officer:police.example", [7], {"@policy:police.example": 1}, None])
def test_a_list_that_is_not_a_list_of_user_ids_is_refused(users: Any) -> None:
    denial = check_functional_members(SERVICE, {"service_members": users})
    assert denial is not None and "must be a list of user IDs" in denial.reason


@pytest.mark.parametrize("state_key", ["", "x", "@officer:police.example"])
def test_events_with_any_state_key_are_checked(state_key: str) -> None:
    """Element's own lookup takes the first such event, whatever its state key."""
    denial = check_event(
        RoomsConfig(), FUNCTIONAL_MEMBERS, state_key, {"service_members": [OFFICER]}, SERVICE
    )
    assert denial is not None
    assert (
        check_event(RoomsConfig(), FUNCTIONAL_MEMBERS, state_key, {"service_members": [SERVICE[0]]}, SERVICE)
        is None
    )


def test_without_service_users_nobody_may_be_listed() -> None:
    assert check_event(RoomsConfig(), FUNCTIONAL_MEMBERS, "", {"service_members": [SERVICE[0]]}) is not None


def test_a_message_of_that_type_is_no_listing() -> None:
    """Not state: Element reads no listing from it; the clear-text rule refuses it instead."""
    denial = check_event(RoomsConfig(), FUNCTIONAL_MEMBERS, None, {"service_members": [OFFICER]}, SERVICE)
    assert denial is not None and denial.rule == "rooms.unencrypted_message"


def test_creation_gets_the_service_users_listed() -> None:
    other = {"type": "m.room.name", "state_key": "", "content": {"name": "Lage"}}
    state, rewrites = with_functional_members([other], SERVICE)
    assert state == [other, listing(list(SERVICE))]
    assert rewrites == []


def test_a_requested_listing_is_replaced_and_one_naming_a_person_logged() -> None:
    request = [listing([SERVICE[0]]), listing([OFFICER], state_key="x"), listing("nonsense", state_key="y")]
    state, rewrites = with_functional_members(request, SERVICE)
    assert state == [listing(list(SERVICE))]
    assert [rewrite.rule for rewrite in rewrites] == ["rooms.functional_members"] * 2
    assert rewrites[0].reason.endswith("The room lists the service users instead.")
