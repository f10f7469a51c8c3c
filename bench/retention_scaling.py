"""Does the retention sweep's cost follow the newly expired events, or the stored ones?

The sweep walks Synapse's ``events`` table in stream order from a durable
watermark, so sweeping 1,000 newly expired events should take as long on a
server that stores 100,000 events as on one that stores 10,000. Measured:
the time the sweep takes to redact ``NEW`` newly expired events on two
servers that differ only in the number of events stored behind the
watermark, on each backend: SQLite (``SIZES``: 10,000 against 100,000) and
PostgreSQL (``PG_SIZES``: 100,000 against 1,000,000), one backend after the
other. The PostgreSQL servers have databases of their own in one throwaway
cluster of ``devtools.postgres`` (the test suite's: PostgreSQL 15, fsync off).

Filling a server through the client API runs at about 70 events/s here (2
cores shared with the client), so 100,000 events would take over 20 minutes.
Instead each server gets ``TEMPLATES`` real events (bob's ``m.room.encrypted``
messages, 4 sends in flight, spread over ``ROOMS`` rooms with the system user
joined), and, with Synapse stopped, ``clone_events`` copies them in the
database until ``events`` holds the wanted rows: each copy is a proper event of
its template's room, with its own ``origin_server_ts``, content hash,
signature (the server's key) and the event ID that follows from them, so
Synapse loads it like any other (it checks that the ID matches; the client
API's ``/event`` and ``/messages`` served copies when this was written, and
the first cycle of each server fetches its last copy through ``/event``); rows in
``events``, ``event_json``, ``event_edges`` and ``event_to_state_groups`` as
Synapse writes them for a message (every column of the template's rows), stream
positions after the templates'. The copies are not forward extremities, no later
event points at them and they have no push actions: history nobody reads during
the bench, which is what old events are to the sweep. Copies are made in
batches of ``Sizes.chunk`` by a process per core (signing is most of the
work) and written as they come: ``executemany`` on SQLite, ``COPY`` on
PostgreSQL, one transaction either way.

Pitfalls found, each of which made the larger server pay for the fill during
the measurement rather than for the sweep:

* Synapse's consumers of the events stream (the federation sender, room
  stats, user directory, room forgetter, delayed events) get their positions
  moved past the copies, as if they had taken them in when they arrived; left
  behind, they work through all of them on the next start: on the 100,000
  SQLite server the federation sender's catching up (9.5 s of CPU) overlapped
  the measured sweep, a ratio of 2.28 in a first run.
* Synapse resumes the events stream from ``stream_positions``, and on
  PostgreSQL from the sequence ``events_stream_seq`` (it refuses to start when
  the sequence is behind the table): both are moved to the last copy.
* A new database has some 55 background updates queued (indexes on
  ``events`` among them); at Synapse's pace (a pause between batches) they take
  about a minute, so they were still running when the copies were written and
  went on over them during the cycles. The servers run with the pause off
  (``background_updates.sleep_enabled: false``, which only matters while
  updates are queued), set-up waits until none is left, and the bench checks
  that none is left after the fill.
* PostgreSQL plans from statistics: after the fill the bench runs
  ``VACUUM ANALYZE`` (as autovacuum would soon after such a load) and a
  ``CHECKPOINT``, so neither falls into a measurement.
* The copies' ``event_edges`` form chains (``_make_copies``): each copy's
  ``prev_event_id`` is the copy before it of the same template. Until
  2026-12-08 the copies kept their template's ``prev_events``, so that column
  had about ``TEMPLATES`` distinct values in a million rows; the PostgreSQL
  planner then expected ~2,000 rows for each lookup of Synapse's
  ``_get_events_which_are_prevs`` (run for every event it persists, each of
  the sweep's redactions) and chose a parallel plan, about 6.7 ms a call
  against under 0.1 ms at 100,000 events: some 6 s of the 1,000 redactions,
  a ratio of 1.20 that came from the fill, not from the sweep.

A cycle on one server (only that server runs):

1. start with device lifetime ``LONG`` (nothing expires) and send ``NEW``
   events through the client API (4 in flight, over the rooms); stop;
2. put the watermark just below the first of them (with Synapse stopped, the
   module's own statement), as if the sweep had already done everything
   older: on a real server that is where it would stand; check that the
   sweep's query sees exactly the ``NEW`` events after it. The watermark of
   the walk over superseded state goes to the end of the state delta stream
   for the same reason (else the first run also redacts the system user's
   invites, superseded by its joins when the rooms were set up);
3. start with device lifetime ``SHORT``: the sweep's first run
   (``SWEEP_INTERVAL`` after start-up) redacts the ``NEW`` events, now
   expired, in one run (5 batches of 200); wait until its log lines account
   for all of them; stop.

Time to sweep: from the first to the last of the ``NEW`` redactions by the
``received_ts`` Synapse gave them (it includes the sweep's queries between
batches: 4 of the run's 6 batch queries; the first comes before the first
redaction, the last finds nothing more). With Synapse stopped, the sweep's batch
query from the watermark (``_events_after_txn`` itself, 200 rows) is then timed
directly on the database, ``QUERY_REPEAT`` times, median, and the plan of the
statement it ran is printed for both sizes: SQLite's ``EXPLAIN QUERY PLAN``,
PostgreSQL's ``EXPLAIN (ANALYZE, BUFFERS)``.

``ROUNDS`` rounds alternate which server goes first; each cycle adds ``NEW``
events and as many redactions to its server, so the stored counts grow a
little from round to round (printed). The mean of the rounds is compared.

``main(smoke=True)`` runs the same path at ``SMOKE`` sizes (a few hundred
events, one round) on both backends: it proves the entry runs; its figures
mean nothing.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
from signedjson.key import read_signing_keys
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict

from devtools.homeserver import Homeserver, HomeserverSpec
from devtools.postgres import PG_BIN, PostgresCluster, running_cluster
from synapse_police_policy.ops.bootstrap import connect_database
from synapse_police_policy.retention.store import STATE_WATERMARK, _events_after_txn, _set_watermark_txn
from synapse_police_policy.retention.sweep import BATCH
from synapse_police_policy.schema import SCHEMA_VERSION

from .accounts import TABLES_TIMEOUT_S, BenchError
from .module_overhead import PASSWORD, print_table, room_path
from .retention_sweep import (
    LONG,
    SERVER_NAME,
    SHORT,
    SYSTEM_LOCALPART,
    RetentionServer,
    create_room,
    rate,
    redaction_times,
    send_events,
    stopped_at_the_end,
    wait_for_sweep,
)


@attrs.frozen
class Sizes:
    """The workload: full size (``FULL``), or the smoke test's (``SMOKE``)."""

    #: rows in ``events`` of the two SQLite servers before the first cycle
    sqlite: tuple[int, int]
    #: the same for the two PostgreSQL servers
    postgres: tuple[int, int]
    #: newly expired events swept in each cycle
    new: int
    #: real events sent to each server before cloning
    templates: int
    #: rooms the events are spread over
    rooms: int
    #: cycles per server; rounds alternate which server goes first
    rounds: int
    #: executions of the sweep's batch query when timing it directly
    query_repeat: int
    #: copies made and written per batch while filling
    chunk: int


