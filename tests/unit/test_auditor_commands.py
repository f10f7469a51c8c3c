"""The auditor bot's command parsing (a pure function) and the command runner."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime

import pytest

from bots.auditor.archive import Archive, Message
from bots.auditor.commands import (
    CommandRunner,
    Health,
    HealthStats,
    Help,
    Invalid,
    LogView,
    More,
    Search,
    Show,
    parse_command,
)
from bots.auditor.config import ConfigError, parse_config, parse_duration
from bots.auditor.consultation_log import ConsultationLog

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
    runner = CommandRunner(
        archive,
        log,
        frozenset({"@rev:x.test"}),
        90 * DAY_MS,
        lambda: HealthStats(2, 1, NOW),
        clock=lambda: NOW,
    )
    yield runner
    archive.close()
    log.close()


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
    assert "archived messages: 16" in reply.body
    assert "1 waiting for keys, 2 seen" in reply.body
    assert "!search" in runner.handle("@rev:x.test", "!help").body


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
