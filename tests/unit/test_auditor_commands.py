"""The auditor bot's command parsing (a pure function) and the command runner."""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import UTC, date, datetime

import pytest

from bots.auditor.archive import Archive, Attachment, Message
from bots.auditor.config import ConfigError, parse_config, parse_duration
from bots.auditor.consultation_log import ConsultationLog
from bots.auditor.export import generate_signing_key, verify_export
from bots.auditor.parser import (
    Approve,
    Deny,
    Export,
    Health,
    Help,
    Invalid,
    LogView,
    More,
    Search,
    Show,
    parse_command,
)
from bots.auditor.replies import HealthStats
from bots.auditor.requests import ExportStore
from bots.auditor.runner import BuiltExport, CommandRunner, ExportJob

DAY_MS = 86_400_000
NOW = int(datetime(2025, 6, 1, 12, tzinfo=UTC).timestamp() * 1000)


def test_plain_text_is_no_command():
    assert parse_command("hello !search") is None
    assert parse_command("") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!help", Help()),
        ("  !HELP ", Help()),
        ("!more", More()),
        ("!log", LogView()),
        ("!health", Health()),
    ],
)
def test_simple_commands(text, expected):
    assert parse_command(text) == expected


def test_search_with_all_options():
    command = parse_command(
        "!search robbery Main Street room:!abc:x.test sender:@bob:x.test from:2025-05-01 "
        'to:2025-05-31 ref:AZ-1 reason:"case review, step 2"'
    )
    assert command == Search(
        words="robbery Main Street",
        ref="AZ-1",
        reason="case review, step 2",
        room_id="!abc:x.test",
        sender="@bob:x.test",
        since=date(2025, 5, 1),
        until=date(2025, 5, 31),
    )


def test_search_accepts_typographic_and_single_quotes():
    assert parse_command("!search x ref:1 reason:“phone quotes”").reason == "phone quotes"
    assert parse_command("!search x ref:1 reason:'single'").reason == "single"
    assert parse_command("!search x ref:1 reason:plain").reason == "plain"


def test_unknown_key_value_tokens_are_words():
    assert parse_command('!search https://x.test ref:1 reason:"r"').words == "https://x.test"


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ('!search word reason:"r"', ["ref:"]),
        ("!search word ref:AZ-1", ["reason:"]),
        ("!search word", ["ref:", "reason:"]),
        ('!search ref:1 reason:"r"', ["the words"]),
        ('!search word ref:1 reason:""', ["reason:"]),
    ],
)
def test_search_says_what_is_missing(text, missing):
    command = parse_command(text)
    assert isinstance(command, Invalid)
    assert "missing" in command.message
    for part in missing:
        assert part in command.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('!search w from:2025-13-01 ref:1 reason:"r"', "from: expected a date"),
        ('!search w to:yesterday ref:1 reason:"r"', "to: expected a date"),
        ('!search w from:2025-05-02 to:2025-05-01 ref:1 reason:"r"', "lies after"),
        ('!search w room:general ref:1 reason:"r"', "room ID"),
        ('!search w sender:bob ref:1 reason:"r"', "user ID"),
        ('!search w ref:1 ref:2 reason:"r"', "more than once"),
        ("!help me", "no arguments"),
        ("!frobnicate", "unknown command"),
    ],
)
def test_invalid_commands(text, fragment):
    command = parse_command(text)
    assert isinstance(command, Invalid)
    assert fragment in command.message


def test_show():
    assert parse_command('!show $ev:x.test ref:AZ-1 reason:"r"') == Show("$ev:x.test", "AZ-1", "r")
    invalid = parse_command("!show ref:AZ-1")
    assert isinstance(invalid, Invalid)
    assert "event ID" in invalid.message
    assert "reason:" in invalid.message


# -- the runner -----------------------------------------------------------------------------------


