"""The auditor's archive on PostgreSQL (``bots/auditor/archive_pg.py``), on a throwaway cluster.

The archive's behaviour tests of ``test_auditor_archive`` that do not look at
SQLite's files run again here, on PostgreSQL; the rest checks what only this
backend has: the schema, the connection string, a second process reading.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from bots.auditor.archive import ArchiveError, Attachment, WrongKeyError
from bots.auditor.archive_pg import PostgresArchive
from bots.auditor.bot import open_archive
from bots.auditor.config import parse_config
from devtools.postgres import PG_BIN, PostgresCluster
from tests.unit.test_auditor_archive import (  # noqa: F401 - collected again, on PostgreSQL
    KEY,
    NOW,
    OTHER_KEY,
    T0,
    message,
    test_a_failed_enforcement_is_due_again_after_a_growing_back_off,
    test_a_policy_violation_is_kept_with_the_original_and_counted,
    test_a_violation_is_due_for_enforcement_until_recorded_as_enforced,
    test_add_is_idempotent_by_event_id,
    test_add_many_counts_new_messages_in_one_batch,
    test_add_many_is_all_or_nothing,
    test_context_gives_neighbours_in_the_same_room,
    test_messages_of_one_millisecond_keep_their_order,
    test_purge_removes_old_orphan_files_only,
    test_redaction_keeps_the_content_and_records_when_and_by_whom,
    test_redaction_seen_before_its_event_is_applied_when_it_arrives,
    test_round_trip_with_attachments,
    test_search_filters_by_room_sender_and_time,
    test_search_ignores_case_umlaut_forms_and_punctuation,
    test_search_is_the_and_of_all_words,
    test_search_pages_newest_first,
    test_search_rejects_queries_without_words_and_bad_paging,
    test_snippet_shows_the_text_around_the_first_hit,
    test_stats_describe_the_archive,
    test_text_that_is_not_valid_unicode_is_kept_as_received,
    test_the_purge_takes_the_enforcement_records_along,
)
from tests.unit.test_auditor_commands import _raw as raw_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 binaries are not installed"),
]


@pytest.fixture
def dsn(cluster: PostgresCluster) -> str:
    args = cluster.create_database(f"archive_{uuid.uuid4().hex[:8]}")["args"]
    return f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"


@pytest.fixture
def archive(dsn: str, tmp_path: Path) -> Iterator[PostgresArchive]:
    with PostgresArchive(dsn, KEY, files=tmp_path / "attachments", clock=lambda: NOW) as opened:
        yield opened


def test_purge_removes_rows_tokens_and_attachment_files(archive: PostgresArchive, dsn: str) -> None:
    day = 86_400_000
    archive.add_many(
        [
            message("$old", T0, "Altfall", attachments=[Attachment("alt.jpg", "image/jpeg", b"A" * 100)]),
            message("$older", T0 - day, "Altfall"),
            message("$new", T0 + 2 * day, "Neufall", attachments=[Attachment("neu.jpg", "image/jpeg", b"N")]),
        ]
    )
    archive.mark_redacted("$never-seen", T0, "@bob:polizei.example")
    assert archive.purge_older_than(T0 + day) == 2
    assert archive.get("$old") is None and archive.search("altfall") == []
    assert [hit.message.event_id for hit in archive.search()] == ["$new"]
    with psycopg2.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute("SELECT (SELECT count(*) FROM message_tokens), (SELECT count(*) FROM attachments)")
        assert cursor.fetchone() == (1, 1)
    assert len([p for p in archive.files.rglob("*") if p.is_file()]) == 1
    assert archive.read_attachment("$new", 0) == b"N"
    assert archive.stats().pending_redactions == 0


def test_no_clear_text_reaches_the_database(archive: PostgresArchive, dsn: str) -> None:
    archive.add(
        message(
            "$a", T0, "Treffpunkt kestrelcanary", attachments=[Attachment("lage.txt", "text/plain", b"heron")]
        )
    )
    with psycopg2.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute("SELECT body, tokens FROM messages JOIN message_tokens ON message_id = id")
        body, tokens = cursor.fetchone()
        cursor.execute("SELECT name FROM attachments")
        (name,) = cursor.fetchone()
    assert b"kestrelcanary" not in bytes(body) and b"lage" not in bytes(name)
    assert all(len(token) == len(tokens[0]) and "canary" not in token for token in tokens)
    assert b"heron" not in b"".join(p.read_bytes() for p in archive.files.rglob("*") if p.is_file())


def test_reopening_needs_the_same_key_and_keeps_the_messages(dsn: str, tmp_path: Path) -> None:
    files = tmp_path / "attachments"
    with PostgresArchive(dsn, KEY, files=files) as archive:
        archive.add(message("$a", T0, "bleibt"))
    with pytest.raises(WrongKeyError):
        PostgresArchive(dsn, OTHER_KEY, files=files)
    with PostgresArchive(dsn, KEY, files=files, create=False) as again:
        assert again.get("$a").body == "bleibt"
        assert again.search("bleibt")[0].message.event_id == "$a"


def test_an_empty_database_is_no_archive_unless_asked_to_create(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    args = cluster.create_database(f"empty_{uuid.uuid4().hex[:8]}")["args"]
    dsn = f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"
    with pytest.raises(ArchiveError, match="no archive"):
        PostgresArchive(dsn, KEY, files=tmp_path, create=False)
    with psycopg2.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute("CREATE TABLE other (x int)")
    with pytest.raises(ArchiveError, match="other tables"):
        PostgresArchive(dsn, KEY, files=tmp_path)


def test_a_wrong_connection_string_is_a_clear_error(cluster: PostgresCluster, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="cannot connect to the PostgreSQL archive"):
        PostgresArchive(f"host=127.0.0.1 port={cluster.port} dbname=nope user=synapse", KEY, files=tmp_path)


def test_two_connections_share_the_archive(dsn: str, tmp_path: Path) -> None:
    """The bot writes while a CLI or a second bot process reads; row IDs of one
    millisecond stay distinct across writers."""
    files = tmp_path / "attachments"
    with PostgresArchive(dsn, KEY, files=files) as first, PostgresArchive(dsn, KEY, files=files) as second:
        first.add(message("$a", T0, "gleiche Millisekunde"))
        second.add(message("$b", T0, "gleiche Millisekunde"))
        assert [hit.message.event_id for hit in first.search("millisekunde")] == ["$b", "$a"]
        assert second.count() == 2


def test_the_bot_opens_the_archive_its_config_names(dsn: str, tmp_path: Path) -> None:
    raw = raw_config(tmp_path, archive_path=None, archive_postgres=dsn, attachments_dir="attachments")
    (tmp_path / "key").write_text(KEY.hex())
    with open_archive(parse_config(raw, tmp_path)) as archive:
        assert isinstance(archive, PostgresArchive)
        archive.add(message("$a", T0, "im Postgres", attachments=[Attachment("a", "text/plain", b"x")]))
    assert (tmp_path / "attachments").is_dir()
    with PostgresArchive(dsn, KEY, files=tmp_path / "attachments", create=False) as again:
        assert again.read_attachment("$a", 0) == b"x"
