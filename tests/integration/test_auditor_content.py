"""The auditor bot archives what Element shows, and loses nothing on the way (issue 19).

A real Synapse and the bot as its own process. Each kind of event is found by
``!search`` by a word that stands only in what Element displays of it (an
edit's new text, HTML, a location's description, a poll's answers, a sticker);
archive writes failing on a full disk (a size-limited file for SQLite, a full
filesystem under PostgreSQL's tables) stop the archiving until space is back,
the auditor is told at once and when it works again, then everything is there;
an event whose room key comes only after the bot was killed and restarted is
archived when the key arrives.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from nio import AsyncClient, Event, RoomMessageNotice

from devtools.homeserver import Homeserver, free_port
from devtools.postgres import PostgresCluster
from tests import media_corpus
from tests.bots import REPO, BotProcess, auditor_config, stopped_afterwards
from tests.e2ee import create_room, send, sync_until, upload_encrypted
from tests.integration.test_auditor_bot import (
    ask,
    bot_archive,
    new_client,
    open_direct_chat,
    redacted_and_told,
    scrape,
    timeline_until,
    wait_member,
)
from tests.waiting import wait_for

BOT = "auditor"
BOT_DEVICE = "AUDITOR-BOT"


@pytest.fixture(scope="module")
def hs(start_homeserver) -> Homeserver:
    return start_homeserver(
        "auditcontent", module_config={"auditor": {"user_id": "@auditor:auditcontent.test"}}
    )


@pytest.fixture(scope="module")
def setup(
    hs: Homeserver, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Iterator[tuple[BotProcess, str, Path, int]]:
    """One bot for the module (media rules on, metrics served), started once: each start costs
    seconds (the media rules import Synapse); a test that stops it starts it again."""
    directory = tmp_path_factory.mktemp("auditor-content")
    auditor = f"revisor-{uuid.uuid4().hex[:6]}"
    metrics_port = free_port()
    config: dict[str, Any] = {
        **auditor_config(hs, directory, BOT, BOT_DEVICE, [hs.user_id(auditor)]),
        "audit_lifetime": "90d",
        "policy_file": str(REPO / "config" / "police_policy.yaml"),
        "metrics_port": metrics_port,
    }
    if postgres is not None:
        args = postgres.create_database(f"auditor_{uuid.uuid4().hex[:8]}")["args"]
        del config["archive_path"]
        config["archive_postgres"] = " ".join(
            f"{name}={args[key]}"
            for name, key in (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user"))
        )
        config["attachments_dir"] = "archive-attachments"
    (directory / "auditor.yaml").write_text(yaml.safe_dump(config))
    bot = BotProcess(
        "bots.auditor", directory / "auditor.yaml", directory / "bot.log", ready="auditor bot ready"
    )
    with stopped_afterwards(bot):
        bot.start()
        yield bot, auditor, directory, metrics_port


def running(bot: BotProcess) -> None:
    if not bot.running:
        bot.start()


def archived_body(directory: Path, event_id: str) -> str | None:
    with bot_archive(directory) as archive:
        message = archive.get(event_id)
        return None if message is None else message.body


async def room_with_the_bot(client: AsyncClient, bot_id: str) -> str:
    room_id = await create_room(client)
    await wait_member(client, room_id, bot_id)
    await sync_until(client, lambda: True)
    return room_id


async def search(client: AsyncClient, dm: str, bot_id: str, word: str, event_id: str) -> str:
    """``!search word`` until the answer names ``event_id`` (archiving follows the sync)."""
    query = f'!search {word} ref:AZ-19 reason:"issue 19"'
    deadline = time.monotonic() + 40
    while True:
        answer = await ask(client, dm, bot_id, query, lambda body: event_id in body or "No messages" in body)
        if event_id in answer or time.monotonic() > deadline:
            return answer


async def test_what_element_shows_is_archived_and_found(hs, setup, tmp_path):
    bot, auditor, directory, metrics_port = setup
    bot_id = hs.user_id(BOT)
    running(bot)
    alice = await new_client(hs, "alice", tmp_path)
    revisor = await new_client(hs, "revisor", tmp_path, auditor)
    try:
        room_id = await room_with_the_bot(alice, bot_id)
        original = await send(alice, room_id, {"msgtype": "m.text", "body": "ok, verstanden"})
        edit = await send(
            alice,
            room_id,
            {
                "msgtype": "m.text",
                "body": "* ok, verstanden",
                "m.new_content": {"msgtype": "m.text", "body": "Treffen am Kranichsteg"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            },
        )
        html = await send(
            alice,
            room_id,
            {
                "msgtype": "m.text",
                "body": "siehe Anhang",
                "format": "org.matrix.custom.html",
                "formatted_body": "siehe <b>Anhang</b> <i>Moorfalke</i>",
            },
        )
        location = await send(
            alice,
            room_id,
            {
                "msgtype": "m.location",
                "body": "Standort",
                "geo_uri": "geo:53.55,9.99",
                "org.matrix.msc3488.location": {
                    "uri": "geo:53.55,9.99",
                    "description": "Lagerhalle Eulenweg",
                },
            },
        )
        poll = await send(
            alice,
            room_id,
            {
                "org.matrix.msc3381.poll.start": {
                    "kind": "org.matrix.msc3381.poll.disclosed",
                    "max_selections": 1,
                    "question": {"org.matrix.msc1767.text": "Wer übernimmt?"},
                    "answers": [
                        {"id": "a", "org.matrix.msc1767.text": "Streife Silberreiher"},
                        {"id": "b", "org.matrix.msc1767.text": "Streife Zwei"},
                    ],
                },
                "org.matrix.msc1767.text": "Wer übernimmt?",
            },
            "org.matrix.msc3381.poll.start",
        )
        vote = await send(
            alice,
            room_id,
            {
                "org.matrix.msc3381.poll.response": {"answers": ["a"]},
                "m.relates_to": {"rel_type": "m.reference", "event_id": poll},
            },
            "org.matrix.msc3381.poll.response",
        )
        # an encrypted sticker: its image is checked like an attachment; this one hides a program
        program = media_corpus.padded(media_corpus.elf(), 4096)
        upload = await upload_encrypted(alice, program, "sticker.png")
        file = {**upload["file"], "mimetype": "image/png"}
        sticker = await send(
            alice,
            room_id,
            {
                "body": "Sticker Wiedehopf",
                "file": file,
                "info": {"mimetype": "image/png", "size": len(program)},
            },
            "m.sticker",
        )
        await redacted_and_told(alice, room_id, sticker, bot_id)

        dm = await open_direct_chat(revisor, bot_id)
        for word, event_id in (
            ("Kranichsteg", edit),
            ("Moorfalke", html),
            ("Eulenweg", location),
            ("Silberreiher", poll),
            ("Wiedehopf", sticker),
        ):
            assert event_id in await search(revisor, dm, bot_id, word, event_id), word
        assert "Silberreiher" in (archived_body(directory, vote) or "")
        metrics = scrape(metrics_port)
        assert "police_auditor_media_violations_total 1.0" in metrics
        assert "police_auditor_archive_write_failing 0.0" in metrics
    finally:
        for client in (alice, revisor):
            await client.close()
    with bot_archive(directory) as archive:
        kept = archive.get(sticker)
        assert kept is not None and kept.event_type == "m.sticker" and kept.violation is not None
        assert archive.read_attachment(sticker, 0) == program
        edited = archive.get(edit)
        assert edited is not None and (edited.relates_to, edited.rel_type) == (original, "m.replace")
        assert json.loads(edited.content)["body"] == "* ok, verstanden"


def largest_file(directory: Path) -> int:
    """The size of the largest file the bot writes (the archive, its E2EE store, its log)."""
    return max(path.stat().st_size for path in directory.rglob("*") if path.is_file())


@contextlib.contextmanager
def full_disk(
    bot: BotProcess, directory: Path, postgres: PostgresCluster | None
) -> Iterator[Callable[[], None]]:
    """The archive's storage runs full; the block gets the function that gives space back.

    SQLite: the bot's files may not grow past the largest one (RLIMIT_FSIZE: a write past it
    fails as on a full disk; the archive's write-ahead log runs into it). PostgreSQL: the
    archive's tables move to a filesystem of their own with little room (a real "No space
    left on device" in the server)."""
    if postgres is None:
        assert bot.process is not None
        pid = bot.process.pid
        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (largest_file(directory), hard))
        try:
            yield lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        return
    if os.geteuid() != 0:
        pytest.skip("a size-limited filesystem for PostgreSQL's tables needs root to mount")
    config = yaml.safe_load((directory / "auditor.yaml").read_text())
    database = dict(pair.split("=", 1) for pair in config["archive_postgres"].split())["dbname"]
    with postgres.full_disk(database) as space_back:
        yield space_back


