"""The bots' sync token (``bots.common.session``) is saved only after a whole sync response
was handled. nio's ``store_sync_tokens=True``, which the auditor used before, saves it before
the event callbacks run, so a bot killed in a callback lost those events; now the same
response comes again after the restart. A real nio client and store, /sync scripted."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, MatrixRoom, RoomMessageText, SyncResponse

from bots.auditor.bot import AuditorBot
from bots.auditor.config import parse_config
from bots.common.config import Account
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
