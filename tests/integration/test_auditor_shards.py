"""Two auditor bots (shards) against a real Synapse whose module seats one of them in each new
room (``auditor.user_ids``), both writing into one PostgreSQL archive: each archives its own
rooms, an auditor's search through either finds the messages of both, each logs the
consultations made through it, and a shard stopped for a while catches up on its rooms."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bots.auditor.bot import open_archive
from bots.auditor.config import load_config
from bots.auditor.consultation_log import ConsultationLog
from devtools.homeserver import Homeserver
from devtools.postgres import PG_BIN, PostgresCluster
from synapse_police_policy.rooms.seating import auditor_for
from tests.bots import BotProcess, auditor_config, stopped_afterwards
from tests.e2ee import create_room, send, sync_until
from tests.integration.test_auditor_bot import ask, new_client, wait_member

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 binaries are not installed"
)

SERVER = "auditshards"
SHARDS = ("auditor-1", "auditor-2")
#: rooms created until each shard was seated in one (each is chosen with p = 1/2)
MAX_ROOMS = 24


@pytest.fixture(scope="module")
def hs(start_homeserver: Any) -> Homeserver:
    return start_homeserver(
        SERVER, module_config={"auditor": {"user_ids": [f"@{shard}:{SERVER}.test" for shard in SHARDS]}}
    )


@contextlib.contextmanager
def shard_bots(
    hs: Homeserver, tmp_path: Path, cluster: PostgresCluster, auditor: str
) -> Iterator[dict[str, BotProcess]]:
    """Each shard's account, device, directory and config; one archive database, key and
    attachment directory for all."""
    args = cluster.create_database(f"shards_{uuid.uuid4().hex[:8]}")["args"]
    dsn = f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"
    key = tmp_path / "archive.key"
    bots: dict[str, BotProcess] = {}
    with contextlib.ExitStack() as stack:
        for number, shard in enumerate(SHARDS, start=1):
            directory = tmp_path / shard
            directory.mkdir()
            config = auditor_config(hs, directory, shard, f"AUDITOR-{number}", [auditor])
            if number == 1:
                key.write_text((directory / "archive.key").read_text())
            del config["archive_path"]
            config.update(
                archive_postgres=dsn,
                archive_key_file=str(key),
                attachments_dir=str(tmp_path / "attachments"),
                audit_lifetime="90d",
            )
            config_file = directory / "auditor.yaml"
            config_file.write_text(yaml.safe_dump(config))
            bot = BotProcess("bots.auditor", config_file, directory / "bot.log", ready="auditor bot ready")
            stack.enter_context(stopped_afterwards(bot))
            bots[hs.user_id(shard)] = bot
        yield bots


async def test_two_shards_archive_their_rooms_into_one_archive_and_either_searches_both(
    hs: Homeserver, cluster: PostgresCluster, tmp_path: Path
) -> None:
    revisor_name = f"revisor-{uuid.uuid4().hex[:6]}"
    with shard_bots(hs, tmp_path, cluster, hs.user_id(revisor_name)) as bots:
        for bot in bots.values():
            bot.start()
        shards = list(bots)
        alice = await new_client(hs, "alice", tmp_path)
        revisor = await new_client(hs, "revisor", tmp_path, revisor_name)
        try:
            rooms: dict[str, str] = {}  # shard -> a room it is seated in
            for _ in range(MAX_ROOMS):
                room_id = await create_room(alice)
                rooms.setdefault(auditor_for(room_id, shards), room_id)
                if len(rooms) == len(shards):
                    break
            assert len(rooms) == len(shards), f"{MAX_ROOMS} rooms all went to {set(rooms)}"
            sent: dict[str, str] = {}
            for number, (shard, room_id) in enumerate(sorted(rooms.items()), start=1):
                await wait_member(alice, room_id, shard)
                await sync_until(alice, lambda: True)
                sent[shard] = await send(
                    alice, room_id, {"msgtype": "m.text", "body": f"shardcanary report number{number}"}
                )

            # a direct chat with each shard (invited at creation: that shard is the room's alone)
            chats = {}
            for shard in shards:
                chats[shard] = await create_room(revisor, is_direct=True, invite=[shard])
                await wait_member(revisor, chats[shard], shard)
            for shard in shards:
                answer = await ask(
                    revisor,
                    chats[shard],
                    shard,
                    f'!search shardcanary ref:AZ-{shard[-1]} reason:"test"',
                    lambda body: all(event_id in body for event_id in sent.values()),
                )
                assert all(room_id in answer for room_id in rooms.values())

            # the second shard down for a while: its room is archived once it is back
            stopped, stopped_room = shards[1], rooms[shards[1]]
            assert bots[stopped].stop() == 0
            later = await send(alice, stopped_room, {"msgtype": "m.text", "body": "meanwhile latecanary"})
            await ask(
                revisor,
                chats[shards[0]],
                shards[0],
                '!search latecanary ref:AZ-3 reason:"test"',
                lambda body: "No messages" in body,
            )
            bots[stopped].start()
            await ask(
                revisor,
                chats[shards[0]],
                shards[0],
                '!search latecanary ref:AZ-3 reason:"test"',
                lambda body: later in body,
                timeout=60,
            )
        finally:
            await alice.close()
            await revisor.close()
        for bot in bots.values():
            assert bot.stop() == 0
            assert "Traceback" not in bot.log(), bot.log()
            assert "shardcanary" not in bot.log() and "latecanary" not in bot.log()

    # each shard logged the consultations made through it, and only those
    for shard, bot in bots.items():
        config = load_config(bot.config_file)
        with ConsultationLog(config.log_path, read_only=True) as log:
            assert log.verify().ok
            refs = {entry.case_ref for entry in log.entries() if entry.action == "search"}
        assert f"AZ-{shard[-1]}" in refs and f"AZ-{'2' if shard[-1] == '1' else '1'}" not in refs
    with open_archive(load_config(bots[shards[0]].config_file), create=False) as archive:
        assert {archive.get(event_id).room_id for event_id in sent.values()} == set(rooms.values())
        assert archive.undecrypted() == [] and archive.stats().unenforced_violations == 0
