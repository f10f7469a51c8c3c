"""The auditor's command handlers with a fake chat: four eyes to the end (approval and
delivery as separate recorded steps, the room checked again at delivery, a delivery cut
short completed once after a restart, requests that expire), ``!show`` as Element shows
an edited message, ``!health``'s failures, and the one command pattern of both bots."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from nio import RoomMessageText, RoomSendResponse, UploadResponse

from bots.auditor import chat as chat_module
from bots.auditor.archive import Archive, Message
from bots.auditor.chat import CommandChat
from bots.auditor.consultation_log import ConsultationLog
from bots.auditor.export import generate_signing_key, load_signing_key
from bots.auditor.parser import HELP, PARSER, SPECS, Approve, Deny, Export, Invalid, Search, Show
from bots.auditor.replies import HealthStats
from bots.auditor.requests import ExportStore
from bots.auditor.runner import CommandRunner
from bots.common.commands import Handlers, Parser, Spec, Usage
from bots.dispatch import commands as dispatch_commands

DAY_MS = 86_400_000
NOW = 1_751_349_744_000  # 2025-07-01 06:02:24 UTC
BOT = "@auditor:x.test"
REV, REV2, MALLORY = "@rev:x.test", "@rev2:x.test", "@mallory:x.test"
DM_REV, DM_REV2 = "!dm-rev:x.test", "!dm-rev2:x.test"
ROOM = "!ops:x.test"


# -- the fake chat: a client that records what the bot would send ---------------------------------


@attrs.define
class FakeRoom:
    room_id: str
    users: dict[str, object]
    encrypted: bool = True


class FakeDevices:
    def __init__(self) -> None:
        self.devices: dict[str, list[str]] = {}

    def active_user_devices(self, user_id: str) -> Iterator[str]:
        return iter(self.devices.get(user_id, []))


class FakeClient:
    """What ``CommandChat`` uses of nio's client; sends are recorded, uploads kept."""

    def __init__(self) -> None:
        self.user_id = BOT
        self.rooms: dict[str, FakeRoom] = {}
        self.device_store = FakeDevices()
        self.should_query_keys = False
        self.sent: list[tuple[str, dict[str, Any], str | None]] = []
        self.uploads: list[bytes] = []
        self.fail_uploads = 0

    def room(self, room_id: str, *users: str) -> FakeRoom:
        self.rooms[room_id] = FakeRoom(room_id, {user: None for user in (BOT, *users)})
        for user in users:
            self.device_store.devices.setdefault(user, ["DEVICE"])
        return self.rooms[room_id]

    async def upload(self, data: Any, **_: Any) -> tuple[Any, dict[str, Any] | None]:
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise OSError("the homeserver is away")
        self.uploads.append(data.read())
        return UploadResponse(f"mxc://x.test/{len(self.uploads)}"), {"key": {"k": "secret"}, "iv": "iv"}

    async def room_send(
        self, room_id: str, _type: str, content: dict[str, Any], tx_id: str | None = None, **_: Any
    ) -> RoomSendResponse:
        self.sent.append((room_id, content, tx_id))
        return RoomSendResponse(f"$sent{len(self.sent)}", room_id)

    def bodies(self, room_id: str) -> list[str]:
        return [content["body"] for room, content, _ in self.sent if room == room_id]

    def files(self, room_id: str) -> list[dict[str, Any]]:
        return [c for room, c, _ in self.sent if room == room_id and c.get("msgtype") == "m.file"]