FULL = Sizes(
    sqlite=(10_000, 100_000),
    postgres=(100_000, 1_000_000),
    new=1000,
    templates=500,
    rooms=4,
    rounds=2,
    query_repeat=200,
    chunk=10_000,
)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(
    sqlite=(200, 400),
    postgres=(200, 400),
    new=20,
    templates=10,
    rooms=2,
    rounds=1,
    query_repeat=5,
    chunk=50,
)

SIZES = FULL.sqlite
PG_SIZES = FULL.postgres
NEW = FULL.new
TEMPLATES = FULL.templates
ROOMS = FULL.rooms
ROUNDS = FULL.rounds
QUERY_REPEAT = FULL.query_repeat

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
#: Synapse runs the background updates of a new database back to back instead of
#: pausing between batches; it matters only while some are queued (set-up)
BACKGROUND_UPDATES = {"background_updates": {"sleep_enabled": False}}
#: how long set-up waits for the background updates of a new database
BACKGROUND_UPDATES_TIMEOUT_S = 300.0


# --- the database, on either backend ---------------------------------------------------


class Cursor:
    """A DB-API cursor that takes ``?`` placeholders on both backends, as Synapse's
    transactions do (the module's ``*_txn`` functions run on it), and keeps the
    last statement (to explain it)."""

    def __init__(self, cursor: Any, qmark: bool) -> None:
        self._cursor = cursor
        self._qmark = qmark
        self.last: tuple[str, tuple[Any, ...]] = ("", ())

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        self.last = (sql, tuple(args))
        self._cursor.execute(sql if self._qmark else sql.replace("?", "%s"), tuple(args))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql if self._qmark else sql.replace("?", "%s"), rows)

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(column[0] for column in self._cursor.description)

    @property
    def raw(self) -> Any:
        return self._cursor


