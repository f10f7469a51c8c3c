"""Enforcing the media rules survives failures and crashes (``Enforcer.enforce``): an archived
violation stays due until its redaction (and quarantine, with an admin token) went through, and
the sender is told once. The archive is real; the homeserver's answers are scripted."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nio import RoomRedactError, RoomRedactResponse

from bots.auditor import archive as archive_module
from bots.auditor.archive import Attachment, Enforcement, Message
from bots.auditor.bot import AuditorBot
from bots.auditor.config import parse_config
from tests.unit.test_auditor_commands import _raw as raw_config

ROOM = "!ops:x.test"
ALICE = "@alice:x.test"
SECRET_NAME = "kestrel-plans.pdf"
NOW = 1_767_225_600_000


class Homeserver:
    """What the bot asked for, and the answers it gets (each a value or an exception to raise)."""

    def __init__(self) -> None:
        self.redactions: list[str] = []
        self.notices: list[str] = []
        self.quarantined: list[str] = []
        self.redact_answers: list[Any] = []
        self.quarantine_fails = False

    async def room_redact(self, room_id: str, event_id: str, reason: str | None = None) -> Any:
        self.redactions.append(event_id)
        answer = self.redact_answers.pop(0) if self.redact_answers else RoomRedactResponse("$r", room_id)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def send(self, room_id: str, content: dict[str, Any], *, check: bool = False) -> None:
        self.notices.append(content["body"])

    async def quarantine(self, mxc: str) -> None:
        if self.quarantine_fails:
            raise OSError("connection refused")
        self.quarantined.append(mxc)


@pytest.fixture
def server() -> Homeserver:
    return Homeserver()


@pytest.fixture
def bot(tmp_path: Path, server: Homeserver, monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditorBot]:
    (tmp_path / "admin-token").write_text("syt_admin")
    bot = AuditorBot(parse_config(raw_config(tmp_path, admin_token_file="admin-token"), tmp_path))
    monkeypatch.setattr(bot.client, "room_redact", server.room_redact)
    monkeypatch.setattr(bot, "send", server.send)
    monkeypatch.setattr(bot.media, "quarantine", server.quarantine)
    monkeypatch.setattr(bot.archive, "_clock", lambda: NOW)
    try:
        yield bot
    finally:
        bot.archive.close()
        bot.consultations.close()
        bot.exports.close()


def archive_violation(bot: AuditorBot, event_id: str = "$exe") -> None:
    """What the bot stored before it was killed (or before its first attempt failed)."""
    bot.archive.add(
        Message(
            event_id,
            ROOM,
            ALICE,
            "PHONE",
            NOW - 1000,
            SECRET_NAME,
            msgtype="m.file",
            attachments=[Attachment(SECRET_NAME, "application/pdf", b"\x7fELF")],
            violation="media.type: application/x-executable",
            enforcement=Enforcement(media=["mxc://x.test/file", "mxc://x.test/thumb"], reason="not allowed"),
        )
    )


def later(bot: AuditorBot, monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    monkeypatch.setattr(bot.archive, "_clock", lambda: NOW + ms)


async def test_a_violation_left_unenforced_by_a_crash_is_enforced_after_the_next_sync(
    bot: AuditorBot, server: Homeserver
) -> None:
    archive_violation(bot)
    await bot.enforcer.enforce_due()
    assert server.redactions == ["$exe"]
    assert server.quarantined == ["mxc://x.test/file", "mxc://x.test/thumb"]
    (notice,) = server.notices
    assert notice == (
        f"{ALICE}: your attachment `{SECRET_NAME}` was removed. "
        "Its content is `application/x-executable`, a type not allowed here."
    )
    assert bot.archive.enforcement("$exe") is None
    await bot.enforcer.enforce_due()
    assert server.redactions == ["$exe"] and len(server.notices) == 1


async def test_a_message_redacted_before_the_crash_is_only_quarantined_and_nobody_told_again(
    bot: AuditorBot, server: Homeserver
) -> None:
    archive_violation(bot)
    # the bot's redaction went out, then the kill; the replayed sync brought the redaction event
    bot.archive.mark_redacted("$exe", NOW - 500, "@auditor:x.test")
    await bot.enforcer.enforce_due()
    assert server.redactions == [] and server.notices == []
    assert len(server.quarantined) == 2
    assert bot.archive.enforcement("$exe") is None


async def test_a_failed_redaction_is_retried_after_the_back_off_and_told_once(
    bot: AuditorBot, server: Homeserver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    archive_violation(bot)
    server.redact_answers = [RoomRedactError("rate limited", "M_LIMIT_EXCEEDED"), OSError("unreachable")]
    with caplog.at_level(logging.INFO, "bots.auditor"):
        await bot.enforcer.enforce_due()
        (notice,) = server.notices
        assert "removing it failed" in notice
        pending = bot.archive.enforcement("$exe")
        assert pending is not None and pending.notified and pending.attempts == 1
        await bot.enforcer.enforce_due()  # within the back-off: not yet
        assert server.redactions == ["$exe"]

        later(bot, monkeypatch, archive_module.RETRY_FIRST_MS)
        await bot.enforcer.enforce_due()  # the network is down: still not lost
        assert server.redactions == ["$exe"] * 2
        assert bot.archive.enforcement("$exe").attempts == 2

        later(bot, monkeypatch, 3 * archive_module.RETRY_FIRST_MS)
        await bot.enforcer.enforce_due()
    assert server.redactions == ["$exe"] * 3
    assert len(server.notices) == 1, "the sender was told at the first attempt"
    assert bot.archive.enforcement("$exe") is None
    assert SECRET_NAME not in caplog.text and "ELF" not in caplog.text


async def test_a_failed_quarantine_is_retried_without_a_second_redaction_or_notice(
    bot: AuditorBot, server: Homeserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive_violation(bot)
    server.quarantine_fails = True
    await bot.enforcer.enforce_due()
    (notice,) = server.notices
    assert "Quarantining its copy on the server failed and is tried again." in notice
    assert bot.archive.enforcement("$exe") is not None and bot.enforcer.quarantine_failures == 2
    # the bot's redaction arrives with the next sync
    bot.archive.mark_redacted("$exe", NOW, "@auditor:x.test")
    server.quarantine_fails = False
    later(bot, monkeypatch, archive_module.RETRY_FIRST_MS)
    await bot.enforcer.enforce_due()
    assert server.redactions == ["$exe"] and len(server.notices) == 1
    assert len(server.quarantined) == 2
    assert bot.archive.enforcement("$exe") is None