def told(events: list[Event], bot_id: str, text: str) -> bool:
    return any(isinstance(e, RoomMessageNotice) and e.sender == bot_id and text in e.body for e in events)


async def test_a_full_disk_stops_the_archiving_and_loses_nothing(hs, setup, tmp_path, postgres):
    """Archive writes fail as on a full disk: syncing waits, the auditor is told at once, and
    once space is back every message is archived and the auditor told so."""
    bot, auditor, directory, metrics_port = setup
    bot_id = hs.user_id(BOT)
    running(bot)
    alice = await new_client(hs, "alice", tmp_path)
    revisor = await new_client(hs, "revisor", tmp_path, auditor)
    try:
        dm = await open_direct_chat(revisor, bot_id)
        await ask(revisor, dm, bot_id, "!health", lambda body: "archived messages" in body)
        room_id = await room_with_the_bot(alice, bot_id)
        before = await send(alice, room_id, {"msgtype": "m.text", "body": "vor dem Engpass"})
        wait_for(lambda: archived_body(directory, before) is not None, 30, "the first message archived")
        during: list[str] = []
        with full_disk(bot, directory, postgres) as space_back:
            deadline = time.monotonic() + 60
            while "police_auditor_archive_write_failing 1.0" not in scrape(metrics_port):
                assert time.monotonic() < deadline, "the archive never ran full"
                body = f"während des Engpasses {len(during)} Fischotter " + "x" * 20_000
                during.append(await send(alice, room_id, {"msgtype": "m.text", "body": body}))
                time.sleep(0.2)
            assert "police_auditor_archive_write_failing_since_seconds" in scrape(metrics_port)
            assert archived_body(directory, during[-1]) is None
            await timeline_until(revisor, dm, lambda seen: told(seen, bot_id, "Archiving is paused"), 60)
            space_back()
            wait_for(
                lambda: all(archived_body(directory, event_id) is not None for event_id in during),
                90,
                "every message of the outage archived",
            )
        await timeline_until(revisor, dm, lambda seen: told(seen, bot_id, "Archiving works again"), 60)
        assert "police_auditor_archive_write_failing 0.0" in scrape(metrics_port)
        after = await send(alice, room_id, {"msgtype": "m.text", "body": "nach dem Engpass"})
        wait_for(lambda: archived_body(directory, after) is not None, 30, "archiving goes on")
    finally:
        await alice.close()
        await revisor.close()
    assert "writing to the archive failed" in bot.log()
    assert "Fischotter" not in bot.log()


