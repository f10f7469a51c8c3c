"""The auditor's archive (``bots/auditor/archive.py``) on a temporary SQLite file."""

from __future__ import annotations

import base64
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots.auditor import archive as archive_module
from bots.auditor.archive import (
    Archive,
    ArchiveError,
    Attachment,
    CorruptRecordError,
    Enforcement,
    KeyLoadError,
    Message,
    WrongKeyError,
    load_key,
)
from bots.auditor.blind_index import BlindIndex, snippet, words

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ROOM = "!ops:polizei.example"
OTHER_ROOM = "!lage:polizei.example"
ALICE = "@alice:polizei.example"
BOB = "@bob:polizei.example"
T0 = 1_767_225_600_000
NOW = T0 + 100 * 86_400_000


def message(event_id: str, ts: int, body: str, *, room: str = ROOM, sender: str = ALICE, **more) -> Message:
    return Message(event_id, room, sender, "PHONE1", ts, body, msgtype="m.text", **more)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "archive.db"


@pytest.fixture
def archive(path: Path) -> Iterator[Archive]:
    with Archive(path, KEY, clock=lambda: NOW) as opened:
        yield opened


def raw(db_path: Path) -> sqlite3.Connection:
    """A second, plain connection to the file, as someone with the file but not the key."""
    return sqlite3.connect(db_path, isolation_level=None)


def file_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def ids(hits) -> list[str]:
    return [hit.message.event_id for hit in hits]


# -- storing and reading -------------------------------------------------------------------------


def test_round_trip_with_attachments(archive: Archive) -> None:
    photo = Attachment("tatort.jpg", "image/jpeg", b"\xff\xd8" + os.urandom(5000))
    note = Attachment("notiz.txt", "text/plain", b"Notiz")
    assert archive.add(message("$a", T0, "Foto vom Tatort", attachments=[photo, note]))

    stored = archive.get("$a")
    assert stored is not None
    assert (stored.event_id, stored.room_id, stored.sender, stored.device_id) == ("$a", ROOM, ALICE, "PHONE1")
    assert (stored.origin_server_ts, stored.event_type, stored.msgtype) == (T0, "m.room.message", "m.text")
    assert stored.body == "Foto vom Tatort"
    assert stored.archived_at == NOW
    assert (stored.redacted, stored.redacted_at, stored.redacted_by) == (False, None, None)
    assert [(a.index, a.name, a.mimetype, a.size) for a in stored.attachments] == [
        (0, "tatort.jpg", "image/jpeg", photo.size),
        (1, "notiz.txt", "text/plain", 5),
    ]
    assert archive.read_attachment("$a", 0) == photo.data
    assert archive.read_attachment("$a", 1) == b"Notiz"
    with pytest.raises(KeyError):
        archive.read_attachment("$a", 2)
    assert archive.get("$unknown") is None


def test_text_that_is_not_valid_unicode_is_kept_as_received(archive: Archive) -> None:
    body = "kaputtes Zeichen \ud800 aus dem JSON"
    archive.add(message("$a", T0, body, attachments=[Attachment("\udc00.bin", "a/b", b"")]))
    stored = archive.get("$a")
    assert stored.body == body and stored.attachments[0].name == "\udc00.bin"
    assert ids(archive.search("kaputtes zeichen")) == ["$a"]


def test_add_is_idempotent_by_event_id(archive: Archive) -> None:
    assert archive.add(message("$a", T0, "erste Fassung"))
    assert not archive.add(
        message("$a", T0 + 5, "zweite Fassung", attachments=[Attachment("x", "a/b", b"x")])
    )
    stored = archive.get("$a")
    assert stored is not None and stored.body == "erste Fassung" and stored.attachments == ()
    assert archive.count() == 1
    assert not archive.files.exists() or not any(p.is_file() for p in archive.files.rglob("*"))


def test_add_many_counts_new_messages_in_one_batch(archive: Archive) -> None:
    archive.add(message("$a", T0, "alt"))
    batch = [message("$a", T0, "alt"), message("$b", T0 + 1, "neu"), message("$b", T0 + 1, "doppelt")]
    assert archive.add_many(batch) == 1
    assert archive.count() == 2
    assert archive.get("$b").body == "neu"