@pytest.fixture
def runner(tmp_path):
    archive = Archive(tmp_path / "archive.sqlite", os.urandom(32), clock=lambda: NOW)
    log = ConsultationLog(tmp_path / "log.sqlite", clock=lambda: NOW)
    for index in range(15):
        archive.add(
            Message(
                event_id=f"$recent{index}",
                room_id="!room:x.test",
                sender="@alice:x.test",
                device_id="DEV",
                origin_server_ts=NOW - DAY_MS - index * 1000,
                body=f"canary number {index}",
                msgtype="m.text",
            )
        )
    archive.add(
        Message(
            event_id="$old",
            room_id="!room:x.test",
            sender="@alice:x.test",
            device_id="DEV",
            origin_server_ts=NOW - 100 * DAY_MS,
            body="canary from long ago",
        )
    )
    archive.add(
        Message(
            event_id="$file",
            room_id="!room:x.test",
            sender="@bob:x.test",
            device_id="DEV2",
            origin_server_ts=NOW - 2 * DAY_MS,
            body="report.txt",
            msgtype="m.file",
            attachments=(Attachment("report.txt", "text/plain", b"the report"),),
        )
    )
    archive.add(
        Message(
            event_id="$elsewhere",
            room_id="!other:x.test",
            sender="@alice:x.test",
            device_id="DEV",
            origin_server_ts=NOW - DAY_MS,
            body="another room",
        )
    )
    exports = ExportStore(tmp_path / "exports.sqlite")
    runner = CommandRunner(
        archive,
        log,
        frozenset({"@rev:x.test", "@rev2:x.test"}),
        90 * DAY_MS,
        lambda: HealthStats(2, 1, NOW),
        clock=lambda: NOW,
        exports=exports,
        signing_key=generate_signing_key(tmp_path / "signing.pem"),
    )
    yield runner
    archive.close()
    log.close()
    exports.close()


def test_non_auditors_are_refused_and_logged(runner):
    reply = runner.handle("@mallory:x.test", '!search canary ref:1 reason:"r"')
    assert "Refused" in reply.body
    (entry,) = runner.log.entries()
    assert (entry.auditor, entry.action) == ("@mallory:x.test", "refusal")


def test_search_pages_and_logs(runner):
    reply = runner.handle("@rev:x.test", '!search canary ref:AZ-1 reason:"review"')
    assert "Results 1-10" in reply.body
    assert "$recent0" in reply.body
    assert "$old" not in reply.body, "past the audit lifetime"
    assert "!more" in reply.body
    assert "<ol" in reply.formatted_body
    reply = runner.handle("@rev:x.test", "!more")
    assert "Results 11-15" in reply.body
    entries = runner.log.entries("@rev:x.test")
    assert [e.action for e in entries] == ["search", "search"]
    assert entries[0].case_ref == "AZ-1"
    assert entries[0].reason == "review"
    assert entries[0].recipient == "@rev:x.test"
    assert entries[0].result_count == 10
    assert json.loads(entries[1].query)["offset"] == 10


def test_missing_justification_is_answered_and_logged(runner):
    reply = runner.handle("@rev:x.test", "!search canary ref:AZ-1")
    assert "missing" in reply.body
    assert "reason" in reply.body
    assert runner.log.entries()[0].action == "refusal"


def test_dates_past_the_lifetime_are_not_retained(runner):
    reply = runner.handle("@rev:x.test", '!search canary to:2025-01-01 ref:AZ-1 reason:"r"')
    assert "Not retained" in reply.body
    reply = runner.handle("@rev:x.test", '!search canary from:2025-01-01 ref:AZ-1 reason:"r"')
    assert "not retained" in reply.body
    assert "$recent0" in reply.body


def test_show_log_health_help(runner):
    reply = runner.handle("@rev:x.test", '!show $recent3 ref:AZ-1 reason:"r"')
    assert "canary number 3" in reply.body
    assert runner.log.entries()[-1].action == "show"
    reply = runner.handle("@rev:x.test", '!show $old ref:AZ-1 reason:"r"')
    assert "not in the archive" in reply.body
    reply = runner.handle("@rev:x.test", "!log")
    assert "show" in reply.body
    assert runner.log.entries()[-1].action == "log_view"
    reply = runner.handle("@rev:x.test", "!health")
    assert "archived messages: 18" in reply.body
    assert "1 waiting for keys, 2 seen" in reply.body
    assert "!search" in runner.handle("@rev:x.test", "!help").body


# -- exports --------------------------------------------------------------------------------------


