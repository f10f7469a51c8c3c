"""What the dispatch bot posts: who is mentioned (never the author of the command a message
answers), and the board pinned in place of the previous one with the pins of others kept.
The handlers run on a real state; the chat records what would be sent."""

from __future__ import annotations

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

from bots.dispatch.chat import PINNED_EVENTS, Chat, message, pinned_with, rendered_notice
from bots.dispatch.config import parse_config
from bots.dispatch.directory import Directory
from bots.dispatch.handlers import Handlers
from bots.dispatch.state import State
from tests.unit.test_dispatch_directory import raw_config

ANNA = "@anna:police.example"  # dispatcher
OTTO, OLGA = "@otto:police.example", "@olga:police.example"  # streife1
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


class RecordingChat:
    """The part of ``Chat`` the handlers use; what is posted and pinned is recorded."""

    def __init__(self) -> None:
        self.control_rooms = {CONTROL}
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.pins: list[tuple[str, str, str | None]] = []
        self.rooms = 0

    def room(self, room_id: str) -> None:
        return None

    async def create_room(self, name: str, invite: list[str], **_: Any) -> str:
        self.rooms += 1
        return f"!room{self.rooms}:police.example"

    async def invite(self, room_id: str, users: list[str]) -> None:
        pass

    async def direct_room(self, user_id: str) -> str:
        return f"!dm-{user_id}"

    async def post(self, room_id: str, content: dict[str, Any], **_: Any) -> None:
        self.posts.append((room_id, content))

    async def answer(self, room_id: str, event_id: str, text: str, mentions: tuple[str, ...] = ()) -> None:
        await self.post(room_id, message(text, mentions=mentions, notice=True, reply_to=event_id))

    async def post_encrypted_file(self, room_id: str, data: bytes, name: str, mimetype: str) -> bool:
        return True

    async def send_now(self, room_id: str, content: dict[str, Any]) -> str:
        self.posts.append((room_id, content))
        return f"$board{len(self.posts)}"

    async def pin(self, room_id: str, event_id: str, previous: str | None = None) -> bool:
        self.pins.append((room_id, event_id, previous))
        return True


@pytest.fixture
def handlers(tmp_path: Path) -> Iterator[tuple[Handlers, RecordingChat]]:
    (tmp_path / "state.key").write_text(bytes(range(32)).hex())
    config = parse_config(raw_config(), tmp_path)
    state = State(tmp_path / "state.sqlite", config.state_key)
    state.set_room("unit:streife1", "!unit1:police.example")
    chat = RecordingChat()
    try:
        yield Handlers(config, Directory(config), state, chat), chat  # type: ignore[arg-type]
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
    assert chat.pins == [(CONTROL, "$board1", None), (CONTROL, "$board2", "$board1")]
    await handler.pin_boards()
    assert chat.pins[-1] == (CONTROL, "$board2", None)
