"""The dispatch bot against a real Synapse, with a dispatcher and four officers as nio
E2EE clients: an incident with two units, an alert acknowledged by reaction and by
reply and escalated for the rest, the board edited in place and pinned, no result of a
command mentioning its author, times in Europe/Berlin, officer statuses with a
status 0 alert, a refused officer command, a restart by SIGKILL during an open alert,
and the incident closed with its diary (a message and an encrypted JSON file).

A second bot is killed right after chosen steps of its commands (the test hook
``DISPATCH_TEST_STOP_FILE``) and restarted: nothing is lost or doubled; it also shows
escalations reaching a unit's supervisor, neutral room names, a board that stays small and
a server database without the incidents' titles and places."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from nio import (
    AsyncClient,
    Event,
    RoomEncryptedFile,
    RoomGetStateEventResponse,
    RoomMessageNotice,
    RoomMessageText,
    SyncResponse,
)

from devtools.homeserver import Homeserver
from tests.bots import BotProcess, bot_account, stopped_afterwards
from tests.e2ee import download_decrypted, login, send

BOT_LOCALPART = "dispatch-bot"
BOT_DEVICE = "DISPATCH-BOT"
READY = "dispatch bot ready"


@pytest.fixture(scope="module")
def hs(start_homeserver) -> Homeserver:
    return start_homeserver("dispatching")


class Watcher:
    """A test client that keeps every timeline event it synced, joins rooms it is invited to,
    and waits for events matching a predicate (events seen earlier count too)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.events: list[tuple[str, Event]] = []
        #: command text -> server timestamp of the command
        self.sent_at: dict[str, int] = {}

    @property
    def user_id(self) -> str:
        return self.client.user_id

    async def sync(self) -> None:
        response = await self.client.sync(timeout=500)
        assert isinstance(response, SyncResponse), response
        for room_id, room in response.rooms.join.items():
            self.events.extend((room_id, event) for event in room.timeline.events)
        for room_id in list(self.client.invited_rooms):
            await self.client.join(room_id)
        if self.client.should_query_keys:
            await self.client.keys_query()

    async def wait(
        self, match: Callable[[str, Event], bool], timeout: float = 20.0, since: int = 0
    ) -> tuple[str, Event]:
        deadline = time.monotonic() + timeout
        while True:
            for room_id, event in self.events[since:]:
                if match(room_id, event):
                    return room_id, event
            if time.monotonic() > deadline:
                seen = [body(e) for _, e in self.events[since:] if body(e)]
                raise AssertionError(f"{self.user_id}: no matching event within {timeout}s; saw {seen}")
            await self.sync()

    async def wait_joined(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.client.rooms) - len(self.client.invited_rooms) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user_id} is in {len(self.client.rooms)} rooms, not {count}")
            await self.sync()


def body(event: Event) -> str:
    return getattr(event, "body", "") or ""


def from_bot(bot_id: str, room: str | None = None, text: str = "") -> Callable[[str, Event], bool]:
    def match(room_id: str, event: Event) -> bool:
        return (
            event.sender == bot_id
            and (room is None or room_id == room)
            and isinstance(event, RoomMessageText | RoomMessageNotice)
            and text in event.body
        )

    return match


async def command(watcher: Watcher, room_id: str, text: str, bot_id: str, expect: str, timeout: float = 20):
    """Send a command and wait for the bot's answer containing ``expect``."""
    mark = len(watcher.events)
    event_id = await send(watcher.client, room_id, {"msgtype": "m.text", "body": text})
    answer = (await watcher.wait(from_bot(bot_id, room_id, expect), timeout, since=mark))[1]
    watcher.sent_at[text] = next(e.server_timestamp for _, e in watcher.events if e.event_id == event_id)
    return answer


