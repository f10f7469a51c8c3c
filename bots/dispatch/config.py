"""The dispatch bot's configuration: YAML in, a frozen ``Config`` out.

Every problem raises ``ConfigError`` whose message starts with the full key
path (``units[2].members[0]``) and says what was expected and what was found;
the settings every bot has are read by ``bots.common.config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from ..common import config as common
from ..common.clock import DEFAULT_ZONE, timezone_setting, zone
from ..common.config import ACCOUNT_KEYS, USER_ID, Account, ConfigError, fail

_ROOM = re.compile(r"^[!#][^:\s]+:[A-Za-z0-9.\-:\[\]]+\Z")
#: unit names are typed in commands: one word, not a number (numbers are incidents)
_UNIT_NAME = re.compile(r"^(?!\d+\Z)[A-Za-z0-9][A-Za-z0-9._\-/]*\Z")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

ROLES = ("dispatcher", "supervisor", "officer")
KEYS = ACCOUNT_KEYS | {
    "state_path",
    "state_key_file",
    "state_key_env",
    "control_rooms",
    "roles",
    "units",
    "ack_deadline",
    "ack_unit",
    "max_alerts",
    "timezone",
}
UNIT_KEYS = frozenset({"name", "call_sign", "supervisor", "members"})


@attrs.frozen
class Unit:
    #: typed in commands (`!assign 4 streife1`); matched without regard to case
    name: str
    #: the radio call sign shown on the board ("Adler 11/1")
    call_sign: str
    members: tuple[str, ...]
    supervisor: str | None = None


@attrs.frozen
class Config(Account):
    #: the bot's own state (SQLite): incidents, alerts, acknowledgements, the diary
    state_path: Path
    #: the 32-byte key of the state's encryption at rest (from a file or the environment, never the state)
    state_key: bytes = attrs.field(repr=False)
    #: room IDs or aliases; an alias of this server that does not exist yet is created
    control_rooms: tuple[str, ...]
    #: role -> user IDs
    roles: Mapping[str, frozenset[str]]
    units: tuple[Unit, ...]
    #: seconds until an unacknowledged alert is repeated and escalated
    ack_deadline: int = 300
    #: seconds per unit of `ack:<n>` in `!alert` (60: minutes; tests use 1)
    ack_unit: int = 60
    #: how often an addressee is alerted at most (the first alert included)
    max_alerts: int = 3
    #: the zone of every time the bot prints (Element shows local time; the host may run in UTC)
    timezone: ZoneInfo = attrs.field(factory=lambda: zone(DEFAULT_ZONE))

    def has_role(self, user_id: str, role: str) -> bool:
        """Unit members are officers and unit supervisors supervisors, listed under roles or not."""
        if role == "officer" and any(user_id in unit.members for unit in self.units):
            return True
        if role == "supervisor" and any(user_id == unit.supervisor for unit in self.units):
            return True
        return user_id in self.roles.get(role, frozenset())


def parse_duration(value: Any, key: str) -> int:
    """A positive duration such as '5m', '90s' or '1h', in seconds."""
    return common.duration(value, key, _UNITS_S, "5m")


def _string(raw: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str | None:
    """Strings are taken without surrounding blanks here (unit names are typed in commands)."""
    return common.string(raw, key, path, required=required, strip=True)


def _user(value: Any, path: str) -> str:
    if not isinstance(value, str) or not USER_ID.match(value):
        raise fail(path, "a Matrix user ID such as '@officer:police.example'", value)
    return value


def _user_list(value: Any, path: str, *, allow_empty: bool = True) -> tuple[str, ...]:
    if value is None and allow_empty:
        return ()
    if not isinstance(value, list) or (not value and not allow_empty):
        raise fail(path, "a list of Matrix user IDs" + ("" if allow_empty else " (at least one)"), value)
    return tuple(_user(item, f"{path}[{index}]") for index, item in enumerate(value))


def _units(value: Any) -> tuple[Unit, ...]:
    if not isinstance(value, list) or not value:
        raise fail("units", "a non-empty list of units (name, call_sign, members, supervisor)", value)
    units: list[Unit] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        path = f"units[{index}]"
        if not isinstance(item, Mapping):
            raise fail(path, "a mapping with name, call_sign, members and supervisor", item)
        unknown = sorted(str(key) for key in item if key not in UNIT_KEYS)
        if unknown:
            raise ConfigError(
                f"{path}.{unknown[0]}: unknown key; expected one of: {', '.join(sorted(UNIT_KEYS))}"
            )
        name = _string(item, "name", f"{path}.name")
        assert name is not None
        if not _UNIT_NAME.match(name):
            raise fail(
                f"{path}.name", "one word of letters, digits, '.', '_', '-', '/' (not only digits)", name
            )
        if name.lower() in seen:
            raise ConfigError(f"{path}.name: {name!r} is used by another unit already")
        seen.add(name.lower())
        call_sign = _string(item, "call_sign", f"{path}.call_sign", required=False) or name
        members = _user_list(item.get("members"), f"{path}.members", allow_empty=False)
        supervisor = item.get("supervisor")
        units.append(
            Unit(
                name=name,
                call_sign=call_sign,
                members=members,
                supervisor=None if supervisor is None else _user(supervisor, f"{path}.supervisor"),
            )
        )
    return tuple(units)


def _roles(value: Any) -> dict[str, frozenset[str]]:
    if not isinstance(value, Mapping):
        raise fail("roles", "a mapping of dispatcher, supervisor and officer to lists of user IDs", value)
    unknown = sorted(str(key) for key in value if key not in ROLES)
    if unknown:
        raise ConfigError(f"roles.{unknown[0]}: unknown role; expected one of: {', '.join(ROLES)}")
    roles = {role: frozenset(_user_list(value.get(role), f"roles.{role}")) for role in ROLES}
    if not roles["dispatcher"]:
        raise ConfigError("roles.dispatcher: required, expected a list of at least one Matrix user ID")
    return roles


def _check_escalation_addressees(raw_roles: Mapping[str, Any], units: tuple[Unit, ...], bot: str) -> None:
    """Everyone an escalation may address (the units' supervisors, whoever gave an alert, the
    dispatcher on duty after a handover: dispatchers and supervisors) must be able to receive
    it: in the control room, where the bot invites them, or else in a direct room the bot
    makes. The bot cannot do either for itself, nor for a user of another server (inviting
    one depends on the homeserver's federation, which the bot cannot see)."""
    server = bot.split(":", 1)[1]
    entries = [
        (f"roles.{role}[{index}]", user)
        for role in ("dispatcher", "supervisor")
        for index, user in enumerate(raw_roles.get(role) or [])
    ]
    entries += [(f"units[{index}].supervisor", unit.supervisor) for index, unit in enumerate(units)]
    for path, user in entries:
        if user is None:
            continue
        if user == bot:
            raise ConfigError(
                f"{path}: expected a person who can be sent an escalation, got the bot itself ({user!r})"
            )
        if user.split(":", 1)[1] != server:
            raise fail(
                path,
                f"a user of the bot's server '{server}' (an escalation reaches someone who has not "
                "joined the control room in a direct room the bot makes)",
                user,
            )


def _positive_int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(key, "a positive whole number", value)
    return value


def parse_config(raw: Any, base: Path | None = None) -> Config:
    """Check a parsed YAML document; relative paths are relative to ``base``."""
    base = base or Path.cwd()
    raw = common.settings(raw, KEYS)
    url = common.homeserver_url(raw, strip=True)
    user_id = _user(raw.get("user_id"), "user_id")
    device_id = common.device_id(raw, strip=True)

    rooms = raw.get("control_rooms")
    if not isinstance(rooms, list) or not rooms:
        raise fail("control_rooms", "a non-empty list of room IDs or aliases", rooms)
    for index, room in enumerate(rooms):
        if not isinstance(room, str) or not _ROOM.match(room):
            raise fail(f"control_rooms[{index}]", "a room ID ('!abc:server') or alias ('#name:server')", room)

    ack_unit = raw.get("ack_unit", "m")
    if ack_unit not in ("s", "m"):
        raise fail("ack_unit", "'m' (ack:<n> in minutes) or 's' (seconds, for tests)", ack_unit)
    store_dir, identity_file = common.store_paths(raw, base, strip=True)
    roles, units = _roles(raw.get("roles")), _units(raw.get("units"))
    _check_escalation_addressees(raw["roles"], units, user_id)
    return Config(
        homeserver_url=url,
        user_id=user_id,
        password=common.password(raw, base, strip=True),
        device_id=device_id,
        store_dir=store_dir,
        identity_file=identity_file,
        state_path=common.path(raw, "state_path", base, strip=True),
        state_key=common.key(raw, "state_key", base, "state key", strip=True),
        control_rooms=tuple(rooms),
        roles=roles,
        units=units,
        ack_deadline=parse_duration(raw.get("ack_deadline", "5m"), "ack_deadline"),
        ack_unit=_UNITS_S[ack_unit],
        max_alerts=_positive_int(raw, "max_alerts", 3),
        timezone=timezone_setting(raw),
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the YAML file at ``path``; relative paths in it are relative to its directory."""
    return parse_config(*common.read_yaml(path))
