"""Does the retention sweep's cost follow the newly expired events, or the stored ones?

The sweep walks Synapse's ``events`` table in stream order from a durable
watermark, so sweeping 1,000 newly expired events should take as long on a
server that stores 100,000 events as on one that stores 10,000. Measured:
the time the sweep takes to redact ``NEW`` newly expired events on two
servers that differ only in the number of events stored behind the
watermark (``SIZES``).

Filling a server through the client API runs at about 70 events/s here (2
cores shared with the client), so 100,000 events would take over 20 minutes.
Instead each server gets ``TEMPLATES`` real events (bob's ``m.room.encrypted``
messages, 4 sends in flight, spread over ``ROOMS`` rooms with the system user
joined), and, with Synapse stopped, ``clone_events`` copies them in the
database until ``events`` holds ``SIZES`` rows: each copy is a proper event of
its template's room, with its own ``origin_server_ts``, content hash,
signature (the server's key) and the event ID that follows from them, so
Synapse loads it like any other (it checks that the ID matches; the client
API's ``/event`` and ``/messages`` served copies when this was written); rows in
``events``, ``event_json``, ``event_edges`` and ``event_to_state_groups`` as
Synapse writes them for a message, stream positions after the templates'. The
copies are not forward extremities, no later event points at them and they
have no push actions: history nobody reads during the bench, which is what
old events are to the sweep. Synapse's consumers of the events stream (the
federation sender, room stats, user directory, room forgetter, delayed
events) get their positions moved past the copies, as if they had taken them
in when they arrived; left behind, they work through all of them on the next
start, and on the 100,000 server the federation sender's catching up (9.5 s
of CPU) overlapped the measured sweep: a ratio of 2.28 in a first run, an
artefact of the fill, not a cost of the sweep.

A cycle on one server (only that server runs):

1. start with device lifetime ``LONG`` (nothing expires) and send ``NEW``
   events through the client API (4 in flight, over the rooms); stop;
2. put the watermark just below the first of them (with Synapse stopped, the
   module's own statement), as if the sweep had already done everything
   older: on a real server that is where it would stand; check that the
   sweep's query sees exactly the ``NEW`` events after it;
3. start with device lifetime ``SHORT``: the sweep's first run
   (``SWEEP_INTERVAL`` after start-up) redacts the ``NEW`` events, now
   expired, in one run (5 batches of 200); wait until its log lines account
   for all of them; stop.

Time to sweep: from the first to the last of the ``NEW`` redactions by the
``received_ts`` Synapse gave them (it includes the sweep's queries between
batches: 4 of the run's 6 batch queries; the first comes before the first
redaction, the last finds nothing more). With Synapse stopped, the sweep's batch
query from the watermark (``_events_after_txn``, 200 rows) is then timed
directly on the database, ``QUERY_REPEAT`` times, median, and its query plan
printed.

``ROUNDS`` rounds alternate which server goes first; each cycle adds ``NEW``
events and as many redactions to its server, so the stored counts grow a
little from round to round (printed). The mean of the rounds is compared.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
from signedjson.key import read_signing_keys
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict

from synapse_police_policy.retention.store import _events_after_txn
from synapse_police_policy.retention.sweep import BATCH

from .accounts import BenchError, enrolled_user
from .module_overhead import PASSWORD, print_table
from .retention_sweep import (
    LONG,
    SERVER_NAME,
    SHORT,
    SYSTEM_LOCALPART,
    RetentionServer,
    create_room,
    rate,
    redaction_times,
    retention_servers,
    send_events,
    set_watermark,
    wait_for_sweep,
)

#: rows in ``events`` of the two servers before the first cycle
SIZES = (10_000, 100_000)
#: newly expired events swept in each cycle
NEW = 1000
#: real events sent to each server before cloning
TEMPLATES = 500
#: rooms the events are spread over
ROOMS = 4
#: cycles per server; rounds alternate which server goes first
ROUNDS = 2
#: executions of the sweep's batch query when timing it directly
QUERY_REPEAT = 200

SCALING_TARGET = 1.2

#: the per-event tables Synapse writes for a message, besides events and event_json
EVENT_TABLES = ("event_edges", "event_to_state_groups")
#: where Synapse's consumers of the events stream keep their position (table, which row)
EVENT_STREAM_CONSUMERS = (
    ("federation_stream_position", "type = 'events'"),
    ("stats_incremental_position", "1 = 1"),
    ("user_directory_stream_pos", "1 = 1"),
    ("room_forgetter_stream_pos", "1 = 1"),
    ("delayed_events_stream_pos", "1 = 1"),
)


@attrs.define
class Store:
    label: str
    size: int
    server: RetentionServer
    token: str
    rooms: list[str]
    #: per cycle: rows in ``events`` before the new events
    stored: list[int] = attrs.field(factory=list)
    #: per cycle: seconds from the first to the last redaction
    seconds: list[float] = attrs.field(factory=list)
    #: per cycle: redactions per second
    rates: list[float] = attrs.field(factory=list)
    #: per cycle: median ms of the sweep's batch query from the watermark
    query_ms: list[float] = attrs.field(factory=list)
    query_plan: str = ""


def set_up(server: RetentionServer, size: int) -> Store:
    """Bob (creator and sender), the rooms, TEMPLATES real events; stops the server."""
    hs = server.start(LONG)
    token = enrolled_user(hs, "bob", PASSWORD)
    rooms = [create_room(hs, token) for _ in range(ROOMS)]
    send_events(hs, token, rooms, TEMPLATES)
    server.stop()
    return Store(f"{size:,} stored", size, server, token, rooms)


def clone_events(path: Path, signing_key_path: Path, target_rows: int) -> int:
    """Copy the server's m.room.encrypted events until ``events`` holds
    ``target_rows`` rows (Synapse stopped); returns the copies written."""
    with signing_key_path.open() as key_file:
        signing_key = read_signing_keys(key_file)[0]
    with closing(sqlite3.connect(path, timeout=30)) as db:
        (rows,) = db.execute("SELECT count(*) FROM events").fetchone()
        missing = target_rows - rows
        if missing <= 0:
            return 0
        versions = {
            room: KNOWN_ROOM_VERSIONS[version]
            for room, version in db.execute("SELECT room_id, room_version FROM rooms")
        }
        templates = db.execute(
            "SELECT e.event_id, e.room_id, e.topological_ordering, e.type, e.processed, e.outlier, e.depth,"
            " e.received_ts, e.sender, e.contains_url, e.instance_name, j.internal_metadata, j.json,"
            " j.format_version FROM events AS e JOIN event_json AS j USING (event_id)"
            " WHERE e.type = 'm.room.encrypted' AND e.state_key IS NULL ORDER BY e.stream_ordering"
        ).fetchall()
        if not templates:
            raise BenchError(f"{path}: no m.room.encrypted events to copy")
        template_ids = {row[0] for row in templates}
        companions: dict[str, tuple[list[str], dict[str, list[tuple[Any, ...]]]]] = {}
        for table in EVENT_TABLES:
            cursor = db.execute(f"SELECT * FROM {table}")
            columns = [column[0] for column in cursor.description]
            by_event: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
            index = columns.index("event_id")
            for row in cursor:
                if row[index] in template_ids:
                    by_event[row[index]].append(row)
            companions[table] = (columns, by_event)
        (position,) = db.execute("SELECT max(stream_ordering) FROM events").fetchone()

        event_rows: list[tuple[Any, ...]] = []
        json_rows: list[tuple[Any, ...]] = []
        table_rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in EVENT_TABLES}
        for i in range(missing):
            (
                template_id,
                room_id,
                topological,
                event_type,
                processed,
                outlier,
                depth,
                received_ts,
                sender,
                contains_url,
                instance,
                metadata,
                raw,
                format_version,
            ) = templates[i % len(templates)]
            room_version = versions[room_id]
            event = json.loads(raw)
            # A distinct origin_server_ts gives the copy its own hashes and event ID.
            event["origin_server_ts"] -= i // len(templates) + 1
            event.pop("hashes", None)
            add_hashes_and_signatures(room_version, event, SERVER_NAME, signing_key)
            event_id = make_event_from_dict(event, room_version).event_id
            internal = json.loads(metadata)
            internal.pop("txn_id", None)
            position += 1
            event_rows.append(
                (
                    position,
                    topological,
                    event_id,
                    event_type,
                    room_id,
                    processed,
                    outlier,
                    depth,
                    event["origin_server_ts"],
                    received_ts,
                    sender,
                    contains_url,
                    instance,
                )
            )
            json_rows.append((event_id, room_id, json.dumps(internal), json.dumps(event), format_version))
            for table, (columns, by_event) in companions.items():
                index = columns.index("event_id")
                table_rows[table].extend(
                    (*row[:index], event_id, *row[index + 1 :]) for row in by_event.get(template_id, [])
                )

        with db:
            db.executemany(
                "INSERT INTO events (stream_ordering, topological_ordering, event_id, type, room_id,"
                " processed, outlier, depth, origin_server_ts, received_ts, sender, contains_url,"
                " instance_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event_rows,
            )
            db.executemany(
                "INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version)"
                " VALUES (?, ?, ?, ?, ?)",
                json_rows,
            )
            for table, (columns, _) in companions.items():
                marks = ", ".join("?" for _ in columns)
                db.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                    table_rows[table],
                )
            # Synapse resumes the events stream from here.
            db.execute("UPDATE stream_positions SET stream_id = ? WHERE stream_name = 'events'", (position,))
            # Its consumers of the stream took in old history when it arrived;
            # left behind, they would work through every copy on the next start.
            for table, where in EVENT_STREAM_CONSUMERS:
                if db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone():
                    db.execute(
                        f"UPDATE {table} SET stream_id = ? WHERE stream_id < ? AND {where}",
                        (position, position),
                    )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return missing


def stream_orderings(path: Path, event_ids: Sequence[str]) -> list[int]:
    with closing(sqlite3.connect(path, timeout=30)) as db:
        marks = ", ".join("?" for _ in event_ids)
        rows = db.execute(
            f"SELECT stream_ordering FROM events WHERE event_id IN ({marks})",
            tuple(event_ids),
        ).fetchall()
    return sorted(row[0] for row in rows)


def query_timing(path: Path, position: int) -> tuple[float, str]:
    """Median ms of the sweep's batch query from ``position``, and its plan."""
    with closing(sqlite3.connect(path, timeout=30)) as db:
        cursor = db.cursor()
        _events_after_txn(cursor, position, BATCH)  # warm the page cache
        times = []
        for _ in range(QUERY_REPEAT):
            started = time.perf_counter()
            _events_after_txn(cursor, position, BATCH)
            times.append((time.perf_counter() - started) * 1000)
        plan_rows = db.execute(
            "EXPLAIN QUERY PLAN SELECT stream_ordering, event_id, room_id, received_ts FROM events"
            " WHERE stream_ordering > ? AND state_key IS NULL AND type <> 'm.room.redaction'"
            " AND outlier = ? AND rejection_reason IS NULL ORDER BY stream_ordering LIMIT ?",
            (position, False, BATCH),
        ).fetchall()
    return statistics.median(times), "; ".join(row[-1] for row in plan_rows)