def test_add_many_is_all_or_nothing(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    document = archive._index.document

    def failing(text: str, room_id: str, sender: str) -> str:
        if text == "kaputt":
            raise RuntimeError("disk on fire")
        return document(text, room_id, sender)

    monkeypatch.setattr(archive._index, "document", failing)
    batch = [
        message("$a", T0, "gut", attachments=[Attachment("a.bin", "application/octet-stream", b"123")]),
        message("$b", T0 + 1, "kaputt"),
    ]
    with pytest.raises(RuntimeError):
        archive.add_many(batch)
    assert archive.count() == 0
    assert not any(p.is_file() for p in archive.files.rglob("*"))


def test_messages_of_one_millisecond_keep_their_order(archive: Archive) -> None:
    archive.add_many([message(f"${n}", T0, f"gleichzeitig {n}") for n in range(5)])
    assert ids(archive.search("gleichzeitig")) == ["$4", "$3", "$2", "$1", "$0"]


def test_message_timestamp_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="origin_server_ts"):
        message("$a", -1, "x")
    with pytest.raises(ValueError, match="origin_server_ts"):
        message("$a", 2**47, "x")


# -- keys ----------------------------------------------------------------------------------------


def test_wrong_key_is_refused_at_start_up(path: Path) -> None:
    with Archive(path, KEY) as archive:
        archive.add(message("$a", T0, "geheim"))
    with pytest.raises(WrongKeyError, match="the archive key does not match this archive"):
        Archive(path, OTHER_KEY)
    with Archive(path, KEY) as archive:
        assert archive.get("$a").body == "geheim"


def test_key_is_not_stored_and_must_be_32_bytes(path: Path) -> None:
    with Archive(path, KEY):
        pass
    content = path.read_bytes()
    assert KEY not in content and KEY.hex().encode() not in content
    with pytest.raises(ValueError, match="32 bytes"):
        Archive(path, KEY[:16])


def test_missing_archive_is_not_created_when_asked_not_to(path: Path) -> None:
    with pytest.raises(ArchiveError, match="no archive at"):
        Archive(path, KEY, create=False)
    assert not path.exists()


def test_another_database_is_not_taken_for_an_archive(tmp_path: Path) -> None:
    other = tmp_path / "consultations.db"
    with raw(other) as db:
        db.execute("CREATE TABLE consultations (id INTEGER)")
    with pytest.raises(ArchiveError, match="not an auditor archive"):
        Archive(other, KEY)
    (tmp_path / "notes.txt").write_text("no database" * 100)
    with pytest.raises(ArchiveError, match="not an auditor archive"):
        Archive(tmp_path / "notes.txt", KEY)


def test_archive_from_a_newer_version_is_refused(path: Path) -> None:
    with Archive(path, KEY):
        pass
    with raw(path) as db:
        db.execute("UPDATE archive_schema_version SET version = 99")
    with pytest.raises(ArchiveError, match="schema version 99 is newer"):
        Archive(path, KEY)


# -- tampering -----------------------------------------------------------------------------------


def test_altered_body_does_not_decrypt(archive: Archive, path: Path) -> None:
    archive.add(message("$a", T0, "Originaltext"))
    db = raw(path)
    (body,) = db.execute("SELECT body FROM messages WHERE event_id = '$a'").fetchone()
    altered = bytes([*body[:-1], body[-1] ^ 1])
    db.execute("UPDATE messages SET body = ? WHERE event_id = '$a'", (altered,))
    with pytest.raises(CorruptRecordError, match=r"\$a: the archived body does not decrypt"):
        archive.get("$a")


def test_body_moved_to_another_row_does_not_decrypt(archive: Archive, path: Path) -> None:
    archive.add_many([message("$a", T0, "harmlos"), message("$b", T0 + 1, "belastend")])
    db = raw(path)
    (body,) = db.execute("SELECT body FROM messages WHERE event_id = '$b'").fetchone()
    db.execute("UPDATE messages SET body = ? WHERE event_id = '$a'", (body,))
    with pytest.raises(CorruptRecordError, match=r"\$a: .* altered or belongs to another record"):
        archive.get("$a")
    with pytest.raises(CorruptRecordError):
        archive.search("harmlos")


