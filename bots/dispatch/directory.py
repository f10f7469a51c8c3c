"""Who is who: units, call signs, roles; lookups that answer a typo with close matches.

Dispatchers type unit names and users from memory on a busy shift, so a miss
names the nearest candidates instead of just saying "unknown".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from .config import ROLES, Config, Unit

#: role words accepted in `!alert` targets (singular, plural, German)
ROLE_WORDS = {
    "dispatcher": "dispatcher",
    "dispatchers": "dispatcher",
    "disponent": "dispatcher",
    "supervisor": "supervisor",
    "supervisors": "supervisor",
    "officer": "officer",
    "officers": "officer",
}


class NotFound(LookupError):
    """A name that matches nothing; ``str()`` is the answer for the user."""


def localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like ``word`` (case-insensitive), best first."""
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.5)
    prefix = [lower for lower in by_lower if lower.startswith(word.lower()) and lower not in found]
    return [by_lower[lower] for lower in (found + sorted(prefix))[:n]]


def _did_you_mean(matches: list[str]) -> str:
    return f" Did you mean {', '.join(matches)}?" if matches else ""


class Directory:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._units = {unit.name.lower(): unit for unit in config.units}
        self._call_signs = {unit.call_sign.lower(): unit for unit in config.units}
        users: set[str] = set()
        for members in config.roles.values():
            users |= members
        for unit in config.units:
            users.update(unit.members)
            if unit.supervisor:
                users.add(unit.supervisor)
        self.users = frozenset(users)

    def unit(self, name: str) -> Unit:
        key = name.strip().lower()
        unit = self._units.get(key) or self._call_signs.get(key)
        if unit is None:
            matches = close_matches(name, [u.name for u in self.config.units])
            raise NotFound(f"There is no unit {name!r}.{_did_you_mean(matches)}")
        return unit

    def user(self, name: str) -> str:
        """A configured user, by user ID or localpart ('@' optional)."""
        word = name.strip()
        if word in self.users:
            return word
        by_local = {localpart(user): user for user in self.users}
        found = by_local.get(word.lstrip("@").split(":", 1)[0].lower()) if ":" not in word else None
        if found is not None:
            return found
        matches = close_matches(word.lstrip("@").split(":", 1)[0], by_local)
        suggestions = [by_local[match] for match in matches]
        raise NotFound(f"There is no user {word!r} in the directory.{_did_you_mean(suggestions)}")

    def role(self, word: str) -> str | None:
        return ROLE_WORDS.get(word.strip().lower())

    def role_members(self, role: str) -> tuple[str, ...]:
        members = set(self.config.roles.get(role, frozenset()))
        if role == "officer":
            for unit in self.config.units:
                members.update(unit.members)
        return tuple(sorted(members))

    def units_of(self, user_id: str) -> list[Unit]:
        return [unit for unit in self.config.units if user_id in unit.members]

    def is_commander(self, user_id: str) -> bool:
        """Dispatchers and supervisors may command the bot in a control room."""
        return self.config.has_role(user_id, "dispatcher") or self.config.has_role(user_id, "supervisor")

    def is_officer(self, user_id: str) -> bool:
        return self.config.has_role(user_id, "officer")

    def label(self, user_id: str) -> str:
        """How the board names a person: the localpart, and the call sign of the first unit."""
        units = self.units_of(user_id)
        return f"{localpart(user_id)} ({units[0].call_sign})" if units else localpart(user_id)

    def target_suggestions(self, word: str) -> list[str]:
        """Close matches among everything `!alert` accepts, for an unknown target."""
        names = [u.name for u in self.config.units] + list(ROLES) + [localpart(u) for u in self.users]
        return close_matches(word.lstrip("@"), names)

    def unknown_target(self, word: str) -> NotFound:
        return NotFound(
            f"{word!r} is neither a unit, a role, a user nor an incident number."
            f"{_did_you_mean(self.target_suggestions(word))}"
        )