def test_export_parses():
    command = parse_command('!export !room:x.test 2025-05-01 2025-05-31 ref:AZ-1 reason:"case review"')
    assert command == Export("!room:x.test", date(2025, 5, 1), date(2025, 5, 31), "AZ-1", "case review")
    assert parse_command("!approve EX-AB12") == Approve("EX-AB12")
    assert parse_command("!approve ex-ab12") == Approve("EX-AB12")
    assert parse_command("!deny EX-AB12") == Deny("EX-AB12")
    assert parse_command('!deny EX-AB12 reason:"no case"') == Deny("EX-AB12", "no case")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('!export !r:x.test 2025-05-01 2025-05-31 reason:"r"', ["missing", "ref:"]),
        ("!export !r:x.test 2025-05-01 2025-05-31 ref:AZ-1", ["missing", "reason:"]),
        ("!export !r:x.test 2025-05-01 2025-05-31", ["missing", "ref:", "reason:"]),
        ('!export !r:x.test 2025-05-01 ref:1 reason:"r"', ["missing", "first and the last day"]),
        ('!export general 2025-05-01 2025-05-31 ref:1 reason:"r"', ["room ID"]),
        ('!export !r:x.test 2025-05-32 2025-05-31 ref:1 reason:"r"', ["from: expected a date"]),
        ('!export !r:x.test 2025-05-01 soon ref:1 reason:"r"', ["to: expected a date"]),
        ('!export !r:x.test 2025-05-02 2025-05-01 ref:1 reason:"r"', ["lies after"]),
        ('!export !r:x.test 2025-05-01 2025-05-31 sender:@a:x ref:1 reason:"r"', ["sender"]),
        ("!approve", ["request ID"]),
        ("!approve 42", ["request ID"]),
        ("!approve EX-AB12 EX-CD34", ["request ID"]),
        ('!approve EX-AB12 reason:"r"', ["do not apply"]),
    ],
)
def test_invalid_exports(text, fragments):
    command = parse_command(text)
    assert isinstance(command, Invalid)
    for fragment in fragments:
        assert fragment in command.message


def _request(runner, auditor="@rev:x.test", text=None) -> str:
    text = text or '!export !room:x.test 2025-05-30 2025-05-31 ref:AZ-7 reason:"case review"'
    reply = runner.handle(auditor, text, "!dm-rev:x.test")
    assert "Export request EX-" in reply.body, reply.body
    return reply.body.split()[2].rstrip(":")


def test_export_request_is_stored_and_logged(runner, tmp_path):
    request_id = _request(runner)
    (entry,) = runner.log.entries()
    assert (entry.action, entry.case_ref, entry.reason) == ("export_request", "AZ-7", "case review")
    assert json.loads(entry.query)["request_id"] == request_id
    # a new store on the same file (a restart) still knows it
    again = ExportStore(tmp_path / "exports.sqlite")
    stored = again.get(request_id)
    again.close()
    assert stored.status == "pending"
    assert (stored.requested_by, stored.command_room) == ("@rev:x.test", "!dm-rev:x.test")


def test_export_missing_justification_and_not_retained(runner):
    reply = runner.handle("@rev:x.test", "!export !room:x.test 2025-05-01 2025-05-31 ref:AZ-7", "!dm")
    assert "missing" in reply.body and "reason" in reply.body
    reply = runner.handle("@rev:x.test", '!export !room:x.test 2025-01-01 2025-01-31 ref:1 reason:"r"', "!dm")
    assert "Not retained" in reply.body
    assert [e.action for e in runner.log.entries()] == ["refusal", "refusal"]


def test_the_requester_cannot_approve_their_own_export(runner):
    request_id = _request(runner)
    reply = runner.handle("@rev:x.test", f"!approve {request_id}", "!dm-rev:x.test")
    assert "Refused" in reply.body
    assert reply.delivery is None
    refusal = runner.log.entries()[-1]
    assert (refusal.action, refusal.auditor) == ("refusal", "@rev:x.test")
    assert "four eyes" in refusal.reason
    assert runner.exports.get(request_id).status == "pending"