def test_altered_or_swapped_attachment_does_not_decrypt(archive: Archive, path: Path) -> None:
    archive.add(
        message("$a", T0, "zwei", attachments=[Attachment("1.txt", "text/plain", b"eins")] * 2),
    )
    db = raw(path)
    files = dict(db.execute("SELECT idx, file FROM attachments"))
    first = archive.files / files[0][:2] / files[0]
    second = archive.files / files[1][:2] / files[1]
    first.write_bytes(second.read_bytes())  # attachment 1's ciphertext where attachment 0 belongs
    with pytest.raises(CorruptRecordError, match=r"attachment-data/0 does not decrypt"):
        archive.read_attachment("$a", 0)
    sealed = bytearray(second.read_bytes())
    sealed[20] ^= 0x80
    second.write_bytes(bytes(sealed))
    with pytest.raises(CorruptRecordError):
        archive.read_attachment("$a", 1)


# -- search --------------------------------------------------------------------------------------


def test_search_ignores_case_umlaut_forms_and_punctuation(archive: Archive) -> None:
    archive.add(message("$a", T0, "Treffpunkt: MÜLLERSTRASSE 5, Ecke Königsallee!"))
    for query in ("müllerstraße", "Müllerstrasse", "mu\u0308llerstrasse", "KÖNIGSALLEE", "königsallee."):
        assert ids(archive.search(query)) == ["$a"], query
    assert archive.search("königs") == []  # whole words only, no prefixes
    assert words("Ä-Ö_ü ß!") == ["ä", "ö", "ü", "ss"]


def test_search_is_the_and_of_all_words(archive: Archive) -> None:
    archive.add_many(
        [
            message("$a", T0, "roter Transporter vor dem Bahnhof"),
            message("$b", T0 + 1, "blauer Transporter am Hafen"),
            message("$c", T0 + 2, "roter Kleinwagen vor dem Bahnhof"),
        ]
    )
    assert ids(archive.search("transporter")) == ["$b", "$a"]
    assert ids(archive.search("roter transporter")) == ["$a"]
    assert ids(archive.search("Transporter Bahnhof roter")) == ["$a"]
    assert archive.search("blauer Bahnhof") == []


def test_search_filters_by_room_sender_and_time(archive: Archive) -> None:
    archive.add_many(
        [
            message("$a", T0, "Lage ruhig", room=ROOM, sender=ALICE),
            message("$b", T0 + 10, "Lage ruhig", room=OTHER_ROOM, sender=ALICE),
            message("$c", T0 + 20, "Lage ruhig", room=ROOM, sender=BOB),
            message("$d", T0 + 30, "Lage angespannt", room=ROOM, sender=BOB),
        ]
    )
    assert ids(archive.search("lage", room_id=ROOM)) == ["$d", "$c", "$a"]
    assert ids(archive.search("lage", sender=ALICE)) == ["$b", "$a"]
    assert ids(archive.search("ruhig", room_id=ROOM, sender=BOB)) == ["$c"]
    assert ids(archive.search("ruhig", room_id=OTHER_ROOM, sender=BOB)) == []
    assert ids(archive.search("lage", since=T0 + 10, until=T0 + 30)) == ["$c", "$b"]  # [since, until)
    assert ids(archive.search("lage", since=T0 + 30)) == ["$d"]
    assert ids(archive.search(room_id=ROOM, until=T0 + 20)) == ["$a"]  # no words: filters only
    assert ids(archive.search(sender=BOB)) == ["$d", "$c"]
    assert ids(archive.search()) == ["$d", "$c", "$b", "$a"]


def test_search_pages_newest_first(archive: Archive) -> None:
    # archived out of order: the order comes from origin_server_ts, not arrival
    timestamps = [T0 + (n * 7919) % 50 * 1000 for n in range(50)]
    archive.add_many([message(f"${ts}", ts, "Streife") for ts in timestamps])
    pages = [archive.search("streife", limit=20, offset=offset) for offset in (0, 20, 40)]
    assert [len(page) for page in pages] == [20, 20, 10]
    seen = [hit.message.origin_server_ts for page in pages for hit in page]
    assert seen == sorted(timestamps, reverse=True)
    assert archive.search("streife", offset=50) == []