class Withholding:
    """Alice's client, but the room key for one device is kept back (to send it later)."""

    def __init__(self, client: AsyncClient, user_id: str) -> None:
        self.client = client
        self.user_id = user_id
        self.withheld: dict[str, Any] = {}
        self._send = client._send
        client._send = self._intercept  # type: ignore[method-assign]

    async def _intercept(
        self, response_class: Any, method: str, path: str, data: Any = None, *rest: Any, **kwargs: Any
    ) -> Any:
        if "/sendToDevice/m.room.encrypted/" in path and isinstance(data, str):
            body = json.loads(data)
            self.withheld.update(body["messages"].pop(self.user_id, {}))
            data = json.dumps(body)
        return await self._send(response_class, method, path, data, *rest, **kwargs)

    def deliver(self) -> None:
        """Send the withheld room key now, as a late sender's device would."""
        assert self.withheld, "no room key was withheld"
        body = json.dumps({"messages": {self.user_id: self.withheld}}).encode()
        request = urllib.request.Request(
            f"{self.client.homeserver}/_matrix/client/v3/sendToDevice/m.room.encrypted/{uuid.uuid4().hex}",
            data=body,
            method="PUT",
            headers={
                "Authorization": f"Bearer {self.client.access_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


async def test_an_event_waiting_for_its_key_outlives_a_kill(hs, setup, tmp_path):
    bot, _auditor, directory, metrics_port = setup
    bot_id = hs.user_id(BOT)
    running(bot)
    alice = await new_client(hs, "alice", tmp_path)
    try:
        room_id = await room_with_the_bot(alice, bot_id)
        keys = Withholding(alice, bot_id)
        secret = await send(alice, room_id, {"msgtype": "m.text", "body": "Übergabe am Reiherstieg"})
        wait_for(lambda: f"cannot decrypt {secret}" in bot.log(), 30, "the bot waiting for the key")
        wait_for(
            lambda: "police_auditor_undecryptable_pending 1.0" in scrape(metrics_port),
            30,
            "the held event counted",
        )
        bot.kill()
        bot.start()
        assert archived_body(directory, secret) is None
        keys.deliver()
        wait_for(lambda: archived_body(directory, secret) is not None, 60, "archived once the key came")
        assert "Reiherstieg" in (archived_body(directory, secret) or "")
        wait_for(
            lambda: "police_auditor_undecryptable_pending 0.0" in scrape(metrics_port),
            30,
            "the held event released",
        )
    finally:
        await alice.close()
    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
