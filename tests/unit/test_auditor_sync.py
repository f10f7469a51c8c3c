"""The bots' sync token (``bots.common.session``) is saved only after a whole sync response
was handled. nio's ``store_sync_tokens=True``, which the auditor used before, saves it before
the event callbacks run, so a bot killed in a callback lost those events; now the same
response comes again after the restart. A real nio client and store, /sync scripted."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, MatrixRoom, RoomMessageText, SyncResponse

from bots.auditor.archive import Archive
from bots.auditor.bot import AuditorBot
from bots.auditor.config import parse_config
from bots.auditor.enforcement import Enforcer
from bots.auditor.ingest import Ingest
from bots.common.config import Account
from bots.common.media_api import MediaApi
from bots.common.session import Session, StoreSyncTokens
from tests.unit.test_auditor_commands import _raw as raw_config

ROOM = "!room:x.test"


class ScriptedClient(AsyncClient):
    """nio as it is (callbacks, store), but /sync answers come from ``script`` and no key
    requests go out: there is no server."""

    should_upload_keys = False  # type: ignore[assignment]
    should_query_keys = False  # type: ignore[assignment]
    should_claim_keys = False  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script: list[dict[str, Any]] = []
        #: the token each /sync would have sent
        self.since: list[str | None] = []

    async def sync(self, *args: Any, **kwargs: Any) -> SyncResponse:  # type: ignore[override]
        self.since.append(self.next_batch or self.loaded_sync_token or None)
        while not self.script:
            await asyncio.sleep(3600)  # a long poll with nothing new
        response = SyncResponse.from_dict(self.script.pop(0))
        await self.receive_response(response)
        return response


def sync_body(next_batch: str, *bodies: str) -> dict[str, Any]:
    events = [
        {
            "type": "m.room.message",
            "event_id": f"${next_batch}-{index}",
            "sender": "@alice:x.test",
            "origin_server_ts": 1_700_000_000_000 + index,
            "content": {"msgtype": "m.text", "body": body},
        }
        for index, body in enumerate(bodies)
    ]
    timeline = {"events": events, "limited": False, "prev_batch": f"before-{next_batch}"}
    return {
        "next_batch": next_batch,
        "rooms": {"join": {ROOM: {"timeline": timeline, "state": {"events": []}}}},
    }


def new_session(store_dir: Path) -> tuple[Session, ScriptedClient, StoreSyncTokens]:
    """A session as the auditor builds it, its store loaded as a login would."""
    account = Account(
        "http://localhost:1", "@auditor:x.test", "pw", "AUDITOR-BOT", store_dir, store_dir / "identity.json"
    )
    session = Session(
        account,
        device_name="test",
        log=logging.getLogger("test"),
        main_key=bytes(32),
        client_class=ScriptedClient,
    )
    client = session.client
    assert isinstance(client, ScriptedClient)
    client.restore_login(account.user_id, account.device_id, "token")  # loads the store, as a login does
    return session, client, StoreSyncTokens(client)


async def nothing(*_args: Any) -> None:
    return None


async def test_a_bot_killed_in_a_callback_gets_the_events_again(tmp_path: Path) -> None:
    session, client, tokens = new_session(tmp_path / "store")
    tokens.save("t1")
    client.script = [sync_body("t2", "the kestrel sits on the roof")]
    in_callback = asyncio.Event()

    async def stuck(room: MatrixRoom, event: RoomMessageText) -> None:
        in_callback.set()
        await asyncio.Event().wait()  # archiving takes long: the process is killed meanwhile

    client.add_event_callback(stuck, RoomMessageText)  # type: ignore[arg-type]
    running = asyncio.create_task(session.sync_forever(tokens, nothing, nothing))
    await asyncio.wait_for(in_callback.wait(), 10)
    running.cancel()  # like SIGKILL: nothing after this point runs
    await asyncio.gather(running, return_exceptions=True)
    await client.close()
    assert tokens.load() == "t1", "the token of a response not handled to the end was saved"

    # the restart: the same store, so the same token, so the same response
    session, client, tokens = new_session(tmp_path / "store")
    client.script = [sync_body("t2", "the kestrel sits on the roof")]
    seen: list[str] = []
    handled = asyncio.Event()

    async def archive(room: MatrixRoom, event: RoomMessageText) -> None:
        seen.append(event.body)

    async def after_sync(response: SyncResponse) -> None:
        handled.set()

    client.add_event_callback(archive, RoomMessageText)  # type: ignore[arg-type]
    running = asyncio.create_task(session.sync_forever(tokens, after_sync, nothing))
    await asyncio.wait_for(handled.wait(), 10)
    session.stop()
    await asyncio.wait_for(running, 10)
    await client.close()
    assert client.since[0] == "t1"
    assert seen == ["the kestrel sits on the roof"]
    assert tokens.load() == "t2"


async def test_a_response_whose_handling_failed_is_not_skipped_at_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session, client, tokens = new_session(tmp_path / "store")
    tokens.save("t1")
    client.script = [sync_body("t2", "one"), sync_body("t3", "two")]
    handled: list[str] = []
    ready: list[bool] = []

    async def after_sync(response: SyncResponse) -> None:
        if response.next_batch == "t2":
            raise RuntimeError("the back-fill failed")
        handled.append(response.next_batch)
        session.stop()

    async def on_ready() -> None:
        ready.append(tokens.load() == "t1")

    with caplog.at_level(logging.ERROR, "test"):
        await asyncio.wait_for(session.sync_forever(tokens, after_sync, on_ready), 10)
    await client.close()
    assert "handling a sync response failed" in caplog.text
    assert handled == ["t3"]
    assert ready == [True], "ready once, after the first response, whose token was not saved"
    assert tokens.load() == "t3"


def test_the_auditor_keeps_its_token_where_nio_kept_it(tmp_path: Path) -> None:
    """Deployments that ran with store_sync_tokens=True carry on from their saved token."""
    bot = AuditorBot(parse_config(raw_config(tmp_path), tmp_path))
    try:
        assert not bot.client.config.store_sync_tokens
        bot.client.restore_login(bot.config.user_id, bot.config.device_id, "token")
        assert bot.client.store is not None
        bot.client.store.save_sync_token("saved-by-nio")  # what the old version left behind
        assert StoreSyncTokens(bot.client).load() == "saved-by-nio"
    finally:
        bot.archive.close()
        bot.consultations.close()
        bot.exports.close()


# -- archiving a response (``bots/auditor/ingest.py``) ------------------------------------------


def auditor_ingest(tmp_path: Path) -> tuple[Session, ScriptedClient, StoreSyncTokens, Ingest, Archive]:
    """The auditor's archiving on a scripted client and a real archive."""
    from bots.auditor.bot import open_archive

    config = parse_config(raw_config(tmp_path), tmp_path)
    session, client, tokens = new_session(tmp_path / "store")
    archive = open_archive(config)

    async def send(*_args: Any, **_kwargs: Any) -> None:
        return None

    enforcer = Enforcer(client, archive, config, MediaApi(client), send)
    return session, client, tokens, Ingest(session, archive, config, enforcer), archive


