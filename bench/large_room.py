"""What the policy module costs on the message path of a room with many members.

The workload and the comparison are those of ``module_overhead`` (two
Synapse processes on SQLite, with and without the module, a few encrypted
sends in flight, the receiver long-polling ``/sync``, alternating rounds,
medians), but the room has many joined members instead of two: ``MEMBERS``,
each size on a fresh pair of servers. The module's cost should not grow with
the room: at every size the throughput ratio >= 0.97 and the latency ratios
<= 1.03 (``TARGETS``), and its extra time per message at the largest size no
more than at the smallest. ``python -m bench.large_room [MEMBERS ...]`` runs
other sizes.

Why: once any module registers ``check_event_allowed``, Synapse loads every
current state event of the room for every locally created event before
calling it (``get_prev_state_ids`` then ``get_events``). In a room of
hundreds of members those are hundreds of ``m.room.member`` events per
message, which the two-member room of ``module_overhead`` does not show. The
module checks new events without registering that callback
(``internals.guard_new_events``); this entry shows what is left.

Setup is not timed: the members are registered through the shared-secret
admin API, their devices enrolled in one transaction and logged in
(``bench/accounts.py``: the module refuses joins and messages from devices the
MDM did not enroll), then invited by the room's creator and joined, a few
requests in flight, both servers at once. The password hash cost is lowered on
both (``BCRYPT_ROUNDS``): it only matters for setting up the members, not on
the message path.

The module seats its service users in every new room (the retention system
user; the auditor bot too when ``auditor.user_id`` is set). So both rooms get
the same number of joined members, ``MEMBERS``: on the module's server the
seated users and ``MEMBERS`` minus their number of ordinary members; on the
other, users of the same names, invited and joined like the others, in their
place. Both rooms are checked to hold exactly the expected members before
measuring.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs

from devtools.homeserver import Homeserver

from . import module_overhead
from .accounts import BenchError, enrolled_users, has_module, seated_users
from .module_overhead import (
    PASSWORD,
    Target,
    check_module,
    homeserver_pair,
    measure,
    median,
    ok,
    report,
    room_path,
    sync_position,
)

#: joined members of the room on each server, the sender, the receiver and the
#: seated service users (or their stand-ins) included; one run per size
MEMBERS = (500, 5000)
#: throughput ratio floor and latency ratio ceiling, at every size
TARGETS = (0.97, 1.03)
#: measured messages per run; fewer than module_overhead's, because a message
#: takes Synapse about five times as long as in the two-member room
MESSAGES = 100
#: messages sent once per server before the rounds (cold caches, first queries)
INITIAL_WARMUP = 40
#: messages sent at the start of every run and not counted (gets /sync going)
WARMUP = 20
#: runs per server; rounds alternate which server goes first
ROUNDS = 8
#: requests in flight while registering and joining the members
SETUP_WORKERS = 4
#: how long the module may take to seat its service users in a new room
SEATED_TIMEOUT_S = 60.0
#: bcrypt cost of the members' passwords on both servers (Synapse's default,
#: 12, would make registering hundreds of members slow; 4 is bcrypt's minimum)
BCRYPT_ROUNDS = 4


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    #: room sizes, one run each
    members: tuple[int, ...]
    workload: module_overhead.Sizes


FULL = Sizes(
    members=MEMBERS,
    workload=module_overhead.Sizes(
        messages=MESSAGES, initial_warmup=INITIAL_WARMUP, warmup=WARMUP, rounds=ROUNDS
    ),
)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(members=(5, 8), workload=module_overhead.SMOKE)


def _localparts(members: int, seated: int) -> list[str]:
    """The members besides the sender, the receiver and the seated users, the same on every server."""
    return [f"member-{i:04d}" for i in range(1, members - 1 - seated)]


def _joined(hs: Homeserver, room_id: str, token: str) -> set[str]:
    answer = ok(*hs.request("GET", f"{room_path(room_id)}/joined_members", token=token), "joined_members")
    return set(answer["joined"])


def set_up(label: str, hs: Homeserver, members: int, seated: tuple[str, ...]) -> Target:
    """A room of ``members`` joined members: the sender created it and invited
    everyone else, who joined (the module makes every room invite-only).
    ``seated``: the localparts of the service users the module seats in every
    room. With the module it seats them itself (waited for); without, users of
    those names are registered and join like the others, so both rooms have
    the same members."""
    started = time.perf_counter()
    ordinary = ["receiver", *_localparts(members, len(seated))]
    stand_ins = [] if has_module(hs) else list(seated)
    localparts = [*ordinary, *stand_ins]
    sender_token, *tokens = enrolled_users(hs, ["sender", *localparts], PASSWORD, workers=SETUP_WORKERS)
    created = ok(
        *hs.request("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=sender_token),
        "createRoom",
    )
    room_id: str = created["room_id"]

    def invite_and_join(localpart: str, token: str) -> None:
        invite = {"user_id": hs.user_id(localpart)}
        ok(*hs.request("POST", f"{room_path(room_id)}/invite", invite, token=sender_token), "invite")
        ok(*hs.request("POST", f"{room_path(room_id)}/join", {}, token=token), f"join of {localpart}")

    with ThreadPoolExecutor(SETUP_WORKERS) as pool:
        list(pool.map(invite_and_join, localparts, tokens))

    expected = {hs.user_id(localpart) for localpart in ["sender", *ordinary, *seated]}
    # The module seats its users in the background once the room exists: wait for them.
    deadline = time.monotonic() + SEATED_TIMEOUT_S
    while (joined := _joined(hs, room_id, sender_token)) != expected:
        if not expected > joined or time.monotonic() > deadline:
            missing, unexpected = sorted(expected - joined), sorted(joined - expected)
            raise BenchError(
                f"{label}: {len(joined)} joined members, expected {len(expected)} "
                f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
            )
        time.sleep(0.2)
    state: list[dict[str, Any]] = ok(
        *hs.request("GET", f"{room_path(room_id)}/state", token=sender_token), "room state"
    )
    receiver_token = tokens[0]
    filter_id, since = sync_position(hs, room_id, hs.user_id("receiver"), receiver_token)
    seats = "seated by the module" if has_module(hs) else "joined in place of the module's seated users"
    print(
        f"  {label}: {len(joined)} joined members ({', '.join(seated)} {seats}), "
        f"{len(state)} state events, set up in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Target(label, hs, room_id, sender_token, receiver_token, filter_id, since)


def run_size(members: int, workload: module_overhead.Sizes) -> float:
    """One size on a fresh pair of servers: the table; returns the module's
    extra time per message (ms)."""
    with homeserver_pair({"bcrypt_rounds": BCRYPT_ROUNDS}) as (without_hs, with_hs):
        seated = seated_users(with_hs)
        print(f"filling a room with {members} members on each (not timed) ...", flush=True)
        # Each Synapse is one process: filling both at once keeps both cores busy.
        with ThreadPoolExecutor(2) as pool:
            without_setup = pool.submit(set_up, "without module", without_hs, members, seated)
            with_setup = pool.submit(set_up, "with module", with_hs, members, seated)
            without, with_ = without_setup.result(), with_setup.result()
        check_module(without, loaded=False)
        check_module(with_, loaded=True)
        asyncio.run(measure(without, with_, workload))
        report(without, with_, workload, room=f"{members} joined members", targets=TARGETS)
        # The module's cost in time as well as a ratio: here a message costs
        # Synapse several times as long as in module_overhead's two-member
        # room, which dilutes a fixed cost per message in the ratio.
        a, b = (1000 / median(target.results, "throughput") for target in (without, with_))
        print(
            f"time per message (1 / throughput): without {a:.1f} ms, with {b:.1f} ms, "
            f"difference {b - a:+.1f} ms"
        )
        return b - a


def main(smoke: bool = False, members: Sequence[int] | None = None) -> None:
    """Each size: start both homeservers, fill a room on each, measure, print the
    table; always stop them. Then the module's extra time per message by size.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``."""
    sizes = SMOKE if smoke else FULL
    if members is not None:
        sizes = attrs.evolve(sizes, members=tuple(members))
    extra = {size: run_size(size, sizes.workload) for size in sizes.members}
    smallest, largest = min(extra), max(extra)
    by_size = ", ".join(f"{size} members {ms:+.1f} ms" for size, ms in extra.items())
    verdict = "met" if extra[largest] <= extra[smallest] else "MISSED"
    print(
        f"\nthe module's extra time per message by room size: {by_size}; "
        f"at {largest} no more than at {smallest}: {verdict}"
    )


if __name__ == "__main__":
    main(members=[int(arg) for arg in sys.argv[1:]] or None)