@pytest.fixture
def setup(hs: Homeserver, tmp_path: Path) -> Iterator[tuple[BotProcess, dict[str, Any]]]:
    account = bot_account(hs, tmp_path, BOT_LOCALPART, BOT_DEVICE, label="dispatch bot")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"{role}-{tag}" for role in ("dispatcher", "sup", "o1", "o2", "o3", "o4")}
    users = {role: hs.user_id(name) for role, name in names.items()}
    config = {
        **account,
        "state_path": "state.sqlite",
        "state_key_file": "state.key",
        "control_rooms": [f"#leitstelle-{tag}:{hs.server_name}"],
        "roles": {"dispatcher": [users["dispatcher"]], "supervisor": [users["sup"]]},
        "units": [
            {
                "name": "alpha",
                "call_sign": "Adler 1",
                "members": [users["o1"], users["o2"]],
                "supervisor": users["sup"],
            },
            {
                "name": "bravo",
                "call_sign": "Bussard 2",
                "members": [users["o3"], users["o4"]],
                "supervisor": users["sup"],
            },
        ],
        "ack_deadline": "30s",
        "ack_unit": "s",
        "max_alerts": 3,
    }
    (tmp_path / "state.key").write_text(os.urandom(32).hex())
    config_file = tmp_path / "dispatch.yaml"
    config_file.write_text(yaml.safe_dump(config))
    bot = BotProcess("bots.dispatch", config_file, tmp_path / "bot.log", ready=READY)
    with stopped_afterwards(bot):
        yield bot, {"names": names, "users": users}


def not_mentioned(event: Event, user_id: str) -> bool:
    """Neither in ``m.mentions`` nor a pill: the dispatcher's own command raises no badge."""
    content = event.source.get("content", {})
    return user_id not in content["m.mentions"].get("user_ids", []) and (
        f"matrix.to/#/{user_id}" not in content.get("formatted_body", "")
    )


