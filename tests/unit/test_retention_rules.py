"""The retention rules as pure functions: the state a new room carries, the
power-level override at creation, and the changes to a room that are refused."""

from __future__ import annotations

from typing import Any

import pytest

from synapse_police_policy.config import RetentionConfig
from synapse_police_policy.retention.rules import (
    RETENTION,
    check_retention_change,
    retention_content,
    retention_state,
)
from synapse_police_policy.rooms.seating import (
    POWER_LEVELS,
    SYSTEM_POWER,
    check_power_levels,
    check_system_user_removal,
    power_override,
)

CREATOR = "@alice:police.example"
SYSTEM = "@policy:police.example"
OTHER = "@bob:police.example"
CONFIG = RetentionConfig(device_lifetime=7 * 86400, audit_lifetime=90 * 86400)
POLICY_CONTENT = {"max_lifetime": 7 * 86400 * 1000}


# --- what a new room carries ---------------------------------------------------------


def test_event_types() -> None:
    assert RETENTION == "m.room.retention"
    assert POWER_LEVELS == "m.room.power_levels"
    assert SYSTEM_POWER == 100


@pytest.mark.parametrize(("seconds", "ms"), [(1, 1000), (3600, 3_600_000), (7 * 86400, 604_800_000)])
def test_retention_content_is_the_device_lifetime_in_ms(seconds: int, ms: int) -> None:
    config = RetentionConfig(device_lifetime=seconds, audit_lifetime=90 * 86400)
    assert retention_content(config) == {"max_lifetime": ms}


def test_retention_content_ignores_the_audit_lifetime() -> None:
    """The audit tier is Synapse's purge job, never announced in the room."""
    short = RetentionConfig(device_lifetime=86400, audit_lifetime=86400)
    long = RetentionConfig(device_lifetime=86400, audit_lifetime=365 * 86400)
    assert retention_content(short) == retention_content(long) == {"max_lifetime": 86_400_000}


def test_retention_state() -> None:
    assert retention_state(CONFIG) == {"type": "m.room.retention", "state_key": "", "content": POLICY_CONTENT}


def test_retention_state_returns_fresh_objects() -> None:
    first = retention_state(CONFIG)
    first["content"]["max_lifetime"] = 1
    assert retention_state(CONFIG)["content"] == POLICY_CONTENT


# --- power_override -----------------------------------------------------------------


def test_power_override_without_client_override_lists_creator_and_system_user() -> None:
    override = power_override({}, CREATOR, [SYSTEM], creator_listed=True)
    assert override == {"users": {CREATOR: 100, SYSTEM: SYSTEM_POWER}}


def test_power_override_leaves_the_creator_out_when_creators_are_not_listed() -> None:
    """Room version 12: creators have unlimited power and must not be in ``users``."""
    override = power_override({}, CREATOR, [SYSTEM], creator_listed=False)
    assert override == {"users": {SYSTEM: SYSTEM_POWER}}
    assert CREATOR not in override["users"]


@pytest.mark.parametrize("value", [None, {}], ids=["null", "empty"])
def test_power_override_tolerates_a_null_or_empty_client_override(value: Any) -> None:
    request = {"power_level_content_override": value}
    assert power_override(request, CREATOR, [SYSTEM], creator_listed=True) == {
        "users": {CREATOR: 100, SYSTEM: SYSTEM_POWER}
    }


def test_power_override_tolerates_null_users() -> None:
    request = {"power_level_content_override": {"users": None, "ban": 75}}
    assert power_override(request, CREATOR, [SYSTEM], creator_listed=False) == {
        "users": {SYSTEM: SYSTEM_POWER},
        "ban": 75,
    }


@pytest.mark.parametrize("creator_listed", [True, False])
def test_power_override_keeps_the_clients_users_and_other_keys(creator_listed: bool) -> None:
    request = {
        "power_level_content_override": {
            "users": {OTHER: 50},
            "events": {"m.room.name": 50},
            "redact": 50,
            "users_default": 0,
        }
    }
    override = power_override(request, CREATOR, [SYSTEM], creator_listed=creator_listed)

    assert override["users"][OTHER] == 50
    assert override["users"][SYSTEM] == SYSTEM_POWER
    assert (CREATOR in override["users"]) is creator_listed
    assert override["events"] == {"m.room.name": 50}
    assert override["redact"] == 50
    assert override["users_default"] == 0


def test_power_override_keeps_a_creator_level_the_client_chose() -> None:
    request = {"power_level_content_override": {"users": {CREATOR: 90}}}
    override = power_override(request, CREATOR, [SYSTEM], creator_listed=True)
    assert override["users"] == {CREATOR: 90, SYSTEM: SYSTEM_POWER}


@pytest.mark.parametrize("level", [0, 50, 99, -1])
@pytest.mark.parametrize("creator_listed", [True, False])
def test_power_override_forces_the_system_user_to_full_power(level: int, creator_listed: bool) -> None:
    request = {"power_level_content_override": {"users": {SYSTEM: level, OTHER: 10}}}
    override = power_override(request, CREATOR, [SYSTEM], creator_listed=creator_listed)
    assert override["users"][SYSTEM] == SYSTEM_POWER
    assert override["users"][OTHER] == 10


