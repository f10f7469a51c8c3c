"""The auditor bot against a real Synapse: it is seated in every room, archives what
officers say (encrypted at rest), answers an auditor's search in their direct chat,
refuses everyone else, and loses nothing across a restart."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from nio import (
    AsyncClient,
    Event,
    RedactionEvent,
    RoomEncryptedFile,
    RoomMessageNotice,
    RoomMessagesResponse,
    RoomMessageText,
    RoomRedactResponse,
    SyncResponse,
)

from bots.auditor.archive import Archive, Attachment, Enforcement, Message
from bots.auditor.bot import open_archive
from bots.auditor.config import load_config
from bots.auditor.consultation_log import ConsultationLog
from devtools.homeserver import Homeserver, free_port
from devtools.postgres import PG_BIN, PostgresCluster
from tests import media_corpus
from tests.bots import REPO, BotProcess, auditor_config, repo_env, stopped_afterwards
from tests.e2ee import (
    create_room,
    download,
    download_decrypted,
    invite_and_join,
    login,
    send,
    sync_until,
    upload_encrypted,
)

BOT_LOCALPART = "auditor"
BOT_DEVICE = "AUDITOR-BOT"


@pytest.fixture(scope="module")
def hs(start_homeserver) -> Homeserver:
    return start_homeserver("auditing", module_config={"auditor": {"user_id": "@auditor:auditing.test"}})


@pytest.fixture(scope="module")
def export_hs(start_homeserver) -> Homeserver:
    """A homeserver of its own: the bot's account and device are set up once per server."""
    return start_homeserver(
        "auditexport", module_config={"auditor": {"user_id": "@auditor:auditexport.test"}}
    )