class Database:
    """A connection to a server's database (Synapse stopped, or only reading)."""

    def __init__(self, connection: Any, qmark: bool) -> None:
        self.connection = connection
        self.postgres = not qmark

    def cursor(self) -> Cursor:
        return Cursor(self.connection.cursor(), not self.postgres)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self.cursor().execute(sql, args)

    def value(self, sql: str, args: Sequence[Any] = ()) -> Any:
        row = self.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def commit(self) -> None:
        self.connection.commit()

    def table_exists(self, table: str) -> bool:
        if self.postgres:
            return self.value("SELECT to_regclass(?)", (table,)) is not None
        return (
            self.value("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)) is not None
        )

    def autocommit(self, statement: str) -> None:
        """A statement outside a transaction (VACUUM)."""
        if self.postgres:
            self.connection.autocommit = True
            try:
                self.connection.cursor().execute(statement)
            finally:
                self.connection.autocommit = False
        else:
            self.connection.commit()
            self.connection.execute(statement)


class Server(RetentionServer):
    """A RetentionServer on SQLite (``database`` None) or on a PostgreSQL database."""

    def __init__(self, label: str, directory: Path, database: dict[str, Any] | None) -> None:
        super().__init__(label, directory)
        self.database_section = database

    @property
    def backend(self) -> str:
        return "SQLite" if self.database_section is None else "PostgreSQL"

    def spec(self, config: dict[str, Any]) -> HomeserverSpec:
        spec = super().spec(config)
        return attrs.evolve(spec, database=self.database_section, extra={**spec.extra, **BACKGROUND_UPDATES})

    def wait_for_module_tables(self, hs: Homeserver) -> None:
        wait_for_module_tables(self)

    @contextmanager
    def db(self) -> Iterator[Database]:
        section = self.database_section or {
            "name": "sqlite3",
            "args": {"database": str(self.directory / "homeserver.db")},
        }
        connection, qmark = connect_database(section)
        try:
            yield Database(connection, qmark)
        finally:
            connection.close()


def wait_for_module_tables(server: Server, timeout: float = TABLES_TIMEOUT_S) -> None:
    """The module migrates its tables in a background task at start-up; wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        with server.db() as db:
            if db.table_exists("police_policy_schema_version"):
                version = db.value("SELECT max(version) FROM police_policy_schema_version")
                if version is not None and version >= SCHEMA_VERSION:
                    return
        if time.monotonic() > deadline:
            raise BenchError(f"{server.label}: the module did not create its tables within {timeout:.0f}s")
        time.sleep(0.2)


def wait_for_background_updates(server: Server, timeout: float = BACKGROUND_UPDATES_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with server.db() as db:
            names = [row[0] for row in db.execute("SELECT update_name FROM background_updates").fetchall()]
        if not names:
            return
        server.running()
        if time.monotonic() > deadline:
            raise BenchError(f"{server.label}: background updates still queued after {timeout:.0f}s: {names}")
        time.sleep(0.5)


def retention_servers(
    labels: Sequence[str], databases: Sequence[dict[str, Any] | None], note: str
) -> AbstractContextManager[list[Server]]:
    """A Server per label (not started), on the given databases (``stopped_at_the_end``)."""
    servers = [
        Server(label, Path(tempfile.mkdtemp(prefix=f"bench-{label}-")), database)
        for label, database in zip(labels, databases, strict=True)
    ]
    return stopped_at_the_end(servers, note)


# --- set-up and the copies -------------------------------------------------------------


@attrs.define
class Store:
    label: str
    size: int
    server: Server
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
    #: (room ID, event ID) of a copy, fetched through the client API in the first cycle
    sample: tuple[str, str] | None = None


def set_up(server: Server, size: int, sizes: Sizes) -> Store:
    """Bob (creator and sender, on an enrolled device), the rooms, the template
    events; waits for the background updates; stops the server."""
    hs = server.start(LONG)
    token, _ = hs.register_enrolled_user("bob", PASSWORD)
    rooms = [create_room(hs, token) for _ in range(sizes.rooms)]
    send_events(hs, token, rooms, sizes.templates)
    wait_for_background_updates(server)
    server.stop()
    return Store(f"{size:,} stored", size, server, token, rooms)


@attrs.frozen
class Template:
    """A real event's rows: ``events``, ``event_json`` and the other tables'."""

    event_id: str
    room_version: str
    event: tuple[Any, ...]
    event_json: tuple[Any, ...]
    others: dict[str, list[tuple[Any, ...]]]


@attrs.frozen
class CopyPlan:
    """What the processes that make copies need (sent to them once)."""

    signing_key_path: str
    templates: tuple[Template, ...]
    event_columns: tuple[str, ...]
    json_columns: tuple[str, ...]
    other_columns: dict[str, tuple[str, ...]]
    #: the stream position of the last event before the copies
    position: int


@attrs.frozen
class CopyBatch:
    events: list[tuple[Any, ...]]
    event_json: list[tuple[Any, ...]]
    others: dict[str, list[tuple[Any, ...]]]


_plan: CopyPlan | None = None
_signing_key: Any = None


def _start_copier(plan: CopyPlan) -> None:
    global _plan, _signing_key
    _plan = plan
    with open(plan.signing_key_path) as key_file:
        _signing_key = read_signing_keys(key_file)[0]


def _copy_event(plan: CopyPlan, i: int) -> tuple[Template, dict[str, Any], str]:
    """Copy ``i``: its template, its event (a distinct ``origin_server_ts`` gives it
    its own hashes, signature and event ID) and that ID."""
    template = plan.templates[i % len(plan.templates)]
    room_version = KNOWN_ROOM_VERSIONS[template.room_version]
    json_at = plan.json_columns.index("json")
    event = json.loads(template.event_json[json_at])
    event["origin_server_ts"] -= i // len(plan.templates) + 1
    event.pop("hashes", None)
    event.pop("signatures", None)
    add_hashes_and_signatures(room_version, event, SERVER_NAME, _signing_key)
    event_id = make_event_from_dict(event, room_version).event_id
    if event_id == template.event_id:
        raise BenchError(f"room version {template.room_version}: the event ID does not follow from the event")
    return template, event, event_id


def _make_copies(start: int, count: int) -> CopyBatch:
    """Copies ``start`` to ``start + count`` (of all): the copy ``i`` is one of
    template ``i % templates``, with an ``origin_server_ts`` of its own, at stream
    position ``plan.position + i + 1``.

    Each copy's ``event_edges`` row points at the copy before it of the same
    template (the template itself for the first), so the copies of a template
    form a chain in its room and every ``prev_event_id`` is distinct, as on a
    real server, where each event's predecessor is the one before it. (The
    copies' JSON keeps the template's ``prev_events``: changing it would change
    the IDs the chain is made of. Synapse's graph queries read the table.)"""
    plan = _plan
    if plan is None:
        raise BenchError("the copier was not started")
    templates = plan.templates
    at = {
        name: plan.event_columns.index(name) for name in ("stream_ordering", "event_id", "origin_server_ts")
    }
    json_at = {name: plan.json_columns.index(name) for name in ("event_id", "internal_metadata", "json")}
    other_at = {table: columns.index("event_id") for table, columns in plan.other_columns.items()}
    prev_at = plan.other_columns["event_edges"].index("prev_event_id")
    # the IDs of the copies just before this batch, which its first copies point at
    ids = {i: _copy_event(plan, i)[2] for i in range(max(0, start - len(templates)), start)}
    batch = CopyBatch([], [], {table: [] for table in plan.other_columns})
    for i in range(start, start + count):
        template, event, event_id = _copy_event(plan, i)
        ids[i] = event_id
        predecessor = ids[i - len(templates)] if i >= len(templates) else template.event_id
        internal = json.loads(template.event_json[json_at["internal_metadata"]])
        internal.pop("txn_id", None)
        row = list(template.event)
        row[at["stream_ordering"]] = plan.position + i + 1
        row[at["event_id"]] = event_id
        row[at["origin_server_ts"]] = event["origin_server_ts"]
        batch.events.append(tuple(row))
        json_row = list(template.event_json)
        json_row[json_at["event_id"]] = event_id
        json_row[json_at["internal_metadata"]] = json.dumps(internal, separators=(",", ":"))
        json_row[json_at["json"]] = json.dumps(event, separators=(",", ":"))
        batch.event_json.append(tuple(json_row))
        for table, rows in template.others.items():
            index = other_at[table]
            copied = [(*row[:index], event_id, *row[index + 1 :]) for row in rows]
            if table == "event_edges":
                copied = [(*row[:prev_at], predecessor, *row[prev_at + 1 :]) for row in copied[:1]]
            batch.others[table].extend(copied)
    return batch


def copy_plan(db: Database, signing_key_path: Path) -> CopyPlan:
    """The server's m.room.encrypted events as templates, with all their rows."""
    versions = dict(db.execute("SELECT room_id, room_version FROM rooms").fetchall())
    cursor = db.execute(
        "SELECT * FROM events WHERE type = 'm.room.encrypted' AND state_key IS NULL ORDER BY stream_ordering"
    )
    event_columns = cursor.columns
    event_rows = cursor.fetchall()
    if not event_rows:
        raise BenchError("no m.room.encrypted events to copy")
    id_at, room_at = event_columns.index("event_id"), event_columns.index("room_id")
    wanted = {row[id_at] for row in event_rows}
    cursor = db.execute("SELECT * FROM event_json")
    json_columns = cursor.columns
    json_id_at = json_columns.index("event_id")
    json_rows = {row[json_id_at]: tuple(row) for row in cursor.fetchall() if row[json_id_at] in wanted}
    other_columns: dict[str, tuple[str, ...]] = {}
    others: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for table in EVENT_TABLES:
        cursor = db.execute(f"SELECT * FROM {table}")
        other_columns[table] = cursor.columns
        index = cursor.columns.index("event_id")
        by_event: dict[str, list[tuple[Any, ...]]] = {}
        for row in cursor.fetchall():
            if row[index] in wanted:
                by_event.setdefault(row[index], []).append(tuple(row))
        others[table] = by_event
    templates = tuple(
        Template(
            event_id=row[id_at],
            room_version=versions[row[room_at]],
            event=tuple(row),
            event_json=json_rows[row[id_at]],
            others={table: others[table].get(row[id_at], []) for table in EVENT_TABLES},
        )
        for row in event_rows
    )
    position = int(db.value("SELECT max(stream_ordering) FROM events"))
    return CopyPlan(str(signing_key_path), templates, event_columns, json_columns, other_columns, position)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    """A value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value).translate(_COPY_ESCAPES)


def write_rows(db: Database, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows in the open transaction: COPY on PostgreSQL, executemany on SQLite."""
    if not rows:
        return
    if db.postgres:
        text = "".join("\t".join(_copy_field(value) for value in row) + "\n" for row in rows)
        db.cursor().raw.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(text))
    else:
        marks = ", ".join("?" for _ in columns)
        db.cursor().executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def clone_events(server: Server, target_rows: int, sizes: Sizes) -> tuple[int, tuple[str, str] | None]:
    """Copy the server's m.room.encrypted events until ``events`` holds
    ``target_rows`` rows (Synapse stopped); returns the copies written and
    (room ID, event ID) of the last."""
    with server.db() as db:
        missing = target_rows - int(db.value("SELECT count(*) FROM events"))
        if missing <= 0:
            return 0, None
        plan = copy_plan(db, server.directory / "signing.key")
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    event_id_at, room_id_at = plan.event_columns.index("event_id"), plan.event_columns.index("room_id")
    # fork: the copiers start with the plan (all of them at the first submit),
    # before the connection that writes is opened
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, context, initializer=_start_copier, initargs=(plan,)) as pool:
        starts = iter(range(0, missing, sizes.chunk))
        pending: deque[Future[CopyBatch]] = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append(pool.submit(_make_copies, start, min(sizes.chunk, missing - start)))

        for _ in range(2 * workers):
            submit()
        with server.db() as db:
            sample = None
            while pending:
                batch = pending.popleft().result()
                submit()
                sample = (batch.events[-1][room_id_at], batch.events[-1][event_id_at])
                write_rows(db, "events", plan.event_columns, batch.events)
                write_rows(db, "event_json", plan.json_columns, batch.event_json)
                for table, rows in batch.others.items():
                    write_rows(db, table, plan.other_columns[table], rows)
            finish_fill(server, db, plan.position + missing, target_rows)
    return missing, sample