def test_search_rejects_queries_without_words_and_bad_paging(archive: Archive) -> None:
    with pytest.raises(ValueError, match="has no words"):
        archive.search("?!")
    with pytest.raises(ValueError, match="limit"):
        archive.search("x", limit=0)
    with pytest.raises(ValueError, match="offset"):
        archive.search("x", offset=-1)


def test_snippet_shows_the_text_around_the_first_hit(archive: Archive) -> None:
    body = " ".join(["Vorspann"] * 40) + " Zielwort steht hier " + " ".join(["Nachspann"] * 40)
    archive.add(message("$a", T0, body))
    (hit,) = archive.search("zielwort")
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert "Zielwort steht hier" in hit.snippet
    assert len(hit.snippet) <= 122
    assert snippet("kurz\n und  knapp", {"fehlt"}) == "kurz und knapp"
    assert snippet("x" * 200, set()) == "x" * 120 + "…"


def test_equal_words_give_equal_tokens_under_one_key_only() -> None:
    index, other = BlindIndex(b"k" * 32), BlindIndex(b"l" * 32)
    assert index.word_token("lage") == index.word_token("lage") != index.word_token("lager")
    assert index.word_token("lage") != other.word_token("lage")
    assert len(index.word_token("lage")) == 16
    # a word cannot match a room or sender token
    assert index.word_token(ROOM) not in (index.room_token(ROOM), index.sender_token(ROOM))


# -- redaction, context, purge -------------------------------------------------------------------


def test_redaction_keeps_the_content_and_records_when_and_by_whom(archive: Archive) -> None:
    archive.add(message("$a", T0, "Beweis"))
    assert archive.mark_redacted("$a", T0 + 60_000, BOB)
    assert archive.mark_redacted("$a", T0 + 99_000, ALICE)  # the first redaction stays recorded
    stored = archive.get("$a")
    assert (stored.body, stored.redacted_at, stored.redacted_by) == ("Beweis", T0 + 60_000, BOB)
    assert ids(archive.search("beweis")) == ["$a"]
    assert archive.stats().redacted == 1


def test_redaction_seen_before_its_event_is_applied_when_it_arrives(archive: Archive) -> None:
    assert not archive.mark_redacted("$late", T0 + 5, BOB)
    assert archive.stats().pending_redactions == 1
    archive.add(message("$late", T0, "Schlüssel kamen spät"))
    stored = archive.get("$late")
    assert (stored.redacted_at, stored.redacted_by) == (T0 + 5, BOB)
    assert archive.stats().pending_redactions == 0


def test_context_gives_neighbours_in_the_same_room(archive: Archive) -> None:
    archive.add_many([message(f"${n}", T0 + n * 1000, f"Nachricht {n}") for n in range(10)])
    archive.add(message("$other", T0 + 4500, "anderer Raum", room=OTHER_ROOM))
    assert [m.event_id for m in archive.context("$5")] == ["$2", "$3", "$4", "$5", "$6", "$7", "$8"]
    assert [m.event_id for m in archive.context("$1", before=3, after=1)] == ["$0", "$1", "$2"]
    assert [m.event_id for m in archive.context("$9", before=0, after=5)] == ["$9"]
    assert archive.context("$unknown") == []


def test_purge_removes_rows_tokens_and_attachment_files(archive: Archive, path: Path) -> None:
    day = 86_400_000
    archive.add_many(
        [
            message("$old", T0, "Altfall", attachments=[Attachment("alt.jpg", "image/jpeg", b"A" * 100)]),
            message("$older", T0 - day, "Altfall"),
            message("$new", T0 + 2 * day, "Neufall", attachments=[Attachment("neu.jpg", "image/jpeg", b"N")]),
        ]
    )
    archive.mark_redacted("$never-seen", T0, BOB)
    assert archive.purge_older_than(T0 + day) == 2
    assert archive.get("$old") is None and archive.search("altfall") == []
    assert ids(archive.search()) == ["$new"]
    db = raw(path)
    assert db.execute("SELECT count(*) FROM message_tokens").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM attachments").fetchone() == (1,)
    assert len([p for p in archive.files.rglob("*") if p.is_file()]) == 1
    assert archive.read_attachment("$new", 0) == b"N"
    stats = archive.stats()
    assert (stats.messages, stats.attachments, stats.pending_redactions) == (1, 1, 0)
    assert archive.purge_older_than(T0 + day) == 0


