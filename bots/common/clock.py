"""Times as people read them: in the configured zone, never the host's.

Element shows times in the browser's zone; the bots' containers run in UTC, so a bot that
printed its host's time wrote "acknowledge by 08:02" beside Element's 10:00. Every time a
bot prints goes through here with its config's ``timezone`` (``timezone_setting``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import fail

#: the zone when the config names none (the police forces this was written for)
DEFAULT_ZONE = "Europe/Berlin"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``ValueError`` when the system knows none such."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:  # OSError: a directory, unreadable
        raise ValueError(f"no time zone {name!r}") from error


def timezone_setting(raw: Mapping[str, Any], key: str = "timezone") -> ZoneInfo:
    """The config's ``timezone``, a name the system's time zone database knows (default
    ``DEFAULT_ZONE``); a typo stops the bot rather than print wrong times."""
    value = raw.get(key, DEFAULT_ZONE)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return zone(value.strip())
    raise fail(key, f"an IANA time zone such as {DEFAULT_ZONE!r}", value)


def clock(at: float, tz: tzinfo) -> str:
    """``HH:MM:SS`` of ``at`` (seconds since the epoch) in ``tz``: for tables and lists whose
    heading names the zone."""
    return datetime.fromtimestamp(at, tz).strftime("%H:%M:%S")


def clock_zoned(at: float, tz: tzinfo) -> str:
    """``HH:MM:SS CEST``: a time standing alone (a deadline) carries the zone, so nobody
    reads it in another one."""
    return datetime.fromtimestamp(at, tz).strftime("%H:%M:%S %Z")


def moment(at: float, tz: tzinfo, *, seconds: bool = True) -> str:
    """``2025-07-01 08:02:24 CEST`` (without ``:24`` unless ``seconds``): a time with its day,
    as lists of messages across days show it."""
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def zone_name(tz: tzinfo) -> str:
    """``Europe/Berlin``: how a heading names the zone of the times below it."""
    return getattr(tz, "key", None) or tz.tzname(None) or str(tz)


def day_of(at: float, tz: tzinfo) -> date:
    """The day ``at`` falls on in ``tz``."""
    return datetime.fromtimestamp(at, tz).date()


def day_start(day: date, tz: tzinfo) -> float:
    """The first moment of ``day`` in ``tz``, in seconds since the epoch. Where the zone skips
    midnight, the day starts at the first time it has (the instant the skip lands on)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


__all__ = [
    "DEFAULT_ZONE",
    "clock",
    "clock_zoned",
    "day_of",
    "day_start",
    "moment",
    "timezone_setting",
    "zone",
    "zone_name",
]