async def pinned(client: AsyncClient, room_id: str, event_id: str, timeout: float = 10.0) -> list[str]:
    """The room's pinned events once ``event_id`` is among them (or the last seen at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.room_get_state_event(room_id, "m.room.pinned_events")
        pins = response.content.get("pinned", []) if isinstance(response, RoomGetStateEventResponse) else []
        if event_id in pins or time.monotonic() > deadline:
            return pins
        await asyncio.sleep(0.2)


def relates_to(event: Event) -> dict[str, Any]:
    return event.source.get("content", {}).get("m.relates_to") or {}


def board_text(event: Event) -> str:
    content = event.source.get("content", {})
    return (content.get("m.new_content") or content).get("body", "")


async def test_dispatch_bot_end_to_end(hs, setup, tmp_path):
    bot, people = setup
    users, names = people["users"], people["names"]
    bot_id = hs.user_id(BOT_LOCALPART)
    bot.start()
    watchers: dict[str, Watcher] = {}
    try:
        for role in ("dispatcher", "o1", "o2", "o3", "o4"):
            password = f"pw-{uuid.uuid4().hex}"
            hs.register_user(names[role], password, login=False)
            client = await login(hs, names[role], password, tmp_path / f"store-{role}")
            watchers[role] = Watcher(client)
        dispatcher = watchers["dispatcher"]
        officers = [watchers[f"o{n}"] for n in range(1, 5)]
        # the bot made the control room (alias) and the two unit rooms, and invited everyone
        for watcher in watchers.values():
            await watcher.wait_joined(1)
        (control,) = [r for r in dispatcher.client.rooms]
        assert dispatcher.client.rooms[control].encrypted

        # the board, then an incident with two units
        board_event = await command(dispatcher, control, "!status", bot_id, "Dispatch board")
        board_id = board_event.event_id
        assert board_id in await pinned(dispatcher.client, control, board_id)
        typo = await command(dispatcher, control, "!incident new Einbruch units:alpah", bot_id, "no unit")
        assert "alpha" in typo.body and "Did you mean" in typo.body
        card = await command(
            dispatcher,
            control,
            "!incident new Einbruch Juwelier prio:1 units:alpha,bravo loc:Hauptstraße 5",
            bot_id,
            "Incident #1",
        )
        assert "Adler 1" in card.body and "Bussard 2" in card.body and "Hauptstraße 5" in card.body
        assert not_mentioned(card, users["dispatcher"])
        for officer in officers:
            await officer.wait_joined(2)
        incident_room = ""

        # an alert to the incident: o1 acknowledges by reaction, o2 by reply, o3 and o4 not
        mark = len(dispatcher.events)
        answer = await command(
            dispatcher, control, "!alert 1 Zugriff vorbereiten ack:5", bot_id, "Alert A1 sent"
        )
        sent_at = dispatcher.sent_at["!alert 1 Zugriff vorbereiten ack:5"]
        assert "sent to 4" in answer.body
        due = datetime.fromtimestamp(sent_at / 1000 + 5, ZoneInfo("Europe/Berlin")).strftime("%H:%M:%S %Z")
        assert f"acknowledgement due by {due}." in answer.body, answer.body
        alerts: dict[str, Event] = {}
        for officer in officers:
            room_id, alert = await officer.wait(from_bot(bot_id, text="Alert A1"))
            assert alert.decrypted and "Zugriff vorbereiten" in alert.body
            assert officer.user_id in alert.source["content"]["m.mentions"]["user_ids"]
            assert not_mentioned(alert, users["dispatcher"])
            alerts[officer.user_id] = alert
            incident_room = room_id
        await send(
            officers[0].client,
            incident_room,
            {
                "m.relates_to": {
                    "rel_type": "m.annotation",
                    "event_id": alerts[users["o1"]].event_id,
                    "key": "✅",
                }
            },
            "m.reaction",
        )
        await send(
            officers[1].client,
            incident_room,
            {
                "msgtype": "m.text",
                "body": "quittiert",
                "m.relates_to": {"m.in_reply_to": {"event_id": alerts[users["o2"]].event_id}},
            },
        )
        _, escalation = await dispatcher.wait(from_bot(bot_id, control, "Escalation, alert A1"), since=mark)
        assert escalation.server_timestamp - sent_at >= 5000
        assert names["o3"] in escalation.body and names["o4"] in escalation.body
        assert names["o1"] not in escalation.body and names["o2"] not in escalation.body
        assert users["sup"] in escalation.source["content"]["m.mentions"]["user_ids"]
        _, reminder = await officers[2].wait(from_bot(bot_id, incident_room, "Reminder 2/3"))
        assert users["o3"] in reminder.source["content"]["m.mentions"]["user_ids"]

        # the board is edited in place, never posted again
        def edit_with(text: str) -> Callable[[str, Event], bool]:
            def match(room_id: str, event: Event) -> bool:
                return (
                    room_id == control
                    and event.sender == bot_id
                    and relates_to(event).get("rel_type") == "m.replace"
                    and relates_to(event).get("event_id") == board_id
                    and text in board_text(event)
                )

            return match

        _, edit = await dispatcher.wait(edit_with("2/4"))
        assert (
            names["o1"] in board_text(edit) and "(✅)" in board_text(edit) and "(reply)" in board_text(edit)
        )
        assert "Einbruch Juwelier" in board_text(edit)
        assert "<table>" in edit.source["content"]["m.new_content"]["formatted_body"]

        # statuses: 3 is recorded, 0 alerts the control room at once; a position goes on the board
        await send(officers[2].client, incident_room, {"msgtype": "m.text", "body": "!s 3"})
        mark = len(dispatcher.events)
        await send(officers[3].client, incident_room, {"msgtype": "m.text", "body": "!s 0"})
        _, urgent = await dispatcher.wait(from_bot(bot_id, control, "Status 0"), since=mark)
        assert (
            names["o4"] in urgent.body
            and users["dispatcher"] in urgent.source["content"]["m.mentions"]["user_ids"]
        )
        await send(
            officers[0].client,
            incident_room,
            {"msgtype": "m.location", "body": "Position", "geo_uri": "geo:52.5200,13.4050"},
        )
        await dispatcher.wait(edit_with("geo:52.5200,13.4050"))
        await dispatcher.wait(edit_with("3 assignment accepted"))

        # an officer's command in the control room is refused; bad input gets a usage line
        await dispatcher.client.room_invite(control, users["o1"])
        await officers[0].wait_joined(3)
        refusal = await command(officers[0], control, "!close 1", bot_id, "Refused")
        assert "dispatchers and supervisors" in refusal.body
        usage = await command(dispatcher, control, "!alert bravo", bot_id, "text is missing")
        assert "Write: !alert" in usage.body
        unknown = await command(dispatcher, control, "!sitrep 9 hallo", bot_id, "no incident #9")
        assert "#1" in unknown.body

        # killed during an open alert: an acknowledgement given while it is down counts,
        # and the escalation comes on time for the one still missing
        mark = len(dispatcher.events)
        answer = await command(dispatcher, control, "!alert bravo Lage melden ack:9", bot_id, "Alert A2 sent")
        sent_at = dispatcher.sent_at["!alert bravo Lage melden ack:9"]
        _, alert = await officers[2].wait(from_bot(bot_id, text="Alert A2"))
        bot.kill()
        await send(
            officers[2].client,
            alert_room := next(r for r, e in officers[2].events if e.event_id == alert.event_id),
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": alert.event_id, "key": "✅"}},
            "m.reaction",
        )
        assert alert_room != incident_room  # the unit's own room
        bot.start()
        _, escalation = await dispatcher.wait(from_bot(bot_id, control, "Escalation, alert A2"), since=mark)
        late = escalation.server_timestamp - sent_at
        assert 9000 <= late <= 14000, late
        assert names["o4"] in escalation.body and names["o3"] not in escalation.body
        await dispatcher.wait(edit_with("A2"))
        # a late answer in the alert's thread (Element's "reply in thread") still counts
        room_o4, alert_o4 = await officers[3].wait(from_bot(bot_id, text="Alert A2"))
        mark = len(dispatcher.events)
        await send(
            officers[3].client,
            room_o4,
            {
                "msgtype": "m.text",
                "body": "Quittiert",
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": alert_o4.event_id,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": alert_o4.event_id},
                },
            },
        )
        await dispatcher.wait(from_bot(bot_id, control, "Alert A2: all 2 acknowledged"), since=mark)

        # units on and off the incident, a handover with the open items, the help
        await command(dispatcher, control, "!release 1 bravo", bot_id, "Bussard 2 (bravo) released from #1")
        await command(dispatcher, control, "!assign 1 Bussard 2", bot_id, "Bussard 2 (bravo) assigned to #1")
        again = await command(dispatcher, control, "!assign 1 bravo", bot_id, "already")
        assert "assigned to #1 already" in again.body
        handover = await command(
            dispatcher, control, f"!handover {names['dispatcher']}", bot_id, "hands the control room"
        )
        assert (
            "Open incidents: 1" in handover.body
            and "A1 Zugriff vorbereiten - missing " + names["o3"] in handover.body
        )
        not_dispatcher = await command(
            dispatcher, control, f"!handover {names['o1']}", bot_id, "no dispatcher"
        )
        assert names["dispatcher"] in not_dispatcher.body
        await command(dispatcher, control, "!help", bot_id, "!incident new <title>")
        # a new board takes the old one's pin
        mark = len(dispatcher.events)
        await send(dispatcher.client, control, {"msgtype": "m.text", "body": "!status"})
        _, new_board = await dispatcher.wait(
            lambda room_id, event: (
                from_bot(bot_id, control, "Dispatch board")(room_id, event) and not relates_to(event)
            ),
            since=mark,
        )
        assert await pinned(dispatcher.client, control, new_board.event_id) == [new_board.event_id]
        await command(dispatcher, control, "!s 2", bot_id, "only officers")

        # a situation report, then the incident is closed with its diary
        await command(
            dispatcher, control, "!sitrep 1 Zwei Personen festgenommen", bot_id, "Situation report added"
        )
        mark = len(dispatcher.events)
        await send(dispatcher.client, control, {"msgtype": "m.text", "body": "!close 1 Lage beendet"})
        _, diary = await dispatcher.wait(from_bot(bot_id, control, "Diary of incident #1"), since=mark)
        for text in ("[ack]", "[status]", "[sitrep]", "[escalation]", "[closed]", "Lage beendet"):
            assert text in diary.body, text
        _, file_event = await dispatcher.wait(
            lambda room_id, event: room_id == control and isinstance(event, RoomEncryptedFile), since=mark
        )
        document = json.loads(download_decrypted(dispatcher.client, file_event.source["content"]["file"]))
        assert document["incident"]["number"] == 1 and document["incident"]["closed_at"]
        kinds = [entry["kind"] for entry in document["entries"]]
        assert {"command", "assign", "alert", "ack", "status", "escalation", "sitrep", "closed"} <= set(kinds)
        assert {"release", "handover"} <= set(kinds)
        log = await command(dispatcher, control, "!log 1", bot_id, "Diary of incident #1")
        assert "(closed)" in log.body
        acks = {(e["author"], e["text"].split()[0]) for e in document["entries"] if e["kind"] == "ack"}
        assert acks == {(users["o1"], "A1"), (users["o2"], "A1"), (users["o3"], "A2"), (users["o4"], "A2")}
    finally:
        for watcher in watchers.values():
            await watcher.client.close()

    assert bot.stop() == 0
    log = bot.log()
    assert "Traceback" not in log, log
    # the state on disk holds the incident's title, place, alerts and diary encrypted only
    state = b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite*"))
    for secret in ("Zugriff vorbereiten", "Lage melden", "Juwelier", "festgenommen", "Hauptstraße"):
        assert secret not in log
        assert secret.encode() not in state, secret


# -- exactly once across crashes, escalations that arrive, neutral names, a bounded board ----------

CRASH_BOT = "dispatch-crash"
CRASH_DEVICE = "DISPATCH-CRASH"


def replying_to(bot_id: str, room: str, event_id: str) -> Callable[[str, Event], bool]:
    """The bot's answers to the command ``event_id``."""

    def match(room_id: str, event: Event) -> bool:
        reply = relates_to(event).get("m.in_reply_to") or {}
        return room_id == room and event.sender == bot_id and reply.get("event_id") == event_id

    return match


