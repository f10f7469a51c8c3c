"""The dispatch bot alerting a unit of ``OFFICERS`` officers, each a nio client with E2EE.

Measured in one run against one Synapse with the module:

1. plain: one nio ``room_send`` of a text by an ordinary user into a room with
   the same officers, until every officer's client has decrypted it;
2. alert: from the dispatcher's ``!alert`` command until every officer's client
   has decrypted the bot's alert (the command is decrypted by the bot, the
   alert encrypted for every officer's device and sent into the unit's room).

Both are done twice: cold (the first message in the room, so the Megolm
session is shared with every device over Olm) and warm (median of
``WARM_ROUNDS``, alternating which goes first). The cold figure
favours the bot: the plain sender shares its session from this process, whose
event loop also runs every officer's client, the bot from its own process; the
warm one compares like with like. Target: alert / plain
<= 1.3. Then every officer acknowledges at once (a ✅ reaction): the time until
the bot posts "all N acknowledged", whether the board shows N/N and the bot's
state holds N acknowledgements (none lost). Last, the bot's peak RSS (VmHWM;
target <= 200 MB).

Setup is not timed: users registered through the shared-secret API, devices
enrolled in one transaction (``bench/accounts.py``), nio logins with key upload.
``python -m bench.dispatch_alert 20`` runs a smaller unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import yaml
from nio import (
    Api,
    AsyncClient,
    Event,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from devtools.homeserver import REPO_ROOT, Homeserver, HomeserverSpec, free_port

from .accounts import BenchError, device_id_for, e2ee_client, enroll_many, register_many

OFFICERS = 200
RATIO_TARGET = 1.3
RSS_TARGET_MB = 200.0
PASSWORD = "bench-password"
#: nio clients logging in / joining at the same time during setup
SETUP_CONCURRENCY = 16
#: warm sends of each kind (medians reported)
WARM_ROUNDS = 5
TIMEOUT_S = 180.0


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    officers: int
    #: warm sends of each kind
    warm_rounds: int


FULL = Sizes(officers=OFFICERS, warm_rounds=WARM_ROUNDS)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(officers=3, warm_rounds=2)


class Officer:
    """A client that long-polls /sync and notes when a text containing a marker was decrypted."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        #: marker -> (when decrypted, room ID, event)
        self.seen: dict[str, tuple[float, str, Event]] = {}
        self.markers: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def loop(self) -> None:
        while True:
            response = await self.client.sync(timeout=30_000)
            now = time.perf_counter()
            if not isinstance(response, SyncResponse):
                await asyncio.sleep(0.5)
                continue
            for room_id, room in response.rooms.join.items():
                for event in room.timeline.events:
                    if isinstance(event, RoomMessageText):
                        for marker in self.markers:
                            if marker in event.body and marker not in self.seen:
                                self.seen[marker] = (now, room_id, event)


async def _login(hs: Homeserver, localpart: str, store: Path) -> AsyncClient:
    return await e2ee_client(hs, localpart, PASSWORD, device_id_for(localpart), store, request_timeout=120)


async def _join_rooms(client: AsyncClient, count: int) -> None:
    """Sync and accept invites until the client is in ``count`` rooms."""
    deadline = time.monotonic() + TIMEOUT_S
    while len(client.rooms) - len(client.invited_rooms) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"{client.user_id} joined {len(client.rooms)} rooms, not {count}")
        for room_id in list(client.invited_rooms):
            await client.join(room_id)
        await client.sync(timeout=1000)


