"""Times as the control room reads them: in the configured zone, never the host's.

Element shows times in the browser's zone; the bot's container runs in UTC, so a bot
that printed its host's time wrote "acknowledge by 08:02" beside Element's 10:00. Every
time the bot prints goes through here with ``Config.timezone``.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: the zone when the config names none (the police forces this was written for)
DEFAULT_ZONE = "Europe/Berlin"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``ValueError`` when the system knows none such."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:  # OSError: a directory, unreadable
        raise ValueError(f"no time zone {name!r}") from error


def clock(at: float, tz: tzinfo) -> str:
    """``HH:MM:SS`` of ``at`` (seconds since the epoch) in ``tz``: for tables and lists whose
    heading names the zone."""
    return datetime.fromtimestamp(at, tz).strftime("%H:%M:%S")


def clock_zoned(at: float, tz: tzinfo) -> str:
    """``HH:MM:SS CEST``: a time standing alone (a deadline) carries the zone, so nobody
    reads it in another one."""
    return datetime.fromtimestamp(at, tz).strftime("%H:%M:%S %Z")


__all__ = ["DEFAULT_ZONE", "clock", "clock_zoned", "zone"]