def test_purge_leaves_no_ciphertext_or_token_of_purged_messages_in_the_files(
    archive: Archive, path: Path
) -> None:
    archive.add_many([message(f"$keep{n}", T0 + 10_000 + n, f"bleibt Wort{n}") for n in range(200)])
    archive.add(message("$gone", T0, "Verschwindibus"))
    db = raw(path)
    (body,) = db.execute("SELECT body FROM messages WHERE event_id = '$gone'").fetchone()
    token = archive._index.word_token("verschwindibus")
    archive.purge_older_than(T0 + 1)
    content = file_bytes(path.parent)
    assert body[-16:] not in content  # the GCM tag of the purged body
    assert token[-12:].encode() not in content
    assert b"$gone" not in content


def test_purge_removes_old_orphan_files_only(archive: Archive) -> None:
    archive.add(message("$a", T0, "mit Anhang", attachments=[Attachment("a", "text/plain", b"a")]))
    orphan_dir = archive.files / "ff"
    orphan_dir.mkdir(parents=True, exist_ok=True)
    old_orphan, young_orphan = orphan_dir / ("ff" + "0" * 30), orphan_dir / ("ff" + "1" * 30)
    old_orphan.write_bytes(b"crash leftover")
    young_orphan.write_bytes(b"being written")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_orphan, (hours_ago, hours_ago))
    archive.purge_older_than(T0 - 1)
    assert not old_orphan.exists() and young_orphan.exists()
    assert archive.read_attachment("$a", 0) == b"a"


# -- no clear text on disk -----------------------------------------------------------------------


def test_no_clear_text_reaches_the_disk(tmp_path: Path, path: Path) -> None:
    canary = "Zaunkönigquartett7Q"
    secret = Attachment(f"{canary}.txt", "text/plain", f"Datei über {canary}".encode())
    fillers = [message(f"$filler{n}", T0 + n, f"Füllmaterial Nummer {n}") for n in range(100)]
    with Archive(path, KEY) as archive:
        archive.add_many(
            [*fillers, message("$canary", T0 + 500, f"Treffen mit {canary}", attachments=[secret])]
        )
        archive.mark_redacted("$canary", T0 + 600, BOB)
        assert ids(archive.search(canary.lower())) == ["$canary"]
        assert archive.read_attachment("$canary", 0).decode() == f"Datei über {canary}"
        while_open = file_bytes(tmp_path)  # database, WAL, shared memory, attachment files
    after_close = file_bytes(tmp_path)
    for content in (while_open, after_close):
        assert b"$canary" in content  # the scan does see the file's bytes
        for form in (canary, canary.lower(), canary.casefold(), canary.upper()):
            assert form.encode() not in content
            assert form.encode("utf-16-le") not in content
        assert "Füllmaterial".encode() not in content


# -- load_key ------------------------------------------------------------------------------------


def test_load_key_reads_hex_and_base64_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "archive.key"
    key_file.write_text(KEY.hex().upper() + "\n")
    assert load_key(file=key_file) == KEY
    key_file.write_text(base64.b64encode(KEY).decode() + "\n")
    assert load_key(file=str(key_file)) == KEY
    monkeypatch.setenv("AUDITOR_ARCHIVE_KEY", base64.urlsafe_b64encode(OTHER_KEY).decode().rstrip("="))
    assert load_key(env="AUDITOR_ARCHIVE_KEY") == OTHER_KEY


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, r"archive key file .*archive\.key: no such file"),
        ("", r"archive key file .*archive\.key: empty"),
        ("zu kurz!", r"archive key file .*: not hex or base64"),
        (base64.b64encode(bytes(16)).decode(), r"archive key file .*: the key is 16 bytes long, expected 32"),
        (base64.b64encode(bytes(range(48))).decode(), r"archive key file .*: the key is 48 bytes long"),
        (bytes(31).hex(), r"archive key file .*: the key is 46 bytes long"),  # 62 digits: not hex
    ],
)
def test_load_key_from_a_bad_file_names_the_file(tmp_path: Path, content: str | None, error: str) -> None:
    key_file = tmp_path / "archive.key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(KeyLoadError, match=error):
        load_key(file=key_file)


