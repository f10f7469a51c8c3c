"""Four eyes to the end, against a real Synapse with the auditor bot as its own process:
the requester's room is checked again when the bundle is delivered (someone added to it
stops the delivery, with a notice), and a bot killed right after an approval delivers the
bundle after its restart, once."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nio import AsyncClient, RoomEncryptedFile, RoomMessageNotice, RoomMessagesResponse, SyncResponse

from bots.auditor.consultation_log import ConsultationLog
from bots.auditor.requests import ExportStore
from devtools.homeserver import Homeserver
from devtools.postgres import PostgresCluster
from tests.bots import BotProcess
from tests.e2ee import create_room, download_decrypted, invite_and_join, send, sync_until
from tests.integration.test_auditor_bot import (
    BOT_LOCALPART,
    ask,
    new_client,
    open_direct_chat,
    receive_export,
    running_bot,
    wait_member,
)


@pytest.fixture(scope="module")
def hs(start_homeserver) -> Homeserver:
    return start_homeserver("foureyes", module_config={"auditor": {"user_id": "@auditor:foureyes.test"}})


@pytest.fixture(scope="module")
def setup(
    hs: Homeserver, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Iterator[tuple[BotProcess, dict[str, str], Path]]:
    """One bot with two auditors for the module (its account is made once per server)."""
    with running_bot(hs, tmp_path_factory.mktemp("four-eyes"), auditors=2, postgres=postgres) as found:
        yield found


def days() -> tuple[str, str]:
    """Yesterday and tomorrow (UTC): today in the bot's zone lies within, also across midnight."""
    return (
        time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400)),
        time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400)),
    )


async def room_with_a_message(hs: Homeserver, tmp_path: Path, word: str) -> tuple[AsyncClient, str]:
    alice = await new_client(hs, "alice", tmp_path)
    room_id = await create_room(alice)
    await wait_member(alice, room_id, hs.user_id(BOT_LOCALPART))
    await sync_until(alice, lambda: True)
    await send(alice, room_id, {"msgtype": "m.text", "body": f"the {word} sits on the roof"})
    return alice, room_id


async def request_export(client: AsyncClient, dm: str, bot_id: str, room_id: str, word: str, ref: str) -> str:
    """Once the bot archived the room's message: an export request; its ID."""
    for _ in range(10):
        found = await ask(
            client,
            dm,
            bot_id,
            f'!search {word} ref:{ref} reason:"check"',
            lambda b: "Results" in b or "No " in b,
        )
        if "Results" in found:
            break
    else:
        raise AssertionError(f"{word} was not archived")
    since, until = days()
    answer = await ask(
        client,
        dm,
        bot_id,
        f'!export {room_id} {since} {until} ref:{ref} reason:"internal review"',
        lambda b: "Export request" in b or "!export" in b,
    )
    match = re.search(r"EX-[A-Z0-9]{4}", answer)
    assert match, answer
    return match.group()


async def files_and_notices(client: AsyncClient, room_id: str, bot_id: str) -> tuple[int, list[str]]:
    """The export files and notices the bot posted in ``room_id``, from its whole history."""
    files, notices = 0, []
    token = client.next_batch
    for _ in range(20):
        response = await client.room_messages(room_id, start=token, limit=100)
        assert isinstance(response, RoomMessagesResponse), response
        for event in response.chunk:
            if event.sender != bot_id:
                continue
            if isinstance(event, RoomEncryptedFile):
                files += 1
            elif isinstance(event, RoomMessageNotice):
                notices.append(event.body)
        if not response.chunk or not response.end:
            break
        token = response.end
    return files, notices


async def notice_in(
    client: AsyncClient, room_id: str, bot_id: str, fragment: str, timeout: float = 60
) -> str:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        response = await client.sync(timeout=1000)
        assert isinstance(response, SyncResponse), response
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageNotice) and event.sender == bot_id:
                seen.append(event.body)
                if fragment in event.body:
                    return event.body
    raise AssertionError(f"no notice with {fragment!r} within {timeout}s; got {seen}")


