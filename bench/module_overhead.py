"""What the policy module costs on the message path.

Two Synapse processes run side by side (SQLite, rate limits lifted): one
with the module and its aligned homeserver settings, one without. The same
workload runs against both in alternating rounds (A B, B A, ...), so drift of
the machine hits both alike, and the median of the rounds is compared:

* throughput: a few concurrent senders PUT encrypted-looking events into one
  room while a second user long-polls ``/sync``; messages / (first send to
  last arrival);
* latency: for each message, PUT issued until the receiver's ``/sync``
  returned it (p50, p95).

The module refuses clear-text ``m.room.message``, so the traffic is
``m.room.encrypted`` with random ciphertext (the server does not verify it).
Sender and receiver log in on enrolled devices (``bench/accounts.py``) on both
servers: the module refuses events from devices the MDM did not enroll.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import synapse

from devtools.homeserver import Homeserver, HomeserverSpec, free_port, policy_aligned_settings

from .accounts import BenchError, enrolled_users

#: measured messages per run
MESSAGES = 250
#: messages sent once per server before the rounds (cold caches, first queries)
INITIAL_WARMUP = 200
#: messages sent at the start of every run and not counted (gets /sync going)
WARMUP = 40
#: runs per server; rounds alternate which server goes first
ROUNDS = 10
#: PUT /send requests in flight at once (2 cores are shared with Synapse)
CONCURRENCY = 4
SYNC_TIMEOUT_MS = 30000
#: how long a run may wait for its events to come down /sync
ARRIVAL_TIMEOUT_S = 60.0

THROUGHPUT_TARGET = 0.95
LATENCY_TARGET = 1.05

MEGOLM = "m.megolm.v1.aes-sha2"
PASSWORD = "bench-" + secrets.token_urlsafe(8)
_txn_counter = itertools.count()


def _unpadded_b64(n_bytes: int) -> str:
    return base64.b64encode(os.urandom(n_bytes)).decode().rstrip("=")


@attrs.frozen
class Sizes:
    """The workload of a measurement: full size, or the smoke test's (``SMOKE``)."""

    #: measured messages per run
    messages: int
    #: messages sent once per server before the rounds
    initial_warmup: int
    #: messages sent at the start of every run and not counted
    warmup: int
    #: runs per server
    rounds: int


FULL = Sizes(messages=MESSAGES, initial_warmup=INITIAL_WARMUP, warmup=WARMUP, rounds=ROUNDS)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(messages=8, initial_warmup=4, warmup=2, rounds=2)


@attrs.frozen
class RunResult:
    throughput: float
    p50_ms: float
    p95_ms: float


@attrs.define
class Target:
    """One homeserver with a room, a sender and a receiver on another device,
    plus the receiver's /sync position (carried from run to run)."""

    label: str
    homeserver: Homeserver
    room_id: str
    sender_token: str
    receiver_token: str
    filter_id: str
    since: str
    #: what a Megolm session of the sender would put in every event
    sender_key: str = attrs.field(factory=lambda: _unpadded_b64(32))
    session_id: str = attrs.field(factory=lambda: _unpadded_b64(32))
    results: list[RunResult] = attrs.field(factory=list)
    #: where the sender sends, when not ``homeserver`` (a federating peer)
    sender_homeserver: Homeserver | None = None

    @property
    def sender_url(self) -> str:
        return (self.sender_homeserver or self.homeserver).url


def ok(status: int, body: Any, what: str) -> Any:
    if status != 200:
        raise BenchError(f"{what} failed: HTTP {status} {body}")
    return body


def room_path(room_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id, safe='')}"