def raw_event(event_id: str, **fields: Any) -> dict[str, Any]:
    event = {
        "type": "m.room.message",
        "event_id": event_id,
        "sender": "@alice:x.test",
        "origin_server_ts": 1_700_000_000_000,
        "content": {"msgtype": "m.text", "body": "secret words"},
    }
    event.update(fields)
    return event


def sync_with(next_batch: str, *events: dict[str, Any]) -> dict[str, Any]:
    timeline = {"events": list(events), "limited": False, "prev_batch": f"before-{next_batch}"}
    return {
        "next_batch": next_batch,
        "rooms": {"join": {ROOM: {"timeline": timeline, "state": {"events": []}}}},
    }


async def test_malformed_events_are_counted_and_the_rest_of_the_response_archived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session, client, tokens, ingest, archive = auditor_ingest(tmp_path)
    client.script = [
        sync_with(
            "t2",
            raw_event("$future", origin_server_ts=2**47),
            raw_event("$typed", content={"msgtype": 7, "body": ["secret words"]}),
            raw_event("$numbers", origin_server_ts=-5),
            raw_event("$good"),
            raw_event(
                "$poll", type="org.matrix.msc3381.poll.start", content={"org.matrix.msc3381.poll.start": 3}
            ),
        )
    ]

    async def after_sync(response: SyncResponse) -> None:
        await ingest.handle(response)
        session.stop()

    with caplog.at_level(logging.DEBUG, "bots.auditor"):
        await asyncio.wait_for(session.sync_forever(tokens, after_sync, nothing), 10)
    await client.close()
    try:
        assert archive.get("$good") is not None and archive.get("$typed") is not None
        assert archive.get("$poll") is not None
        assert archive.get("$future") is None and archive.get("$numbers") is None
        assert ingest.malformed_events == 2
        assert tokens.load() == "t2"
        assert "$future" in caplog.text and "secret" not in caplog.text
    finally:
        archive.close()


