"""The auditor bot in thousands of rooms, as one process or as shards: archive lag, memory,
CPU per message and catch-up after an outage.

Everything is real: a Synapse with the module, on PostgreSQL; the auditor bot(s) as
``python -m bots.auditor`` processes, their archive in PostgreSQL (``archive_postgres``:
one database, shared by the shards, the attachments directory and the archive key shared
too); ``senders`` officers (4) as matrix-nio clients with E2EE on enrolled devices. The
module seats the bot in every room an officer creates: with one shard (module config
``auditor: {user_id: ...}``) always the same bot, with several (``auditor: {user_ids:
[...]}``) one of them per room (``seating.auditor_for``); which one is read from the
room's membership, not computed here.

Per shard count one homeserver and one set of bots; per room count (ascending: the rooms
of the smaller size are kept and more are created):

1. Setup, not timed: the officers create rooms up to ``rooms`` (``CREATE_IN_FLIGHT``
   requests in flight), sync until each has exactly one bot joined, then send one message
   into each new room (sharing their Megolm session with the bot's device) and wait until
   the archive holds all of them: the bot is in every room and has its keys.
2. Steady traffic: ``rate`` messages/s (a fixed schedule; ``SEND_IN_FLIGHT`` at most in
   flight) into rooms drawn at random (seeded), each sent by the room's creator.
   ``warmup_s`` first, then ``measure_s`` measured. Archive lag per message = the archive
   row's ``archived_at`` (the bot's clock) minus the time the sender started the send
   (this machine's clock, the same one), read from the ``messages`` table (event ID,
   ``archived_at``; nothing is decrypted); p50 / p95 over the messages sent in the
   measured period (waited for until all are archived). CPU per message: the bot
   process's utime + stime (``/proc/PID/stat``) over the measured period divided by the
   rows it archived in that period (``archived_at`` within it, in its rooms). RSS: VmRSS
   and VmHWM (``/proc/PID/status``) at the end of the period.
3. Outage: the bots get SIGTERM (a clean stop, as an operator's restart or a deployment;
   the stop is timed too), the officers keep sending for ``outage_s``, then the bots are
   started again while the traffic goes on; catch-up = from the restart until every
   message sent during the outage is archived. The restarted process's VmHWM is reported
   too (its first sync carries the full state of every room).

Targets (issue 24): lag p95 <= ``LAG_P95_TARGET_S``, RSS <= ``RSS_TARGET_MB`` per bot,
catch-up <= ``CATCHUP_TARGET_S``, and CPU per message at the largest room count no more
than ``CPU_RATIO_TARGET`` times that at the smallest. ``python -m bench.auditor_shards
ROOMS [SHARDS [OUTAGE_S]]`` runs one configuration (one shard unless given; comma-separated
lists run several, ``500,5000 1,2`` is the full set with another outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg2
import yaml
from nio import AsyncClient, RoomCreateResponse, RoomSendResponse

from devtools.homeserver import REPO_ROOT, Homeserver, HomeserverSpec, free_port
from devtools.postgres import PostgresCluster, running_cluster

from .accounts import BenchError, e2ee_client
from .module_overhead import print_table

ROOMS = (500, 5000)
SHARDS = (1, 2)
#: messages per second over all rooms
RATE = 20.0
OUTAGE_S = 600.0
LAG_P95_TARGET_S = 2.0
RSS_TARGET_MB = 500.0
CATCHUP_TARGET_S = 60.0
CPU_RATIO_TARGET = 1.2
PASSWORD = "bench-password"
#: room creations in flight during setup (Synapse is one process on a shared machine)
CREATE_IN_FLIGHT = 8
#: first messages (Megolm session shares) in flight during setup
WARM_IN_FLIGHT = 8
#: sends in flight at most during the traffic; more wait (the achieved rate is printed)
SEND_IN_FLIGHT = 16
#: how long a bot may take to start, and the drain after the measured period
BOT_READY_TIMEOUT_S = 600.0
SEED = 20_261_208
#: the auditors the bot answers (nobody asks here; the config needs one)
AUDITOR = "revisor"


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    #: room counts, ascending, each measured (the rooms of the smaller count are kept)
    rooms: tuple[int, ...]
    shards: tuple[int, ...]
    #: messages per second over all rooms
    rate: float
    #: officers sending (each room is created by one of them and gets its messages)
    senders: int
    #: traffic before the measured period, not counted
    warmup_s: float
    measure_s: float
    outage_s: float


FULL = Sizes(
    rooms=ROOMS, shards=SHARDS, rate=RATE, senders=4, warmup_s=20.0, measure_s=120.0, outage_s=OUTAGE_S
)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(rooms=(3, 6), shards=(1, 2), rate=10.0, senders=2, warmup_s=1.0, measure_s=3.0, outage_s=1.0)


def _ms() -> int:
    return time.time_ns() // 1_000_000


# -- the bot processes ------------------------------------------------------------------------------


class Bot:
    """One auditor bot (shard) as a process, started from its YAML file."""

    def __init__(self, hs: Homeserver, directory: Path, localpart: str, shared: Path, dsn: str) -> None:
        self.user_id = hs.user_id(localpart)
        self.directory = directory
        directory.mkdir(parents=True)
        device_id = f"BENCH-{localpart.upper()}"
        password = f"pw-{uuid.uuid4().hex}"
        hs.register_user(localpart, password, login=False)
        hs.enroll(localpart, device_id, label="bench auditor bot")
        config = {
            "homeserver_url": hs.url,
            "user_id": self.user_id,
            "password": password,
            "device_id": device_id,
            "store_dir": "store",
            "archive_postgres": dsn,
            "attachments_dir": str(shared / "attachments"),
            "archive_key_file": str(shared / "archive.key"),
            "log_path": "consultations.sqlite",
            "signing_key_file": "export-signing-key.pem",
            "auditors": [hs.user_id(AUDITOR)],
            "audit_lifetime": "90d",
        }
        self.config_file = directory / "auditor.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = directory / "bot.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._ready_before = 0

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def spawn(self) -> None:
        self._ready_before = self.log().count("auditor bot ready")
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bots.auditor", "-c", str(self.config_file)],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"{self.user_id} exited:\n{self.log()[-3000:]}")
        return self.log().count("auditor bot ready") > self._ready_before

    async def wait_ready(self, timeout: float = BOT_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() > deadline:
                raise BenchError(f"{self.user_id} was not ready within {timeout:.0f}s:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM; killed when it does not stop in time (then an error: a bot must stop)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise BenchError(f"{self.user_id} did not stop on SIGTERM within {timeout:.0f}s") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_s(self) -> float:
        """utime + stime of the process so far (seconds)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]