@contextlib.contextmanager
def running_bot(
    hs: Homeserver, tmp_path: Path, auditors: int = 1, postgres: PostgresCluster | None = None
) -> Iterator[tuple[BotProcess, dict[str, str], Path]]:
    """A bot's account, device and config; its archive in PostgreSQL when the session has a
    cluster (POLICE_TEST_POSTGRES=1), else in SQLite."""
    names = {"auditor": f"revisor-{uuid.uuid4().hex[:6]}"}
    if auditors > 1:
        names["auditor2"] = f"revisor-{uuid.uuid4().hex[:6]}"
    auditor_ids = [hs.user_id(name) for name in names.values()]
    config = {**auditor_config(hs, tmp_path, BOT_LOCALPART, BOT_DEVICE, auditor_ids), "audit_lifetime": "90d"}
    if postgres is not None:
        args = postgres.create_database(f"auditor_{uuid.uuid4().hex[:8]}")["args"]
        del config["archive_path"]
        config["archive_postgres"] = " ".join(
            f"{name}={args[key]}"
            for name, key in (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user"))
        )
        config["attachments_dir"] = "archive-attachments"
    config_file = tmp_path / "auditor.yaml"
    config_file.write_text(yaml.safe_dump(config))
    bot = BotProcess("bots.auditor", config_file, tmp_path / "bot.log", ready="auditor bot ready")
    with stopped_afterwards(bot):
        yield bot, names, tmp_path


@pytest.fixture(scope="module")
def bot_setup(
    hs: Homeserver, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Iterator[tuple[BotProcess, dict[str, str], Path]]:
    """One bot (account, device, E2EE store, archive) for the module's tests on ``hs``, which
    run in file order; each test starts it and leaves it stopped, reconfiguring it as needed."""
    with running_bot(hs, tmp_path_factory.mktemp("auditor-bot"), postgres=postgres) as setup:
        yield setup


@pytest.fixture(autouse=True)
def bot_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared bot, even a failed one: the bot stopped and its config as
    before, so one failure does not turn into failures of the tests after it."""
    if "bot_setup" not in request.fixturenames:
        yield
        return
    bot = request.getfixturevalue("bot_setup")[0]
    before = bot.config_file.read_text()
    try:
        with stopped_afterwards(bot):
            yield
    finally:
        bot.config_file.write_text(before)


@pytest.fixture
def export_setup(
    export_hs: Homeserver, tmp_path: Path, postgres: PostgresCluster | None
) -> Iterator[tuple[BotProcess, dict[str, str], Path]]:
    with running_bot(export_hs, tmp_path, auditors=2, postgres=postgres) as setup:
        yield setup


#: passwords of the users registered so far, by (server name, localpart): auditors log in again
#: in later tests of the module, each time on a new device
_PASSWORDS: dict[tuple[str, str], str] = {}


def bot_archive(directory: Path) -> Archive:
    """The archive of the bot configured in ``directory`` (SQLite or PostgreSQL), as it is."""
    return open_archive(load_config(directory / "auditor.yaml"), create=False)


def archive_at_rest(directory: Path) -> bytes:
    """Every byte the archive keeps on disk: its database (a dump for PostgreSQL) and its files."""
    config = load_config(directory / "auditor.yaml")
    parts = [
        path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory).parts[0].startswith(("archive.sqlite", "archive-"))
    ]
    if config.archive_postgres is not None:
        dump = subprocess.run(
            [str(PG_BIN / "pg_dump"), "--data-only", "-d", config.archive_postgres],
            check=True,
            capture_output=True,
            timeout=60,
        )
        parts.append(dump.stdout)
    return b"".join(parts)


async def new_client(
    hs: Homeserver, prefix: str, tmp_path: Path, localpart: str | None = None
) -> AsyncClient:
    localpart = localpart or f"{prefix}-{uuid.uuid4().hex[:6]}"
    password = _PASSWORDS.get((hs.server_name, localpart))
    if password is None:
        password = _PASSWORDS[hs.server_name, localpart] = f"pw-{uuid.uuid4().hex}"
        hs.register_user(localpart, password, login=False)
    return await login(hs, localpart, password, tmp_path / f"store-{localpart}-{uuid.uuid4().hex[:4]}")


async def wait_member(client: AsyncClient, room_id: str, user_id: str, timeout: float = 20.0) -> None:
    await sync_until(client, lambda: user_id in client.rooms[room_id].users, timeout)


async def room_with_the_bot(client: AsyncClient, bot_id: str) -> str:
    """A new room of ``client``'s, once the module seated the bot and its device is known (so
    the megolm session of the first message is shared with it)."""
    room_id = await create_room(client)
    await wait_member(client, room_id, bot_id)
    await sync_until(client, lambda: True)
    return room_id


async def open_direct_chat(client: AsyncClient, bot_id: str) -> str:
    room_id = await create_room(client, is_direct=True)
    try:
        await wait_member(client, room_id, bot_id, timeout=10)
    except AssertionError:
        await client.room_invite(room_id, bot_id)
        await wait_member(client, room_id, bot_id)
    return room_id


async def ask(
    client: AsyncClient,
    room_id: str,
    bot_id: str,
    text: str,
    done: Callable[[str], bool],
    timeout: float = 30,
) -> str:
    """Send ``text`` and sync until the bot answers with a body for which ``done`` holds."""
    await send(client, room_id, {"msgtype": "m.text", "body": text})
    answers: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.sync(timeout=1000)
        assert isinstance(response, SyncResponse), response
        if client.should_query_keys:
            await client.keys_query()
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageNotice | RoomMessageText) and event.sender == bot_id:
                assert event.decrypted, "the bot answers encrypted"
                answers.append(event.body)
                if done(event.body):
                    return event.body
    raise AssertionError(f"no matching answer to {text!r} within {timeout}s; got {answers}")


async def test_auditor_bot_archives_searches_and_survives_restart(hs, bot_setup, tmp_path):
    bot, names, directory = bot_setup
    bot_id = hs.user_id(BOT_LOCALPART)
    bot.start()
    alice = await new_client(hs, "alice", tmp_path)
    bob = await new_client(hs, "bob", tmp_path)
    revisor = await new_client(hs, "revisor", tmp_path, names["auditor"])
    mallory = await new_client(hs, "mallory", tmp_path)
    try:
        room_id = await create_room(alice)
        await invite_and_join(alice, bob, room_id)
        # the module seats the bot; it must be in the room (with its device known) before the
        # first message, so the megolm session is shared with it
        await wait_member(alice, room_id, bot_id)
        await sync_until(alice, lambda: True)
        first = await send(
            alice, room_id, {"msgtype": "m.text", "body": "the kestrelcanary sits on the roof"}
        )
        attachment = await upload_encrypted(alice, b"falcon report: all clear", "falconfile.txt")
        file_event = await send(alice, room_id, attachment)

        dm = await open_direct_chat(revisor, bot_id)
        answer = await ask(
            revisor,
            dm,
            bot_id,
            '!search kestrelcanary ref:AZ-1 reason:"test"',
            lambda body: first in body or "No messages" in body,
        )
        if first not in answer:  # archived a moment after the search: ask again
            answer = await ask(
                revisor, dm, bot_id, '!search kestrelcanary ref:AZ-1 reason:"test"', lambda b: first in b
            )
        assert "kestrelcanary" in answer

        mallory_dm = await open_direct_chat(mallory, bot_id)
        refusal = await ask(mallory, mallory_dm, bot_id, "!help", lambda body: "Refused" in body)
        assert "only auditors" in refusal

        # down for a while: what is said meanwhile is archived after the restart
        assert bot.stop() == 0
        await sync_until(bob, lambda: True)
        second = await send(bob, room_id, {"msgtype": "m.text", "body": "meanwhile the osprey2canary left"})
        bot.start()
        answer = await ask(
            revisor,
            dm,
            bot_id,
            '!search osprey2canary ref:AZ-1 reason:"test"',
            lambda body: second in body,
        )
        health = await ask(revisor, dm, bot_id, "!health", lambda body: "archived messages" in body)
        assert "undecryptable messages: 0 waiting" in health
    finally:
        for client in (alice, bob, revisor, mallory):
            await client.close()

    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    with bot_archive(directory) as archive:
        assert archive.read_attachment(file_event, 0) == b"falcon report: all clear"
        assert archive.get(file_event).attachments[0].name == "falconfile.txt"
        assert archive.get(first).sender == alice.user_id
    with ConsultationLog(directory / "consultations.sqlite", read_only=True) as log:
        assert log.verify().ok
        entries = log.entries()
        searches = [e for e in entries if e.action == "search"]
        assert [e.case_ref for e in searches] == ["AZ-1"] * len(searches)
        assert all(e.auditor == revisor.user_id and e.recipient == revisor.user_id for e in searches)
        assert any(e.action == "refusal" and e.auditor == mallory.user_id for e in entries)
    at_rest = archive_at_rest(directory)
    assert at_rest
    for canary in (b"kestrelcanary", b"osprey2canary", b"falcon report"):
        assert canary not in at_rest


def verify_export_cli(path: Path, signing_key: Path) -> int:
    """``police-audit verify-export`` trusting the bot's key (by fingerprint, as a config pins it)."""
    from bots.auditor.export import key_fingerprint, load_signing_key

    fingerprint = key_fingerprint(load_signing_key(signing_key).public_key())
    return subprocess.run(
        [sys.executable, "-m", "bots.auditor.cli", "verify-export", str(path), "--fingerprint", fingerprint],
        cwd=REPO,
        env=repo_env(),
        capture_output=True,
        timeout=60,
    ).returncode


async def receive_export(
    client: AsyncClient, room_id: str, bot_id: str, timeout: float = 30
) -> tuple[dict, str]:
    """Sync until the bot posted the export file in ``room_id``; its ``file`` info and the notice."""
    notices: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.sync(timeout=1000)
        assert isinstance(response, SyncResponse), response
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if event.sender != bot_id:
                continue
            if isinstance(event, RoomMessageNotice):
                notices.append(event.body)
            if isinstance(event, RoomEncryptedFile):
                return event.source["content"]["file"], "\n".join(notices)
    raise AssertionError(f"no export file within {timeout}s; notices {notices}")


async def test_four_eyes_export_is_delivered_encrypted_and_verifies(export_hs, export_setup, tmp_path):
    hs = export_hs
    bot, names, directory = export_setup
    bot_id = hs.user_id(BOT_LOCALPART)
    bot.start()
    alice = await new_client(hs, "alice", tmp_path)
    bob = await new_client(hs, "bob", tmp_path)
    requester = await new_client(hs, "revisor", tmp_path, names["auditor"])
    approver = await new_client(hs, "revisor", tmp_path, names["auditor2"])
    try:
        room_id = await create_room(alice)
        await invite_and_join(alice, bob, room_id)
        await wait_member(alice, room_id, bot_id)
        await sync_until(alice, lambda: True)
        first = await send(alice, room_id, {"msgtype": "m.text", "body": "the heron9canary landed"})
        # a few KiB: tiny ciphertexts are sometimes sniffed as text/plain and refused by the media policy
        report = b"heron report: wet feet\n" * 200
        attachment = await upload_encrypted(alice, report, "heronfile.txt")
        file_event = await send(alice, room_id, attachment)
        await sync_until(bob, lambda: True)
        last = await send(bob, room_id, {"msgtype": "m.text", "body": "the heron9canary flew off"})

        dm_a = await open_direct_chat(requester, bot_id)
        dm_b = await open_direct_chat(approver, bot_id)
        # everything archived before the export is requested
        found = await ask(
            requester, dm_a, bot_id, '!search heron9canary ref:AZ-9 reason:"check"', lambda b: "Results" in b
        )
        if last not in found:
            await ask(
                requester, dm_a, bot_id, '!search heron9canary ref:AZ-9 reason:"check"', lambda b: last in b
            )

        # yesterday to tomorrow (UTC): today in the bot's zone (timezone) lies within, also
        # when the test runs across midnight
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
        day = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
        answer = await ask(
            requester,
            dm_a,
            bot_id,
            f'!export {room_id} {since} {day} ref:AZ-9 reason:"internal review"',
            lambda b: "Export request" in b or "!export" in b,
        )
        match = re.search(r"EX-[A-Z0-9]{4}", answer)
        assert match, answer
        request_id = match.group()

        own = await ask(requester, dm_a, bot_id, f"!approve {request_id}", lambda b: "Refused" in b)
        assert "another auditor" in own

        approved = await ask(approver, dm_b, bot_id, f"!approve {request_id}", lambda b: request_id in b)
        assert "Approved" in approved, approved
        assert "3 messages" in approved, approved

        file_info, notices = await receive_export(requester, dm_a, bot_id)
        bundle = download_decrypted(requester, file_info)
    finally:
        for client in (alice, bob, requester, approver):
            await client.close()

    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    assert approver.user_id in notices
    assert (directory / "export-signing-key.pem").stat().st_mode & 0o777 == 0o600
    exported = tmp_path / "export.zip"
    exported.write_bytes(bundle)
    with zipfile.ZipFile(exported) as archive:
        messages = json.loads(archive.read("messages.json"))
        assert [m["event_id"] for m in messages] == [first, file_event, last]
        (stored,) = messages[1]["attachments"]
        assert archive.read(stored["path"]) == report
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    assert verify_export_cli(exported, directory / "export-signing-key.pem") == 0

    data = bytearray(members["messages.json"])
    data[len(data) // 2] ^= 0x01
    members["messages.json"] = bytes(data)
    tampered = tmp_path / "tampered.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name, content in members.items():
            out.writestr(name, content)
    tampered.write_bytes(buffer.getvalue())
    assert verify_export_cli(tampered, directory / "export-signing-key.pem") == 1

    with ConsultationLog(directory / "consultations.sqlite", read_only=True) as log:
        assert log.verify().ok
        entries = log.entries()
    (request,) = [e for e in entries if e.action == "export_request"]
    assert (request.auditor, request.case_ref) == (requester.user_id, "AZ-9")
    (approval,) = [e for e in entries if e.action == "export_approve"]
    assert (approval.auditor, approval.recipient) == (approver.user_id, requester.user_id)
    assert approval.result_count == 3
    assert any(e.action == "refusal" and e.auditor == requester.user_id for e in entries)


# -- the module's shared bot, continued: each test starts it and leaves it stopped -----------------


async def timeline_until(
    client: AsyncClient, room_id: str, done: Callable[[list[Event]], bool], timeout: float = 30
) -> list[Event]:
    """Sync until the events seen in ``room_id`` (since this call) satisfy ``done``; returns them."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while not done(seen):
        if time.monotonic() > deadline:
            kinds = [type(event).__name__ for event in seen]
            raise AssertionError(f"{client.user_id}: condition not met within {timeout}s; saw {kinds}")
        response = await client.sync(timeout=1000)
        assert isinstance(response, SyncResponse), response
        if client.should_query_keys:
            await client.keys_query()
        room = response.rooms.join.get(room_id)
        seen.extend(room.timeline.events if room else [])
    return seen


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


async def redacted_and_told(
    client: AsyncClient, room_id: str, event_id: str, bot_id: str
) -> RoomMessageNotice:
    """Sync until the bot redacted ``event_id`` and posted its notice (the only one); the notice."""

    def enforced(events: list[Event]) -> bool:
        redacted = any(isinstance(e, RedactionEvent) and e.redacts == event_id for e in events)
        told = any(isinstance(e, RoomMessageNotice) and e.sender == bot_id for e in events)
        return redacted and told

    events = await timeline_until(client, room_id, enforced)
    (redaction,) = [e for e in events if isinstance(e, RedactionEvent)]
    assert redaction.sender == bot_id
    (notice,) = [e for e in events if isinstance(e, RoomMessageNotice)]
    return notice


async def all_redacted_and_told(
    client: AsyncClient, room_id: str, event_ids: set[str], bot_id: str, timeout: float = 120
) -> None:
    """Until the bot redacted every one of ``event_ids`` and posted as many notices, read from
    the room's history (/messages): a sync would leave out events of a crowded timeline."""
    deadline = time.monotonic() + timeout
    while True:
        await client.sync(timeout=1000)  # the next token, and the bot's megolm keys
        response = await client.room_messages(room_id, client.next_batch, limit=500)
        assert isinstance(response, RoomMessagesResponse), response
        events = [event for event in response.chunk if event.sender == bot_id]
        redacted = {event.redacts for event in events if isinstance(event, RedactionEvent)}
        told = [event for event in events if isinstance(event, RoomMessageNotice)]
        if event_ids <= redacted and len(told) >= len(event_ids):
            return
        if time.monotonic() > deadline:
            missing = len(event_ids - redacted)
            raise AssertionError(f"{missing} of {len(event_ids)} not redacted, {len(told)} notices")


def assert_quarantined(client: AsyncClient, mxc: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        download(client, mxc)
    assert refused.value.code == 404


async def test_attachment_breaking_the_media_rules_is_redacted_quarantined_and_kept(hs, bot_setup, tmp_path):
    bot, _names, directory = bot_setup
    bot_id = hs.user_id(BOT_LOCALPART)
    admin_token, _device = hs.register_enrolled_user(f"ops-{uuid.uuid4().hex[:6]}", "pw-ops", admin=True)
    (directory / "admin-token").write_text(admin_token)
    metrics_port = free_port()
    # the repository's policy file, read by the module's own parser: PDFs and photos, no executables
    bot.reconfigure(
        policy_file=str(REPO / "config" / "police_policy.yaml"),
        admin_token_file="admin-token",
        metrics_port=metrics_port,
    )
    bot.start()
    alice = await new_client(hs, "alice", tmp_path)
    bob = await new_client(hs, "bob", tmp_path)
    try:
        room_id = await create_room(alice)
        await invite_and_join(alice, bob, room_id)
        await wait_member(alice, room_id, bot_id)
        await sync_until(alice, lambda: True)
        photo = media_corpus.jpeg()
        image = await upload_encrypted(alice, photo, "scene.jpg")
        image = {**image, "msgtype": "m.image", "info": {"size": len(photo), "mimetype": "image/jpeg"}}
        photo_event = await send(alice, room_id, image)
        # the server saw ciphertext only (and let it through); named and declared as a PDF
        program = media_corpus.padded(media_corpus.elf(), 4096)
        exe = await upload_encrypted(alice, program, "report.pdf")
        exe["info"]["mimetype"] = exe["file"]["mimetype"] = "application/pdf"
        exe_event = await send(alice, room_id, exe)
        notice = await redacted_and_told(alice, room_id, exe_event, bot_id)
        formatted = notice.source["content"]["formatted_body"]
        assert f'<a href="https://matrix.to/#/{alice.user_id}">' in formatted
        assert "<code>report.pdf</code>" in formatted and "<code>application/x-executable</code>" in formatted
        assert "Allowed types: application (`pdf`)" in notice.body
        assert notice.source["content"]["m.mentions"] == {"user_ids": [alice.user_id]}
        assert "not quarantined" not in notice.body and "encrypted" not in notice.body
        assert_quarantined(alice, exe["file"]["url"])
        assert download_decrypted(alice, image["file"]) == photo  # the allowed photo is left alone

        # files the server would refuse in clear but sees as ciphertext here: archives and programs
        # behind a few bytes, legacy-encoded text, active PDFs, data behind an image's end (one of
        # each; the whole corpus goes through the bot's check in tests/unit/test_auditor_media.py)
        smuggled: dict[str, tuple[str, str]] = {}
        for name in media_corpus.SMUGGLED_SAMPLE:
            make, _declared, file_name, rule = media_corpus.SMUGGLED[name]
            content = await upload_encrypted(alice, make(), file_name)
            smuggled[await send(alice, room_id, content)] = (rule, content["file"]["url"])
        await all_redacted_and_told(alice, room_id, set(smuggled), bot_id)
        for _rule, mxc in smuggled.values():
            assert_quarantined(alice, mxc)

        metrics = scrape(metrics_port)
        assert "police_auditor_undecryptable_events_total 0.0" in metrics
        assert f"police_auditor_media_violations_total {1 + len(smuggled)}.0" in metrics
        assert "police_auditor_media_quarantine_enabled 1.0" in metrics
    finally:
        for client in (alice, bob):
            await client.close()

    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    with bot_archive(directory) as archive:
        kept = archive.get(exe_event)
        assert kept is not None and kept.violation == "media.type: application/x-executable"
        assert kept.redacted_by == bot_id and kept.redacted_at is not None
        assert archive.read_attachment(exe_event, 0) == program  # the evidence stays
        assert archive.enforcement(exe_event) is None  # recorded as enforced: not done again
        allowed = archive.get(photo_event)
        assert allowed is not None and allowed.violation is None and not allowed.redacted
        for event_id, (rule, _mxc) in smuggled.items():
            kept = archive.get(event_id)
            assert kept is not None and kept.redacted_by == bot_id
            assert kept.violation is not None and kept.violation.startswith(f"{rule}: ")


async def test_a_violation_archived_just_before_a_crash_is_enforced_after_the_restart(
    hs, bot_setup, tmp_path
):
    """Killed between archiving a refused attachment and enforcing it: the replayed event is
    archived already, yet the restarted bot redacts and quarantines it and tells the sender."""
    bot, _names, directory = bot_setup
    bot_id = hs.user_id(BOT_LOCALPART)
    admin_token, _device = hs.register_enrolled_user(f"ops-{uuid.uuid4().hex[:6]}", "pw-ops", admin=True)
    (directory / "admin-token").write_text(admin_token)
    bot.reconfigure(admin_token_file="admin-token")
    bot.start()
    alice = await new_client(hs, "alice", tmp_path)
    try:
        room_id = await room_with_the_bot(alice, bot_id)
        assert bot.stop() == 0
        program = media_corpus.padded(media_corpus.elf(), 4096)
        exe = await upload_encrypted(alice, program, "tool.pdf")
        exe_event = await send(alice, room_id, exe)
        # what the bot had done when it was killed: archived the file as a violation, nothing more
        with bot_archive(directory) as archive:
            archive.add(
                Message(
                    exe_event,
                    room_id,
                    alice.user_id,
                    alice.device_id,
                    int(time.time() * 1000),
                    "tool.pdf",
                    msgtype="m.file",
                    attachments=[Attachment("tool.pdf", "application/pdf", program)],
                    violation="media.type: application/x-executable",
                    enforcement=Enforcement(media=[exe["file"]["url"]], reason="not allowed here"),
                )
            )
        bot.start()
        notice = await redacted_and_told(alice, room_id, exe_event, bot_id)
        assert "`tool.pdf` was removed. Its content is `application/x-executable`" in notice.body
        assert_quarantined(alice, exe["file"]["url"])
    finally:
        await alice.close()

    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    with bot_archive(directory) as archive:
        assert archive.enforcement(exe_event) is None and archive.stats().unenforced_violations == 0
        assert archive.get(exe_event).redacted_by == bot_id


async def test_a_message_its_sender_deleted_stays_in_the_archive_marked_redacted(hs, bot_setup, tmp_path):
    bot, names, directory = bot_setup
    bot_id = hs.user_id(BOT_LOCALPART)
    bot.start()
    alice = await new_client(hs, "alice", tmp_path)
    revisor = await new_client(hs, "revisor", tmp_path, names["auditor"])
    try:
        room_id = await room_with_the_bot(alice, bot_id)
        said = await send(alice, room_id, {"msgtype": "m.text", "body": "the ploverdeleted canary is here"})
        dm = await open_direct_chat(revisor, bot_id)
        show = f'!show {said} ref:AZ-7 reason:"deleted message"'
        await ask(revisor, dm, bot_id, show, lambda body: "ploverdeleted" in body)
        deleted_at = int(time.time() * 1000)
        redacted = await alice.room_redact(room_id, said, reason="typo")
        assert isinstance(redacted, RoomRedactResponse), redacted

        answer = await ask(revisor, dm, bot_id, show, lambda body: "redacted by" in body)
        assert "ploverdeleted" in answer and f"redacted by {alice.user_id} at " in answer
    finally:
        for client in (alice, revisor):
            await client.close()

    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    with bot_archive(directory) as archive:
        kept = archive.get(said)
    assert kept is not None and kept.body == "the ploverdeleted canary is here"
    assert kept.redacted_by == alice.user_id
    assert kept.redacted_at is not None and abs(kept.redacted_at - deleted_at) < 10_000


def verify_log_cli(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bots.auditor.cli", "verify-log", str(path), *options],
        cwd=REPO,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_bots_consultation_log_fails_verification_after_an_entry_is_edited(bot_setup):
    """The log the bot wrote in the tests above (searches, shows, a refusal)."""
    _bot, _names, directory = bot_setup
    log_file = directory / "consultations.sqlite"
    if not log_file.exists():
        pytest.skip("the log is written by the earlier tests of this module; run them together")
    checked = verify_log_cli(log_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the bot signed the log's head off to the heads file at each start
    from bots.auditor.export import key_fingerprint, load_signing_key

    key = load_signing_key(directory / "export-signing-key.pem")
    heads = (
        "--heads",
        str(directory / "chain-heads.jsonl"),
        "--fingerprint",
        key_fingerprint(key.public_key()),
    )
    checked = verify_log_cli(log_file, *heads)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # someone with write access to the file covers their tracks: the trigger is no obstacle
    with contextlib.closing(sqlite3.connect(log_file)) as db:
        db.execute("DROP TRIGGER consultations_append_only")
        (seq,) = db.execute("SELECT min(seq) FROM consultations WHERE action = 'show'").fetchone()
        assert seq is not None
        db.execute("UPDATE consultations SET reason = 'routine check' WHERE seq = ?", (seq,))
        db.commit()
    checked = verify_log_cli(log_file)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"FAILED at entry {seq}" in checked.stderr
    assert verify_log_cli(log_file, *heads).returncode == 1


async def test_the_archive_purges_what_is_older_than_the_audit_lifetime(hs, bot_setup, tmp_path):
    """Last in the module: a lifetime of seconds empties the archive the other tests filled."""
    bot, _names, directory = bot_setup
    bot_id = hs.user_id(BOT_LOCALPART)
    bot.reconfigure(audit_lifetime="15s", purge_interval="2s")

    def archived(event_id: str) -> bool:
        with bot_archive(directory) as archive:
            return archive.get(event_id) is not None

    bot.start()
    alice = await new_client(hs, "alice", tmp_path)
    try:
        room_id = await room_with_the_bot(alice, bot_id)
        said = await send(alice, room_id, {"msgtype": "m.text", "body": "the ternpurge canary"})
        attachment = await upload_encrypted(alice, media_corpus.jpeg(), "tern.jpg")
        with_file = await send(alice, room_id, attachment)
        deadline = time.monotonic() + 20
        while not archived(with_file):
            assert time.monotonic() < deadline, bot.log()
            time.sleep(0.5)
        assert archived(said)
        deadline = time.monotonic() + 40
        while archived(said) or archived(with_file):
            assert time.monotonic() < deadline, "not purged after the audit lifetime"
            time.sleep(1)
    finally:
        await alice.close()

    assert bot.stop() == 0
    assert "Traceback" not in bot.log(), bot.log()
    with bot_archive(directory) as archive:
        assert archive.count() == 0  # what the earlier tests archived went too
        assert not [path for path in archive.files.rglob("*") if path.is_file()]