def test_load_key_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDITOR_ARCHIVE_KEY", raising=False)
    with pytest.raises(KeyLoadError, match="environment variable AUDITOR_ARCHIVE_KEY: not set"):
        load_key(env="AUDITOR_ARCHIVE_KEY")
    monkeypatch.setenv("AUDITOR_ARCHIVE_KEY", base64.b64encode(bytes(31)).decode())
    with pytest.raises(KeyLoadError, match="environment variable AUDITOR_ARCHIVE_KEY: the key is 31 bytes"):
        load_key(env="AUDITOR_ARCHIVE_KEY")
    with pytest.raises(KeyLoadError, match="exactly one"):
        load_key()
    with pytest.raises(KeyLoadError, match="exactly one"):
        load_key(file="k", env="AUDITOR_ARCHIVE_KEY")


def test_stats_describe_the_archive(archive: Archive) -> None:
    archive.add_many(
        [
            message("$a", T0, "eins", attachments=[Attachment("a", "text/plain", b"12345")]),
            message("$b", T0 + 9, "zwei", room=OTHER_ROOM, sender=BOB),
        ]
    )
    stats = archive.stats()
    assert (stats.messages, stats.rooms, stats.senders) == (2, 2, 2)
    assert (stats.attachments, stats.attachment_bytes) == (1, 5)
    assert (stats.oldest_ts, stats.newest_ts) == (T0, T0 + 9)
    assert stats.database_bytes > 0
    assert archive_module.TS_LIMIT == 2**47


def test_a_policy_violation_is_kept_with_the_original_and_counted(archive: Archive) -> None:
    archive.add(
        message(
            "$exe",
            T0,
            "report.pdf",
            attachments=[Attachment("report.pdf", "application/pdf", b"\x7fELF payload")],
            violation="media.type: application/x-executable",
        )
    )
    archive.add(message("$fine", T0 + 1, "all quiet"))
    archive.mark_redacted("$exe", T0 + 5, "@auditor:polizei.example")
    kept = archive.get("$exe")
    assert kept is not None and kept.violation == "media.type: application/x-executable"
    assert kept.redacted_at == T0 + 5
    assert archive.read_attachment("$exe", 0) == b"\x7fELF payload"
    assert archive.get("$fine").violation is None
    assert archive.stats().violations == 1


def undo_full_events(db: sqlite3.Connection) -> None:
    """Take the fourth schema step back: no full events, no MACs, no held events."""
    db.execute("DROP TABLE held_events")
    db.execute("DROP INDEX messages_relates")
    for column in ("content", "relates_to", "rel_type", "mac"):
        db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    db.execute("DELETE FROM archive_meta WHERE name = 'row_macs'")
    db.execute("UPDATE archive_schema_version SET version = 3")


def test_an_archive_of_the_first_schema_gains_the_violation_column(path: Path) -> None:
    with Archive(path, KEY) as archive:
        archive.add(Message("$old", ROOM, ALICE, "PHONE1", T0, "from before"))
    # as the first version left it: no violation column, no enforcements, schema version 1
    db = raw(path)
    undo_full_events(db)
    db.execute("DROP TABLE enforcements")
    db.execute("ALTER TABLE messages DROP COLUMN violation")
    db.execute("UPDATE archive_schema_version SET version = 1")
    db.close()
    with Archive(path, KEY) as migrated:
        assert migrated.get("$old").violation is None
        migrated.add(message("$new", T0 + 1, "after", violation="media.type: text/html"))
        assert migrated.stats().violations == 1
    (version,) = raw(path).execute("SELECT version FROM archive_schema_version").fetchone()
    assert version == len(archive_module.MIGRATIONS)


# -- enforcing policy violations -----------------------------------------------------------------

EXE = "media.type: application/x-executable"
REFUSAL = Enforcement(
    media=("mxc://polizei.example/file1", "mxc://polizei.example/thumb1"),
    reason="type application/x-executable is not allowed; allowed: application/pdf",
)


def violating(event_id: str, ts: int, enforcement: Enforcement | None = REFUSAL) -> Message:
    attachment = Attachment("report.pdf", "application/pdf", b"\x7fELF payload")
    return message(
        event_id, ts, "report.pdf", attachments=[attachment], violation=EXE, enforcement=enforcement
    )