# -- the officers -----------------------------------------------------------------------------------


@attrs.define
class Sent:
    room_id: str
    event_id: str
    #: when the sender started the send (ms since the epoch)
    sent_ms: int
    phase: str


class Officers:
    """The sending officers (nio clients with E2EE) and the rooms they created."""

    def __init__(self, hs: Homeserver, directory: Path, count: int) -> None:
        self.hs = hs
        self.directory = directory
        self.count = count
        self.clients: list[AsyncClient] = []
        #: room ID -> the client that created it (and sends into it)
        self.creator: dict[str, AsyncClient] = {}
        #: room ID -> the bot seated in it
        self.seat: dict[str, str] = {}
        self.sent: list[Sent] = []
        self.phase = "warm-up"
        #: sends scheduled and not yet answered, by phase
        self.in_flight: dict[str, int] = {}
        self.rng = random.Random(SEED)

    async def log_in(self) -> None:
        for i in range(self.count):
            localpart = f"officer-{i}"
            device_id = f"BENCH-OFFICER-{i}"
            self.hs.register_user(localpart, PASSWORD, login=False)
            self.hs.enroll(localpart, device_id, label="bench officer")
            client = await e2ee_client(
                self.hs, localpart, PASSWORD, device_id, self.directory / localpart, request_timeout=300
            )
            self.clients.append(client)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)

    async def create_rooms(self, total: int, bots: Sequence[str]) -> list[str]:
        """Rooms up to ``total``, created by the officers in turn; returns the new ones once
        each has exactly one of ``bots`` joined (seated by the module)."""
        semaphore = asyncio.Semaphore(CREATE_IN_FLIGHT)

        async def create(index: int) -> str:
            client = self.clients[index % len(self.clients)]
            async with semaphore:
                response = await client.room_create(name=f"Einsatz {index:05d}")
            if not isinstance(response, RoomCreateResponse):
                raise BenchError(f"creating room {index} failed: {response}")
            self.creator[response.room_id] = client
            return response.room_id

        new = await asyncio.gather(*(create(i) for i in range(len(self.creator), total)))
        wanted = set(bots)
        deadline = time.monotonic() + max(120.0, 0.1 * len(new))
        for client in self.clients:
            mine = [room_id for room_id in new if self.creator[room_id] is client]
            while True:
                missing = []
                for room_id in mine:
                    room = client.rooms.get(room_id)
                    joined = set(room.users) - set(room.invited_users) if room else set()
                    seated = joined & wanted
                    if len(seated) > 1:
                        raise BenchError(f"{room_id}: several bots seated: {sorted(seated)}")
                    if seated and room is not None and room.encrypted:
                        self.seat[room_id] = seated.pop()
                    else:
                        missing.append(room_id)
                if not missing:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"{len(missing)} rooms of {client.user_id} have no bot joined")
                await client.sync(timeout=1000)
                mine = missing
        return new

    async def share_keys(self, rooms: Sequence[str]) -> list[Sent]:
        """One message into each of ``rooms`` by its creator: its Megolm session goes to the
        bot's device with it."""
        for client in self.clients:
            # the sync above listed every member (no lazy loading): what joined_members would say
            for room_id in rooms:
                if self.creator[room_id] is client:
                    client.rooms[room_id].members_synced = True
            if client.should_query_keys:
                await client.keys_query()
            # One Olm session per bot device, made here: otherwise each of the concurrent first
            # sends claims a one-time key for the same device (in one run that left a room key
            # undelivered, and the room's first message undecryptable for its bot).
            bots = sorted({bot for room_id, bot in self.seat.items() if self.creator[room_id] is client})
            assert client.olm is not None
            missing = client.olm.get_missing_sessions(bots)
            if missing:
                await client.keys_claim(missing)
            if unknown := [bot for bot in bots if not list(client.device_store.active_user_devices(bot))]:
                raise BenchError(f"{client.user_id} knows no device of {unknown}")
            if left := client.olm.get_missing_sessions(bots):
                raise BenchError(f"{client.user_id} has no Olm session with {dict(left)}")
        semaphore = asyncio.Semaphore(WARM_IN_FLIGHT)

        async def first(room_id: str) -> Sent:
            async with semaphore:
                return await self.send(room_id, "setup")

        return await asyncio.gather(*(first(room_id) for room_id in rooms))

    async def send(self, room_id: str, phase: str) -> Sent:
        client = self.creator[room_id]
        started = _ms()
        content = {"msgtype": "m.text", "body": f"Lage {uuid.uuid4().hex[:8]}: Streife bitte melden"}
        response = await client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True)
        if not isinstance(response, RoomSendResponse):
            raise BenchError(f"{client.user_id}: sending into {room_id} failed: {response}")
        return Sent(room_id, response.event_id, started, phase)

    async def sent_in(self, phase: str) -> list[Sent]:
        """The messages of ``phase`` once all its sends were answered."""
        while self.in_flight.get(phase, 0):
            await asyncio.sleep(0.01)
        return [sent for sent in self.sent if sent.phase == phase]

    async def traffic(self, rate: float, stop: asyncio.Event) -> int:
        """``rate`` messages/s into random rooms until ``stop``; each is noted with the phase
        current when it was scheduled. Returns the number sent."""
        rooms = sorted(self.creator)
        semaphore = asyncio.Semaphore(SEND_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        async def one(room_id: str, phase: str) -> None:
            try:
                async with semaphore:
                    self.sent.append(await self.send(room_id, phase))
            except Exception as error:
                failures.append(error)
            finally:
                self.in_flight[phase] -= 1

        start = time.monotonic()
        count = 0
        while not stop.is_set():
            delay = start + count / rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            self.in_flight[self.phase] = self.in_flight.get(self.phase, 0) + 1
            task = asyncio.create_task(one(self.rng.choice(rooms), self.phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            count += 1
        await asyncio.gather(*tasks)
        if failures:
            raise BenchError(f"{len(failures)} sends failed, the first: {failures[0]!r}")
        return count


# -- the archive ------------------------------------------------------------------------------------


class ArchiveReader:
    """The shared archive's ``messages`` table: event IDs and ``archived_at``, nothing else."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with contextlib.closing(psycopg2.connect(self.dsn)) as connection:
            cursor = connection.cursor()
            try:
                cursor.execute(sql, args)
            except psycopg2.errors.UndefinedTable:
                return []  # the bot has not created its tables yet
            return list(cursor.fetchall())

    def archived_at(self, event_ids: Sequence[str]) -> dict[str, int]:
        rows = self._query(
            "SELECT event_id, archived_at FROM messages WHERE event_id = ANY(%s)", (list(event_ids),)
        )
        return {event_id: int(at) for event_id, at in rows}

    def archived_between(self, start_ms: int, end_ms: int) -> dict[str, int]:
        """Rows archived in [start, end), by room."""
        rows = self._query(
            "SELECT room_id, count(*) FROM messages WHERE archived_at >= %s AND archived_at < %s "
            "GROUP BY room_id",
            (start_ms, end_ms),
        )
        return {room_id: int(n) for room_id, n in rows}

    async def wait_for(self, event_ids: Sequence[str], timeout: float) -> tuple[dict[str, int], float]:
        """Poll until every one of ``event_ids`` is archived, or ``timeout``: their
        ``archived_at`` and the monotonic time the last one was seen."""
        wanted = list(event_ids)
        found: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while True:
            missing = [event_id for event_id in wanted if event_id not in found]
            if missing:
                found.update(await asyncio.to_thread(self.archived_at, missing))
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found, time.monotonic()
            await asyncio.sleep(0.2)


# -- one configuration ------------------------------------------------------------------------------


@attrs.define
class BotFigures:
    rooms: int = 0
    #: rows archived in the measured period, and the CPU seconds spent meanwhile
    archived: int = 0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    #: the restarted process's VmHWM after the catch-up
    restart_hwm_mb: float = 0.0
    lags_s: list[float] = attrs.field(factory=list)
    #: from the restart until its outage messages were archived (inf: not within the timeout)
    catchup_s: float = 0.0
    ready_s: float = 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_s / self.archived if self.archived else float("nan")


@attrs.define
class Result:
    rooms: int
    shards: int
    bots: dict[str, BotFigures]
    sent_rate: float
    outage_messages: int
    #: outage messages not archived within the catch-up timeout
    outage_missing: int
    stop_s: float
    setup: str

    @property
    def lags(self) -> list[float]:
        return [lag for figures in self.bots.values() for lag in figures.lags_s]

    @property
    def cpu_ms_per_message(self) -> float:
        archived = sum(f.archived for f in self.bots.values())
        return 1000 * sum(f.cpu_s for f in self.bots.values()) / archived if archived else float("nan")

    @property
    def catchup_s(self) -> float:
        return max(f.catchup_s for f in self.bots.values())

    @property
    def peak_mb(self) -> float:
        return max(max(f.hwm_mb, f.restart_hwm_mb) for f in self.bots.values())


def _percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


class Setup:
    """One shard count: the PostgreSQL databases, Synapse, the bots and the officers."""

    def __init__(self, cluster: PostgresCluster, directory: Path, shards: int, senders: int) -> None:
        self.cluster = cluster
        self.directory = directory
        self.shards = shards
        server = f"bench-shards{shards}.test"
        localparts = ["auditor"] if shards == 1 else [f"auditor-{i}" for i in range(1, shards + 1)]
        bot_ids = [f"@{localpart}:{server}" for localpart in localparts]
        auditor = {"user_id": bot_ids[0]} if shards == 1 else {"user_ids": bot_ids}
        suffix = uuid.uuid4().hex[:6]
        spec = HomeserverSpec(
            directory=directory / "homeserver",
            server_name=server,
            http_port=free_port(),
            module_config={"auditor": auditor},
            database=cluster.create_database(f"synapse_{shards}_{suffix}"),
        )
        args = cluster.create_database(f"archive_{shards}_{suffix}")["args"]
        self.dsn = f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"
        self.archive = ArchiveReader(self.dsn)
        self.hs = Homeserver(spec)
        self.localparts = localparts
        self.senders = senders
        self.bots: list[Bot] = []
        self.officers: Officers | None = None

    async def start(self) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self.hs.start)
        shared = self.directory / "shared"
        shared.mkdir()
        (shared / "archive.key").write_text(os.urandom(32).hex())
        for localpart in self.localparts:
            bot = Bot(self.hs, self.directory / localpart, localpart, shared, self.dsn)
            self.bots.append(bot)
            # one at a time: the first creates the archive's tables
            bot.spawn()
            await bot.wait_ready()
        self.officers = Officers(self.hs, self.directory / "officers", self.senders)
        await self.officers.log_in()
        print(
            f"  Synapse (PostgreSQL), {self.shards} bot(s) and {self.senders} officers up "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )

    async def close(self) -> None:
        if self.officers is not None:
            await self.officers.close()
        for bot in self.bots:
            with contextlib.suppress(Exception):
                bot.stop()
        self.hs.stop()

    async def measure(self, rooms: int, sizes: Sizes) -> Result:
        officers = self.officers
        assert officers is not None
        bots = {bot.user_id: bot for bot in self.bots}
        started = time.perf_counter()
        new = await officers.create_rooms(rooms, list(bots))
        created = time.perf_counter()
        first = await officers.share_keys(new)
        found, _ = await self.archive.wait_for([s.event_id for s in first], max(300.0, 0.2 * len(new)))
        if len(found) < len(first):
            raise BenchError(f"{len(first) - len(found)} of {len(first)} first messages were not archived")
        warmed = time.perf_counter()
        setup = (
            f"{len(new)} rooms created in {created - started:.0f} s "
            f"({len(new) / max(created - started, 1e-9):.1f} rooms/s, {CREATE_IN_FLIGHT} in flight, "
            f"bot seated in each), first message of each archived {warmed - created:.0f} s later"
        )
        print(f"  {rooms} rooms: {setup}", flush=True)
        figures = {user_id: BotFigures() for user_id in bots}
        for bot_id in officers.seat.values():
            figures[bot_id].rooms += 1

        # steady traffic: warm-up, then the measured period
        stop = asyncio.Event()
        officers.sent.clear()
        officers.phase = "warm-up"
        traffic = asyncio.create_task(officers.traffic(sizes.rate, stop))
        await asyncio.sleep(sizes.warmup_s)
        cpu_before = {user_id: bot.cpu_s() for user_id, bot in bots.items()}
        officers.phase = "measured"
        t0_ms, t0 = _ms(), time.monotonic()
        await asyncio.sleep(sizes.measure_s)
        officers.phase = "after"
        t1_ms, t1 = _ms(), time.monotonic()
        for user_id, bot in bots.items():
            figures[user_id].cpu_s = bot.cpu_s() - cpu_before[user_id]
            figures[user_id].rss_mb, figures[user_id].hwm_mb = bot.memory_mb()
        measured = await officers.sent_in("measured")
        sent_rate = len(measured) / (t1 - t0)
        archived, _ = await self.archive.wait_for([s.event_id for s in measured], BOT_READY_TIMEOUT_S)
        if len(archived) < len(measured):
            raise BenchError(f"{len(measured) - len(archived)} measured messages were not archived")
        for s in measured:
            figures[officers.seat[s.room_id]].lags_s.append((archived[s.event_id] - s.sent_ms) / 1000)
        for room_id, n in (await asyncio.to_thread(self.archive.archived_between, t0_ms, t1_ms)).items():
            if room_id in officers.seat:
                figures[officers.seat[room_id]].archived += n

        # the outage: the bots stop, the officers go on, the bots start again
        stopping = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(bot.stop) for bot in bots.values()))
        stop_s = time.monotonic() - stopping
        officers.phase = "outage"
        await asyncio.sleep(sizes.outage_s)
        officers.phase = "catch-up"
        restarted = time.monotonic()
        for bot in bots.values():
            bot.spawn()
        outage = await officers.sent_in("outage")

        async def ready_after(bot: Bot) -> float:
            await bot.wait_ready()
            return time.monotonic() - restarted

        ready = {user_id: asyncio.create_task(ready_after(bot)) for user_id, bot in bots.items()}
        timeout = max(10 * CATCHUP_TARGET_S, 2 * sizes.outage_s)
        missing = 0

        async def caught_up(user_id: str) -> None:
            nonlocal missing
            mine = [s.event_id for s in outage if officers.seat[s.room_id] == user_id]
            found, last_seen = await self.archive.wait_for(mine, timeout)
            missing += len(mine) - len(found)
            figures[user_id].catchup_s = last_seen - restarted if len(found) == len(mine) else float("inf")

        await asyncio.gather(*(caught_up(user_id) for user_id in bots))
        for user_id, task in ready.items():
            figures[user_id].ready_s = await task
            figures[user_id].restart_hwm_mb = bots[user_id].memory_mb()[1]
        stop.set()
        await traffic
        # everything sent is archived before the next size
        rest, _ = await self.archive.wait_for([s.event_id for s in officers.sent], BOT_READY_TIMEOUT_S)
        if len(rest) < len(officers.sent):
            raise BenchError(f"{len(officers.sent) - len(rest)} messages were never archived")
        return Result(
            rooms=rooms,
            shards=self.shards,
            bots=figures,
            sent_rate=sent_rate,
            outage_messages=len(outage),
            outage_missing=missing,
            stop_s=stop_s,
            setup=setup,
        )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(result: Result, sizes: Sizes) -> None:
    names = list(result.bots)
    several = len(names) > 1
    header = ("figure", *(name.split(":")[0].lstrip("@") for name in names), *(("all",) if several else ()))
    header = (*header, "target")

    def row(name: str, values: Sequence[str], total: str = "", target: str = "") -> tuple[str, ...]:
        return (name, *values, *((total,) if several else ()), target)

    figures = list(result.bots.values())
    lags = result.lags
    rows = [
        row("rooms", [f"{f.rooms:,}" for f in figures], f"{sum(f.rooms for f in figures):,}"),
        row(
            "messages archived in the measured period",
            [f"{f.archived:,}" for f in figures],
            f"{sum(f.archived for f in figures):,}",
        ),
        row(
            "archive lag p50 (s)",
            [f"{_percentile(f.lags_s, 0.5):.2f}" for f in figures],
            f"{_percentile(lags, 0.5):.2f}",
        ),
        row(
            "archive lag p95 (s)",
            [f"{_percentile(f.lags_s, 0.95):.2f}" for f in figures],
            f"{_percentile(lags, 0.95):.2f}",
            f"<= {LAG_P95_TARGET_S:g}",
        ),
        row(
            "CPU per message (ms)",
            [f"{f.cpu_ms_per_message:.2f}" for f in figures],
            f"{result.cpu_ms_per_message:.2f}",
        ),
        row(
            "CPU in the measured period (% of a core)",
            [f"{100 * f.cpu_s / sizes.measure_s:.1f}" for f in figures],
            f"{100 * sum(f.cpu_s for f in figures) / sizes.measure_s:.1f}",
        ),
        row("RSS (VmRSS, MB)", [f"{f.rss_mb:.0f}" for f in figures], f"{sum(f.rss_mb for f in figures):.0f}"),
        row(
            "peak RSS (VmHWM, MB)",
            [f"{f.hwm_mb:.0f}" for f in figures],
            f"{sum(f.hwm_mb for f in figures):.0f}",
            f"<= {RSS_TARGET_MB:g} each",
        ),
        row(
            "peak RSS after the restart (VmHWM, MB)",
            [f"{f.restart_hwm_mb:.0f}" for f in figures],
            f"{sum(f.restart_hwm_mb for f in figures):.0f}",
            f"<= {RSS_TARGET_MB:g} each",
        ),
        row(
            "restart: ready (first sync handled) after (s)",
            [f"{f.ready_s:.1f}" for f in figures],
            f"{max(f.ready_s for f in figures):.1f}",
        ),
        row(
            f"catch-up after {sizes.outage_s:g} s outage (s)",
            [f"{f.catchup_s:.1f}" for f in figures],
            f"{result.catchup_s:.1f}",
            f"<= {CATCHUP_TARGET_S:g}",
        ),
    ]
    shard_text = "1 shard" if result.shards == 1 else f"{result.shards} shards"
    print(
        f"\n{result.rooms:,} rooms, {shard_text}: {sizes.rate:g} msgs/s scheduled "
        f"({result.sent_rate:.1f} sent) over {sizes.measure_s:g} s measured after {sizes.warmup_s:g} s; "
        f"outage: SIGTERM (the bots stopped in {result.stop_s:.1f} s), "
        f"{result.outage_messages:,} messages sent meanwhile"
    )
    print_table([header, *rows])
    lag_p95 = _percentile(lags, 0.95)
    print(
        f"{result.rooms} rooms, {shard_text}: lag p95 {lag_p95:.2f} s <= {LAG_P95_TARGET_S:g} s: "
        f"{_verdict(lag_p95 <= LAG_P95_TARGET_S)}; peak RSS {result.peak_mb:.0f} MB <= {RSS_TARGET_MB:g} MB "
        f"per bot: {_verdict(result.peak_mb <= RSS_TARGET_MB)}; catch-up {result.catchup_s:.1f} s "
        f"<= {CATCHUP_TARGET_S:g} s: {_verdict(result.catchup_s <= CATCHUP_TARGET_S)}"
        + (f" ({result.outage_missing} outage messages not archived)" if result.outage_missing else ""),
        flush=True,
    )


def compare(results: Sequence[Result]) -> None:
    """How each figure grows with the rooms, per shard count; then shards against one bot."""
    print()
    for shards in sorted({r.shards for r in results}):
        mine = sorted((r for r in results if r.shards == shards), key=lambda r: r.rooms)
        if len(mine) < 2:
            continue
        small, large = mine[0], mine[-1]
        what = "1 shard" if shards == 1 else f"{shards} shards"
        growth = f"{small.rooms} -> {large.rooms} rooms, {what}"
        small_cpu, large_cpu = small.cpu_ms_per_message, large.cpu_ms_per_message
        ratio = large_cpu / small_cpu
        print(
            f"CPU per message, {growth}: {small_cpu:.2f} -> {large_cpu:.2f} ms, "
            f"ratio {ratio:.2f} <= {CPU_RATIO_TARGET}: {_verdict(ratio <= CPU_RATIO_TARGET)}"
        )
        small_p95, large_p95 = (_percentile(r.lags, 0.95) for r in (small, large))
        print(
            f"archive lag p95, {growth}: {small_p95:.2f} -> {large_p95:.2f} s: "
            f"{_verdict(large_p95 <= LAG_P95_TARGET_S)}"
        )
        print(
            f"peak RSS per bot, {growth}: {small.peak_mb:.0f} -> {large.peak_mb:.0f} MB: "
            f"{_verdict(large.peak_mb <= RSS_TARGET_MB)}"
        )
        print(
            f"catch-up, {growth}: {small.catchup_s:.1f} -> {large.catchup_s:.1f} s: "
            f"{_verdict(large.catchup_s <= CATCHUP_TARGET_S)}"
        )
    for rooms in sorted({r.rooms for r in results}):
        by_shards = {r.shards: r for r in results if r.rooms == rooms}
        if 1 in by_shards and len(by_shards) > 1:
            one = by_shards[1]
            for shards, r in sorted(by_shards.items()):
                if shards == 1:
                    continue
                print(
                    f"{rooms} rooms, {shards} shards against 1: lag p95 {_percentile(r.lags, 0.95):.2f} "
                    f"against {_percentile(one.lags, 0.95):.2f} s, CPU per message (all shards) "
                    f"{r.cpu_ms_per_message:.2f} against {one.cpu_ms_per_message:.2f} ms, catch-up "
                    f"{r.catchup_s:.1f} against {one.catchup_s:.1f} s, peak RSS per bot "
                    f"{r.peak_mb:.0f} against {one.peak_mb:.0f} MB"
                )


async def run_shards(cluster: PostgresCluster, directory: Path, shards: int, sizes: Sizes) -> list[Result]:
    setup = Setup(cluster, directory / f"shards-{shards}", shards, sizes.senders)
    results = []
    try:
        await setup.start()
        for rooms in sizes.rooms:
            started = time.perf_counter()
            result = await setup.measure(rooms, sizes)
            report(result, sizes)
            print(f"({rooms} rooms: setup and run took {time.perf_counter() - started:.0f} s)", flush=True)
            results.append(result)
    finally:
        await setup.close()
    return results


@contextlib.contextmanager
def _quiet_nio() -> Iterator[None]:
    # nio warns per device it has no Olm session with yet, and per unverified device
    logger = logging.getLogger("nio")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run(sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-shards-") as temporary,
        running_cluster() as cluster,
        _quiet_nio(),
    ):
        for shards in sizes.shards:
            print(f"{shards} shard(s), rooms {', '.join(f'{r:,}' for r in sizes.rooms)}:", flush=True)
            results += asyncio.run(run_shards(cluster, Path(temporary), shards, sizes))
    compare(results)
    return results


def main(
    smoke: bool = False,
    rooms: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    outage_s: float | None = None,
) -> None:
    """At ``FULL`` sizes, or ``SMOKE`` with ``smoke``; ``rooms``, ``shards`` and ``outage_s``
    replace those of the size."""
    sizes = SMOKE if smoke else FULL
    if rooms is not None:
        sizes = attrs.evolve(sizes, rooms=tuple(sorted(rooms)))
    if shards is not None:
        sizes = attrs.evolve(sizes, shards=tuple(shards))
    if outage_s is not None:
        sizes = attrs.evolve(sizes, outage_s=outage_s)
    run(sizes)


def _numbers(argument: str) -> list[int]:
    return [int(part) for part in argument.split(",")]


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not arguments or len(arguments) > 3:
        sys.exit("usage: python -m bench.auditor_shards ROOMS[,ROOMS...] [SHARDS[,SHARDS...] [OUTAGE_S]]")
    main(
        rooms=_numbers(arguments[0]),
        shards=_numbers(arguments[1]) if len(arguments) > 1 else [1],
        outage_s=float(arguments[2]) if len(arguments) > 2 else None,
    )