def test_a_second_auditor_approves_and_the_bundle_verifies(runner, tmp_path):
    request_id = _request(runner)
    reply = runner.handle("@rev2:x.test", f"!approve {request_id.lower()}", "!dm-rev2:x.test")
    assert f"Approved {request_id}" in reply.body
    delivery = reply.delivery
    assert (delivery.room_id, delivery.recipient) == ("!dm-rev:x.test", "@rev:x.test")
    assert "@rev2:x.test" in delivery.notice.body
    path = tmp_path / "bundle.zip"
    path.write_bytes(delivery.data)
    result = verify_export(path)
    assert result.ok, result.problems
    assert result.request["approved_by"] == "@rev2:x.test"
    assert result.request["requested_by"] == "@rev:x.test"
    with zipfile.ZipFile(io.BytesIO(delivery.data)) as bundle:
        messages = json.loads(bundle.read("messages.json"))
        attachment = messages[0]["attachments"][0]
        assert bundle.read(attachment["path"]) == b"the report"
    assert messages[0]["event_id"] == "$file"
    assert len(messages) == 16  # 15 canaries and the file; not the other room, not the old one
    entry = runner.log.entries()[-1]
    assert (entry.action, entry.auditor, entry.recipient) == ("export_approve", "@rev2:x.test", "@rev:x.test")
    assert entry.result_count == 16
    again = runner.handle("@rev2:x.test", f"!approve {request_id}", "!dm-rev2:x.test")
    assert "closed" in again.body and again.delivery is None
    # a failed delivery leaves it approved, to be delivered at the next attempt
    runner.delivery_failed(delivery)
    assert runner.exports.get(request_id).status == "approved"
    assert [job.request.request_id for job in runner.undelivered()] == [request_id]


def test_deny_ends_a_request(runner):
    request_id = _request(runner)
    reply = runner.handle("@rev2:x.test", f'!deny {request_id} reason:"no case"', "!dm-rev2:x.test")
    assert "denied" in reply.body
    room, notice = reply.notify
    assert room == "!dm-rev:x.test" and "no case" in notice.body
    entry = runner.log.entries()[-1]
    assert (entry.action, entry.recipient, entry.reason) == ("export_deny", "@rev:x.test", "no case")
    reply = runner.handle("@rev2:x.test", f"!approve {request_id}", "!dm-rev2:x.test")
    assert "closed" in reply.body and "denied" in reply.body
    assert reply.delivery is None
    # the requester may withdraw their own
    other = _request(runner)
    assert "withdrawn" in runner.handle("@rev:x.test", f"!deny {other}", "!dm-rev:x.test").body


def test_unknown_request_ids_are_answered(runner):
    reply = runner.handle("@rev2:x.test", "!approve EX-ZZZZ", "!dm-rev2:x.test")
    assert "no export request EX-ZZZZ" in reply.body
    reply = runner.handle("@rev2:x.test", "!deny EX-ZZZZ", "!dm-rev2:x.test")
    assert "no export request EX-ZZZZ" in reply.body
    assert [e.action for e in runner.log.entries()] == ["refusal", "refusal"]


def test_help_lists_the_export_commands(runner):
    body = runner.handle("@rev:x.test", "!help").body
    for command in ("!export", "!approve", "!deny"):
        assert command in body


def test_non_auditors_cannot_approve(runner):
    request_id = _request(runner)
    reply = runner.handle("@mallory:x.test", f"!approve {request_id}", "!dm-m:x.test")
    assert "Refused" in reply.body and reply.delivery is None


# -- the configuration ----------------------------------------------------------------------------


def _raw(tmp_path, **changes):
    (tmp_path / "key").write_text(os.urandom(32).hex())
    raw = {
        "homeserver_url": "http://localhost:8008",
        "user_id": "@auditor:x.test",
        "password": "pw",
        "device_id": "AUDITOR-BOT",
        "store_dir": "store",
        "archive_path": "archive.sqlite",
        "archive_key_file": "key",
        "log_path": "log.sqlite",
        "auditors": ["@rev:x.test"],
        "audit_lifetime": "90d",
    }
    raw.update(changes)
    return {key: value for key, value in raw.items() if value is not None}


