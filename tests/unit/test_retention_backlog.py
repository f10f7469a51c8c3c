"""How far one run of the retention sweep walks the expired events.

A run used to stop after MAX_BATCHES x BATCH events (10,000: 33 a second at
the default 5-minute interval), below what a force of 50,000 expires on a
busy day (docs/performance.md, "Capacity model"). Behind, it now walks until
caught up or its time is spent: EVENT_WALK_SHARE of the interval, at least
EVENT_WALK_MIN_S. The redactions are
Synapse's (the integration suite sends them); here the walk's bookkeeping
runs against an in-memory event stream and a clock that advances one second
per batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from synapse_police_policy.config import RetentionConfig
from synapse_police_policy.retention.store import StoredEvent
from synapse_police_policy.retention.sweep import (
    BATCH,
    EVENT_WALK_MIN_S,
    EVENT_WALK_SHARE,
    MAX_BATCHES,
    RetentionSweep,
)

INTERVAL_S = 300
CUTOFF = 10**12


class Stream:
    """The store's view of Synapse's events, in stream order, all expired
    except the last ``fresh``."""

    def __init__(self, expired: int, fresh: int = 0) -> None:
        self.events = [
            StoredEvent(n, f"$e{n}", "!r:x", CUTOFF - 1000 if n <= expired else CUTOFF + 1000)
            for n in range(1, expired + fresh + 1)
        ]
        self.position = 0

    async def watermark(self) -> int:
        return self.position

    async def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        return [event for event in self.events if event.stream_ordering > position][:limit]

    async def set_watermark(self, position: int) -> None:
        self.position = position


class Api:
    def get_qualified_user_id(self, localpart: str) -> str:
        return f"@{localpart}:x"

    server_name = "x"


def sweep_over(stream: Stream, interval_s: int = INTERVAL_S) -> tuple[RetentionSweep, list[int], list[float]]:
    """A sweep whose clock advances a second per settled batch; returns the
    sweep, the sizes of the batches it settled and the clock."""
    clock = [0.0]
    settled: list[int] = []
    config = RetentionConfig(sweep_interval=interval_s)
    sweep = RetentionSweep(config, Api(), stream, None, monotonic=lambda: clock[0])  # type: ignore[arg-type]

    async def settle(events: list[StoredEvent], *_: Any) -> None:
        settled.append(len(events))
        clock[0] += 1.0

    sweep._settle = settle  # type: ignore[method-assign]
    return sweep, settled, clock


def walk(sweep: RetentionSweep) -> float:
    return asyncio.run(sweep._walk_events(CUTOFF, CUTOFF, set(), None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("interval_s", "budget_s"), [(INTERVAL_S, INTERVAL_S * EVENT_WALK_SHARE), (5, EVENT_WALK_MIN_S)]
)
def test_behind_a_run_walks_past_the_old_batch_limit_until_its_time_is_spent(
    interval_s: int, budget_s: float
) -> None:
    budget_batches = int(budget_s)
    stream = Stream(expired=BATCH * (budget_batches + 100))
    sweep, settled, clock = sweep_over(stream, interval_s)
    behind = walk(sweep)
    assert len(settled) == budget_batches > MAX_BATCHES
    assert clock[0] == budget_s
    assert stream.position == BATCH * budget_batches
    assert behind > 0, "what is left is reported as lag"


def test_a_run_stops_where_the_unexpired_events_begin() -> None:
    stream = Stream(expired=BATCH * 3 + 7, fresh=500)
    sweep, settled, _ = sweep_over(stream)
    assert walk(sweep) == 0.0
    assert settled == [BATCH, BATCH, BATCH, 7]
    assert stream.position == BATCH * 3 + 7
    # the next run finds nothing new and settles nothing
    assert walk(sweep) == 0.0
    assert settled == [BATCH, BATCH, BATCH, 7]


def test_a_run_settles_one_batch_even_when_its_time_is_gone() -> None:
    stream = Stream(expired=BATCH * 5)
    sweep, settled, _ = sweep_over(stream)
    readings = iter([0.0, 10.0**9])  # the deadline is set, then a stall passes it
    sweep._monotonic = lambda: next(readings)
    assert walk(sweep) > 0
    assert settled == [BATCH]