def finish_fill(server: Server, db: Database, last: int, target_rows: int) -> None:
    """Stream positions after the last copy; commit; check."""
    # Synapse resumes the events stream from here.
    db.execute(
        "UPDATE stream_positions SET stream_id = ? WHERE stream_name = 'events' AND stream_id < ?",
        (last, last),
    )
    if db.postgres:
        db.execute("SELECT setval('events_stream_seq', ?)", (last,))
    # Its consumers of the stream took in old history when it arrived;
    # left behind, they would work through every copy on the next start.
    for table, where in EVENT_STREAM_CONSUMERS:
        if db.table_exists(table):
            db.execute(f"UPDATE {table} SET stream_id = ? WHERE stream_id < ? AND {where}", (last, last))
    db.commit()
    stored = int(db.value("SELECT count(*) FROM events"))
    queued = int(db.value("SELECT count(*) FROM background_updates"))
    if stored != target_rows or queued:
        raise BenchError(
            f"{server.label}: {stored:,} events after the fill, {queued} background updates queued"
        )
    # the chains: about one distinct predecessor per event, as on a real server
    edges, predecessors = db.execute(
        "SELECT count(*), count(DISTINCT prev_event_id) FROM event_edges"
    ).fetchone()
    if predecessors < 0.9 * edges:
        raise BenchError(f"{server.label}: {predecessors:,} distinct prev_event_id in {edges:,} edges")