def test_power_override_does_not_change_the_request() -> None:
    users = {OTHER: 50, SYSTEM: 0}
    request = {"power_level_content_override": {"users": users, "ban": 50}}

    power_override(request, CREATOR, [SYSTEM], creator_listed=True)

    assert request == {"power_level_content_override": {"users": {OTHER: 50, SYSTEM: 0}, "ban": 50}}
    assert users == {OTHER: 50, SYSTEM: 0}


# --- check_retention_change ---------------------------------------------------------


def test_the_policys_own_retention_content_passes() -> None:
    assert check_retention_change(CONFIG, dict(POLICY_CONTENT)) is None
    assert check_retention_change(CONFIG, retention_content(CONFIG)) is None


@pytest.mark.parametrize(
    "content",
    [
        {"max_lifetime": 7 * 86400 * 1000 + 1},
        {"max_lifetime": 30 * 86400 * 1000},
        {"max_lifetime": 7 * 86400},  # seconds instead of milliseconds
        {"max_lifetime": str(7 * 86400 * 1000)},
        {"max_lifetime": None},
        {"max_lifetime": 7 * 86400 * 1000, "min_lifetime": 1000},
        {"max_lifetime": 7 * 86400 * 1000, "extra": True},
        {"min_lifetime": 1000},
        {},
    ],
    ids=[
        "one-ms-longer",
        "thirty-days",
        "seconds",
        "string",
        "null",
        "plus-min_lifetime",
        "plus-extra-key",
        "only-min_lifetime",
        "empty",
    ],
)
def test_any_other_retention_content_is_refused(content: dict[str, Any]) -> None:
    denial = check_retention_change(CONFIG, content)

    assert denial is not None
    assert denial.rule == "retention.room_policy"
    assert "604800s" in denial.reason
    assert "m.room.retention cannot be changed" in denial.reason
    assert denial.http_status == 403
    assert denial.errcode == "M_FORBIDDEN"


def test_retention_change_follows_the_configured_device_lifetime() -> None:
    config = RetentionConfig(device_lifetime=3600, audit_lifetime=86400)
    assert check_retention_change(config, {"max_lifetime": 3_600_000}) is None
    denial = check_retention_change(config, POLICY_CONTENT)
    assert denial is not None
    assert "3600s" in denial.reason


# --- check_power_levels -------------------------------------------------------------


@pytest.mark.parametrize("level", [100, 101, 1000])
def test_system_user_at_full_power_or_more_passes(level: int) -> None:
    assert check_power_levels({"users": {SYSTEM: level, CREATOR: 100}}, SYSTEM) is None


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"users": None},
        {"users": []},
        {"users": "everyone"},
        {"users": {}},
        {"users": {CREATOR: 100}},
        {"users": {SYSTEM: 99}},
        {"users": {SYSTEM: 50}},
        {"users": {SYSTEM: 0}},
        {"users": {SYSTEM: -100}},
        {"users": {SYSTEM: True}},
        {"users": {SYSTEM: "100"}},
        {"users": {SYSTEM: 100.0}},
        {"users": {SYSTEM: None}},
        {"users": {SYSTEM.upper(): 100}},
        {"users": {"@policy:other.example": 100}},
        {"users_default": 100},
    ],
    ids=[
        "no-users",
        "users-null",
        "users-list",
        "users-string",
        "users-empty",
        "system-user-missing",
        "99",
        "50",
        "0",
        "negative",
        "bool",
        "string",
        "float",
        "null",
        "other-case",
        "other-server",
        "only-users_default",
    ],
)
def test_power_levels_without_the_system_user_at_full_power_are_refused(content: dict[str, Any]) -> None:
    denial = check_power_levels(content, SYSTEM)

    assert denial is not None
    assert denial.rule == "retention.system_user_power"
    assert SYSTEM in denial.reason
    assert "100" in denial.reason
    assert denial.http_status == 403


# --- check_system_user_removal ------------------------------------------------------


@pytest.mark.parametrize("membership", ["leave", "ban"])
def test_kicking_or_banning_the_system_user_is_refused(membership: str) -> None:
    denial = check_system_user_removal(membership, SYSTEM)

    assert denial is not None
    assert denial.rule == "retention.system_user_power"
    assert SYSTEM in denial.reason
    assert "cannot be removed" in denial.reason


@pytest.mark.parametrize("membership", ["invite", "join"])
def test_inviting_or_joining_the_system_user_passes(membership: str) -> None:
    assert check_system_user_removal(membership, SYSTEM) is None


@pytest.mark.parametrize(
    ("extra", "allowed"),
    [
        ({"redact": 100}, True),
        ({"redact": 101}, False),
        ({"redact": "50"}, False),
        ({"events": {"m.room.redaction": 100}}, True),
        ({"events": {"m.room.redaction": 150}}, False),
        ({"events_default": 120}, False),
        ({"events_default": 120, "events": {"m.room.redaction": 0}}, True),
    ],
)
def test_redacting_must_not_need_more_than_the_system_users_level(extra: dict, allowed: bool) -> None:
    system_user = "@policy:police.example"
    content = {"users": {system_user: 100}, **extra}
    assert (check_power_levels(content, system_user) is None) is allowed
