"""Two auditor bots as two shards of one PostgreSQL archive, end to end: real Synapse
with the module (``auditor.user_ids``), two real bot processes, real E2EE clients.

The module seats one bot in each room; each bot archives the rooms it sits in; an
auditor who asks either bot finds the messages of both."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
import yaml
from nio import RoomCreateResponse
from nio.api import RoomPreset

from devtools.homeserver import Homeserver
from devtools.postgres import PostgresCluster
from synapse_police_policy.rooms.seating import auditor_for
from tests.bots import BotProcess, auditor_config, stopped_afterwards
from tests.e2ee import create_room, send, sync_until
from tests.integration.test_auditor_bot import ask, new_client, wait_member

SERVER = "shardsbots"
BOTS = ("auditor-1", "auditor-2")
#: rooms tried until each bot sits in one (each is chosen with p = 1/2)
MAX_ROOMS = 24


@pytest.fixture(scope="module")
def shards_hs(start_homeserver) -> Homeserver:
    return start_homeserver(
        SERVER, module_config={"auditor": {"user_ids": [f"@{b}:{SERVER}.test" for b in BOTS]}}
    )


@pytest.fixture(scope="module")
def shard_bots(
    shards_hs: Homeserver, tmp_path_factory: pytest.TempPathFactory, cluster: PostgresCluster
) -> Iterator[tuple[dict[str, BotProcess], str, str]]:
    """Both bots, each with its own account, device, store and consultation log, sharing
    the archive (database, key, attachment files); the auditor's localpart; the DSN."""
    hs = shards_hs
    args = cluster.create_database(f"shards_{uuid.uuid4().hex[:8]}")["args"]
    dsn = " ".join(
        f"{name}={args[key]}"
        for name, key in (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user"))
    )
    shared = tmp_path_factory.mktemp("shared-archive")
    key = os.urandom(32).hex()
    revisor = f"revisor-{uuid.uuid4().hex[:6]}"
    bots = {}
    for number, localpart in enumerate(BOTS, 1):
        directory = tmp_path_factory.mktemp(localpart)
        config = auditor_config(hs, directory, localpart, f"AUDITOR-BOT-{number}", [hs.user_id(revisor)])
        (directory / "archive.key").write_text(key)
        del config["archive_path"]
        config.update(archive_postgres=dsn, attachments_dir=str(shared / "attachments"))
        config_file = directory / "auditor.yaml"
        config_file.write_text(yaml.safe_dump(config))
        bots[hs.user_id(localpart)] = BotProcess(
            "bots.auditor", config_file, directory / "bot.log", "auditor bot ready"
        )
    with stopped_afterwards(bots[hs.user_id(BOTS[0])]), stopped_afterwards(bots[hs.user_id(BOTS[1])]):
        for bot in bots.values():
            bot.start(timeout=60)
        yield bots, revisor, dsn


async def direct_chat(client, bot_id: str) -> str:
    """An auditor's direct chat with one bot, as Element opens it."""
    response = await client.room_create(
        invite=[bot_id], is_direct=True, preset=RoomPreset.trusted_private_chat
    )
    assert isinstance(response, RoomCreateResponse), response
    await sync_until(client, lambda: response.room_id in client.rooms)
    await wait_member(client, response.room_id, bot_id)
    await sync_until(client, lambda: True)
    return response.room_id


async def search_until_found(client, room_id: str, bot_id: str, word: str, event_id: str) -> str:
    """``!search`` until the answer lists ``event_id`` (the other shard archives it in its own time)."""
    answer = ""
    for _ in range(10):
        answer = await ask(
            client,
            room_id,
            bot_id,
            f'!search {word} ref:AZ-7 reason:"shards"',
            lambda b: "Results" in b or "No messages" in b,
        )
        if event_id in answer:
            return answer
    raise AssertionError(f"{bot_id} never found {word}: {answer}")


async def test_each_shard_archives_its_rooms_and_either_finds_all(shards_hs, shard_bots, tmp_path):
    hs = shards_hs
    bots, revisor_localpart, dsn = shard_bots
    bot_ids = list(bots)
    alice = await new_client(hs, "alice", tmp_path)
    revisor = await new_client(hs, "revisor", tmp_path, revisor_localpart)
    try:
        sent: dict[str, tuple[str, str]] = {}  # bot -> (word, event ID) of a message in its room
        for attempt in range(MAX_ROOMS):
            room_id = await create_room(alice)
            bot_id = auditor_for(room_id, bot_ids)
            if bot_id in sent:
                continue
            await wait_member(alice, room_id, bot_id)
            await sync_until(alice, lambda: True)
            others = [user for user in bot_ids if user != bot_id]
            assert not set(others) & set(alice.rooms[room_id].users), "one bot per room"
            word = f"shardcanary{attempt}x{uuid.uuid4().hex[:4]}"
            sent[bot_id] = (
                word,
                await send(alice, room_id, {"msgtype": "m.text", "body": f"the {word} landed"}),
            )
            if len(sent) == len(bot_ids):
                break
        assert set(sent) == set(bot_ids), f"{MAX_ROOMS} rooms and not every bot was seated: {sent}"
        # ask each bot for the message of the other bot's room
        for asked, other in ((bot_ids[0], bot_ids[1]), (bot_ids[1], bot_ids[0])):
            chat = await direct_chat(revisor, asked)
            assert other not in revisor.rooms[chat].users, "the direct chat keeps its bot alone"
            word, event_id = sent[other]
            await search_until_found(revisor, chat, asked, word, event_id)
    finally:
        await alice.close()
        await revisor.close()
    with psycopg2.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute(
            "SELECT event_id, count(*) FROM messages WHERE event_id = ANY(%s) GROUP BY event_id",
            ([e for _, e in sent.values()],),
        )
        assert dict(cursor.fetchall()) == {event_id: 1 for _, event_id in sent.values()}
    for bot in bots.values():
        assert bot.stop() == 0
        assert "Traceback" not in bot.log(), bot.log()
