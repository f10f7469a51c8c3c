"""The archive's full events (issue 19): content, edits and their versions, events held for
their keys, and every clear column authenticated, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.auditor.archive import (
    REPLACE,
    Archive,
    Attachment,
    CorruptRecordError,
    Message,
    canonical_content,
)
from devtools.postgres import PG_BIN
from tests.unit.test_auditor_archive import ALICE, BOB, KEY, NOW, ROOM, T0, message

HAVE_POSTGRES = (PG_BIN / "initdb").exists()

#: runs an SQL statement on the archive's database behind its back (as someone with the files)
Tamper = Callable[[str, tuple[Any, ...]], None]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.integration,
                pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL 15 binaries are not installed"),
            ],
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Callable[[], Archive], Tamper]]:
    """(open the archive, tamper with its database) on one backend."""
    if request.param == "sqlite":
        path = tmp_path / "archive.db"

        def tamper(sql: str, params: tuple[Any, ...] = ()) -> None:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute(sql, params)
            db.close()

        yield (lambda: Archive(path, KEY, clock=lambda: NOW)), tamper
        return
    import psycopg2

    from bots.auditor.archive_pg import PostgresArchive

    cluster = request.getfixturevalue("cluster")
    args = cluster.create_database(f"events_{uuid.uuid4().hex[:8]}")["args"]
    dsn = f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"

    def pg_tamper(sql: str, params: tuple[Any, ...] = ()) -> None:
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
        connection.close()

    yield (lambda: PostgresArchive(dsn, KEY, files=tmp_path / "attachments", clock=lambda: NOW)), pg_tamper


@pytest.fixture
def archive(backend: tuple[Callable[[], Archive], Tamper]) -> Iterator[Archive]:
    with backend[0]() as opened:
        yield opened


def edit(event_id: str, ts: int, of: str, body: str, *, sender: str = ALICE) -> Message:
    content = {"body": f"* {body}", "m.new_content": {"body": body}, "m.relates_to": {"rel_type": REPLACE}}
    return message(
        event_id, ts, body, sender=sender, content=canonical_content(content), relates_to=of, rel_type=REPLACE
    )


def test_the_full_content_and_relations_come_back(archive: Archive) -> None:
    content = canonical_content({"msgtype": "m.text", "body": "Lage", "formatted_body": "<b>Lage</b>"})
    archive.add(message("$a", T0, "Lage", content=content, relates_to="$thread", rel_type="m.thread"))
    got = archive.get("$a")
    assert got is not None
    assert json.loads(got.content)["formatted_body"] == "<b>Lage</b>"
    assert (got.relates_to, got.rel_type, got.replaced_by, got.current) == ("$thread", "m.thread", None, True)


def test_content_must_be_a_json_object() -> None:
    with pytest.raises(ValueError, match="content"):
        message("$a", T0, "x", content="[1]")
    with pytest.raises(ValueError, match="content"):
        message("$a", T0, "x", content="{")


def test_edits_are_versions_each_searchable_the_newest_current(archive: Archive) -> None:
    archive.add_many(
        [
            message("$orig", T0, "Treffpunkt Bahnhof"),
            edit("$e1", T0 + 1, "$orig", "Treffpunkt Rathaus"),
            edit("$e2", T0 + 2, "$orig", "Treffpunkt Marktplatz"),
            # an "edit" by someone else is not a version of Alice's message
            edit("$bob", T0 + 3, "$orig", "Treffpunkt Hafen", sender=BOB),
        ]
    )
    for event_id in ("$orig", "$e1", "$e2"):
        assert [v.event_id for v in archive.versions(event_id)] == ["$orig", "$e1", "$e2"]
    assert archive.versions("$unknown") == []
    assert archive.get("$orig").replaced_by == "$e2"
    assert archive.get("$e1").replaced_by == "$e2"
    assert archive.get("$e2").current
    hits = {hit.message.event_id: hit.current for hit in archive.search("Treffpunkt")}
    assert hits == {"$orig": False, "$e1": False, "$e2": True, "$bob": True}
    assert [hit.message.event_id for hit in archive.search("Rathaus")] == ["$e1"]


def test_an_edit_whose_original_is_missing_has_its_own_versions(archive: Archive) -> None:
    archive.add_many([edit("$e1", T0 + 1, "$gone", "eins"), edit("$e2", T0 + 2, "$gone", "zwei")])
    assert [v.event_id for v in archive.versions("$e1")] == ["$e1", "$e2"]
    assert not archive.get("$e1").current


def test_held_events_survive_a_restart_and_count_as_undecryptable(
    backend: tuple[Callable[[], Archive], Tamper],
) -> None:
    opened, _ = backend
    with opened() as archive:
        archive.hold_undecrypted("$x", ROOM, '{"type":"m.room.encrypted"}', T0)
        archive.hold_undecrypted("$x", ROOM, '{"other":1}', T0 + 9)  # held again: one more attempt
        archive.hold_undecrypted("$y", "!other:polizei.example", "{}", T0 + 5)
    with opened() as archive:
        held = archive.undecrypted()
        assert [(h.event_id, h.event_json, h.received_at, h.attempts) for h in held] == [
            ("$x", '{"type":"m.room.encrypted"}', T0, 1),
            ("$y", "{}", T0 + 5, 0),
        ]
        assert archive.undecryptable_counts(T0 + 1) == {ROOM: 1}
        assert archive.undecryptable_counts(T0 + 6) == {ROOM: 1, "!other:polizei.example": 1}
        archive.release_undecrypted("$x")
        archive.release_undecrypted("$never")
        assert [h.event_id for h in archive.undecrypted()] == ["$y"]
        assert archive.stats().held_events == 1
        assert archive.purge_older_than(T0 + 6) == 0
        assert archive.undecrypted() == []


def test_held_events_are_not_stored_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    with Archive(path, KEY) as archive:
        archive.hold_undecrypted("$x", ROOM, '{"ciphertext":"GEHEIMTEXT"}', T0)
        at_rest = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"GEHEIMTEXT" not in at_rest


def test_add_raises_when_the_disk_is_full_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    with Archive(path, KEY) as archive:
        archive.add(message("$first", T0, "eins"))
        pages = archive._db.execute("PRAGMA page_count").fetchone()[0]
        archive._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            archive.add(
                message("$big", T0 + 1, "x" * 200_000, content=canonical_content({"b": "y" * 200_000}))
            )
        archive._db.execute("PRAGMA max_page_count = 1073741823")
        assert archive.get("$big") is None
        assert archive.add(message("$big", T0 + 1, "x" * 200_000))
        assert archive.count() == 2


# -- tampering with the files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("sender", BOB),
        ("device_id", "OTHERPHONE"),
        ("redacted_at", T0 + 5),
        ("redacted_by", BOB),
        ("room_id", "!elsewhere:polizei.example"),
        ("origin_server_ts", T0 + 1),
        ("msgtype", "m.notice"),
        ("violation", None),
        ("relates_to", "$other"),
        ("content", None),
        ("attachments", 0),
    ],
)
def test_an_sql_edit_of_any_column_is_detected(
    backend: tuple[Callable[[], Archive], Tamper], column: str, value: Any
) -> None:
    opened, tamper = backend
    with opened() as archive:
        archive.add(
            message(
                "$a",
                T0,
                "Bericht",
                violation="media.type: text/html",
                relates_to="$r",
                rel_type="m.thread",
                attachments=[Attachment("a.pdf", "application/pdf", b"%PDF")],
            )
        )
        archive.add(message("$b", T0 + 1, "anderes"))
        if column == "redacted_by":
            archive.mark_redacted("$a", T0 + 2, ALICE)
    tamper(f"UPDATE messages SET {column} = ? WHERE event_id = ?", (value, "$a"))
    with opened() as archive:
        with pytest.raises(CorruptRecordError, match=r"\$a: the archived record was altered"):
            archive.get("$a")
        with pytest.raises(CorruptRecordError):
            archive.search("Bericht")
        assert archive.get("$b") is not None
        problems = list(archive.verify_records())
        assert len(problems) == 1 and "$a" in problems[0]
        # a redaction never launders an altered row with a fresh MAC
        with pytest.raises(CorruptRecordError):
            archive.mark_redacted("$a", T0 + 9, BOB)


def test_an_attachment_row_edit_is_detected(backend: tuple[Callable[[], Archive], Tamper]) -> None:
    opened, tamper = backend
    with opened() as archive:
        archive.add(message("$a", T0, "x", attachments=[Attachment("a.pdf", "application/pdf", b"%PDF")]))
    tamper("UPDATE attachments SET mimetype = ?", ("image/png",))
    with opened() as archive, pytest.raises(CorruptRecordError):
        archive.get("$a")


def test_a_redaction_keeps_the_row_authentic(archive: Archive) -> None:
    archive.add(message("$a", T0, "x"))
    archive.mark_redacted("$a", T0 + 1, BOB)
    assert archive.get("$a").redacted_by == BOB
    assert list(archive.verify_records()) == []


def test_clearing_the_authentication_marker_is_refused(backend: tuple[Callable[[], Archive], Tamper]) -> None:
    """Without the marker the archive would give every row a fresh MAC: it refuses instead."""
    opened, tamper = backend
    with opened() as archive:
        archive.add(message("$a", T0, "x"))
    tamper("UPDATE messages SET sender = ?, mac = NULL", (BOB,))
    tamper("DELETE FROM archive_meta WHERE name = 'row_macs'", ())
    with pytest.raises(CorruptRecordError, match="marker is missing"):
        opened()


def test_rows_of_an_earlier_schema_get_their_mac_on_migration(
    backend: tuple[Callable[[], Archive], Tamper],
) -> None:
    opened, tamper = backend
    with opened() as archive:
        archive.add(message("$old", T0, "vorher", attachments=[Attachment("a", "text/plain", b"a")]))
        step = archive._mac_version - 1
    # as the schema step before the full events left it
    for statement in (
        "DROP TABLE held_events",
        "DROP INDEX messages_relates",
        *(f"ALTER TABLE messages DROP COLUMN {c}" for c in ("content", "relates_to", "rel_type", "mac")),
        "DELETE FROM archive_meta WHERE name = 'row_macs'",
        f"UPDATE archive_schema_version SET version = {step}",
    ):
        tamper(statement, ())
    with opened() as migrated:
        old = migrated.get("$old")
        assert old is not None and old.content == "{}" and old.body == "vorher"
        assert list(migrated.verify_records()) == []
    tamper("UPDATE messages SET sender = ?", (BOB,))
    with opened() as migrated, pytest.raises(CorruptRecordError):
        migrated.get("$old")


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.dictionaries(_text, _json, max_size=5),
    relates_to=st.none() | _text,
    rel_type=st.none() | st.sampled_from([REPLACE, "m.thread", "m.in_reply_to"]) | _text,
    device=st.none() | _text,
)
def test_any_content_and_relation_round_trips_authenticated(
    tmp_path_factory: pytest.TempPathFactory,
    content: dict[str, Any],
    relates_to: str | None,
    rel_type: str | None,
    device: str | None,
) -> None:
    path = tmp_path_factory.mktemp("archive") / "archive.db"
    text = canonical_content(content)
    with Archive(path, KEY) as archive:
        archive.add(
            Message(
                "$a", ROOM, ALICE, device, T0, "x", content=text, relates_to=relates_to, rel_type=rel_type
            )
        )
        got = archive.get("$a")
        assert got is not None
        assert (json.loads(got.content), got.relates_to, got.rel_type, got.device_id) == (
            content,
            relates_to,
            rel_type,
            device,
        )
        assert list(archive.verify_records()) == []


# -- police-audit verify-archive and export-head ---------------------------------------------------


def bot_config(tmp_path: Path, **more: Any) -> Path:
    import yaml

    (tmp_path / "key").write_text(KEY.hex())
    settings = {
        "homeserver_url": "http://localhost:8008",
        "user_id": "@auditor:x.test",
        "password": "pw",
        "device_id": "AUDITOR-BOT",
        "store_dir": "store",
        "archive_path": "archive.db",
        "archive_key_file": "key",
        "log_path": "log.sqlite",
        "auditors": ["@rev:x.test"],
        **more,
    }
    path = tmp_path / "auditor.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_cli_verify_archive_reports_an_altered_sender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bots.auditor.cli import main

    config = bot_config(tmp_path)
    with Archive(tmp_path / "archive.db", KEY) as archive:
        archive.add_many([message("$a", T0, "eins"), message("$b", T0 + 1, "zwei")])
    assert main(["verify-archive", "--config", str(config)]) == 0
    assert "archive intact: 2 message(s)" in capsys.readouterr().out
    db = sqlite3.connect(tmp_path / "archive.db", isolation_level=None)
    db.execute("UPDATE messages SET sender = ? WHERE event_id = '$b'", (BOB,))
    db.close()
    assert main(["verify-archive", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert "$b: the archived record was altered" in captured.out and "1 of 2" in captured.err


def test_cli_export_head_appends_a_signed_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bots.auditor.chain_heads import parse_heads, read_heads
    from bots.auditor.cli import main
    from bots.auditor.consultation_log import ConsultationLog
    from bots.auditor.export import key_fingerprint, open_signing_key

    (tmp_path / "signing-pw").write_text(bytes(range(32)).hex())
    key = open_signing_key(tmp_path / "signing.pem", bytes(range(32)))
    config = bot_config(
        tmp_path,
        signing_key_file="signing.pem",
        signing_key_password_file="signing-pw",
        signing_key_fingerprint=key_fingerprint(key.public_key()),
    )
    with ConsultationLog(tmp_path / "log.sqlite", key=KEY) as log:
        log.append(auditor=ALICE, action="search", reason="r", recipient=ALICE, query={"text": "x"})
    assert main(["export-head", "--config", str(config)]) == 0
    assert main(["export-head", "--config", str(config)]) == 0
    heads, problems = parse_heads(
        read_heads(tmp_path / "chain-heads.jsonl"), key_fingerprint(key.public_key())
    )
    assert problems == [] and [head.seq for head in heads] == [1, 1]
    log_file = str(tmp_path / "log.sqlite")
    heads_file = str(tmp_path / "chain-heads.jsonl")
    assert main(["verify-log", log_file, "--heads", heads_file, "--config", str(config)]) == 0
    assert "chain intact" in capsys.readouterr().out