def set_up(label: str, hs: Homeserver) -> Target:
    """Users on enrolled devices, room and /sync filter, through the blocking
    helpers (setup is not timed)."""
    sender_token, receiver_token = enrolled_users(hs, ["sender", "receiver"], PASSWORD)
    room = ok(*hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=sender_token), "createRoom")
    room_id = room["room_id"]
    receiver_id = hs.user_id("receiver")
    ok(
        *hs.request("POST", f"{room_path(room_id)}/invite", {"user_id": receiver_id}, token=sender_token),
        "invite",
    )
    ok(*hs.request("POST", f"{room_path(room_id)}/join", {}, token=receiver_token), "join")
    filter_id, since = sync_position(hs, room_id, receiver_id, receiver_token)
    return Target(label, hs, room_id, sender_token, receiver_token, filter_id, since)


def sync_position(hs: Homeserver, room_id: str, receiver_id: str, receiver_token: str) -> tuple[str, str]:
    """The receiver's /sync filter for the room and where its incremental syncs start."""
    # Only this room's encrypted timeline, with a limit no batch reaches, so an
    # incremental sync is never "limited" and never skips an event.
    sync_filter = {
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "rooms": [room_id],
            "timeline": {"limit": 1000, "types": ["m.room.encrypted"]},
            "state": {"not_types": ["*"]},
            "ephemeral": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        },
    }
    filter_path = f"/_matrix/client/v3/user/{urllib.parse.quote(receiver_id)}/filter"
    filter_id = ok(*hs.request("POST", filter_path, sync_filter, token=receiver_token), "filter")["filter_id"]
    sync = ok(
        *hs.request("GET", f"/_matrix/client/v3/sync?timeout=0&filter={filter_id}", token=receiver_token),
        "initial sync",
    )
    return filter_id, sync["next_batch"]


def check_module(target: Target, *, loaded: bool, token: str | None = None) -> None:
    """Make sure the A/B is what it claims: only the module refuses clear text
    (sent by ``token``, a user of ``target.homeserver``; the sender by default)."""
    txn = f"probe-{next(_txn_counter)}"
    status, body = target.homeserver.request(
        "PUT",
        f"{room_path(target.room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": "clear text probe"},
        token=token or target.sender_token,
    )
    if (status != 200) != loaded:
        expected = "refused" if loaded else "accepted"
        raise BenchError(f"{target.label}: clear-text probe should be {expected}, got HTTP {status} {body}")


class Receiver:
    """The receiving device: long-polls /sync and notes when each ciphertext arrived."""

    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self._session = session
        self._target = target
        self.arrived: dict[str, float] = {}
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        target = self._target
        url = f"{target.homeserver.url}/_matrix/client/v3/sync"
        headers = {"Authorization": f"Bearer {target.receiver_token}"}
        while True:
            params = {"since": target.since, "timeout": str(SYNC_TIMEOUT_MS), "filter": target.filter_id}
            async with self._session.get(url, params=params, headers=headers) as response:
                raw = await response.read()
                now = time.perf_counter()
                if response.status != 200:
                    raise BenchError(f"{target.label}: /sync failed: HTTP {response.status} {raw[:200]!r}")
                body = await response.json()
            room = body.get("rooms", {}).get("join", {}).get(target.room_id, {})
            for event in room.get("timeline", {}).get("events", []):
                ciphertext = event.get("content", {}).get("ciphertext")
                if isinstance(ciphertext, str):
                    self.arrived.setdefault(ciphertext, now)
            target.since = body["next_batch"]
            async with self._progress:
                self._progress.notify_all()

    async def wait_for(self, ciphertexts: Sequence[str], task: asyncio.Task[None]) -> None:
        """Wait until every ciphertext came down /sync; fail fast if the receiver died."""

        def all_arrived() -> bool:
            return task.done() or all(c in self.arrived for c in ciphertexts)

        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(all_arrived), ARRIVAL_TIMEOUT_S)
        except TimeoutError:
            missing = sum(c not in self.arrived for c in ciphertexts)
            raise BenchError(
                f"{self._target.label}: {missing} of {len(ciphertexts)} events did not come down "
                f"/sync within {ARRIVAL_TIMEOUT_S:.0f}s"
            ) from None
        if task.done():
            task.result()
            raise BenchError(f"{self._target.label}: receiver stopped early")


