"""``police-policy retention status``: the figures read from a homeserver's
database, on a SQLite file with stand-ins of Synapse's tables, and the command
line around them (output and exit codes)."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from synapse_police_policy import schema
from synapse_police_policy.config import ConfigError
from synapse_police_policy.ops import cli
from synapse_police_policy.ops.bootstrap import BootstrapError
from synapse_police_policy.ops.retention_status import RetentionStatus, retention_status
from synapse_police_policy.retention.store import WATERMARK
from tests.synapse_tables import SYNAPSE_TABLES

status_module = importlib.import_module("synapse_police_policy.ops.retention_status")

SERVER = "police.example"
SYSTEM = "@sweeper:police.example"
ALICE = "@alice:police.example"
ROOM = "!room:police.example"
NOW = 1_700_000_000_000
SECOND = 1000
DAY = 86_400 * SECOND
RETENTION = {"device_lifetime": "1d", "audit_lifetime": "10d", "system_user": "sweeper"}


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "time", SimpleNamespace(time=lambda: NOW / 1000))


def homeserver_config(database: Path, module_config: Any = None, *, module: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server_name": SERVER,
        "database": {"name": "sqlite3", "args": {"database": str(database)}},
        "modules": [{"module": "other.Module", "config": {}}],
    }
    if module:
        config["modules"].append(
            {
                "module": "synapse_police_policy.PolicePolicy",
                "config": {"retention": RETENTION} if module_config is None else module_config,
            }
        )
    return config


def create_database(path: Path, *, module_tables: bool = True) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    cursor = connection.cursor()
    if module_tables:
        schema.migrate(cursor)
    for statement in SYNAPSE_TABLES:
        cursor.execute(statement)
    connection.commit()
    return connection


def add_event(
    connection: sqlite3.Connection,
    stream_ordering: int,
    received_ts: int,
    *,
    type: str = "m.room.encrypted",
    state_key: str | None = None,
    outlier: bool = False,
    rejection_reason: str | None = None,
    sender: str = ALICE,
) -> str:
    event_id = f"$e{stream_ordering}"
    connection.execute(
        "INSERT INTO events (stream_ordering, event_id, type, room_id, state_key, outlier,"
        " rejection_reason, received_ts, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (stream_ordering, event_id, type, ROOM, state_key, outlier, rejection_reason, received_ts, sender),
    )
    return event_id


def redact(connection: sqlite3.Connection, stream_ordering: int, redacts: str, sender: str, ts: int) -> None:
    redaction = add_event(connection, stream_ordering, ts, type="m.room.redaction", sender=sender)
    connection.execute("INSERT INTO redactions (event_id, redacts) VALUES (?, ?)", (redaction, redacts))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    """A database in the middle of a sweep, device tier 1d, audit tier 10d.

    Content events 1-3 lie before the watermark (3); after it, 4 and 6 are past
    the device tier and 9 is not. Events 20-23 are not content and never count.
    """
    path = tmp_path / "homeserver.db"
    connection = create_database(path)
    connection.execute(
        "INSERT INTO police_policy_retention_progress (name, position) VALUES (?, 3)", (WATERMARK,)
    )
    first = add_event(connection, 1, NOW - 20 * DAY)  # past the audit tier
    add_event(connection, 2, NOW - 10 * DAY)  # exactly at the audit tier: counts
    add_event(connection, 3, NOW - 5 * DAY)
    add_event(connection, 4, NOW - 3 * DAY)  # oldest expired after the watermark: 2 days overdue
    add_event(connection, 6, NOW - 2 * DAY)
    add_event(connection, 9, NOW - 1 * DAY + 1)  # one millisecond short of the device tier
    add_event(connection, 20, NOW - 20 * DAY, type="m.room.power_levels", state_key="")
    add_event(connection, 21, NOW - 20 * DAY, outlier=True)
    add_event(connection, 22, NOW - 20 * DAY, rejection_reason="auth_error")
    # redactions: two by the system user, one by Alice (not the sweep's)
    redact(connection, 23, first, SYSTEM, NOW - 11 * DAY)
    redact(connection, 24, "$e3", SYSTEM, NOW - 4 * DAY)
    redact(connection, 25, "$e4", ALICE, NOW - 2 * DAY)
    # a redaction whose event was purged: no sender to count it by
    connection.execute("INSERT INTO redactions (event_id, redacts) VALUES ('$purged', '$e2')")
    connection.executemany(
        "INSERT INTO local_media_repository (media_id, created_ts) VALUES (?, ?)",
        [("a", NOW - 2 * DAY), ("b", NOW - DAY - 1), ("c", NOW - DAY), ("d", NOW)],
    )
    connection.commit()
    connection.close()
    yield path


# --- the figures ----------------------------------------------------------------------


def test_status_figures(database: Path) -> None:
    status = retention_status(homeserver_config(database))

    assert status == RetentionStatus(
        system_user=SYSTEM,
        device_lifetime_s=86_400,
        audit_lifetime_s=10 * 86_400,
        watermark=3,
        redacted_total=2,
        expired_unredacted=2,  # events 4 and 6
        lag_s=2 * 86_400.0,
        media_past_device_tier=2,  # created strictly before the cutoff
        events_past_audit_tier=2,  # events 1 and 2
        kept=status.kept,  # see test_inventory_counts
        now_ms=NOW,
    )


def test_status_of_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.db"
    create_database(path).close()

    status = retention_status(homeserver_config(path))

    assert (status.watermark, status.redacted_total, status.expired_unredacted) == (0, 0, 0)
    assert status.lag_s == 0.0
    assert (status.media_past_device_tier, status.events_past_audit_tier) == (0, 0)


def test_without_a_watermark_every_expired_event_is_pending(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute("DELETE FROM police_policy_retention_progress")
    connection.close()

    status = retention_status(homeserver_config(database))

    assert status.watermark == 0
    assert status.expired_unredacted == 5  # events 1, 2, 3, 4 and 6
    assert status.lag_s == 19 * 86_400.0  # event 1 is 20 days old, the tier is 1 day


def test_a_swept_up_watermark_means_no_lag(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE police_policy_retention_progress SET position = 6")
    connection.close()

    status = retention_status(homeserver_config(database))

    assert (status.watermark, status.expired_unredacted, status.lag_s) == (6, 0, 0.0)


def test_the_system_user_follows_the_config(database: Path) -> None:
    status = retention_status(homeserver_config(database, {"retention": {"audit_lifetime": "10d"}}))

    assert status.system_user == f"@policy:{SERVER}"
    assert status.device_lifetime_s == 7 * 86_400
    assert status.redacted_total == 0  # the redactions in the database are by @sweeper


def test_a_module_entry_without_config_means_the_defaults(database: Path) -> None:
    config = homeserver_config(database)
    config["modules"][1] = {"module": "synapse_police_policy.PolicePolicy"}

    status = retention_status(config)

    assert (status.device_lifetime_s, status.audit_lifetime_s) == (7 * 86_400, 90 * 86_400)
    assert status.system_user == f"@policy:{SERVER}"
    # after the watermark, events 4 and 6 are only 2-3 days old: short of 7 days
    assert (status.expired_unredacted, status.lag_s, status.media_past_device_tier) == (0, 0, 0)
    assert status.events_past_audit_tier == 0  # nothing is 90 days old


def test_lines(database: Path) -> None:
    lines = retention_status(homeserver_config(database)).lines()

    assert lines == [
        "device lifetime          86400s (redacted on clients, media deleted)",
        "audit lifetime           864000s (history purged by Synapse's purge jobs)",
        f"system user              {SYSTEM}",
        "sweep watermark          stream position 3",
        "events redacted (total)  2",
        "expired, not yet swept   2",
        "sweep lag                172800s",
        "media past device tier   2",
        "events past audit tier   2 (still stored; purge jobs remove them)",
        "redactions to retry      0",
        "kept in clear            count  oldest    why",
        "  room names and topics                  0         -  current ones stay (rooms need them)",
        "  room avatars (state)                   0         -  current ones stay",
        "  pinned-event lists                     0         -  current ones stay",
        "  custom room state                      0         -  current ones stay",
        "  display names in rooms                 0         -  current members' stay",
        "  profiles (display name, avatar)        0         -  stay while the account exists",
        "  avatar images (with thumbnails)        0         -  current avatars stay",
        "  to-device messages waiting             0         -  deleted after the device lifetime",
        "  redacted originals                     4  1728000s  until the audit lifetime",
        "  room aliases                           0         -  stay while the alias exists",
        "  device names                           0         -  stay while the device exists",
    ]


class _PercentCursor:
    """A psycopg2-style cursor (``%s`` placeholders) over SQLite."""

    def __init__(self, cursor: sqlite3.Cursor, statements: list[str]) -> None:
        self._cursor = cursor
        self._statements = statements

    def execute(self, sql: str, args: Any = ()) -> None:
        assert "?" not in sql, sql
        self._statements.append(sql)
        self._cursor.execute(sql.replace("%s", "?"), args)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> Any:
        return self._cursor.fetchall()


def test_postgres_placeholders_and_the_connection_is_closed(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    connection = sqlite3.connect(database)
    closed: list[bool] = []
    fake = SimpleNamespace(
        cursor=lambda: _PercentCursor(connection.cursor(), statements), close=lambda: closed.append(True)
    )
    monkeypatch.setattr(status_module, "connect_database", lambda database: (fake, False))

    status = retention_status(homeserver_config(database))

    connection.close()
    assert status.watermark == 3
    assert status.expired_unredacted == 2
    # (the cursor refuses "?"); the queries without parameters need none
    assert statements and all("%s" in sql or "?" not in sql for sql in statements)
    assert sum("%s" in sql for sql in statements) >= 8
    assert closed == [True]


# --- refusals ---------------------------------------------------------------------------


def test_a_homeserver_without_the_module_is_refused(database: Path) -> None:
    with pytest.raises(ValueError, match=r"^modules: synapse_police_policy\.PolicePolicy is not loaded"):
        retention_status(homeserver_config(database, module=False))


@pytest.mark.parametrize("modules", [None, [], ["synapse_police_policy.PolicePolicy"]])
def test_unusable_modules_lists_are_refused(database: Path, modules: Any) -> None:
    config = homeserver_config(database)
    config["modules"] = modules
    with pytest.raises(ValueError, match="is not loaded"):
        retention_status(config)


def test_an_invalid_module_config_is_refused(database: Path) -> None:
    with pytest.raises(ConfigError) as info:
        retention_status(homeserver_config(database, {"retention": {"system_user": "Policy"}}))
    assert info.value.msg.startswith("retention.system_user: expected a user ID localpart")


def test_a_missing_database_file_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(BootstrapError, match=r"^database\.args\.database: cannot open "):
        retention_status(homeserver_config(missing))
    assert not missing.exists()


# --- the command line -------------------------------------------------------------------


def write_yaml(tmp_path: Path, config: Any) -> Path:
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf8")
    return path


def run(path: Path) -> int:
    return cli.main(["retention", "status", "-c", str(path)])


def test_cli_prints_the_status(database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path, homeserver_config(database))

    assert run(path) == 0

    out, err = capsys.readouterr()
    assert out.splitlines() == retention_status(homeserver_config(database)).lines()
    assert "sweep watermark          stream position 3" in out.splitlines()
    assert err == ""


def test_cli_long_option(database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path, homeserver_config(database))
    assert cli.main(["retention", "status", "--config", str(path)]) == 0
    assert "expired, not yet swept   2" in capsys.readouterr().out


def test_cli_without_the_module(database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path, homeserver_config(database, module=False))

    assert run(path) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err
        == f"{path}: modules: synapse_police_policy.PolicePolicy is not loaded in this homeserver config\n"
    )


def test_cli_with_an_invalid_module_config(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path, homeserver_config(database, {"retention": {"sweep_interval": "often"}}))

    assert run(path) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: retention.sweep_interval: expected a duration")


def test_cli_with_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path, homeserver_config(tmp_path / "nope.db"))

    assert run(path) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: database.args.database: cannot open")


def test_cli_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"

    assert run(missing) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert f"{missing}: cannot read the file" in err


@pytest.mark.parametrize("text", ["modules: [\n", "- a\n", ""], ids=["invalid-yaml", "list", "empty"])
def test_cli_unusable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text(text, encoding="utf8")

    assert run(path) == 2
    assert capsys.readouterr().out == ""


def test_cli_requires_the_config_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["retention", "status"])
    assert info.value.code == 2
    assert "HOMESERVER_YAML" in capsys.readouterr().err


def test_cli_requires_a_retention_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["retention"])
    assert info.value.code == 2


# --- known bugs ---------------------------------------------------------------------------


def test_cli_on_a_database_without_the_modules_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "homeserver.db"
    create_database(database, module_tables=False).close()
    path = write_yaml(tmp_path, homeserver_config(database))

    assert run(path) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: ")


def test_cli_without_server_name(database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = homeserver_config(database)
    del config["server_name"]
    path = write_yaml(tmp_path, config)

    assert run(path) == 1
    assert "server_name" in capsys.readouterr().err


def test_avatars_are_not_media_past_the_device_tier(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.db"
    connection = create_database(path)
    connection.executemany(
        "INSERT INTO local_media_repository (media_id, created_ts) VALUES (?, ?)",
        [("user_avatar", NOW - 30 * DAY), ("room_avatar", NOW - 30 * DAY)],
    )
    connection.execute(
        "INSERT INTO profiles (user_id, avatar_url) VALUES (?, ?)", (ALICE, f"mxc://{SERVER}/user_avatar")
    )
    connection.execute(
        "INSERT INTO room_stats_state (room_id, avatar) VALUES (?, ?)", (ROOM, f"mxc://{SERVER}/room_avatar")
    )
    connection.commit()
    connection.close()

    assert retention_status(homeserver_config(path)).media_past_device_tier == 0


# --- what stays in clear, and the retries -------------------------------------------------


def test_inventory_counts(tmp_path: Path) -> None:
    """Each category counts its items and dates the oldest by its arrival."""
    path = tmp_path / "homeserver.db"
    connection = create_database(path)
    name = add_event(connection, 1, NOW - 3 * DAY, type="m.room.name", state_key="")
    topic = add_event(connection, 2, NOW - 2 * DAY, type="m.room.topic", state_key="")
    add_event(connection, 3, NOW - 9 * DAY, type="m.room.topic", state_key="")  # superseded: not counted
    avatar = add_event(connection, 4, NOW - DAY, type="m.room.avatar", state_key="")
    note = add_event(connection, 5, NOW - DAY, type="com.example.note", state_key="")
    levels = add_event(connection, 6, NOW - 30 * DAY, type="m.room.power_levels", state_key="")
    alice = add_event(connection, 7, NOW - 4 * DAY, type="m.room.member", state_key=ALICE)
    bob = add_event(connection, 8, NOW - 5 * DAY, type="m.room.member", state_key="@bob:police.example")
    for event_id, kind in [
        (name, "m.room.name"),
        (topic, "m.room.topic"),
        (avatar, "m.room.avatar"),
        (note, "com.example.note"),
        (levels, "m.room.power_levels"),
        (alice, "m.room.member"),
        (bob, "m.room.member"),
    ]:
        connection.execute(
            "INSERT INTO current_state_events (event_id, room_id, type, state_key) VALUES (?, ?, ?, '')",
            (event_id, ROOM, kind),
        )
    connection.executemany(
        "INSERT INTO room_memberships (event_id, display_name) VALUES (?, ?)",
        [(alice, "KOK Meier"), (bob, None)],  # bob left: his leave carries no name
    )
    connection.executemany(
        "INSERT INTO profiles (user_id, displayname, avatar_url) VALUES (?, ?, ?)",
        [(ALICE, "KOK Meier", f"mxc://{SERVER}/face"), (SYSTEM, None, None)],
    )
    connection.execute(
        "INSERT INTO local_media_repository (media_id, created_ts) VALUES ('face', ?)", (NOW - DAY,)
    )
    connection.executemany(
        "INSERT INTO device_inbox (user_id, device_id, stream_id, message_json) VALUES (?, 'D', ?, '{}')",
        [(ALICE, 5), (ALICE, 6)],
    )
    connection.executemany(
        "INSERT INTO police_policy_retention_marks (stream, taken_at, position) VALUES ('to_device', ?, ?)",
        [(NOW - 2 * DAY, 4), (NOW - DAY, 5), (NOW - SECOND, 6)],
    )
    connection.execute(
        "INSERT INTO room_aliases (room_alias, room_id) VALUES ('#lage:police.example', ?)", (ROOM,)
    )
    connection.execute(
        "INSERT INTO devices (user_id, device_id, display_name) VALUES (?, 'D', 'iPhone')", (ALICE,)
    )
    connection.commit()
    connection.close()

    status = retention_status(homeserver_config(path))

    assert [(item.label, item.count, item.oldest_ms) for item in status.kept] == [
        ("room names and topics", 2, NOW - 3 * DAY),
        ("room avatars (state)", 1, NOW - DAY),
        ("pinned-event lists", 0, None),
        ("custom room state", 1, NOW - DAY),
        ("display names in rooms", 1, NOW - 4 * DAY),
        ("profiles (display name, avatar)", 1, None),
        ("avatar images (with thumbnails)", 1, NOW - DAY),
        ("to-device messages waiting", 2, NOW - DAY),  # the oldest was there at the mark of position 5
        ("redacted originals", 0, None),
        ("room aliases", 1, None),
        ("device names", 1, None),
    ]


def test_retries_by_kind_and_how_overdue_the_oldest_is(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO police_policy_retention_retries (event_id, room_id, event_type, received_ts, kind,"
            " error, attempts, first_failed_at, next_try_at)"
            " VALUES (?, ?, 'm.room.encrypted', ?, ?, 'e', 1, 0, 0)",
            [
                ("$a", ROOM, NOW - 3 * DAY, "forbidden"),
                ("$b", ROOM, NOW - 2 * DAY, "forbidden"),
                ("$c", ROOM, NOW - DAY, "not_in_room"),
            ],
        )
    connection.close()

    status = retention_status(homeserver_config(database))

    assert status.retries == {"forbidden": (2, NOW - 3 * DAY), "not_in_room": (1, NOW - DAY)}
    line = next(line for line in status.lines() if line.startswith("redactions to retry"))
    # the device tier is 1 day: the oldest is 2 days past it
    assert (
        line
        == "redactions to retry      3 (forbidden 2, not_in_room 1); oldest 172800s past the device lifetime"
    )
