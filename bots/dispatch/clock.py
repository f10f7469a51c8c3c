"""Times as the control room reads them: in the configured zone (``Config.timezone``),
never the host's. The functions are both bots' (``bots.common.clock``); the dispatch bot
imports them from here."""

from __future__ import annotations

from ..common.clock import DEFAULT_ZONE, clock, clock_zoned, zone

__all__ = ["DEFAULT_ZONE", "clock", "clock_zoned", "zone"]