def cycle(store: Store, round_no: int) -> None:
    server = store.server
    hs = server.start(LONG)
    sent = send_events(hs, store.token, store.rooms, NEW)
    server.stop()

    path = server.database
    first = stream_orderings(path, sent)[0]
    with closing(sqlite3.connect(path, timeout=30)) as db:
        (stored,) = db.execute("SELECT count(*) FROM events WHERE stream_ordering < ?", (first,)).fetchone()
        pending = _events_after_txn(db.cursor(), first - 1, NEW + 1)
    if {event.event_id for event in pending} != set(sent):
        raise BenchError(f"{store.label}: the sweep would see {len(pending)} events, not the {NEW} new ones")
    set_watermark(path, first - 1)

    offset = server.log_size()
    hs = server.start(SHORT)
    lines = wait_for_sweep(server, offset, NEW)
    times = redaction_times(hs, hs.user_id(SYSTEM_LOCALPART), sent)
    server.stop()
    if len(times) != NEW or sum(redacted for redacted, _ in lines) != NEW:
        raise BenchError(f"{store.label}: {len(times)} redactions of the {NEW} new events; log: {lines}")
    query_ms, store.query_plan = query_timing(path, first - 1)

    seconds = (times[-1] - times[0]) / 1000
    store.stored.append(stored)
    store.seconds.append(seconds)
    store.rates.append(rate(times))
    store.query_ms.append(query_ms)
    print(
        f"  round {round_no + 1}/{ROUNDS} {store.label:<16} {stored:>7,} events stored: {NEW} redacted in "
        f"{seconds:5.2f} s ({store.rates[-1]:5.1f}/s, sweep runs: {len(lines)}); "
        f"batch query {query_ms:.3f} ms",
        flush=True,
    )