async def send_all(
    session: aiohttp.ClientSession, target: Target, ciphertexts: Iterable[str], sent: dict[str, float]
) -> None:
    """CONCURRENCY workers share one iterator, so requests stay in flight back to back."""
    headers = {"Authorization": f"Bearer {target.sender_token}"}
    base = f"{target.sender_url}{room_path(target.room_id)}/send/m.room.encrypted"
    pending: Iterator[str] = iter(ciphertexts)

    async def worker() -> None:
        for ciphertext in pending:
            content = {
                "algorithm": MEGOLM,
                "ciphertext": ciphertext,
                "sender_key": target.sender_key,
                "session_id": target.session_id,
                "device_id": "BENCH",
            }
            url = f"{base}/bench-{next(_txn_counter)}"
            sent[ciphertext] = time.perf_counter()
            async with session.put(url, json=content, headers=headers) as response:
                if response.status != 200:
                    text = await response.text()
                    raise BenchError(f"{target.label}: send failed: HTTP {response.status} {text[:200]}")
                await response.read()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def ciphertexts(n: int) -> list[str]:
    # ~200 characters, the size of a short Megolm-encrypted text message
    return [_unpadded_b64(150) for _ in range(n)]


async def exchange(
    session: aiohttp.ClientSession, target: Target, batches: Sequence[Sequence[str]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Send each batch and wait until it came down /sync; returns send and arrival times."""
    receiver = Receiver(session, target)
    task = asyncio.create_task(receiver.run())
    sent: dict[str, float] = {}
    try:
        for batch in batches:
            await send_all(session, target, batch, sent)
            await receiver.wait_for(batch, task)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    return sent, receiver.arrived


async def one_run(
    session: aiohttp.ClientSession, target: Target, messages: int = MESSAGES, warmup: int = WARMUP
) -> RunResult:
    batch = ciphertexts(messages)
    sent, arrived = await exchange(session, target, [ciphertexts(warmup), batch])
    latencies = [(arrived[c] - sent[c]) * 1000 for c in batch]
    elapsed = max(arrived[c] for c in batch) - min(sent[c] for c in batch)
    return RunResult(
        throughput=len(batch) / elapsed,
        p50_ms=statistics.median(latencies),
        p95_ms=statistics.quantiles(latencies, n=20, method="inclusive")[18],
    )


async def measure(without: Target, with_: Target, sizes: Sizes = FULL, *, unit: str = "msgs/s") -> None:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY + 4)
    timeout = aiohttp.ClientTimeout(total=SYNC_TIMEOUT_MS / 1000 + 30)
    rounds = sizes.rounds
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for target in (without, with_):
            await exchange(session, target, [ciphertexts(sizes.initial_warmup)])
        for round_no in range(rounds):
            order = (without, with_) if round_no % 2 == 0 else (with_, without)
            for target in order:
                result = await one_run(session, target, sizes.messages, sizes.warmup)
                target.results.append(result)
                print(
                    f"  round {round_no + 1:>{len(str(rounds))}}/{rounds} {target.label:<14} "
                    f"{result.throughput:7.1f} {unit}  p50 {result.p50_ms:6.1f} ms  "
                    f"p95 {result.p95_ms:6.1f} ms",
                    flush=True,
                )


def median(results: list[RunResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def report(
    without: Target,
    with_: Target,
    sizes: Sizes = FULL,
    *,
    room: str = "",
    targets: tuple[float, float] = (THROUGHPUT_TARGET, LATENCY_TARGET),
) -> None:
    """The table; ``room`` (e.g. "500 joined members") goes into its header;
    ``targets``: the throughput ratio's floor and the latency ratios' ceiling."""
    throughput_target, latency_target = targets
    rows = [
        ("throughput (msgs/s)", "throughput", f">= {throughput_target:.2f}"),
        ("latency p50 (ms)", "p50_ms", f"<= {latency_target:.2f}"),
        ("latency p95 (ms)", "p95_ms", f"<= {latency_target:.2f}"),
    ]
    header = ("metric", "without module", "with module", "ratio", "target")
    lines: list[tuple[str, ...]] = [header]
    verdicts: list[str] = []
    for name, field, target_text in rows:
        a, b = median(without.results, field), median(with_.results, field)
        ratio = b / a
        met = ratio >= throughput_target if field == "throughput" else ratio <= latency_target
        lines.append((name, f"{a:.1f}", f"{b:.1f}", f"{ratio:.3f}", target_text))
        verdicts.append(f"{name}: ratio {ratio:.3f} {target_text}: {'met' if met else 'MISSED'}")
    where = f" into a room of {room}" if room else ""
    print(
        f"\nmedian of {sizes.rounds} rounds, {sizes.messages} messages each{where}, "
        f"{CONCURRENCY} sends in flight (ratio = with / without)"
    )
    print_table(lines)
    print()
    for verdict in verdicts:
        print(verdict)


def print_table(lines: Sequence[tuple[str, ...]]) -> None:
    """Aligned columns; the first line is the header, the first column the name."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        cells = [
            cell.ljust(w) if j == 0 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print(" | ".join(cells))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


@contextmanager
def homeservers(
    labels: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    module_config: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Homeserver]]:
    """Start a homeserver per label, all at once: the one labelled
    ``without-module`` without the module, the others with it; always stop
    them, and keep their directories when the block failed.

    ``extra``: homeserver settings for all, on top of the policy's.
    ``module_config``: the module's config (default: empty, all defaults); the
    homeserver settings of the policy follow from it on every server.
    """
    directories = {label: Path(tempfile.mkdtemp(prefix=f"bench-{label}-")) for label in labels}
    servers: dict[str, Homeserver] = {}
    succeeded = False
    try:
        for label, directory in directories.items():
            spec = HomeserverSpec(
                directory=directory,
                server_name="bench.localhost",
                http_port=free_port(),
                module_config=None if label == "without-module" else dict(module_config or {}),
                # Every server gets the homeserver settings of the policy, so the
                # only difference measured is the module itself.
                extra={**policy_aligned_settings("bench.localhost", module_config or {}), **(extra or {})},
                for_tests=True,
            )
            servers[label] = Homeserver(spec)
        count = f"{len(servers)} homeservers" if len(servers) > 1 else "a homeserver"
        print(f"starting {count} (Synapse {synapse.__version__}, SQLite) ...", flush=True)
        # Start-up is mostly waiting; in parallel it takes half as long.
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(Homeserver.start, servers.values()))
        yield servers
        succeeded = True
    finally:
        for hs in servers.values():
            hs.stop()
        for directory in directories.values():
            if succeeded:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                print(f"kept {directory} (homeserver.log, stdout.log) for inspection", file=sys.stderr)


@contextmanager
def homeserver_pair(
    extra: Mapping[str, Any] | None = None, module_config: Mapping[str, Any] | None = None
) -> Iterator[tuple[Homeserver, Homeserver]]:
    """The homeserver without the module and the one with it (see ``homeservers``)."""
    with homeservers(("without-module", "with-module"), extra, module_config) as servers:
        yield servers["without-module"], servers["with-module"]


def main(smoke: bool = False) -> None:
    """Start both homeservers, measure, print the table; always stop them.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``."""
    sizes = SMOKE if smoke else FULL
    with homeserver_pair() as (without_hs, with_hs):
        without = set_up("without module", without_hs)
        with_ = set_up("with module", with_hs)
        check_module(without, loaded=False)
        check_module(with_, loaded=True)
        asyncio.run(measure(without, with_, sizes))
        report(without, with_, sizes)