def settle(server: Server) -> None:
    """After the fill: statistics and a checkpoint (PostgreSQL), the write-ahead
    log into the database file (SQLite)."""
    with server.db() as db:
        if db.postgres:
            db.autocommit("VACUUM ANALYZE")
            db.autocommit("CHECKPOINT")
        else:
            db.autocommit("PRAGMA wal_checkpoint(TRUNCATE)")


# --- the cycles --------------------------------------------------------------------------


def stream_orderings(server: Server, event_ids: Sequence[str]) -> list[int]:
    with server.db() as db:
        marks = ", ".join("?" for _ in event_ids)
        rows = db.execute(f"SELECT stream_ordering FROM events WHERE event_id IN ({marks})", event_ids)
        return sorted(int(row[0]) for row in rows.fetchall())


def set_watermarks(server: Server, position: int) -> None:
    """Where the sweep goes on from (the module's own statement; server stopped):
    the walk over ``events`` from ``position``, the walk over superseded state
    from the end of the state delta stream (the rooms' set-up superseded the
    system user's invites; a sweep that had done everything older would have
    redacted them long ago)."""
    with server.db() as db:
        cursor = db.cursor()
        _set_watermark_txn(cursor, position)
        state_end = db.value("SELECT max(stream_id) FROM current_state_delta_stream")
        _set_watermark_txn(cursor, int(state_end or 0), STATE_WATERMARK)
        db.commit()


