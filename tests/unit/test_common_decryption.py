"""Late decryption and back-fill shared by both bots (``bots/common/decryption.py``,
``bots/common/backfill.py``): a fake client stands in for nio's."""

from __future__ import annotations

import logging

import pytest
from nio import Event, LocalProtocolError, MegolmEvent, RoomMessagesResponse, RoomMessageText

from bots.common.backfill import backfill
from bots.common.decryption import LateDecryption, MemoryHeld, event_json, parse_held

ROOM = "!room:x.test"
log = logging.getLogger("test")


def megolm(event_id: str) -> MegolmEvent:
    event = Event.parse_event(
        {
            "type": "m.room.encrypted",
            "event_id": event_id,
            "sender": "@alice:x.test",
            "origin_server_ts": 1_700_000_000_000,
            "content": {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgAEnAC",
                "sender_key": "curve",
                "session_id": "session",
                "device_id": "PHONE",
            },
        }
    )
    assert isinstance(event, MegolmEvent)
    event.room_id = ROOM
    return event


def text(event_id: str, ts: int) -> Event:
    return Event.parse_event(
        {
            "type": "m.room.message",
            "event_id": event_id,
            "sender": "@alice:x.test",
            "origin_server_ts": ts,
            "content": {"msgtype": "m.text", "body": "x"},
        }
    )


class FakeClient:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.requested: list[str] = []
        self.pages: list[RoomMessagesResponse] = []

    def decrypt_event(self, event: MegolmEvent) -> Event:
        if event.event_id not in self.keys:
            raise ValueError("no session")
        return text(event.event_id, event.server_timestamp)

    async def request_room_key(self, event: MegolmEvent) -> None:
        if event.event_id in self.requested:
            raise LocalProtocolError("requested already")
        self.requested.append(event.event_id)

    async def room_messages(self, room_id: str, start: str, limit: int) -> RoomMessagesResponse:
        return self.pages.pop(0)


async def test_held_events_are_released_only_once_handled() -> None:
    client, store, clock = FakeClient(), MemoryHeld(), [1000.0]
    late = LateDecryption(client, store, log=log, give_up_after=None, clock=lambda: clock[0])  # type: ignore[arg-type]
    await late.hold(ROOM, megolm("$a"))
    await late.hold(ROOM, megolm("$a"))  # again: one entry, one request
    assert client.requested == ["$a"] and [h.event_id for h in store.held()] == ["$a"]
    handled: list[str] = []

    async def failing(room_id: str, event: Event) -> None:
        raise OSError("disk full")

    async def handle(room_id: str, event: Event) -> None:
        handled.append(event.event_id)

    await late.retry(handle)
    assert handled == [] and "$a" in store  # no key yet
    client.keys.add("$a")
    with pytest.raises(OSError):
        await late.retry(failing)
    assert "$a" in store, "released although its handling failed"
    clock[0] += 10**6  # kept for good without give_up_after
    await late.retry(handle)
    assert handled == ["$a"] and "$a" not in store


async def test_dispatch_gives_up_after_its_time() -> None:
    client, store, clock = FakeClient(), MemoryHeld(), [1000.0]
    late = LateDecryption(client, store, log=log, give_up_after=3600, clock=lambda: clock[0])  # type: ignore[arg-type]
    await late.hold(ROOM, megolm("$b"))

    async def handle(room_id: str, event: Event) -> None:
        raise AssertionError("never decrypted")

    clock[0] += 3599
    await late.retry(handle)
    assert "$b" in store
    clock[0] += 2
    await late.retry(handle)
    assert "$b" not in store


def test_a_held_event_parses_back_as_it_was_received() -> None:
    event = megolm("$c")
    again = parse_held(event_json(event), ROOM)
    assert again is not None and again.event_id == "$c" and again.room_id == ROOM
    assert again.session_id == "session"
    assert parse_held("not json", ROOM) is None
    assert parse_held('{"type": "m.room.message"}', ROOM) is None


async def test_backfill_stops_at_what_was_handled_and_returns_oldest_first() -> None:
    client = FakeClient()
    client.pages = [
        RoomMessagesResponse(ROOM, [text("$5", 5), text("$4", 4)], "s", "p1"),  # newest first
        RoomMessagesResponse(ROOM, [text("$3", 3), text("$2", 2), text("$1", 1)], "p1", "p2"),
    ]
    events = await backfill(
        client,  # type: ignore[arg-type]
        ROOM,
        "start",
        keep=lambda event: event.server_timestamp >= 3,
        pages=5,
        log=log,
    )
    assert [event.event_id for event in events] == ["$3", "$4", "$5"]
    assert isinstance(events[0], RoomMessageText)