async def _bounded(limit: int, jobs: list[Callable[[], Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Any]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


async def _send(
    client: AsyncClient, room_id: str, content: dict[str, Any], event_type: str = "m.room.message"
) -> str:
    if client.should_query_keys:
        await client.keys_query()
    response = await client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
    if not isinstance(response, RoomSendResponse):
        raise BenchError(f"{client.user_id}: sending failed: {response}")
    return response.event_id


async def _all_decrypted(officers: list[Officer], marker: str) -> float:
    """perf_counter time at which the last officer had decrypted ``marker``."""
    deadline = time.monotonic() + TIMEOUT_S
    while not all(marker in officer.seen for officer in officers):
        if time.monotonic() > deadline:
            missing = sum(marker not in officer.seen for officer in officers)
            raise BenchError(f"{missing} officers did not decrypt {marker} within {TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.01)
    return max(officer.seen[marker][0] for officer in officers)


async def _plain(sender: AsyncClient, room_id: str, officers: list[Officer], text: str) -> float:
    marker = f"plain-{uuid.uuid4().hex[:8]}"
    for officer in officers:
        officer.markers.add(marker)
    started = time.perf_counter()
    await _send(sender, room_id, {"msgtype": "m.text", "body": f"{text} {marker}"})
    return await _all_decrypted(officers, marker) - started


async def _alert(
    dispatcher: AsyncClient, control: str, officers: list[Officer], text: str
) -> tuple[float, str]:
    marker = f"alert-{uuid.uuid4().hex[:8]}"
    for officer in officers:
        officer.markers.add(marker)
    started = time.perf_counter()
    await _send(dispatcher, control, {"msgtype": "m.text", "body": f"!alert zug {text} {marker} ack:3600"})
    finished = await _all_decrypted(officers, marker)
    return finished - started, marker


async def _wait_for_bot_texts(client: AsyncClient, room_id: str, bot_id: str, *needles: str) -> list[float]:
    """Server times (s) of the bot's messages (or board edits) containing each needle."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while len(found) < len(needles):
        if time.monotonic() > deadline:
            raise BenchError(
                f"the bot did not post {sorted(set(needles) - set(found))} within {TIMEOUT_S:.0f}s"
            )
        response = await client.sync(timeout=1000)
        room = response.rooms.join.get(room_id) if isinstance(response, SyncResponse) else None
        for event in room.timeline.events if room else []:
            content = event.source.get("content", {})
            body = (content.get("m.new_content") or content).get("body", "")
            for needle in needles:
                if event.sender == bot_id and needle in body and needle not in found:
                    found[needle] = event.server_timestamp / 1000
    return [found[needle] for needle in needles]


async def _react(client: AsyncClient, room_id: str, event_id: str) -> None:
    """A ✅ reaction as a plain PUT: nio's room_send would first share the officer's own Megolm
    session with all members (an officer's first send), which is the clients' cost, not the bot's."""
    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": "✅"}}
    method, path, data = Api.room_send(client.access_token, room_id, "m.reaction", content, uuid.uuid4().hex)
    response = await client.send(method, path, data, headers={"Content-Type": "application/json"})
    if response.status != 200:
        raise BenchError(f"{client.user_id}: reaction refused: HTTP {response.status}")
    response.release()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_bot_config(bot_dir: Path, url: str, server_name: str, officers: list[str]) -> dict[str, Any]:
    """The bot's config and state key in ``bot_dir``; one unit holds every officer."""

    def user_id(localpart: str) -> str:
        return f"@{localpart}:{server_name}"

    (bot_dir / "state.key").write_text(os.urandom(32).hex())
    return {
        "homeserver_url": url,
        "user_id": user_id("dispatch-bot"),
        "password": PASSWORD,
        "device_id": device_id_for("dispatch-bot"),
        "store_dir": "store",
        "state_path": "state.sqlite",
        "state_key_file": "state.key",
        "control_rooms": [f"#leitstelle:{server_name}"],
        "roles": {"dispatcher": [user_id("dispatcher")]},
        "units": [{"name": "zug", "call_sign": "Zug 1", "members": [user_id(n) for n in officers]}],
        "ack_deadline": "1h",
    }


async def measure(hs: Homeserver, directory: Path, sizes: Sizes) -> None:
    officers_n = sizes.officers
    # nio warns once per device it has no Olm session with yet: 200 lines of noise
    logging.getLogger("nio").setLevel(logging.ERROR)
    names = [f"officer-{i:03d}" for i in range(officers_n)]
    everyone = [*names, "dispatcher", "sender", "dispatch-bot"]
    started = time.perf_counter()
    register_many(hs, everyone, PASSWORD)
    enroll_many(hs, ((hs.user_id(name), device_id_for(name)) for name in everyone))
    bot_dir = directory / "bot"
    bot_dir.mkdir()
    config = write_bot_config(bot_dir, hs.url, hs.server_name, names)
    (bot_dir / "dispatch.yaml").write_text(yaml.safe_dump(config))
    log_file = bot_dir / "bot.log"
    with log_file.open("ab") as out:
        bot = subprocess.Popen(
            [sys.executable, "-m", "bots.dispatch", "-c", str(bot_dir / "dispatch.yaml")],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    clients: list[AsyncClient] = []
    officers: list[Officer] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "dispatch bot ready" not in log_file.read_text(errors="replace"):
            if bot.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the dispatch bot did not start:\n{log_file.read_text(errors='replace')}")
            await asyncio.sleep(0.2)
        clients = await _bounded(
            SETUP_CONCURRENCY, [lambda n=n: _login(hs, n, directory / "stores" / n) for n in everyone[:-1]]
        )
        *officer_clients, dispatcher, sender = clients
        created = await sender.room_create(invite=[c.user_id for c in officer_clients])
        if not isinstance(created, RoomCreateResponse):
            raise BenchError(f"creating the plain room failed: {created}")
        plain_room = created.room_id
        await _bounded(SETUP_CONCURRENCY, [lambda c=c: _join_rooms(c, 2) for c in officer_clients])
        await _join_rooms(dispatcher, 1)
        await _join_rooms(sender, 1)
        # The sender shares its Megolm session with the members it knows have joined
        # (``users`` lists the invited too, and the module seats its service users).
        officer_ids = {client.user_id for client in officer_clients}
        deadline = time.monotonic() + TIMEOUT_S

        def waiting_for() -> set[str]:
            room = sender.rooms[plain_room]
            return officer_ids - (set(room.users) - set(room.invited_users))

        while waiting_for():
            if time.monotonic() > deadline:
                raise BenchError(f"the sender did not see all {officers_n} officers join the plain room")
            await sender.sync(timeout=1000)
        control = next(iter(dispatcher.rooms))
        print(
            f"  {officers_n} officers logged in and in both rooms; "
            f"set up in {time.perf_counter() - started:.0f} s"
        )

        officers = [Officer(client) for client in officer_clients]
        for officer in officers:
            officer.task = asyncio.create_task(officer.loop())
        await asyncio.sleep(2)  # every officer is long-polling
        text = "Einsatz: Großlage am Hauptbahnhof, alle Kräfte sammeln"
        plain_cold = await _plain(sender, plain_room, officers, text)
        alert_cold, _ = await _alert(dispatcher, control, officers, text)
        plain_times: list[float] = []
        alert_times: list[float] = []
        for round_ in range(sizes.warm_rounds):  # alternating which goes first
            if round_ % 2:
                alert_time, marker = await _alert(dispatcher, control, officers, text)
                plain_times.append(await _plain(sender, plain_room, officers, text))
            else:
                plain_times.append(await _plain(sender, plain_room, officers, text))
                alert_time, marker = await _alert(dispatcher, control, officers, text)
            alert_times.append(alert_time)
        plain_warm, alert_warm = statistics.median(plain_times), statistics.median(alert_times)

        # the board, then every officer acknowledges the last alert at once
        await _send(dispatcher, control, {"msgtype": "m.text", "body": "!status"})
        await _wait_for_bot_texts(dispatcher, control, hs.user_id("dispatch-bot"), "Dispatch board")
        # the officers stop syncing: 200 clients parsing 200 reactions each would starve this
        # process's event loop and with it the dispatcher's client that watches the bot
        for officer in officers:
            if officer.task:
                officer.task.cancel()
        await asyncio.gather(*(o.task for o in officers if o.task), return_exceptions=True)
        ack_started = time.time()
        await asyncio.gather(
            *(_react(o.client, o.seen[marker][1], o.seen[marker][2].event_id) for o in officers)
        )
        acks_sent = time.time() - ack_started
        all_acked, board_full = await _wait_for_bot_texts(
            dispatcher,
            control,
            hs.user_id("dispatch-bot"),
            f"all {officers_n} acknowledged",
            f"{officers_n}/{officers_n}",
        )
        rss = _peak_rss_mb(bot.pid)
    finally:
        for officer in officers:
            if officer.task:
                officer.task.cancel()
        await asyncio.gather(*(o.task for o in officers if o.task), return_exceptions=True)
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
        with contextlib.suppress(Exception):
            bot.terminate()
            bot.wait(30)
    with contextlib.closing(sqlite3.connect(bot_dir / "state.sqlite")) as db:
        stored = db.execute(
            "SELECT count(*) FROM addressees WHERE acked_at IS NOT NULL AND alert_id ="
            " (SELECT max(id) FROM alerts)"
        ).fetchone()[0]
    report(
        sizes,
        (plain_cold, alert_cold, plain_warm, alert_warm),
        (acks_sent, all_acked - ack_started, board_full - ack_started),
        stored,
        rss,
    )


def report(
    sizes: Sizes,
    sends: tuple[float, float, float, float],
    acks: tuple[float, float, float],
    stored: int,
    rss: float,
) -> None:
    n = sizes.officers
    plain_cold, alert_cold, plain_warm, alert_warm = sends
    sent_s, ack_s, board_s = acks

    def line(name: str, value: str, target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"  {name:<52} {value:>14}  {target:<12} {verdict}")

    print(f"  unit of {n} officers, every one a nio client with E2EE")
    for label, plain, alert in (
        ("cold (session shared)", plain_cold, alert_cold),
        (f"warm, median of {sizes.warm_rounds}", plain_warm, alert_warm),
    ):
        line(f"plain room_send, {label}: until all decrypted", f"{plain * 1000:.0f} ms")
        line(f"!alert, {label}: until all decrypted", f"{alert * 1000:.0f} ms")
        ratio = alert / plain
        line(f"ratio alert / plain, {label}", f"{ratio:.2f}", f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET)
    line(f"{n} ✅ reactions sent at once, all accepted after", f"{sent_s * 1000:.0f} ms")
    line(f"the bot's 'all {n} acknowledged' after", f"{ack_s * 1000:.0f} ms")
    line(f"board shows {n}/{n} after", f"{board_s * 1000:.0f} ms")
    line("acknowledgements stored by the bot", f"{stored}/{n}", f"{n}/{n}", stored == n)
    line("bot peak RSS (VmHWM)", f"{rss:.0f} MB", f"<= {RSS_TARGET_MB:.0f} MB", rss <= RSS_TARGET_MB)


def main(smoke: bool = False) -> None:
    """At ``FULL`` size, or ``SMOKE`` with ``smoke``."""
    run(SMOKE if smoke else FULL)


def run(sizes: Sizes) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as temporary:
        directory = Path(temporary)
        spec = HomeserverSpec(
            directory=directory / "homeserver",
            server_name="bench-dispatch.test",
            http_port=free_port(),
            module_config={},
            extra={"bcrypt_rounds": 4},
        )
        hs = Homeserver(spec)
        hs.start()
        try:
            asyncio.run(measure(hs, directory, sizes))
        finally:
            hs.stop()


if __name__ == "__main__":
    run(attrs.evolve(FULL, officers=int(sys.argv[1])) if len(sys.argv) > 1 else FULL)
