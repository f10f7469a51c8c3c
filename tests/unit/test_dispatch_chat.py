"""What the dispatch bot posts: who is mentioned (never the author of the command a message
answers), and the board pinned in place of the previous one with the pins of others kept.
The handlers run on a real state; the chat records what would be sent."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nio import (
    RoomGetStateEventError,
    RoomGetStateEventResponse,
    RoomMessageText,
    RoomPutStateError,
    RoomPutStateResponse,
)

from bots.dispatch.chat import (
    MAX_CONTENT_BYTES,
    PINNED_EVENTS,
    Chat,
    bounded,
    message,
    pinned_with,
    rendered_notice,
)
from bots.dispatch.config import parse_config
from bots.dispatch.directory import Directory
from bots.dispatch.handlers import Handlers
from bots.dispatch.state import Outgoing, State
from tests.unit.test_dispatch_directory import raw_config

ANNA = "@anna:police.example"  # dispatcher
OTTO, OLGA = "@otto:police.example", "@olga:police.example"  # streife1
SVEN = "@sven:police.example"  # supervisor of streife1
CONTROL = "!control:police.example"


def test_the_author_is_named_but_neither_pilled_nor_mentioned() -> None:
    content = message(f"Alert from {{{ANNA}}} for {{{OTTO}}}", mentions=(ANNA, OTTO), author=ANNA)
    assert content["m.mentions"] == {"user_ids": [OTTO]}
    assert content["body"] == "Alert from anna for otto"
    assert content["formatted_body"] == (
        'Alert from anna for <a href="https://matrix.to/#/@otto:police.example">otto</a>'
    )


def test_without_an_author_everyone_named_is_mentioned() -> None:
    content = message(f"{{{ANNA}}} and {{{OTTO}}}", mentions=(OTTO, ANNA, OTTO))
    assert content["m.mentions"] == {"user_ids": [ANNA, OTTO]}
    assert content["formatted_body"].count("matrix.to") == 2


def test_the_board_mentions_nobody() -> None:
    assert rendered_notice("anna otto", "<p>anna otto</p>")["m.mentions"] == {}


def test_the_new_board_replaces_the_old_pin_and_others_pins_stay_in_order() -> None:
    assert pinned_with([], "$b2", None) == ["$b2"]
    assert pinned_with(["$x", "$b1", "$y"], "$b2", "$b1") == ["$x", "$y", "$b2"]
    assert pinned_with(["$x", "$b2"], "$b2", None) == ["$x", "$b2"]
    assert pinned_with(["$x", 7, None], "$b2", None) == ["$x", "$b2"]  # junk in the state is dropped


class PinningServer:
    """``room_get_state_event`` and ``room_put_state`` of a homeserver; ``allowed``: the bot has
    the power to send m.room.pinned_events."""

    def __init__(self, pinned: list[str] | None, *, allowed: bool = True, readable: bool = True) -> None:
        self.pinned, self.allowed, self.readable = pinned, allowed, readable
        self.puts = 0

    async def room_get_state_event(self, room_id: str, event_type: str) -> Any:
        assert event_type == PINNED_EVENTS
        if not self.readable:
            return RoomGetStateEventError("unavailable", "M_UNKNOWN")
        if self.pinned is None:
            return RoomGetStateEventError("no such state", "M_NOT_FOUND")
        return RoomGetStateEventResponse({"pinned": self.pinned}, event_type, "", room_id)

    async def room_put_state(self, room_id: str, event_type: str, content: dict[str, Any]) -> Any:
        self.puts += 1
        if not self.allowed:
            return RoomPutStateError("user has too low power", "M_FORBIDDEN")
        self.pinned = content["pinned"]
        return RoomPutStateResponse("$pins", room_id)


def pinning_chat(server: PinningServer) -> Chat:
    return Chat(server, None, None)  # type: ignore[arg-type]


async def test_the_board_is_pinned_beside_the_pins_of_others() -> None:
    server = PinningServer(["$theirs", "$old"])
    assert await pinning_chat(server).pin(CONTROL, "$new", "$old")
    assert server.pinned == ["$theirs", "$new"]
    fresh = PinningServer(None)
    assert await pinning_chat(fresh).pin(CONTROL, "$new") and fresh.pinned == ["$new"]


async def test_pinned_already_sends_nothing_and_unknown_pins_are_not_overwritten() -> None:
    server = PinningServer(["$new"])
    assert await pinning_chat(server).pin(CONTROL, "$new") and server.puts == 0
    unreadable = PinningServer(["$theirs"], readable=False)
    assert not await pinning_chat(unreadable).pin(CONTROL, "$new")
    assert unreadable.puts == 0


async def test_without_the_power_to_pin_the_bot_logs_once_and_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = PinningServer(["$theirs"], allowed=False)
    chat = pinning_chat(server)
    with caplog.at_level(logging.INFO, "bots.dispatch"):
        assert not await chat.pin(CONTROL, "$b1")
        assert not await chat.pin(CONTROL, "$b2", "$b1")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "power level to send m.room.pinned_events" in warning.getMessage()
    assert server.puts == 2 and server.pinned == ["$theirs"]


class _EveryRoom(dict[str, Any]):
    """``client.rooms`` of a client that has synced every room."""

    def __contains__(self, room_id: object) -> bool:
        return True


class _Client:
    rooms = _EveryRoom()
    should_query_keys = False


class RecordingChat(Chat):
    """The real outbox and rooms on the state; what reaches the homeserver (sends, pins, new
    rooms) is recorded instead."""

    def __init__(self, state: State, config: Any) -> None:
        super().__init__(_Client(), state, config)  # type: ignore[arg-type]
        self.control_rooms = {CONTROL}
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.pins: list[tuple[str, str, str | None]] = []
        self.names: list[str] = []
        #: sends reach the homeserver, but no answer comes back
        self.offline = False

    def room(self, room_id: str) -> None:
        return None

    async def create_room(self, name: str, invite: list[str], **_: Any) -> str:
        self.names.append(name)
        return f"!room{len(self.names)}:police.example"

    async def _created_with(self, token: str) -> None:
        return None

    async def invite(self, room_id: str, users: list[str]) -> None:
        pass

    async def _send(self, outgoing: Outgoing) -> tuple[str | None, bool]:
        if self.offline:
            return None, False
        self.posts.append((outgoing.room_id, outgoing.content))
        return f"$event{len(self.posts)}", False

    async def upload_encrypted(self, data: bytes, name: str, mimetype: str) -> dict[str, Any]:
        return {"msgtype": "m.file", "body": name}

    async def send_now(self, room_id: str, content: dict[str, Any]) -> str:
        self.posts.append((room_id, content))
        return f"$edit{len(self.posts)}"

    async def pin(self, room_id: str, event_id: str, previous: str | None = None) -> bool:
        self.pins.append((room_id, event_id, previous))
        return True


@pytest.fixture
def handlers(tmp_path: Path) -> Iterator[tuple[Handlers, RecordingChat]]:
    (tmp_path / "state.key").write_text(bytes(range(32)).hex())
    config = parse_config(raw_config(), tmp_path)
    state = State(tmp_path / "state.sqlite", config.state_key)
    state.set_room("unit:streife1", "!unit1:police.example")
    chat = RecordingChat(state, config)
    try:
        yield Handlers(config, Directory(config), state, chat), chat
    finally:
        state.close()


def command(text: str, sender: str = ANNA, n: int = 1) -> RoomMessageText:
    return RoomMessageText.from_dict(
        {
            "type": "m.room.message",
            "event_id": f"$cmd{n}",
            "sender": sender,
            "origin_server_ts": 1_751_349_744_000,  # 2025-07-01 06:02:24 UTC
            "content": {"msgtype": "m.text", "body": text},
        }
    )


async def test_no_result_of_a_command_mentions_its_author(handlers) -> None:
    handler, chat = handlers
    await handler.text(CONTROL, command("!incident new Einbruch units:streife1 loc:Hauptstraße 5", n=1))
    await handler.text(CONTROL, command("!alert streife1 Zugriff ack:2", n=2))
    await handler.text(CONTROL, command("!sitrep 1 Zwei festgenommen", n=3))
    await handler.text(CONTROL, command("!handover @anna:police.example", n=4))
    await handler.text(CONTROL, command("!close 1 Lage beendet", n=5))
    assert len(chat.posts) >= 8
    for room_id, content in chat.posts:
        mentioned = content.get("m.mentions", {}).get("user_ids", [])
        assert ANNA not in mentioned, (room_id, content["body"])
        assert "matrix.to/#/@anna" not in content.get("formatted_body", ""), content["body"]
    cards = [c for _, c in chat.posts if c["body"].startswith("🚨 Incident #1")]
    assert len(cards) == 2 and "Opened by anna at 08:02:24 CEST." in cards[0]["body"]
    (alert,) = [c for _, c in chat.posts if c["body"].startswith("🔔 Alert A1")]
    assert alert["m.mentions"]["user_ids"] == [OLGA, OTTO]
    assert "by 08:04:24 CEST." in alert["body"]
    (diary,) = [c for _, c in chat.posts if c["body"].startswith("📓 Diary")]
    assert "times Europe/Berlin" in diary["body"] and re.search(
        r"^08:02:24 anna \[command\]", diary["body"], re.M
    )


async def test_an_officers_urgent_status_mentions_the_dispatchers_not_the_officer(handlers) -> None:
    handler, chat = handlers
    await handler.text("!unit1:police.example", command("!s 0", sender=OTTO))
    (urgent,) = [c for room, c in chat.posts if room == CONTROL]
    assert urgent["m.mentions"]["user_ids"] == [ANNA]
    assert "from otto" in urgent["body"]


async def test_each_status_board_is_pinned_in_place_of_the_previous_one(handlers) -> None:
    handler, chat = handlers
    await handler.text(CONTROL, command("!status", n=1))
    await handler.text(CONTROL, command("!status", n=2))
    assert chat.pins == [(CONTROL, "$event1", None), (CONTROL, "$event2", "$event1")]
    await handler.pin_boards()
    assert chat.pins[-1] == (CONTROL, "$event2", None)


def test_a_message_too_large_for_an_event_loses_its_html_and_is_cut() -> None:
    small = message("kurz")
    assert bounded(small) == small
    huge = message("Einbruch " + "ü" * 30_000, mentions=(OTTO,))
    cut = bounded(huge)
    assert len(json.dumps(cut)) <= MAX_CONTENT_BYTES and cut["body"].endswith(" … (cut)")
    assert "formatted_body" not in cut and cut["m.mentions"] == {"user_ids": [OTTO]}


async def test_an_incident_room_is_named_by_its_number_and_its_card_pinned(handlers) -> None:
    handler, chat = handlers
    await handler.text(CONTROL, command("!incident new Einbruch Juwelier units:streife1 loc:Markt 1", n=1))
    assert chat.names == ["Einsatz 1"]
    (card_event,) = [
        f"$event{n}" for n, (room, c) in enumerate(chat.posts, 1) if room == "!room1:police.example"
    ]
    assert chat.pins == [("!room1:police.example", card_event, None)]
    assert handler.state.outbox() == []


async def test_a_command_cut_short_resumes_from_its_last_step(handlers) -> None:
    handler, chat = handlers
    failing = chat.create_room

    async def unreachable(name: str, invite: list[str], **_: Any) -> str:
        raise ConnectionError("the homeserver is away")

    chat.create_room = unreachable  # type: ignore[method-assign]
    await handler.text(CONTROL, command("!incident new Einbruch units:streife1", n=1))
    (job,) = handler.state.jobs()
    assert job.step == "recorded" and chat.posts == []
    await handler.text(CONTROL, command("!incident new Einbruch units:streife1", n=1))  # a replay
    chat.create_room = failing  # type: ignore[method-assign]
    await handler.run_jobs()
    assert handler.state.jobs() == [] and chat.names == ["Einsatz 1"]
    assert [c["body"][:13] for _, c in chat.posts] == ["🚨 Incident #1", "🚨 Incident #1"]
    assert [i.id for i in handler.state.open_incidents()] == [1]


async def test_an_acknowledgement_of_an_alert_not_recorded_yet_counts_once_it_is(handlers) -> None:
    handler, chat = handlers
    chat.offline = True  # the alert goes out, but its event ID never comes back (a crash)
    await handler.text(CONTROL, command("!alert streife1 Zugriff", n=1))
    await handler.reaction("$r1", OTTO, "$event1", 1_751_349_750.0)
    chat.offline = False
    await handler.chat.flush()
    alert = handler.state.alert(1)
    assert alert is not None and [a.user_id for a in alert.acknowledged] == [OTTO]
    await handler.reaction("$r1", OTTO, "$event1", 1_751_349_750.0)  # replayed: counted once
    assert [a.via for a in handler.state.alert(1).acknowledged] == ["✅"]


async def test_ack_without_a_reply_is_answered_with_how_to_acknowledge(handlers) -> None:
    handler, chat = handlers
    await handler.text("!unit1:police.example", command("ack", sender=OTTO, n=1))
    assert chat.posts == [], "no alert waits for otto: nothing to say"
    await handler.text(CONTROL, command("!alert streife1 Zugriff", n=2))
    await handler.text("!unit1:police.example", command("ack", sender=OTTO, n=3))
    room, answer = chat.posts[-1]
    assert room == "!unit1:police.example" and answer["body"].startswith("Not counted: to acknowledge A1")
    assert "react to the alert's message with ✅" in answer["body"]
    assert handler.state.alert(1).missing[-1].user_id == OTTO


async def test_escalations_reach_those_not_in_the_control_room_in_a_direct_room(handlers) -> None:
    handler, chat = handlers
    await handler.text(CONTROL, command("!alert streife1 Zugriff ack:1", n=1))
    posted = len(chat.posts)
    await handler.escalate_due(1_751_349_744.0 + 61)
    rounds = {room: c["body"] for room, c in chat.posts[posted:]}
    assert rounds["!unit1:police.example"].startswith("🔔 Reminder 2/3, alert A1")
    escalation = rounds[CONTROL]
    assert escalation.startswith("⚠️ Escalation, alert A1, round 2/3 (Zugriff)")
    # nobody has joined the (recorded) control room: sven (the unit's supervisor) and anna
    # (who gave the alert) get it in direct rooms
    assert chat.names == ["Dispatch", "Dispatch"]
    copies = [(room, c) for room, c in chat.posts[posted:] if room.startswith("!room")]
    assert {c["body"] for _, c in copies} == {escalation}
    assert sorted(user for _, c in copies for user in c["m.mentions"]["user_ids"]) == [ANNA, SVEN]