@attrs.define
class Bot:
    """A runner and its chat on files in one directory: ``restart`` opens them again."""

    directory: Path
    clock: list[int]
    client: FakeClient = attrs.field(factory=FakeClient)
    tasks: list[Coroutine[Any, Any, None]] = attrs.field(factory=list)
    archive: Archive = attrs.field(init=False)
    log: ConsultationLog = attrs.field(init=False)
    exports: ExportStore = attrs.field(init=False)
    runner: CommandRunner = attrs.field(init=False)
    chat: CommandChat = attrs.field(init=False)
    key: bytes = attrs.field(factory=lambda: os.urandom(32))
    lifetime_ms: int = 7 * DAY_MS

    def __attrs_post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        self.archive = Archive(self.directory / "archive.sqlite", self.key, clock=lambda: self.clock[0])
        self.log = ConsultationLog(self.directory / "log.sqlite", clock=lambda: self.clock[0])
        self.exports = ExportStore(self.directory / "exports.sqlite", self.lifetime_ms)
        key_file = self.directory / "signing.pem"
        key = load_signing_key(key_file) if key_file.exists() else generate_signing_key(key_file)
        self.runner = CommandRunner(
            self.archive,
            self.log,
            frozenset({REV, REV2}),
            90 * DAY_MS,
            lambda: HealthStats(0, 0, NOW),
            clock=lambda: self.clock[0],
            exports=self.exports,
            signing_key=key,
        )
        self.chat = CommandChat(self.client, self.runner, self.log, self.archive, self.tasks.append, NOW)

    def close(self) -> None:
        self.archive.close()
        self.log.close()
        self.exports.close()

    def restart(self) -> None:
        """A stop and a start: nothing in memory survives (the client's rooms are the homeserver's)."""
        self.close()
        self.tasks.clear()
        self.open()

    async def say(self, sender: str, room_id: str, text: str, n: list[int] = [0]) -> None:  # noqa: B006
        n[0] += 1
        event = RoomMessageText.from_dict(
            {
                "type": "m.room.message",
                "event_id": f"$cmd{n[0]}-{os.urandom(3).hex()}",
                "sender": sender,
                "origin_server_ts": self.clock[0],
                "content": {"msgtype": "m.text", "body": text},
            }
        )
        await self.chat.answer(self.client.rooms[room_id], event)  # type: ignore[arg-type]
        await self.settle()

    async def settle(self) -> None:
        """Run what the chat started beside syncing (exports), until nothing is left."""
        while self.tasks:
            task = self.tasks.pop(0)
            await task

    def actions(self) -> list[str]:
        return [entry.action for entry in self.log.entries()]


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Bot]:
    bot = Bot(tmp_path, [NOW])
    for index in range(3):
        bot.archive.add(
            Message(
                f"$m{index}",
                ROOM,
                "@alice:x.test",
                "DEV",
                NOW - DAY_MS + index,
                f"heron {index}",
                msgtype="m.text",
            )
        )
    bot.client.room(DM_REV, REV)
    bot.client.room(DM_REV2, REV2)
    yield bot
    bot.close()


async def request_export(bot: Bot) -> str:
    await bot.say(REV, DM_REV, f'!export {ROOM} 2025-06-29 2025-07-01 ref:AZ-1 reason:"review"')
    body = bot.client.bodies(DM_REV)[-1]
    assert "Export request EX-" in body, body
    return body.split("Export request ", 1)[1][:7]


# -- four eyes to the end -------------------------------------------------------------------------


async def test_approval_and_delivery_are_separate_recorded_steps(bot: Bot) -> None:
    request_id = await request_export(bot)
    await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert bot.client.bodies(DM_REV2)[0].startswith(f"Approved {request_id}: 3 messages")
    assert bot.client.bodies(DM_REV2)[-1] == f"Export {request_id} was delivered to {REV}."
    (file,) = bot.client.files(DM_REV)
    assert file["body"] == f"{request_id}.zip"
    notices = [b for b in bot.client.bodies(DM_REV) if "was approved by" in b]
    assert len(notices) == 1 and REV2 in notices[0]
    tx_ids = [tx for room, _, tx in bot.client.sent if room == DM_REV and tx]
    assert tx_ids == [f"export-{request_id}-notice", f"export-{request_id}-file"]
    stored = bot.exports.get(request_id)
    assert (stored.status, stored.approved_by, stored.message_count) == ("delivered", REV2, 3)
    (bundle,) = bot.client.uploads
    assert stored.bundle_sha256 == hashlib.sha256(bundle).hexdigest()
    assert bot.actions() == ["export_request", "export_approve", "export_deliver"]
    approval, disclosure = bot.log.entries()[1:]
    assert "bundle_sha256" not in json.loads(approval.query)  # the approval discloses nothing yet
    assert json.loads(disclosure.query)["bundle_sha256"] == stored.bundle_sha256
    assert (disclosure.auditor, disclosure.recipient, disclosure.result_count) == (REV2, REV, 3)
    again = await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert again is None
    assert "closed: it was delivered by @rev2:x.test" in bot.client.bodies(DM_REV2)[-1]
    assert len(bot.client.uploads) == 1