def query_timing(server: Server, position: int, repeat: int) -> tuple[float, str]:
    """Median ms of the sweep's batch query from ``position``, and the plan of
    the statement it runs."""
    with server.db() as db:
        if db.postgres:
            db.connection.autocommit = True
        cursor = db.cursor()
        _events_after_txn(cursor, position, BATCH)  # warm the caches
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            _events_after_txn(cursor, position, BATCH)
            times.append((time.perf_counter() - started) * 1000)
        statement, args = cursor.last
        if db.postgres:
            rows = db.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", args).fetchall()
            plan = "\n".join(f"    {row[0]}" for row in rows)
        else:
            rows = db.execute(f"EXPLAIN QUERY PLAN {statement}", args).fetchall()
            plan = "    " + "; ".join(str(row[-1]) for row in rows)
    return statistics.median(times), plan


def check_copy(hs: Homeserver, token: str, room_id: str, event_id: str) -> None:
    """Synapse serves a copy through the client API like any other event (it
    checks that the ID follows from the event)."""
    status, body = hs.request("GET", f"{room_path(room_id)}/event/{quote(event_id, safe='')}", token=token)
    if status != 200 or body.get("event_id") != event_id or body.get("type") != "m.room.encrypted":
        raise BenchError(f"GET /event of the copy {event_id}: HTTP {status} {str(body)[:300]}")


