"""What the policy module costs on the message path of a room with many members.

The workload and the comparison are those of ``module_overhead`` (two
Synapse processes on SQLite, with and without the module, a few encrypted
sends in flight, the receiver long-polling ``/sync``, alternating rounds,
medians), but the room has ``MEMBERS`` joined members instead of two.

Why: the module registers ``check_event_allowed``, and once any module does,
Synapse loads every current state event of the room for every locally
created event before calling it (``get_prev_state_ids`` then ``get_events``).
In a room of hundreds of members those are hundreds of ``m.room.member``
events per message, which the two-member room of ``module_overhead`` does
not show.

Setup is not timed: the members are registered through the shared-secret
admin API, their devices enrolled in one transaction and logged in
(``bench/accounts.py``: the module refuses joins and messages from devices the
MDM did not enroll), then invited by the room's creator and joined, a few
requests in flight, both servers at once. Both get the same members (checked
before measuring). The password hash cost is lowered on both
(``BCRYPT_ROUNDS``): it only matters for setting up the members, not on the
message path.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devtools.homeserver import Homeserver
from synapse_police_policy.config import RetentionConfig

from .accounts import BenchError, enrolled_users
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

#: joined members of the room, the sender and the receiver included
MEMBERS = 500
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
#: bcrypt cost of the members' passwords on both servers (Synapse's default,
#: 12, would make registering hundreds of members slow; 4 is bcrypt's minimum)
BCRYPT_ROUNDS = 4


def _localparts(members: int) -> list[str]:
    """The members besides the sender and the receiver, the same on every server."""
    return [f"member-{i:04d}" for i in range(1, members - 1)]


def set_up(label: str, hs: Homeserver, members: int = MEMBERS, *, seated: tuple[str, ...] = ()) -> Target:
    """A room of ``members`` joined members: the sender created it and invited
    everyone else, who joined (the module makes every room invite-only).
    ``seated``: the service users the module seats in every room besides them
    (the retention system user, with its default config)."""
    started = time.perf_counter()
    localparts = ["receiver", *_localparts(members)]
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

    joined = ok(
        *hs.request("GET", f"{room_path(room_id)}/joined_members", token=sender_token), "joined_members"
    )["joined"]
    expected = {hs.user_id(localpart) for localpart in ["sender", *localparts, *seated]}
    if set(joined) != expected:
        raise BenchError(
            f"{label}: {len(joined)} joined members, expected {len(expected)} "
            f"({len(expected - set(joined))} missing, {len(set(joined) - expected)} unexpected)"
        )
    state: list[dict[str, Any]] = ok(
        *hs.request("GET", f"{room_path(room_id)}/state", token=sender_token), "room state"
    )
    receiver_token = tokens[0]
    filter_id, since = sync_position(hs, room_id, hs.user_id("receiver"), receiver_token)
    print(
        f"  {label}: {len(joined)} joined members, {len(state)} state events, "
        f"set up in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Target(label, hs, room_id, sender_token, receiver_token, filter_id, since)


def main() -> None:
    """Start both homeservers, fill a room on each, measure, print the table; always stop them."""
    with homeserver_pair({"bcrypt_rounds": BCRYPT_ROUNDS}) as (without_hs, with_hs):
        print(f"filling a room with {MEMBERS} members on each (not timed) ...", flush=True)
        # Each Synapse is one process: filling both at once keeps both cores busy.
        with ThreadPoolExecutor(2) as pool:
            without_setup = pool.submit(set_up, "without module", without_hs)
            with_setup = pool.submit(set_up, "with module", with_hs, seated=(RetentionConfig().system_user,))
            without, with_ = without_setup.result(), with_setup.result()
        check_module(without, loaded=False)
        check_module(with_, loaded=True)
        asyncio.run(
            measure(
                without, with_, rounds=ROUNDS, messages=MESSAGES, warmup=WARMUP, initial_warmup=INITIAL_WARMUP
            )
        )
        report(without, with_, rounds=ROUNDS, messages=MESSAGES, room=f"{MEMBERS} joined members")
        # The module's cost in time as well as a ratio: here a message costs
        # Synapse about five times as long as in module_overhead's two-member
        # room, which dilutes a fixed cost per message in the ratio.
        a, b = (1000 / median(target.results, "throughput") for target in (without, with_))
        print(
            f"time per message (1 / throughput): without {a:.1f} ms, with {b:.1f} ms, "
            f"difference {b - a:+.1f} ms"
        )