async def test_someone_added_to_the_requesters_room_stops_the_delivery(bot: Bot) -> None:
    request_id = await request_export(bot)
    # the requester adds someone (with a device) to the chat the bundle would go to
    room = bot.client.rooms[DM_REV]
    room.users[MALLORY] = None
    bot.client.device_store.devices[MALLORY] = ["PHONE"]
    await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert bot.client.uploads == [] and bot.client.files(DM_REV) == []
    notice = bot.client.bodies(DM_REV)[-1]
    assert f"Export {request_id} was NOT delivered" in notice and MALLORY in notice
    assert "stopped, not delivered" in bot.client.bodies(DM_REV2)[-1]
    stored = bot.exports.get(request_id)
    assert stored.status == "stopped" and MALLORY in stored.stop_reason
    assert bot.actions() == ["export_request", "export_approve", "export_stop"]
    # stopped for good: neither a restart nor a second approval delivers it
    bot.restart()
    await bot.chat.resume()
    await bot.settle()
    await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert "closed: it was stopped" in bot.client.bodies(DM_REV2)[-1]
    assert bot.client.uploads == []


async def test_a_member_without_devices_does_not_stop_it(bot: Bot) -> None:
    request_id = await request_export(bot)
    bot.client.rooms[DM_REV].users["@left-no-devices:x.test"] = None
    await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert bot.exports.get(request_id).status == "delivered"


async def test_an_unencrypted_room_gets_no_bundle(bot: Bot) -> None:
    request_id = await request_export(bot)
    bot.client.rooms[DM_REV].encrypted = False
    await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert bot.exports.get(request_id).status == "stopped"
    assert "not encrypted" in bot.client.bodies(DM_REV)[-1]


async def test_a_stop_after_the_approval_is_delivered_after_the_restart_once(bot: Bot) -> None:
    request_id = await request_export(bot)
    job = bot.runner.start(REV2, f"!approve {request_id}", DM_REV2)
    built = bot.runner.build(job)
    reply = bot.runner.finish_export(built)  # the approval is recorded; then the bot is killed
    assert reply.delivery is not None and bot.exports.get(request_id).status == "approved"
    assert bot.actions()[-1] == "export_approve"
    # messages archived after the approval are not in the bundle built again
    bot.archive.add(Message("$late", ROOM, "@alice:x.test", "DEV", NOW + 1000, "heron late"))
    bot.clock[0] = NOW + 60_000
    bot.restart()
    await bot.chat.resume()
    await bot.settle()
    assert len(bot.client.files(DM_REV)) == 1
    (bundle,) = bot.client.uploads
    assert bundle == built.bundle  # the same bundle, signed as of the approval
    assert bot.exports.get(request_id).status == "delivered"
    assert bot.client.bodies(DM_REV2) == [f"Export {request_id} was delivered to {REV}."]
    assert bot.actions()[-2:] == ["export_approve", "export_deliver"]
    # once: another start finds nothing to deliver
    bot.restart()
    await bot.chat.resume()
    await bot.settle()
    assert len(bot.client.uploads) == 1 and bot.actions().count("export_deliver") == 1


async def test_a_failed_delivery_stays_approved_and_is_retried(bot: Bot, monkeypatch) -> None:
    monkeypatch.setattr(chat_module, "RETRY_DELIVERY_S", 0)
    request_id = await request_export(bot)
    bot.client.fail_uploads = 1
    await bot.say(REV2, DM_REV2, f"!approve {request_id}")
    assert "tries again" in bot.client.bodies(DM_REV2)[-1]
    assert bot.exports.get(request_id).status == "approved"
    assert "export_deliver" not in bot.actions()
    await asyncio.gather(*bot.chat._retries)
    await bot.settle()
    assert bot.exports.get(request_id).status == "delivered"
    assert len(bot.client.uploads) == 1