def test_config_loads(tmp_path):
    config = parse_config(_raw(tmp_path), tmp_path)
    assert config.store_dir == tmp_path / "store"
    assert config.audit_lifetime == 90 * 86400
    assert len(config.archive_key) == 32
    assert "pw" not in repr(config)
    assert config.signing_key_file == tmp_path / "export-signing-key.pem"
    assert config.exports_path == tmp_path / "export-requests.sqlite"
    config = parse_config(
        _raw(tmp_path, signing_key_file="keys/sign.pem", exports_path="ex.sqlite"), tmp_path
    )
    assert config.signing_key_file == tmp_path / "keys/sign.pem"
    assert config.exports_path == tmp_path / "ex.sqlite"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"user_id": "auditor"}, "user_id: expected a Matrix user ID"),
        ({"password": None}, "password, password_file: expected exactly one"),
        ({"auditors": []}, "auditors: expected a non-empty list"),
        ({"auditors": ["@ok:x.test", "nope"]}, "auditors[1]: expected a Matrix user ID"),
        ({"audit_lifetime": "ninety days"}, "audit_lifetime: expected a positive duration"),
        ({"archive_key_file": "missing"}, "archive_key_file: archive key file"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"device_id": None}, "device_id: required"),
        ({"homeserver_url": "localhost"}, "homeserver_url: expected an http"),
    ],
)
def test_config_errors_name_the_key(tmp_path, changes, fragment):
    with pytest.raises(ConfigError, match=None) as error:
        parse_config(_raw(tmp_path, **changes), tmp_path)
    assert fragment in str(error.value)


def test_durations():
    assert parse_duration("12h", "x") == 12 * 3600
    with pytest.raises(ConfigError):
        parse_duration("0d", "x")


def test_an_approved_export_is_built_apart_from_the_log(runner, tmp_path):
    """The bot builds the bundle in a thread: ``start`` and ``finish_export`` touch the log and
    the request store, ``build`` only the archive."""
    request_id = _request(runner)
    entries = len(runner.log.entries())
    job = runner.start("@rev2:x.test", f"!approve {request_id}", "!dm-rev2:x.test")
    assert isinstance(job, ExportJob) and job.approver == "@rev2:x.test"
    assert runner.exports.get(request_id).status == "pending"
    busy = runner.start("@rev2:x.test", f"!approve {request_id}", "!dm-rev2:x.test")
    assert "being built" in busy.body  # no second bundle while the first is built
    built = runner.build(job)
    assert isinstance(built, BuiltExport) and built.message_count == 16
    assert len(runner.log.entries()) == entries  # nothing logged before the bundle is handed over
    reply = runner.finish_export(built)
    assert reply.delivery is not None and reply.delivery.data == built.bundle
    assert runner.exports.get(request_id).status == "approved"
    assert runner.log.entries()[-1].action == "export_approve"


def test_show_tells_when_a_message_was_redacted_and_which_rule_it_broke(runner):
    runner.archive.add(
        Message(
            event_id="$exe",
            room_id="!room:x.test",
            sender="@bob:x.test",
            device_id="DEV2",
            origin_server_ts=NOW - DAY_MS,
            body="tool.pdf",
            msgtype="m.file",
            attachments=(Attachment("tool.pdf", "application/pdf", b"MZ"),),
            violation="media.type: application/x-executable",
        )
    )
    runner.archive.mark_redacted("$exe", NOW - DAY_MS + 61_000, "@auditor:x.test")
    body = runner.handle("@rev:x.test", '!show $exe ref:AZ-1 reason:"r"').body
    assert "redacted by @auditor:x.test at 2025-05-31 12:01:01 UTC" in body
    assert "policy violation: media.type: application/x-executable" in body


@pytest.mark.parametrize(
    ("health", "fragment"),
    [
        (HealthStats(0, 0, NOW), "media rules: off (no policy_file)"),
        (
            HealthStats(0, 0, NOW, media_rules=True, violations_found=2),
            "quarantine: off (no admin_token_file",
        ),
        (
            HealthStats(0, 0, NOW, media_rules=True, quarantine=True, quarantine_failures=1),
            "quarantine: on, 1 failed",
        ),
    ],
)
def test_health_says_whether_media_is_checked_and_quarantined(runner, health, fragment):
    runner.health = lambda: health
    assert fragment in runner.handle("@rev:x.test", "!health").body


def test_health_counts_violations_not_yet_enforced(runner):
    violation = "media.type: application/x-executable"
    runner.archive.add(
        Message("$exe", "!ops:x.test", "@bob:x.test", "DEV2", NOW - DAY_MS, "tool.pdf", violation=violation)
    )
    assert "policy violations 1 (1 not yet enforced)" in runner.handle("@rev:x.test", "!health").body
    runner.archive.record_enforcement("$exe", enforced=True)
    assert "policy violations 1, " in runner.handle("@rev:x.test", "!health").body
