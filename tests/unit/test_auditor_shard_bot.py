"""Several auditor bots (shards) on one PostgreSQL archive, each doing the work of its own rooms
only: enforcing violations, retrying and counting held events, asking for their keys. Real bots
on a real archive; the homeserver's answers (sync responses, redactions, keys) are scripted."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nio import MegolmEvent, RoomMessageText, SyncResponse

from bots.auditor.archive import Attachment, Enforcement, Message
from bots.auditor.bot import AuditorBot
from bots.auditor.config import parse_config
from devtools.postgres import PG_BIN, PostgresCluster
from tests.unit.test_auditor_commands import _raw as raw_config
from tests.unit.test_auditor_enforcement import NOW, Homeserver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 binaries are not installed"),
]

ROOM_A = "!a-room:x.test"
ROOM_B = "!b-room:x.test"
ALICE = "@alice:x.test"
#: long before NOW - undecryptable_after: held this long counts as undecryptable
RECEIVED = NOW - 86_400_000


@pytest.fixture
def dsn(cluster: PostgresCluster) -> str:
    args = cluster.create_database(f"shardbots_{uuid.uuid4().hex[:8]}")["args"]
    return f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"


class Shards:
    """Start shard bots on one archive: their own directory and account, shared key and files."""

    def __init__(self, tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.dsn = dsn
        self.monkeypatch = monkeypatch
        (tmp_path / "archive-key").write_text(os.urandom(32).hex())
        (tmp_path / "admin-token").write_text("syt_admin")
        self.bots: list[AuditorBot] = []

    def start(self, name: str, server: Homeserver, **changes: Any) -> AuditorBot:
        home = self.tmp_path / name
        home.mkdir()
        raw = raw_config(
            home,
            user_id=f"@auditor-{name}:x.test",
            archive_path=None,
            archive_postgres=self.dsn,
            archive_key_file=str(self.tmp_path / "archive-key"),
            attachments_dir=str(self.tmp_path / "attachments"),
            admin_token_file=str(self.tmp_path / "admin-token"),
        )
        raw.update(changes)
        bot = AuditorBot(parse_config(raw, home))
        self.monkeypatch.setattr(bot.client, "room_redact", server.room_redact)
        self.monkeypatch.setattr(bot, "send", server.send)
        self.monkeypatch.setattr(bot.media, "quarantine", server.quarantine)
        self.monkeypatch.setattr(bot.archive, "_clock", lambda: NOW)
        self.bots.append(bot)
        return bot

    def close(self) -> None:
        for bot in self.bots:
            bot.archive.close()
            bot.consultations.close()
            bot.exports.close()


@pytest.fixture
def shards(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shards]:
    started = Shards(tmp_path, dsn, monkeypatch)
    try:
        yield started
    finally:
        started.close()


def room_section() -> dict[str, Any]:
    return {"timeline": {"events": [], "limited": False, "prev_batch": "p0"}, "state": {"events": []}}


async def sync(bot: AuditorBot, *, joined: tuple[str, ...] = (), left: tuple[str, ...] = ()) -> None:
    """A sync response the bot takes in as nio and its session do: nio first, then the bot."""
    body = {
        "next_batch": f"s{uuid.uuid4().hex[:6]}",
        "rooms": {
            "join": {room_id: room_section() for room_id in joined},
            "leave": {room_id: room_section() for room_id in left},
        },
    }
    response = SyncResponse.from_dict(body)
    assert isinstance(response, SyncResponse), response
    await bot.client.receive_response(response)
    await bot._after_sync(response)
    bot.session.ready = True


def violation(event_id: str, room_id: str) -> Message:
    return Message(
        event_id,
        room_id,
        ALICE,
        "PHONE",
        NOW - 1000,
        "programm.exe",
        msgtype="m.file",
        attachments=[Attachment("programm.exe", "application/octet-stream", b"\x7fELF")],
        violation="media.type: application/x-executable",
        enforcement=Enforcement(media=[f"mxc://x.test/{event_id[1:]}"], reason="not allowed"),
    )


def encrypted(event_id: str) -> dict[str, Any]:
    """A Megolm event as it came (its keys never did)."""
    return {
        "type": "m.room.encrypted",
        "event_id": event_id,
        "sender": ALICE,
        "origin_server_ts": RECEIVED,
        "content": {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
            "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
            "session_id": f"session-{event_id[1:]}",
            "device_id": "PHONE",
        },
    }


def hold(bot: AuditorBot, event_id: str, room_id: str) -> None:
    bot.archive.hold_undecrypted(event_id, room_id, json.dumps(encrypted(event_id)), RECEIVED)


async def test_each_shard_enforces_the_violations_of_its_own_rooms_only(shards: Shards) -> None:
    server_a, server_b = Homeserver(), Homeserver()
    bot_a, bot_b = shards.start("a", server_a), shards.start("b", server_b)
    bot_a.archive.add(violation("$exe-a", ROOM_A))
    bot_b.archive.add(violation("$exe-b", ROOM_B))

    await bot_a.enforcer.enforce_due()  # started, not synced yet: no room is known as its own
    assert server_a.redactions == []

    await sync(bot_a, joined=(ROOM_A,))
    assert server_a.redactions == ["$exe-a"] and server_a.quarantined == ["mxc://x.test/exe-a"]
    assert bot_a.archive.enforcement("$exe-a") is None
    assert bot_a.archive.enforcement("$exe-b") is not None, "another shard's violation was touched"

    await sync(bot_b, joined=(ROOM_B,))
    assert server_b.redactions == ["$exe-b"]
    assert bot_b.archive.stats().unenforced_violations == 0

    # a room the bot left (nio keeps knowing it): its violations are no longer this bot's work
    await sync(bot_a, left=(ROOM_A,))
    bot_b.archive.add(violation("$exe-late", ROOM_A))
    await bot_a.enforcer.enforce_due()
    assert server_a.redactions == ["$exe-a"]
    await sync(bot_a, joined=(ROOM_A,))  # invited and joined again
    assert server_a.redactions == ["$exe-a", "$exe-late"]


async def test_each_shard_retries_counts_and_releases_the_held_events_of_its_own_rooms_only(
    shards: Shards, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Homeserver()
    first = shards.start("setup", server)
    hold(first, "$held-a", ROOM_A)
    hold(first, "$held-b", ROOM_B)  # shard B's, waiting for B to come back

    bot_a = shards.start("a", server)
    requested: list[str] = []

    async def request_room_key(event: MegolmEvent) -> None:
        requested.append(event.event_id)

    keys_came = False

    def decrypt_event(event: MegolmEvent) -> RoomMessageText:
        if not keys_came:
            raise RuntimeError("no session")
        return RoomMessageText.from_dict(
            {
                "type": "m.room.message",
                "event_id": event.event_id,
                "sender": event.sender,
                "origin_server_ts": event.server_timestamp,
                "content": {"msgtype": "m.text", "body": "spät entschlüsselt"},
            }
        )

    monkeypatch.setattr(bot_a.client, "request_room_key", request_room_key)
    monkeypatch.setattr(bot_a.client, "decrypt_event", decrypt_event)

    # before the first sync the bot knows none of its rooms: nothing of another shard is its own
    assert bot_a.ingest.held.ids == set() and bot_a.health().undecryptable_by_room == {}

    await sync(bot_a, joined=(ROOM_A,))
    await bot_a._on_ready()  # what the session calls once the first sync was handled
    assert requested == ["$held-a"]
    assert bot_a.ingest.held.ids == {"$held-a"}
    health = bot_a.health()
    assert (health.undecryptable_pending, health.undecryptable_by_room) == (1, {ROOM_A: 1})

    keys_came = True
    await sync(bot_a, joined=(ROOM_A,))
    assert bot_a.archive.get("$held-a") is not None
    assert bot_a.archive.get("$held-b") is None, "another shard's held event was archived"
    assert [held.event_id for held in bot_a.archive.undecrypted()] == ["$held-b"]
    assert bot_a.ingest.held.ids == set() and bot_a.health().undecryptable_by_room == {}

    # B's room comes to A (A invited and joined, B gone): its held events are A's now
    keys_came = False
    await sync(bot_a, joined=(ROOM_B,))
    assert bot_a.ingest.held.ids == {"$held-b"}
    assert bot_a.health().undecryptable_by_room == {ROOM_B: 1}
    keys_came = True
    await sync(bot_a)
    assert bot_a.archive.get("$held-b") is not None and bot_a.archive.undecrypted() == []


async def test_a_bot_with_an_archive_of_its_own_keeps_to_no_rooms(tmp_path: Path) -> None:
    """SQLite (one bot's archive): everything in it is this bot's, before any sync too."""
    server = Homeserver()
    (tmp_path / "admin-token").write_text("syt_admin")
    bot = AuditorBot(parse_config(raw_config(tmp_path, admin_token_file="admin-token"), tmp_path))
    try:
        bot.client.room_redact = server.room_redact  # type: ignore[method-assign]
        bot.media.quarantine = server.quarantine  # type: ignore[method-assign]
        bot.send = server.send  # type: ignore[method-assign]
        hold(bot, "$held", ROOM_B)
        bot.archive.add(violation("$exe", ROOM_B))
        assert bot.joined() is None
        bot.ingest.held.load()
        assert bot.ingest.held.ids == {"$held"}
        await bot.enforcer.enforce_due()
        assert server.redactions == ["$exe"]
    finally:
        bot.archive.close()
        bot.consultations.close()
        bot.exports.close()
