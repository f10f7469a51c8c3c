"""What the policy module costs on inbound federation.

Three Synapse processes on this machine (SQLite, test rate limits), each
with a TLS federation listener on its own loopback address: an allowed peer
without the module, and two of ours, one with the module and one without.
Both of ours get the policy's homeserver settings (federation whitelist: own
name and the peer), so only the module differs. The peer hosts one room per
server of ours; a user of ours joined it over federation.

A user of the peer keeps a few encrypted-looking events in flight into the
room while our user long-polls ``/sync`` on our server; every event crosses
the federation link (the peer's transaction to us, where the module checks
each PDU of the allowed sender). Rounds alternate between our two servers
(A B, B A, ...) and the medians are compared:

* throughput: events / (first send on the peer to last arrival on ours);
* latency (for information): send on the peer until our ``/sync`` returned it.

Our receiver logs in on an enrolled device (``bench/accounts.py``) on both of
ours. The peer's work is in both paths alike; the target is on throughput only.
The peer takes sends about twice as fast as our server takes them in: Synapse
stages inbound PDUs and handles those of one room one at a time, so the
latency figures are mostly queueing on our side.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import synapse

from devtools.homeserver import Homeserver, HomeserverSpec, free_port, policy_aligned_settings

from . import module_overhead
from .accounts import BenchError, enrolled_user
from .module_overhead import (
    CONCURRENCY,
    MEGOLM,
    PASSWORD,
    Target,
    check_module,
    measure,
    median,
    ok,
    print_table,
    room_path,
    sync_position,
)

#: measured events per run
MESSAGES = 120
#: events sent once per server before the rounds (cold caches, first transactions)
INITIAL_WARMUP = 60
#: events sent at the start of every run and not counted
WARMUP = 20
#: runs per server; rounds alternate which server goes first
ROUNDS = 10
FULL = module_overhead.Sizes(messages=MESSAGES, initial_warmup=INITIAL_WARMUP, warmup=WARMUP, rounds=ROUNDS)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = module_overhead.SMOKE
#: how long the invite may take to reach our server
INVITE_TIMEOUT_S = 30.0

THROUGHPUT_TARGET = 0.95

PEER_ADDRESS = "127.0.0.13"
OURS_ADDRESSES = {"with-module": "127.0.0.11", "without-module": "127.0.0.12"}


def _spec(label: str, address: str, peer_name: str | None = None) -> HomeserverSpec:
    """A homeserver federating on ``address``; with ``peer_name`` one of ours
    that allows that peer, with the module only when ``label`` says so."""
    federation_port = free_port(address)
    server_name = f"{address}:{federation_port}"
    module_config: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    if peer_name is not None:
        policy = {"federation": {"allowed_servers": [peer_name]}}
        module_config = policy if label == "with-module" else None
        # Both of ours get the homeserver settings of the policy (the federation
        # whitelist among them), so the only difference measured is the module.
        extra = policy_aligned_settings(server_name, policy)
    return HomeserverSpec(
        directory=Path(tempfile.mkdtemp(prefix=f"bench-fed-{label}-")),
        server_name=server_name,
        http_port=free_port(address),
        bind_address=address,
        federation_port=federation_port,
        module_config=module_config,
        extra=extra,
        for_tests=True,
    )


def _invited(hs: Homeserver, token: str, room_id: str) -> bool:
    sync = ok(*hs.request("GET", "/_matrix/client/v3/sync?timeout=0", token=token), "sync")
    return room_id in sync.get("rooms", {}).get("invite", {})


def set_up(label: str, peer: Homeserver, peer_token: str, hs: Homeserver) -> Target:
    """A room on the peer that our receiver (on an enrolled device) joined over
    federation (not timed)."""
    receiver_token = enrolled_user(hs, "receiver", PASSWORD)
    encryption = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
    room = ok(
        *peer.request(
            "POST", "/_matrix/client/v3/createRoom", {"initial_state": [encryption]}, token=peer_token
        ),
        "createRoom on the peer",
    )
    room_id = room["room_id"]
    receiver_id = hs.user_id("receiver")
    ok(
        *peer.request("POST", f"{room_path(room_id)}/invite", {"user_id": receiver_id}, token=peer_token),
        "invite",
    )
    deadline = time.monotonic() + INVITE_TIMEOUT_S
    while not _invited(hs, receiver_token, room_id):
        if time.monotonic() > deadline:
            raise BenchError(f"{label}: the peer's invite did not arrive within {INVITE_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
    via = urllib.parse.quote(peer.server_name)
    join_path = f"/_matrix/client/v3/join/{urllib.parse.quote(room_id, safe='')}?server_name={via}"
    ok(*hs.request("POST", join_path, {}, token=receiver_token), "join over federation")
    filter_id, since = sync_position(hs, room_id, receiver_id, receiver_token)
    return Target(label, hs, room_id, peer_token, receiver_token, filter_id, since, sender_homeserver=peer)


def report(without: Target, with_: Target, sizes: module_overhead.Sizes = FULL) -> None:
    rows = [
        ("inbound throughput (events/s)", "throughput", f">= {THROUGHPUT_TARGET:.2f}"),
        ("send-to-arrival latency p50 (ms)", "p50_ms", "-"),
        ("send-to-arrival latency p95 (ms)", "p95_ms", "-"),
    ]
    lines: list[tuple[str, ...]] = [("metric", "without module", "with module", "ratio", "target")]
    verdicts: list[str] = []
    for name, field, target_text in rows:
        a, b = median(without.results, field), median(with_.results, field)
        ratio = b / a
        lines.append((name, f"{a:.1f}", f"{b:.1f}", f"{ratio:.3f}", target_text))
        if field == "throughput":
            met = ratio >= THROUGHPUT_TARGET
            verdicts.append(f"{name}: ratio {ratio:.3f} {target_text}: {'met' if met else 'MISSED'}")
    print(
        f"\nmedian of {sizes.rounds} rounds, {sizes.messages} events each from the peer, {CONCURRENCY} "
        "sends in flight (ratio = with / without; latency for information, no target)"
    )
    print_table(lines)
    print()
    for verdict in verdicts:
        print(verdict)


def main(smoke: bool = False) -> None:
    """Start the peer and both of ours, measure, print the table; always stop them.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``."""
    sizes = SMOKE if smoke else FULL
    peer_spec = _spec("peer", PEER_ADDRESS)
    specs = {"peer": peer_spec}
    specs.update(
        {label: _spec(label, address, peer_spec.server_name) for label, address in OURS_ADDRESSES.items()}
    )
    servers: dict[str, Homeserver] = {}
    succeeded = False
    try:
        servers.update({label: Homeserver(spec) for label, spec in specs.items()})
        print(
            f"starting three federating homeservers (Synapse {synapse.__version__}, SQLite): "
            + ", ".join(f"{label} {hs.server_name}" for label, hs in servers.items())
            + " ...",
            flush=True,
        )
        # Start-up is mostly waiting; in parallel it takes a third as long.
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(Homeserver.start, servers.values()))
        peer = servers["peer"]
        peer_token = peer.register_user("sender", PASSWORD)
        if peer_token is None:
            raise BenchError("peer: bench user already exists on a fresh homeserver")
        without = set_up("without module", peer, peer_token, servers["without-module"])
        with_ = set_up("with module", peer, peer_token, servers["with-module"])
        check_module(without, loaded=False, token=without.receiver_token)
        check_module(with_, loaded=True, token=with_.receiver_token)
        asyncio.run(measure(without, with_, sizes, unit="events/s"))
        report(without, with_, sizes)
        succeeded = True
    finally:
        for hs in servers.values():
            hs.stop()
        for spec in specs.values():
            if succeeded:
                shutil.rmtree(spec.directory, ignore_errors=True)
            else:
                print(f"kept {spec.directory} (homeserver.log, stdout.log) for inspection", file=sys.stderr)
