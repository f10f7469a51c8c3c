"""The retention sweep's throughput against redactions sent through the client API.

The sweep (``synapse_police_policy/retention/sweep.py``) redacts expired
content one event at a time, as the system user, through
``ModuleApi.create_and_send_event_into_room``. The baseline is what a room
member with the power to redact gets out of the same Synapse process the usual
way: ``PUT /_matrix/client/v3/rooms/{room}/redact/{event_id}/{txn}``, one
request at a time (the sweep, too, waits for each redaction before the next),
on a keep-alive connection.

One Synapse process on SQLite with the module (test rate limits, so alice's
redactions are not throttled; the module's are never rate-limited), started
again between the phases on the same database (``RetentionServer``):

1. set-up (not timed), device lifetime ``LONG`` so nothing expires: alice
   creates rooms A and B and invites bob; bob joins; the system user joins both
   in the background (waited for). Bob sends ``EVENTS`` ``m.room.encrypted``
   events into A, then as many into B (4 sends in flight).
2. baseline, on a freshly started process (device lifetime still ``LONG``):
   alice redacts bob's events in B through the client API, in the order they
   were sent, with the sweep's reason.
3. sweep, on a freshly started process with device lifetime ``SHORT``: every
   event of A and B is now expired, so the sweep's first run
   (``SWEEP_INTERVAL`` after start-up, when start-up work has settled) walks
   them all in one go (20 batches of 200; a run walks a backlog until it has
   caught up or spent 60 s, the least it may at this interval): it redacts A's
   events and skips B's, which already carry alice's redaction (after the last
   of A's, so outside the measured span). It also redacts the rooms' invites
   (state the joins superseded), which its log line counts with A's events.

Both phases start on a fresh process, so neither has the events it redacts
in Synapse's caches while the other does. Both rates come from the same
place, the database: the ``received_ts`` of the redaction events (when Synapse
persisted them), rate = (count - 1) / (last - first). The sweep's rate thus
includes its own queries between batches (the events after the watermark,
which of them are already redacted, the watermark update); the client's
includes the HTTP round trip. The client's own clock (requests over elapsed time) is printed
for information, and the sweep's log lines must account for every redaction.

Bob sends the same kind of events into both rooms, the rooms have the same
members and power levels, and both redactions carry the same reason, so the
redaction events are the same size; the only difference is who sends them
and how.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import synapse

from devtools.homeserver import Homeserver, HomeserverSpec, free_port, policy_aligned_settings
from synapse_police_policy.retention.store import _set_watermark_txn, _watermark_txn
from synapse_police_policy.retention.sweep import REASON

from .accounts import BenchError, database_path, enrolled_users, wait_for_module_tables
from .module_overhead import MEGOLM, PASSWORD, ok, print_table, room_path

SERVER_NAME = "bench.localhost"
#: expired events the sweep redacts; as many redactions go through the client API
EVENTS = 2000
#: the smoke test's (``main(smoke=True)``): the same path in seconds, the rates mean nothing
SMOKE_EVENTS = 30
#: a device lifetime nothing reaches during the bench (set-up, baseline)
LONG = "1h"
#: a device lifetime everything sent before the restart has passed
SHORT = "1s"
#: the sweep's first run comes this long after start-up; one run walks all the
#: bench's events unless it takes over 60 s (EVENT_WALK_MIN_S of the sweep; the
#: report says how many runs the redactions took)
SWEEP_INTERVAL = "5s"
#: audit lifetime (the homeserver's retention settings follow from it); longer than the bench
AUDIT = "1d"
#: PUT /send requests in flight while filling rooms (not timed)
SEND_CONCURRENCY = 4
#: how long the sweep may take to redact what it should
SWEEP_TIMEOUT_S = 300.0
SYSTEM_LOCALPART = "policy"

RATE_TARGET = 0.8

_txn_counter = itertools.count()
SWEEP_LINE = re.compile(r"Retention sweep: (\d+) events redacted, (\d+) skipped")


def module_config(device_lifetime: str) -> dict[str, Any]:
    return {
        "retention": {
            "device_lifetime": device_lifetime,
            "audit_lifetime": AUDIT,
            "sweep_interval": SWEEP_INTERVAL,
        }
    }


class RetentionServer:
    """A homeserver with the module in a directory of its own, started again
    with another device lifetime when needed; the database stays."""

    def __init__(self, label: str, directory: Path) -> None:
        self.label = label
        self.directory = directory
        self.port = free_port()
        self.hs: Homeserver | None = None

    def start(self, device_lifetime: str) -> Homeserver:
        if self.hs is not None:
            self.hs.stop()
        self.hs = Homeserver(self.spec(module_config(device_lifetime)))
        self.hs.start()
        self.wait_for_module_tables(self.hs)
        return self.hs

    def spec(self, config: dict[str, Any]) -> HomeserverSpec:
        """The homeserver for a module config (subclasses add a database, settings)."""
        return HomeserverSpec(
            directory=self.directory,
            server_name=SERVER_NAME,
            http_port=self.port,
            module_config=config,
            extra=policy_aligned_settings(SERVER_NAME, config),
            for_tests=True,
        )

    def wait_for_module_tables(self, hs: Homeserver) -> None:
        wait_for_module_tables(hs)

    def stop(self) -> None:
        if self.hs is not None:
            self.hs.stop()

    def running(self) -> Homeserver:
        """The running homeserver; fails when Synapse exited."""
        if self.hs is None or self.hs.process is None or self.hs.process.poll() is not None:
            raise BenchError(f"{self.label}: Synapse is not running")
        return self.hs

    @property
    def database(self) -> Path:
        if self.hs is None:
            raise BenchError(f"{self.label}: never started")
        return database_path(self.hs)

    @property
    def log_path(self) -> Path:
        return self.directory / "homeserver.log"

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0


ServerT = TypeVar("ServerT", bound=RetentionServer)


@contextmanager
def stopped_at_the_end(servers: list[ServerT], backend: str) -> Iterator[list[ServerT]]:
    """The servers (not started); always stopped at the end, their directories
    kept when the block failed."""
    print(f"homeservers: Synapse {synapse.__version__}, {backend}, with the module", flush=True)
    succeeded = False
    try:
        yield servers
        succeeded = True
    finally:
        for server in servers:
            server.stop()
            if succeeded:
                shutil.rmtree(server.directory, ignore_errors=True)
            else:
                print(f"kept {server.directory} (homeserver.log, stdout.log) for inspection", file=sys.stderr)


def retention_servers(labels: Sequence[str]) -> AbstractContextManager[list[RetentionServer]]:
    """A RetentionServer per label on SQLite (``stopped_at_the_end``)."""
    return stopped_at_the_end(
        [RetentionServer(label, Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))) for label in labels],
        "SQLite",
    )


def wait_for_system_user(hs: Homeserver, token: str, room_id: str, timeout: float = 30.0) -> None:
    """The module invites the system user after a room is created and it joins
    in the background; the sweep only redacts in rooms it joined."""
    path = f"{room_path(room_id)}/state/m.room.member/{urllib.parse.quote(hs.user_id(SYSTEM_LOCALPART))}"
    deadline = time.monotonic() + timeout
    while True:
        status, member = hs.request("GET", path, token=token)
        if status == 200 and member.get("membership") == "join":
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the system user did not join {room_id} within {timeout:.0f}s")
        time.sleep(0.2)


def create_room(hs: Homeserver, creator_token: str, members: Sequence[tuple[str, str]] = ()) -> str:
    """A room of the creator, the (localpart, token) members and the system user."""
    room_id: str = ok(
        *hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=creator_token), "createRoom"
    )["room_id"]
    for localpart, token in members:
        invite = {"user_id": hs.user_id(localpart)}
        ok(*hs.request("POST", f"{room_path(room_id)}/invite", invite, token=creator_token), "invite")
        ok(*hs.request("POST", f"{room_path(room_id)}/join", {}, token=token), f"join of {localpart}")
    wait_for_system_user(hs, creator_token, room_id)
    return room_id


def _b64(n_bytes: int) -> str:
    return base64.b64encode(os.urandom(n_bytes)).decode().rstrip("=")


def send_events(hs: Homeserver, token: str, rooms: Sequence[str], count: int) -> list[str]:
    """``count`` m.room.encrypted events (about the size of a short message),
    round robin over ``rooms``, SEND_CONCURRENCY in flight; their event IDs."""

    async def run() -> list[str]:
        headers = {"Authorization": f"Bearer {token}"}
        event_ids: list[str | None] = [None] * count
        pending = iter(range(count))
        sender_key, session_id = _b64(32), _b64(32)
        connector = aiohttp.TCPConnector(limit=SEND_CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for i in pending:
                    content = {
                        "algorithm": MEGOLM,
                        "ciphertext": _b64(150),
                        "sender_key": sender_key,
                        "session_id": session_id,
                        "device_id": "BENCH",
                    }
                    room = rooms[i % len(rooms)]
                    url = f"{hs.url}{room_path(room)}/send/m.room.encrypted/fill-{next(_txn_counter)}"
                    async with session.put(url, json=content, headers=headers) as response:
                        body = await response.json(content_type=None)
                        if response.status != 200:
                            raise BenchError(f"send failed: HTTP {response.status} {body}")
                    event_ids[i] = body["event_id"]

            await asyncio.gather(*(worker() for _ in range(SEND_CONCURRENCY)))
        return [event_id for event_id in event_ids if event_id is not None]

    return asyncio.run(run())


def redaction_times(hs: Homeserver, sender: str, event_ids: Sequence[str]) -> list[int]:
    """``received_ts`` (ms) of the redactions ``sender`` sent of ``event_ids``, in order."""
    rows = hs.query(
        "SELECT r.redacts, e.received_ts FROM redactions AS r JOIN events AS e ON e.event_id = r.event_id"
        " WHERE e.sender = ?",
        (sender,),
    )
    wanted = set(event_ids)
    return sorted(int(ts) for redacts, ts in rows if redacts in wanted)


def rate(times_ms: Sequence[int]) -> float:
    """Redactions per second between the first and the last one."""
    if len(times_ms) < 2 or times_ms[-1] <= times_ms[0]:
        raise BenchError(f"cannot take a rate from {len(times_ms)} timestamps")
    return (len(times_ms) - 1) / ((times_ms[-1] - times_ms[0]) / 1000)


def sweep_lines(server: RetentionServer, offset: int) -> list[tuple[int, int]]:
    """(redacted, skipped) of every "Retention sweep:" line logged after ``offset``."""
    with server.log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf8", "replace")
    return [(int(redacted), int(skipped)) for redacted, skipped in SWEEP_LINE.findall(text)]


def wait_for_sweep(server: RetentionServer, offset: int, redactions: int) -> list[tuple[int, int]]:
    """Wait until the sweep's log lines since ``offset`` add up to ``redactions``
    (reading the log costs the server nothing, unlike polling its database)."""
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while True:
        lines = sweep_lines(server, offset)
        if sum(redacted for redacted, _ in lines) >= redactions:
            return lines
        server.running()
        if time.monotonic() > deadline:
            raise BenchError(
                f"{server.label}: the sweep logged {lines} within {SWEEP_TIMEOUT_S:.0f}s, "
                f"expected {redactions} redactions"
            )
        time.sleep(0.5)


def watermark(path: Path) -> int:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        return _watermark_txn(db.cursor())


def set_watermark(path: Path, position: int) -> None:
    """Where the sweep goes on from (the module's own statement; server stopped)."""
    with closing(sqlite3.connect(path, timeout=30)) as db, db:
        _set_watermark_txn(db.cursor(), position)


def redact_via_client(hs: Homeserver, token: str, room_id: str, event_ids: Sequence[str]) -> float:
    """Redact each event with PUT .../redact, one request at a time on a
    keep-alive connection; returns the elapsed seconds on the client's clock."""
    connection = http.client.HTTPConnection(hs.spec.bind_address, hs.spec.http_port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"reason": REASON})
    started = time.perf_counter()
    try:
        for event_id in event_ids:
            path = (
                f"{room_path(room_id)}/redact/{urllib.parse.quote(event_id, safe='')}/"
                f"redact-{next(_txn_counter)}"
            )
            connection.request("PUT", path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            if response.status != 200:
                raise BenchError(f"redaction of {event_id} failed: HTTP {response.status} {raw[:300]!r}")
    finally:
        connection.close()
    return time.perf_counter() - started


def main(smoke: bool = False) -> None:
    """Set up, redact through the client API, then let the sweep redact; print the table.
    ``smoke``: ``SMOKE_EVENTS`` events instead of ``EVENTS``."""
    events = SMOKE_EVENTS if smoke else EVENTS
    with retention_servers(["retention-sweep"]) as (server,):
        started = time.perf_counter()
        hs = server.start(LONG)
        alice, bob = enrolled_users(hs, ["alice", "bob"], PASSWORD)
        room_a = create_room(hs, alice, [("bob", bob)])
        room_b = create_room(hs, alice, [("bob", bob)])
        sent_a = send_events(hs, bob, [room_a], events)
        sent_b = send_events(hs, bob, [room_b], events)
        print(
            f"  set-up: rooms A and B (alice, bob, the system user), {events} events by bob in each, "
            f"device lifetime {LONG}: {time.perf_counter() - started:.0f} s (not timed)",
            flush=True,
        )

        # Baseline: alice redacts B's events through the client API.
        hs = server.start(LONG)
        elapsed = redact_via_client(hs, alice, room_b, sent_b)
        client_times = redaction_times(hs, hs.user_id("alice"), sent_b)
        system_user = hs.user_id(SYSTEM_LOCALPART)
        if len(client_times) != events or redaction_times(hs, system_user, [*sent_a, *sent_b]):
            raise BenchError(
                f"baseline: {len(client_times)} of {events} redactions by alice, and the sweep must not "
                "have redacted anything yet"
            )
        client_rate = rate(client_times)
        print(
            f"  client API: {events} redactions by alice, {client_rate:.1f}/s by the database's "
            f"timestamps, {events / elapsed:.1f}/s by the client's clock",
            flush=True,
        )

        # The sweep, with everything expired.
        offset = server.log_size()
        hs = server.start(SHORT)
        lines = wait_for_sweep(server, offset, events)
        sweep_times = redaction_times(hs, system_user, sent_a)
        swept_b = redaction_times(hs, system_user, sent_b)
        if len(sweep_times) != events or swept_b:
            raise BenchError(
                f"sweep: {len(sweep_times)} of A's {events} events redacted by the system user, "
                f"{len(swept_b)} of B's (already redacted by alice: must be 0)"
            )
        sweep_rate = rate(sweep_times)
        print(
            f"  sweep: {events} redactions by the system user, {sweep_rate:.1f}/s by the database's "
            f"timestamps; log: {'; '.join(f'{r} redacted, {s} skipped' for r, s in lines)} "
            f"({len(lines)} run{'s' if len(lines) > 1 else ''}); watermark {watermark(server.database)}",
            flush=True,
        )
        server.stop()
        report(client_rate, sweep_rate, client_times, sweep_times)


def report(client_rate: float, sweep_rate: float, client_times: list[int], sweep_times: list[int]) -> None:
    events = len(sweep_times)
    ratio = sweep_rate / client_rate
    target = f">= {RATE_TARGET:.2f}"
    lines: list[tuple[str, ...]] = [
        ("metric", "client API (PUT /redact)", "retention sweep", "ratio", "target"),
        ("redactions/s", f"{client_rate:.1f}", f"{sweep_rate:.1f}", f"{ratio:.3f}", target),
        (
            "first to last redaction (s)",
            f"{(client_times[-1] - client_times[0]) / 1000:.1f}",
            f"{(sweep_times[-1] - sweep_times[0]) / 1000:.1f}",
            "-",
            "-",
        ),
        (
            "time per redaction (ms)",
            f"{1000 / client_rate:.2f}",
            f"{1000 / sweep_rate:.2f}",
            "-",
            "-",
        ),
    ]
    print(
        f"\n{events} redactions each way, one at a time, same process (restarted between), "
        "rates from the redactions' received_ts: (count - 1) / (last - first); ratio = sweep / client API"
    )
    print_table(lines)
    print()
    print(f"sweep throughput: ratio {ratio:.3f} {target}: {'met' if ratio >= RATE_TARGET else 'MISSED'}")