async def test_requests_expire(tmp_path: Path) -> None:
    bot = Bot(tmp_path, [NOW], lifetime_ms=2 * DAY_MS)
    try:
        bot.client.room(DM_REV, REV)
        bot.client.room(DM_REV2, REV2)
        request_id = await request_export(bot)
        assert "by 2025-07-03 06:02 UTC" in bot.client.bodies(DM_REV)[-1]
        bot.clock[0] = NOW + 2 * DAY_MS
        await bot.say(REV2, DM_REV2, f"!approve {request_id}")
        answer = bot.client.bodies(DM_REV2)[-1]
        assert f"Export request {request_id} expired on 2025-07-03 06:02 UTC" in answer
        assert "valid for 2 days" in answer and "nothing was exported" in answer
        assert bot.exports.get(request_id).status == "expired"
        assert bot.client.uploads == []
        refusal = bot.log.entries()[-1]
        assert (refusal.action, refusal.reason) == ("refusal", "export request expired")
        await bot.say(REV, DM_REV, f"!deny {request_id}")
        assert "expired on" in bot.client.bodies(DM_REV)[-1]
    finally:
        bot.close()


def test_a_request_store_of_the_first_version_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "exports.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE export_requests (request_id TEXT PRIMARY KEY, room_id TEXT NOT NULL,
        from_ms INTEGER NOT NULL, to_ms INTEGER NOT NULL, case_ref TEXT NOT NULL, reason TEXT NOT NULL,
        requested_by TEXT NOT NULL, command_room TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', decided_by TEXT, decided_at_ms INTEGER);
        INSERT INTO export_requests VALUES
            ('EX-AAAA', '!r', 0, 1, 'c', 'r', '@a:x', '!dm', 5, 'approved', '@b:x', 7);
        INSERT INTO export_requests VALUES
            ('EX-BBBB', '!r', 0, 1, 'c', 'r', '@a:x', '!dm', 5, 'pending', NULL, NULL);
        """
    )
    db.commit()
    db.close()
    store = ExportStore(path, 100)
    try:
        old = store.get("EX-AAAA")
        # approved by the first version: delivered then (or reopened), never delivered again
        assert (old.status, old.approved_by, old.delivered_at_ms) == ("delivered", "@b:x", 7)
        assert store.undelivered() == []
        assert store.get("EX-BBBB").expires_at_ms == 105
        assert not store.approve("EX-BBBB", "@b:x", 105, room="!dm2", bundle_from_ms=0)
        assert store.expire("EX-BBBB", 105)
    finally:
        store.close()


def test_the_manifest_names_the_request_not_the_bots_bookkeeping(bot: Bot) -> None:
    request_id = bot.exports.create(
        room_id=ROOM,
        from_ms=0,
        to_ms=1,
        case_ref="AZ",
        reason="r",
        requested_by=REV,
        command_room=DM_REV,
        created_at_ms=NOW,
    )
    manifest = bot.exports.get(request_id).manifest()
    assert set(manifest) == {
        "request_id",
        "room_id",
        "from_ms",
        "to_ms",
        "case_ref",
        "reason",
        "requested_by",
        "approved_by",
        "created_at_ms",
    }


# -- what Element shows ---------------------------------------------------------------------------


async def test_show_gives_the_current_version_marked_edited_and_the_earlier_ones(bot: Bot) -> None:
    bot.archive.add(Message("$orig", ROOM, "@bob:x.test", "D", NOW - 5000, "meet at noon"))
    bot.archive.add(
        Message(
            "$edit1",
            ROOM,
            "@bob:x.test",
            "D",
            NOW - 4000,
            "meet at one",
            relates_to="$orig",
            rel_type="m.replace",
        )
    )
    bot.archive.add(
        Message(
            "$edit2",
            ROOM,
            "@bob:x.test",
            "D",
            NOW - 3000,
            "never met",
            relates_to="$orig",
            rel_type="m.replace",
        )
    )
    for event_id in ("$orig", "$edit1"):
        await bot.say(REV, DM_REV, f'!show {event_id} ref:AZ-1 reason:"r"')
        body = bot.client.bodies(DM_REV)[-1]
        shown = [line for line in body.splitlines() if line.startswith(">>")]
        assert shown == [">> 2025-07-01 06:02 UTC @bob:x.test: never met (edited)"], body
        assert "* " not in body and "$edit2]" in body
        versions = body.split("Versions of $orig", 1)[1].splitlines()[1:]
        assert [v.split(" UTC ", 1)[1] for v in versions] == [
            "meet at noon [$orig]",
            "meet at one [$edit1]",
            "never met [$edit2]",
        ]
    entry = bot.log.entries()[-1]
    assert json.loads(entry.query)["versions"] == ["$orig", "$edit1", "$edit2"]


async def test_search_marks_a_superseded_version(bot: Bot) -> None:
    bot.archive.add(Message("$o", ROOM, "@bob:x.test", "D", NOW - 5000, "kestrel at the gate"))
    bot.archive.add(
        Message("$e", ROOM, "@bob:x.test", "D", NOW - 4000, "nothing", relates_to="$o", rel_type="m.replace")
    )
    await bot.say(REV, DM_REV, '!search kestrel ref:AZ-1 reason:"r"')
    body = bot.client.bodies(DM_REV)[-1]
    assert "(earlier version): kestrel at the gate [$o]" in body


# -- health ---------------------------------------------------------------------------------------


async def test_health_reports_failing_writes_undecryptable_rooms_and_malformed_events(bot: Bot) -> None:
    bot.runner.health = lambda: HealthStats(
        4,
        2,
        NOW,
        archive_failing_since=NOW - 60_000,
        archive_failure="OSError: [Errno 28] No space left on device",
        undecryptable_by_room={"!b:x.test": 1, "!a:x.test": 2},
        malformed_events=5,
    )
    await bot.say(REV, DM_REV, "!health")
    lines = bot.client.bodies(DM_REV)[-1].splitlines()
    assert lines[0].startswith("ARCHIVE WRITES FAILING since 2025-07-01 06:01 UTC: OSError: [Errno 28]")
    assert "syncing is paused" in lines[0]
    assert "still undecryptable after the waiting time: 3 (!a:x.test 2, !b:x.test 1)" in lines
    assert "malformed events skipped since start: 5" in lines
    bot.runner.health = lambda: HealthStats(0, 0, NOW)
    await bot.say(REV, DM_REV, "!health")
    body = bot.client.bodies(DM_REV)[-1]
    assert "FAILING" not in body and "malformed" not in body and "still undecryptable" not in body


# -- one command pattern --------------------------------------------------------------------------


def test_every_command_is_one_parser_one_handler_and_one_line_of_help(bot: Bot) -> None:
    for spec in SPECS:
        assert spec.usage.syntax.splitlines()[0] in HELP
    kinds = {type(PARSER.parse(text)) for text in ("!help", "!more", "!log", "!health", "!frob")}
    kinds |= {Search, Show, Export, Approve, Deny, Invalid}
    assert kinds <= set(bot.runner.handlers.table)


def test_a_command_without_a_handler_fails_at_start() -> None:
    with pytest.raises(TypeError, match="Alert"):
        dispatch_commands.handlers({})
    with pytest.raises(ValueError, match="twice"):
        Parser([Spec(Usage("x", "!x"), str), Spec(Usage("x", "!x"), str)], str)
    table: Handlers[str] = Handlers({int: lambda context, n: f"{context}:{n}"})
    assert table(3, "ctx") == "ctx:3"
    with pytest.raises(LookupError):
        table("text")


def test_the_dispatch_help_is_made_from_its_usages() -> None:
    for name, syntax in dispatch_commands.USAGE.items():
        if name != "s":
            assert f"  {syntax}" in dispatch_commands.HELP
    assert dispatch_commands.parse_command("!s 5") == dispatch_commands.OfficerStatus(5)
    assert dispatch_commands.parse_command("!123") is None


async def test_show_of_an_altered_record_says_so(bot: Bot) -> None:
    """Someone with the files re-attributes a message: the auditor is told, not left with silence."""
    with contextlib.closing(sqlite3.connect(bot.directory / "archive.sqlite")) as db:
        db.execute("UPDATE messages SET sender = '@mallory:x.test' WHERE event_id = '$m1'")
        db.commit()
    await bot.say(REV, DM_REV, '!show $m1 ref:AZ-1 reason:"r"')
    body = bot.client.bodies(DM_REV)[-1]
    assert "altered record" in body and "police-audit verify-archive" in body, body
    assert "heron" not in body and "mallory" not in body