def count(watcher: Watcher, match: Callable[[str, Event], bool]) -> int:
    return sum(1 for room_id, event in watcher.events if match(room_id, event))


def rooms_named(watcher: Watcher, name: str) -> list[str]:
    return [room_id for room_id, room in watcher.client.rooms.items() if room.name == name]


def database_holds(hs: Homeserver, needles: tuple[str, ...]) -> dict[str, list[str]]:
    """needle -> the tables of Synapse's database (SQLite or PostgreSQL) whose rows contain it."""
    homeserver = yaml.safe_load(hs.config_path.read_text())
    if homeserver["database"]["name"] == "sqlite3":
        tables = hs.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        tables = hs.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    found: dict[str, list[str]] = {}
    for (table,) in tables:
        if table.startswith("_temp_"):
            continue  # Synapse's background updates create and drop these
        for row in hs.query(f'SELECT * FROM "{table}"'):
            text = " ".join(
                bytes(v).decode("latin-1") if isinstance(v, bytes | memoryview) else str(v) for v in row
            )
            for needle in needles:
                if needle in text and table not in found.setdefault(needle, []):
                    found[needle].append(table)
    return found


async def test_exactly_once_across_crashes_escalation_names_and_board(hs: Homeserver, tmp_path: Path):
    """SIGKILL right after chosen steps of `!incident new` and `!alert` (the test hook): after the
    restart every officer has each alert once, the dispatcher one answer, and an acknowledgement
    of the copy received (also one given while the bot was down) counts. A unit's supervisor
    listed only on the unit gets the escalation; 'ack' on its own is answered. Rooms are named
    by number and call sign (a room named by an earlier version is renamed); Synapse's database
    holds neither an incident's title nor its place; a huge position and title leave the board
    updating."""
    tag = uuid.uuid4().hex[:6]
    names = {role: f"{role}-{tag}" for role in ("disp", "sup", "o1", "o2")}
    users = {role: hs.user_id(name) for role, name in names.items()}
    bot_id = hs.user_id(CRASH_BOT)
    config = {
        **bot_account(hs, tmp_path, CRASH_BOT, CRASH_DEVICE, label="dispatch bot"),
        "state_path": "state.sqlite",
        "state_key_file": "state.key",
        "control_rooms": [f"#leitstelle-{tag}:{hs.server_name}"],
        "roles": {"dispatcher": [users["disp"]]},
        "units": [
            {
                "name": "alpha",
                "call_sign": "Adler 1",
                "members": [users["o1"], users["o2"]],
                "supervisor": users["sup"],  # only here, not under roles
            }
        ],
        "ack_deadline": "1h",
        "ack_unit": "s",
        "max_alerts": 2,
    }
    (tmp_path / "state.key").write_text(os.urandom(32).hex())
    (tmp_path / "dispatch.yaml").write_text(yaml.safe_dump(config))
    hook = tmp_path / "stop-after"
    env = {"DISPATCH_TEST_STOP_FILE": str(hook)}
    bot = BotProcess("bots.dispatch", tmp_path / "dispatch.yaml", tmp_path / "bot.log", ready=READY)
    watchers: dict[str, Watcher] = {}
    with stopped_afterwards(bot):
        bot.start(env=env)
        try:
            for role in names:
                password = f"pw-{uuid.uuid4().hex}"
                hs.register_user(names[role], password, login=False)
                client = await login(hs, names[role], password, tmp_path / f"store-{role}")
                watchers[role] = Watcher(client)
            disp, sup, o1, o2 = (watchers[role] for role in ("disp", "sup", "o1", "o2"))
            officers = (o1, o2)
            for watcher in watchers.values():
                await watcher.wait_joined(1)  # the supervisor too: invited to the control room
            (control,) = disp.client.rooms
            assert control in sup.client.rooms
            (unit_room,) = o1.client.rooms
            assert o1.client.rooms[unit_room].name == "Adler 1"

            async def crashed_at(
                step: str, text: str, before_restart: Callable[[], Any] | None = None
            ) -> str:
                """``text`` sent with the bot set to die right after ``step``; restarted."""
                hook.write_text(step)
                event_id = await send(disp.client, control, {"msgtype": "m.text", "body": text})
                bot.killed_itself()
                if before_restart is not None:
                    await before_restart()
                bot.start(env=env)
                return event_id

            # !incident new, killed with the number recorded and no room, then with the room made
            # but not recorded: one room each (found again after the crash), one card each
            answers: list[str] = []
            for number, step in ((1, "recorded"), (2, "room-created")):
                command_id = await crashed_at(
                    step, f"!incident new Einbruch Juwelier prio:1 units:alpha loc:Hauptstraße {number}"
                )
                answers.append(command_id)
                await disp.wait(replying_to(bot_id, control, command_id), timeout=30)
                for officer in officers:
                    await officer.wait(from_bot(bot_id, text=f"Incident #{number}"), timeout=30)
                    assert len(rooms_named(officer, f"Einsatz {number}")) == 1, step
                assert count(disp, replying_to(bot_id, control, command_id)) == 1, step
            incident_room = rooms_named(o1, "Einsatz 1")[0]
            card = next(e for r, e in o1.events if r == incident_room and "Incident #1" in body(e))
            assert card.event_id in await pinned(o1.client, incident_room, card.event_id)

            # !alert, killed at each step; every officer acknowledges the copy received
            async def react_while_down() -> None:
                for officer in officers:  # the alert is on the server, its event not recorded
                    await officer.wait(from_bot(bot_id, unit_room, "Lage 3"))
                _, copy = await o1.wait(from_bot(bot_id, unit_room, "Lage 3"))
                await send(
                    o1.client,
                    unit_room,
                    {"m.relates_to": {"rel_type": "m.annotation", "event_id": copy.event_id, "key": "✅"}},
                    "m.reaction",
                )

            old_name: list[str] = []

            async def named_by_an_earlier_version() -> None:
                """The incident room renamed as the bot (its saved token), as versions before
                neutral names did; the restart renames it."""
                token = json.loads((tmp_path / "store" / "credentials.json").read_text())["access_token"]
                status, answer = hs.request(
                    "PUT",
                    f"/_matrix/client/v3/rooms/{incident_room}/state/m.room.name",
                    {"name": "#1 Alter Name"},
                    token=token,
                )
                assert status == 200, answer
                old_name.append(answer["event_id"])

            before_restart = {"sent": react_while_down, "sent#2": named_by_an_earlier_version}
            for cycle, step in enumerate(("received", "encrypted", "sent", "sent#2"), start=1):
                text = f"Lage {cycle} melden"
                mark = len(disp.events)
                command_id = await crashed_at(step, f"!alert alpha {text}", before_restart.get(step))
                answers.append(command_id)
                await disp.wait(replying_to(bot_id, control, command_id), timeout=30)
                for officer in officers:
                    _, copy = await officer.wait(from_bot(bot_id, unit_room, text), timeout=30)
                    if officer is o2 or step != "sent":
                        await send(
                            officer.client,
                            unit_room,
                            {
                                "msgtype": "m.text",
                                "body": "ack",
                                "m.relates_to": {"m.in_reply_to": {"event_id": copy.event_id}},
                            }
                            if officer is o2
                            else {
                                "m.relates_to": {
                                    "rel_type": "m.annotation",
                                    "event_id": copy.event_id,
                                    "key": "✅",
                                }
                            },
                            "m.room.message" if officer is o2 else "m.reaction",
                        )
                _, done = await disp.wait(from_bot(bot_id, control, "all 2 acknowledged"), since=mark)
                # the outbox sends in order: whatever the crash could have doubled came before this
                for watcher in (*officers, disp):
                    await watcher.sync()
                for officer in officers:
                    assert count(officer, from_bot(bot_id, text=text)) == 1, (step, officer.user_id)
                assert count(disp, replying_to(bot_id, control, command_id)) == 1, step
                assert count(disp, from_bot(bot_id, control, done.body)) == 1, step

            # the room named by an earlier version (before the last restart) has its neutral
            # name again, and the earlier name's event is redacted
            deadline = time.monotonic() + 30
            while o1.client.rooms[incident_room].name != "Einsatz 1":
                assert time.monotonic() < deadline, o1.client.rooms[incident_room].name
                await o1.sync()
            status, event = hs.request(
                "GET",
                f"/_matrix/client/v3/rooms/{incident_room}/event/{old_name[0]}",
                token=o1.client.access_token,
            )
            assert status == 200 and event["content"] == {}, event

            # the unit's supervisor (listed only on the unit) gets the escalation; 'ack' on its
            # own is answered with how to acknowledge
            await command(disp, control, "!alert alpha Funkkontrolle ack:2", bot_id, "sent to 2")
            await o1.wait(from_bot(bot_id, unit_room, "Funkkontrolle"))
            await command(o1, unit_room, "ack", bot_id, "Not counted")
            _, escalation = await sup.wait(from_bot(bot_id, text="round 2/2 (Funkkontrolle)"), timeout=30)
            assert users["sup"] in escalation.source["content"]["m.mentions"]["user_ids"]

            # the board keeps updating with a 10 KB title and a position too large to show
            await command(disp, control, "!status", bot_id, "Dispatch board")
            big_title = "Grosslage " + "x" * 10_000
            await command(disp, control, f"!incident new {big_title} units:alpha", bot_id, "Incident #3")
            await send(
                o1.client,
                incident_room,
                {
                    "msgtype": "m.location",
                    "body": "Position",
                    "geo_uri": "geo:52.52" + "0" * 40_000 + ",13.40",
                },
            )
            _, edit = await disp.wait(
                lambda room_id, event: (
                    room_id == control
                    and event.sender == bot_id
                    and relates_to(event).get("rel_type") == "m.replace"
                    and "geo:52.5200" in board_text(event)
                    and "#3" in board_text(event)
                ),
                timeout=30,
            )
            assert "…" in board_text(edit) and len(board_text(edit)) < 20_000
            # nothing came twice, also later
            for watcher in watchers.values():
                await watcher.sync()
            for command_id in answers:
                assert count(disp, replying_to(bot_id, control, command_id)) == 1
            for cycle in range(1, 5):
                for officer in officers:
                    assert count(officer, from_bot(bot_id, text=f"Lage {cycle} melden")) == 1
            for number in (1, 2):
                assert count(o1, from_bot(bot_id, text=f"Incident #{number} ")) == 1
        finally:
            for watcher in watchers.values():
                await watcher.client.close()
        assert bot.stop() == 0
    log = bot.log()
    assert "Traceback" not in log, log
    # the incidents' titles and places are in encrypted messages only, never in the server's
    # database, where the rooms' (neutral) names are
    found = database_holds(hs, ("Juwelier", "Hauptstra", "Grosslage", "Einsatz 2"))
    assert set(found) == {"Einsatz 2"}, found