def test_a_violation_is_due_for_enforcement_until_recorded_as_enforced(archive: Archive) -> None:
    archive.add_many([violating("$exe", T0), message("$fine", T0 + 1, "all quiet")])
    (pending,) = archive.unenforced()
    assert pending.message.event_id == "$exe" and pending.message.violation == EXE
    assert pending.message.attachments[0].name == "report.pdf"
    assert (pending.enforcement, pending.notified, pending.attempts) == (REFUSAL, False, 0)
    assert archive.enforcement("$exe") == pending and archive.enforcement("$fine") is None
    assert archive.stats().unenforced_violations == 1
    # replayed after a restart: archived already, and still due
    assert not archive.add(violating("$exe", T0))
    assert [p.message.event_id for p in archive.unenforced()] == ["$exe"]

    archive.record_enforcement("$exe", enforced=True, notified=True)
    assert archive.unenforced() == [] and archive.enforcement("$exe") is None
    assert archive.stats().unenforced_violations == 0
    assert archive.stats().violations == 1
    with pytest.raises(KeyError):
        archive.record_enforcement("$fine", enforced=True)


def test_a_failed_enforcement_is_due_again_after_a_growing_back_off(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.add(violating("$exe", T0))
    archive.add(violating("$exe2", T0 + 1, enforcement=None))
    archive.record_enforcement("$exe", enforced=False, notified=True)
    # not due during the back-off, but still pending; the other one goes first meanwhile
    assert [p.message.event_id for p in archive.unenforced()] == ["$exe2"]
    assert archive.enforcement("$exe").attempts == 1
    assert archive.enforcement("$exe2").enforcement == Enforcement()
    monkeypatch.setattr(archive, "_clock", lambda: NOW + archive_module.RETRY_FIRST_MS)
    due = archive.unenforced(limit=1)
    assert [(p.message.event_id, p.notified, p.attempts) for p in due] == [("$exe2", False, 0)]
    assert [p.message.event_id for p in archive.unenforced()] == ["$exe2", "$exe"]
    archive.record_enforcement("$exe", enforced=False)  # the second failure waits twice as long
    assert archive.enforcement("$exe").notified  # told once stays told
    monkeypatch.setattr(archive, "_clock", lambda: NOW + 3 * archive_module.RETRY_FIRST_MS - 1)
    assert [p.message.event_id for p in archive.unenforced()] == ["$exe2"]
    monkeypatch.setattr(archive, "_clock", lambda: NOW + 3 * archive_module.RETRY_FIRST_MS)
    assert [p.message.event_id for p in archive.unenforced()] == ["$exe2", "$exe"]
    archive.record_enforcement("$exe", enforced=True)
    assert archive.enforcement("$exe") is None


def test_the_purge_takes_the_enforcement_records_along(archive: Archive) -> None:
    day = 86_400_000
    archive.add_many([violating("$old", T0), violating("$new", T0 + 2 * day)])
    assert archive.purge_older_than(T0 + day) == 1
    assert [p.message.event_id for p in archive.unenforced()] == ["$new"]
    assert archive.stats().unenforced_violations == 1


def test_what_enforcing_needs_is_not_in_the_database_in_clear(archive: Archive, path: Path) -> None:
    archive.add(violating("$exe", T0))
    archive.close()
    at_rest = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    assert b"mxc://" not in at_rest and b"file1" not in at_rest and b"allowed:" not in at_rest


def test_violations_of_an_earlier_schema_count_as_enforced(path: Path) -> None:
    """Versions before the enforcements table enforced a violation when they archived it."""
    with Archive(path, KEY) as archive:
        archive.add(violating("$old", T0))
    db = raw(path)
    undo_full_events(db)
    db.execute("DROP TABLE enforcements")
    db.execute("UPDATE archive_schema_version SET version = 2")
    db.close()
    with Archive(path, KEY) as migrated:
        assert migrated.unenforced() == [] and migrated.enforcement("$old") is None
        migrated.add(violating("$new", T0 + 1))
        assert [p.message.event_id for p in migrated.unenforced()] == ["$new"]
        assert migrated.stats().violations == 2