async def test_a_failing_archive_holds_the_response_until_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, client, tokens, ingest, archive = auditor_ingest(tmp_path)
    tokens.save("t1")
    client.script = [sync_with("t2", raw_event("$one"), raw_event("$two"))]
    add = archive.add
    failures = [sqlite3.OperationalError("database or disk is full")] * 3

    def full_disk(message: Any) -> bool:
        if failures:
            raise failures.pop()
        return add(message)

    monkeypatch.setattr(archive, "add", full_disk)
    monkeypatch.setattr("bots.auditor.ingest.MAX_WRITE_BACKOFF_S", 0.01)
    seen_failing: list[int | None] = []

    async def sleep(seconds: float) -> None:
        seen_failing.append(ingest.failing_since)
        assert tokens.load() == "t1", "the token moved on while the archive failed"
        await asyncio.sleep(0)

    monkeypatch.setattr(session, "sleep", sleep)
    told: list[tuple[int, bool]] = []

    async def on_outage(since: int, failing: bool) -> None:
        told.append((since, failing))
        raise RuntimeError("the homeserver is down too")  # telling fails: archiving goes on

    ingest.on_outage = on_outage

    async def after_sync(response: SyncResponse) -> None:
        await ingest.handle(response)
        session.stop()

    await asyncio.wait_for(session.sync_forever(tokens, after_sync, nothing), 10)
    await client.close()
    try:
        assert len(seen_failing) == 3 and all(seen_failing)
        # told once when the outage began and once when it ended, with its start
        assert told == [(seen_failing[0], True), (seen_failing[0], False)]
        assert ingest.failing_since is None and ingest.failure is None
        assert archive.get("$one") is not None and archive.get("$two") is not None
        assert tokens.load() == "t2"
    finally:
        archive.close()


async def test_a_stop_while_the_archive_fails_leaves_the_response_for_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, client, tokens, ingest, archive = auditor_ingest(tmp_path)
    tokens.save("t1")
    client.script = [sync_with("t2", raw_event("$one"))]

    def full_disk(message: Any) -> bool:
        session.stop()  # SIGTERM while the disk is full
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(archive, "add", full_disk)
    await asyncio.wait_for(session.sync_forever(tokens, ingest.handle, nothing), 10)
    await client.close()
    try:
        assert tokens.load() == "t1"
        assert ingest.failure == "OperationalError: database or disk is full"
    finally:
        archive.close()


async def test_each_event_sees_the_ones_before_it_archived(tmp_path: Path) -> None:
    """A command answered in the same response as a message (or its redaction) finds it."""
    session, client, tokens, ingest, archive = auditor_ingest(tmp_path)
    redaction = {
        "type": "m.room.redaction",
        "event_id": "$redaction",
        "sender": "@alice:x.test",
        "origin_server_ts": 1_700_000_000_001,
        "redacts": "$said",
        "content": {},
    }
    client.script = [sync_with("t2", raw_event("$said"), redaction, raw_event("$command"))]
    seen: dict[str, bool] = {}

    async def before(room_id: str, event: Any) -> None:
        said = archive.get("$said")
        seen[event.event_id] = said is not None and said.redacted
        if event.event_id == "$command":
            raise RuntimeError("the command failed")  # logged; the event is still archived

    ingest.before = before

    async def after_sync(response: SyncResponse) -> None:
        await ingest.handle(response)
        session.stop()

    await asyncio.wait_for(session.sync_forever(tokens, after_sync, nothing), 10)
    await client.close()
    try:
        assert seen == {"$said": False, "$redaction": False, "$command": True}
        assert archive.get("$command") is not None
    finally:
        archive.close()