def requests_and_log(directory: Path, request_id: str, ref: str) -> tuple[str, list[str]]:
    """The request's status and the consultation log's export actions about it (its case)."""
    store = ExportStore(directory / "export-requests.sqlite")
    try:
        request = store.get(request_id)
    finally:
        store.close()
    assert request is not None
    with ConsultationLog(directory / "consultations.sqlite", read_only=True) as log:
        assert log.verify().ok
        actions = [e.action for e in log.entries() if e.case_ref == ref and e.action.startswith("export_")]
    return request.status, actions


async def test_someone_added_to_the_requesters_room_stops_the_delivery(hs, setup, tmp_path):
    bot, names, directory = setup
    bot_id = hs.user_id(BOT_LOCALPART)
    bot.start()
    alice, room_id = await room_with_a_message(hs, tmp_path, "plover7canary")
    requester = await new_client(hs, "revisor", tmp_path, names["auditor"])
    approver = await new_client(hs, "revisor", tmp_path, names["auditor2"])
    mallory = await new_client(hs, "mallory", tmp_path)
    try:
        dm_a = await open_direct_chat(requester, bot_id)
        dm_b = await open_direct_chat(approver, bot_id)
        request_id = await request_export(requester, dm_a, bot_id, room_id, "plover7canary", "AZ-41")
        # after asking, the requester lets someone else (with a device) into the chat
        await invite_and_join(requester, mallory, dm_a)
        await sync_until(mallory, lambda: True)

        stopped = await ask(
            approver, dm_b, bot_id, f"!approve {request_id}", lambda b: "stopped" in b or "delivered" in b, 60
        )
        assert "stopped, not delivered" in stopped, stopped
        notice = await notice_in(requester, dm_a, bot_id, "NOT delivered")
        assert mallory.user_id in notice
        files, _ = await files_and_notices(requester, dm_a, bot_id)
        assert files == 0
    finally:
        for client in (alice, requester, approver, mallory):
            await client.close()
    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    status, actions = requests_and_log(directory, request_id, "AZ-41")
    assert status == "stopped"
    assert actions == ["export_request", "export_approve", "export_stop"]


async def test_a_bot_killed_right_after_the_approval_delivers_after_its_restart_once(hs, setup, tmp_path):
    bot, names, directory = setup
    bot_id = hs.user_id(BOT_LOCALPART)
    stop_file = tmp_path / f"stop-{uuid.uuid4().hex[:6]}"
    stop_file.write_text("approved")
    bot.start(env={"AUDITOR_TEST_STOP_FILE": str(stop_file)})
    alice, room_id = await room_with_a_message(hs, tmp_path, "dunlin3canary")
    requester = await new_client(hs, "revisor", tmp_path, names["auditor"])
    approver = await new_client(hs, "revisor", tmp_path, names["auditor2"])
    try:
        dm_a = await open_direct_chat(requester, bot_id)
        dm_b = await open_direct_chat(approver, bot_id)
        request_id = await request_export(requester, dm_a, bot_id, room_id, "dunlin3canary", "AZ-42")
        await sync_until(approver, lambda: True)
        await send(approver, dm_b, {"msgtype": "m.text", "body": f"!approve {request_id}"})
        bot.killed_itself()
        approved = requests_and_log(directory, request_id, "AZ-42")
        assert approved == ("approved", ["export_request", "export_approve"])

        bot.start()
        file_info, notices = await receive_export(requester, dm_a, bot_id, timeout=60)
        assert approver.user_id in notices
        bundle = download_decrypted(requester, file_info)
        assert b"manifest.sig" in bundle
        await notice_in(approver, dm_b, bot_id, f"Export {request_id} was delivered")
        # once: a further start delivers nothing more
        assert bot.stop() == 0
        bot.start()
        assert bot.stop() == 0
        files, _ = await files_and_notices(requester, dm_a, bot_id)
        assert files == 1
    finally:
        for client in (alice, requester, approver):
            await client.close()
    assert "Traceback" not in bot.log(), bot.log()
    status, actions = requests_and_log(directory, request_id, "AZ-42")
    assert status == "delivered"
    assert actions == ["export_request", "export_approve", "export_deliver"]
