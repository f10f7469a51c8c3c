"""A bot's rooms as a filter of the archive (``rooms=``), for several auditor bots sharing one:
each enforces, retries and counts only what is of its own rooms. On SQLite and PostgreSQL;
``None`` filters nothing, as before shards."""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.auditor.archive import Archive, Enforcement, Message
from devtools.postgres import PG_BIN
from tests.unit.test_auditor_archive import ALICE, KEY, NOW, T0

HAVE_POSTGRES = (PG_BIN / "initdb").exists()
_DATA_TABLES = "messages, attachments, message_tokens, pending_redactions, enforcements, held_events"

#: opens an empty archive (a context manager), on the backend of the test
Fresh = Callable[[], contextlib.AbstractContextManager[Archive]]


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
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fresh]:
    if request.param == "sqlite":

        @contextlib.contextmanager
        def sqlite_archive() -> Iterator[Archive]:
            directory = Path(tempfile.mkdtemp(dir=tmp_path))
            with Archive(directory / "archive.db", KEY, clock=lambda: NOW) as archive:
                yield archive

        yield sqlite_archive
        return
    import psycopg2

    from bots.auditor.archive_pg import PostgresArchive

    cluster = request.getfixturevalue("cluster")
    args = cluster.create_database(f"rooms_{uuid.uuid4().hex[:8]}")["args"]
    dsn = f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"
    PostgresArchive(dsn, KEY, files=tmp_path / "attachments").close()  # the schema, once

    @contextlib.contextmanager
    def postgres_archive() -> Iterator[Archive]:
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {_DATA_TABLES}")
        connection.close()
        with PostgresArchive(dsn, KEY, files=tmp_path / "attachments", clock=lambda: NOW) as archive:
            yield archive

    yield postgres_archive


def violation(event_id: str, room_id: str, ts: int) -> Message:
    return Message(
        event_id,
        room_id,
        ALICE,
        "PHONE1",
        ts,
        "datei.exe",
        msgtype="m.file",
        violation="media.type: application/x-executable",
        enforcement=Enforcement(media=["mxc://x.test/file"], reason="not allowed"),
    )


# Room IDs as servers may spell them: any text but NUL (no database keeps it) and lone
# surrogates (no UTF-8 has them); quotes, commas, braces and backslashes included, which an
# array literal or a JSON text must carry unharmed.
room_ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12).map(
    lambda text: f"!{text}:x.test"
)


@st.composite
def shared_archives(draw: st.DrawFn) -> tuple[list[tuple[str, str, str, int]], frozenset[str]]:
    """Rows of several bots' rooms: (kind, event ID, room ID, time), and one bot's rooms
    (some of them, and rooms without rows)."""
    pool = draw(st.lists(room_ids, min_size=1, max_size=6, unique=True))
    rows = []
    for n in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["due", "failed", "enforced", "held"]))
        rows.append((kind, f"${n}", draw(st.sampled_from(pool)), T0 + draw(st.integers(0, 5))))
    mine = draw(st.frozensets(st.one_of(st.sampled_from(pool), room_ids), max_size=8))
    return rows, mine


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=shared_archives(), limit=st.integers(1, 5))
def test_a_bots_rooms_select_exactly_their_violations_and_held_events(
    fresh: Fresh, case: tuple[list[tuple[str, str, str, int]], frozenset[str]], limit: int
) -> None:
    rows, mine = case
    with fresh() as archive:
        for kind, event_id, room_id, ts in rows:
            if kind == "held":
                archive.hold_undecrypted(event_id, room_id, '{"type":"m.room.encrypted"}', ts)
                continue
            archive.add(violation(event_id, room_id, ts))
            if kind != "due":
                archive.record_enforcement(event_id, enforced=kind == "enforced")
        every = archive.unenforced(limit=100)
        assert (
            archive.unenforced(limit, rooms=mine) == [p for p in every if p.message.room_id in mine][:limit]
        )
        assert archive.unenforced(limit, rooms=None) == every[:limit]
        for kind, event_id, room_id, _ts in rows:
            if kind != "held":
                found = archive.enforcement(event_id, rooms=mine)
                assert found == (archive.enforcement(event_id) if room_id in mine else None)
        held = archive.undecrypted()
        assert archive.undecrypted(rooms=mine) == [h for h in held if h.room_id in mine]
        for cutoff in (T0, T0 + 3, T0 + 6):
            counts = archive.undecryptable_counts(cutoff)
            assert archive.undecryptable_counts(cutoff, rooms=mine) == {
                room_id: count for room_id, count in counts.items() if room_id in mine
            }


def test_five_thousand_rooms_filter_in_one_statement(fresh: Fresh) -> None:
    """A shard's share of a large installation: the filter is one parameter, not 5,000."""
    rooms = [f"!room{n:05d}:x.test" for n in range(10_000)]
    mine = frozenset(rooms[::2])
    with fresh() as archive:
        for n in range(0, 10_000, 500):
            archive.add(violation(f"$v{n}", rooms[n + (n // 500) % 2], T0 + n))
            archive.hold_undecrypted(f"$h{n}", rooms[n + 1], "{}", T0 + n)
        started = time.monotonic()
        due = archive.unenforced(100, rooms=mine)
        held = archive.undecrypted(rooms=mine)
        counts = archive.undecryptable_counts(NOW, rooms=mine)
        took = time.monotonic() - started
    assert [p.message.event_id for p in due] == [f"$v{n}" for n in range(0, 10_000, 1000)]
    assert held == [] and counts == {}
    assert took < 10, f"{took:.1f}s for three queries"


@pytest.mark.parametrize("rooms", ["!one:x.test", b"!one:x.test", [None], 7])
def test_a_room_filter_must_be_a_collection_of_room_ids(fresh: Fresh, rooms: Any) -> None:
    with fresh() as archive, pytest.raises(TypeError, match="rooms must"):
        archive.undecrypted(rooms=rooms)