def main() -> None:
    labels = [f"retention-{size // 1000}k" for size in SIZES]
    with retention_servers(labels) as servers:
        started = time.perf_counter()
        # Set-up is not timed; each Synapse is one process, both cores get one.
        with ThreadPoolExecutor(len(servers)) as pool:
            stores = list(pool.map(set_up, servers, SIZES))
        for store in stores:
            clone_started = time.perf_counter()
            copies = clone_events(store.server.database, store.server.directory / "signing.key", store.size)
            print(
                f"  {store.label}: {TEMPLATES} events sent over {ROOMS} rooms, {copies:,} copies written in "
                f"{time.perf_counter() - clone_started:.1f} s",
                flush=True,
            )
        print(f"  set-up: {time.perf_counter() - started:.0f} s (not timed)", flush=True)
        for round_no in range(ROUNDS):
            order = stores if round_no % 2 == 0 else stores[::-1]
            for store in order:
                cycle(store, round_no)
        report(stores)


def report(stores: Sequence[Store]) -> None:
    small, large = stores
    mean = statistics.fmean
    ratio = mean(large.seconds) / mean(small.seconds)
    target = f"<= {SCALING_TARGET:.2f}"
    lines: list[tuple[str, ...]] = [
        ("metric", f"{small.size:,} stored", f"{large.size:,} stored", "ratio", "target"),
        (
            "events stored behind the watermark",
            " / ".join(f"{n:,}" for n in small.stored),
            " / ".join(f"{n:,}" for n in large.stored),
            "-",
            "-",
        ),
        (
            f"time to sweep {NEW:,} (s, first to last redaction)",
            f"{mean(small.seconds):.2f}",
            f"{mean(large.seconds):.2f}",
            f"{ratio:.3f}",
            target,
        ),
        (
            "redactions/s",
            f"{mean(small.rates):.1f}",
            f"{mean(large.rates):.1f}",
            f"{mean(large.rates) / mean(small.rates):.3f}",
            "-",
        ),
        (
            f"sweep batch query from the watermark ({BATCH} rows, ms)",
            f"{statistics.median(small.query_ms):.3f}",
            f"{statistics.median(large.query_ms):.3f}",
            f"{statistics.median(large.query_ms) / statistics.median(small.query_ms):.3f}",
            "-",
        ),
    ]
    print(
        f"\nmean of {ROUNDS} alternating rounds (stored counts per round), {NEW:,} newly expired events "
        f"each, one sweep run; ratio = {large.size:,} / {small.size:,}"
    )
    print_table(lines)
    print(f"\nquery plan of the sweep's batch query: {large.query_plan}")
    print(
        f"sweep time with {large.size:,} against {small.size:,} stored: ratio {ratio:.3f} {target}: "
        f"{'met' if ratio <= SCALING_TARGET else 'MISSED'}"
    )