def cycle(store: Store, round_no: int, sizes: Sizes) -> None:
    server = store.server
    hs = server.start(LONG)
    if store.sample is not None:
        check_copy(hs, store.token, *store.sample)
        store.sample = None
    sent = send_events(hs, store.token, store.rooms, sizes.new)
    server.stop()

    first = stream_orderings(server, sent)[0]
    with server.db() as db:
        stored = int(db.value("SELECT count(*) FROM events WHERE stream_ordering < ?", (first,)))
        pending = _events_after_txn(db.cursor(), first - 1, sizes.new + 1)
    if {event.event_id for event in pending} != set(sent):
        raise BenchError(
            f"{store.label}: the sweep would see {len(pending)} events, not the {sizes.new} new ones"
        )
    set_watermarks(server, first - 1)

    offset = server.log_size()
    hs = server.start(SHORT)
    lines = wait_for_sweep(server, offset, sizes.new)
    times = redaction_times(hs, hs.user_id(SYSTEM_LOCALPART), sent)
    server.stop()
    if len(times) != sizes.new or sum(redacted for redacted, _ in lines) != sizes.new:
        raise BenchError(
            f"{store.label}: {len(times)} redactions of the {sizes.new} new events; log: {lines}"
        )
    query_ms, store.query_plan = query_timing(server, first - 1, sizes.query_repeat)

    seconds = (times[-1] - times[0]) / 1000
    store.stored.append(stored)
    store.seconds.append(seconds)
    store.rates.append(rate(times))
    store.query_ms.append(query_ms)
    print(
        f"  round {round_no + 1}/{sizes.rounds} {store.label:<18} {stored:>9,} events stored: "
        f"{sizes.new} redacted in {seconds:5.2f} s ({store.rates[-1]:5.1f}/s, sweep runs: {len(lines)}); "
        f"batch query {query_ms:.3f} ms",
        flush=True,
    )


