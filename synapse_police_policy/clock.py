"""The module's one clock: the time in ms since the epoch, as Synapse stores event times."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