def measure(servers: Sequence[Server], sizes_of: tuple[int, int], sizes: Sizes) -> list[Store]:
    """Set up both servers, fill them, run the rounds; the stores with their figures."""
    started = time.perf_counter()
    # Set-up is not timed; each Synapse is one process, both cores get one.
    with ThreadPoolExecutor(len(servers)) as pool:
        stores = list(pool.map(lambda server, size: set_up(server, size, sizes), servers, sizes_of))
    for store in stores:
        clone_started = time.perf_counter()
        copies, store.sample = clone_events(store.server, store.size, sizes)
        filled = time.perf_counter() - clone_started
        settle_started = time.perf_counter()
        settle(store.server)
        settled = time.perf_counter() - settle_started
        after = "VACUUM ANALYZE and CHECKPOINT" if store.server.backend == "PostgreSQL" else "WAL checkpoint"
        print(
            f"  {store.label}: {sizes.templates} events sent over {sizes.rooms} rooms, {copies:,} copies "
            f"written in {filled:.1f} s ({copies / max(filled, 1e-9):,.0f}/s), {after} in {settled:.1f} s",
            flush=True,
        )
    print(f"  set-up: {time.perf_counter() - started:.0f} s (not timed)", flush=True)
    for round_no in range(sizes.rounds):
        order = stores if round_no % 2 == 0 else stores[::-1]
        for store in order:
            cycle(store, round_no, sizes)
    return stores


BACKENDS = ("SQLite", "PostgreSQL")


def main(smoke: bool = False, backends: Sequence[str] = BACKENDS) -> None:
    """Both backends, SQLite first; each prints its table, plans and verdict.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``. ``python -m
    bench.retention_scaling SQLite`` (or ``PostgreSQL``) runs one of them."""
    sizes = SMOKE if smoke else FULL
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise BenchError(f"unknown backend {', '.join(sorted(unknown))}: expected {' or '.join(BACKENDS)}")
    if "SQLite" in backends:
        labels = [
            f"retention-{size // 1000}k" if size >= 1000 else f"retention-{size}" for size in sizes.sqlite
        ]
        with retention_servers(labels, [None, None], "SQLite") as servers:
            report("SQLite", measure(servers, sizes.sqlite, sizes), sizes)
    if "PostgreSQL" not in backends:
        return
    if not (PG_BIN / "initdb").exists():
        raise BenchError(f"{PG_BIN / 'initdb'} not found: install postgresql-15 for the PostgreSQL half")
    with running_cluster() as cluster:
        databases = [cluster.create_database(f"retention_{size}") for size in sizes.postgres]
        labels = [f"retention-pg-{size}" for size in sizes.postgres]
        with retention_servers(labels, databases, postgres_note(cluster)) as servers:
            report("PostgreSQL", measure(servers, sizes.postgres, sizes), sizes)


def postgres_note(cluster: PostgresCluster) -> str:
    settings = ", ".join(
        f"{name} {cluster.sql('postgres', f'SHOW {name}').strip()}"
        for name in ("shared_buffers", "fsync", "synchronous_commit")
    )
    version = cluster.sql("postgres", "SHOW server_version").split()[0]
    return f"PostgreSQL {version} (devtools.postgres cluster: {settings})"


def report(backend: str, stores: Sequence[Store], sizes: Sizes) -> None:
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
            f"time to sweep {sizes.new:,} (s, first to last redaction)",
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
        f"\n{backend}: mean of {sizes.rounds} alternating rounds (stored counts per round), {sizes.new:,} "
        f"newly expired events each, one sweep run; ratio = {large.size:,} / {small.size:,}"
    )
    print_table(lines)
    explain = "EXPLAIN (ANALYZE, BUFFERS)" if backend == "PostgreSQL" else "EXPLAIN QUERY PLAN"
    for store in stores:
        print(f"\n{backend} query plan of the sweep's batch query, {store.label} ({explain}, last round):")
        print(store.query_plan)
    print(
        f"\n{backend}: sweep time with {large.size:,} against {small.size:,} stored: ratio {ratio:.3f} "
        f"{target}: {'met' if ratio <= SCALING_TARGET else 'MISSED'}",
        flush=True,
    )


if __name__ == "__main__":
    main(backends=sys.argv[1:] or BACKENDS)
