"""Several auditor bots (shards) on one PostgreSQL archive: concurrent writers, openers and
purges on a real server (each ``PostgresArchive`` its own connection, in its own thread)."""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import pytest

from bots.auditor.archive import Attachment
from bots.auditor.archive_pg import PostgresArchive
from devtools.postgres import PG_BIN, PostgresCluster
from tests.unit.test_auditor_archive import ALICE, BOB, KEY, NOW, OTHER_ROOM, ROOM, T0, message

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 binaries are not installed"),
]

T = TypeVar("T")
DAY = 86_400_000


def new_dsn(cluster: PostgresCluster, prefix: str) -> str:
    args = cluster.create_database(f"{prefix}_{uuid.uuid4().hex[:8]}")["args"]
    return f"host={args['host']} port={args['port']} dbname={args['database']} user={args['user']}"


@pytest.fixture
def dsn(cluster: PostgresCluster) -> str:
    return new_dsn(cluster, "shards")


@pytest.fixture
def shards(dsn: str, tmp_path: Path) -> Iterator[tuple[PostgresArchive, PostgresArchive]]:
    """Two bots' archives: one database, one attachments directory, two connections."""
    files = tmp_path / "attachments"
    with (
        PostgresArchive(dsn, KEY, files=files, clock=lambda: NOW) as first,
        PostgresArchive(dsn, KEY, files=files, clock=lambda: NOW) as second,
    ):
        yield first, second


def at_once(*work: Callable[[], T]) -> list[T]:
    """Run each callable in its own thread, released together; their results (or the first
    exception)."""
    barrier = threading.Barrier(len(work))

    def run(job: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return job()

    with ThreadPoolExecutor(len(work)) as pool:
        futures = [pool.submit(run, job) for job in work]
        return [future.result(timeout=120) for future in futures]


def write_as_shard(archive: PostgresArchive, name: str, other: str, count: int) -> None:
    """What a busy shard does: messages of one millisecond (singly and in batches), with an
    attachment now and then, redactions of its own and the other shard's messages (often
    before those arrive), held events."""
    for n in range(count):
        attachments = (
            [Attachment(f"{name}{n}.txt", "text/plain", f"{name}{n}".encode())] if n % 10 == 0 else []
        )
        if n % 3 == 0:
            archive.add_many(
                [
                    message(f"${name}{n}", T0, f"gemeinsam {name} nummer{n}", attachments=attachments),
                    message(f"${name}{n}b", T0, f"gemeinsam {name} stapel{n}", room=OTHER_ROOM),
                ]
            )
        else:
            archive.add(message(f"${name}{n}", T0, f"gemeinsam {name} nummer{n}", attachments=attachments))
        if n % 4 == 0:
            archive.mark_redacted(f"${name}{n}", T0 + 1, ALICE)
            archive.mark_redacted(f"${other}{n + 1}", T0 + 2, BOB)  # may not be archived yet
        if n % 5 == 0:
            archive.hold_undecrypted(f"$held-{name}{n}", ROOM, '{"type":"m.room.encrypted"}', T0 + n)
        if n % 7 == 0:  # a room both bots are in (invited by hand): each event is kept once
            archive.add(message(f"$zwei{n}", T0, f"gemeinsam beide{n}"))


def test_two_shards_write_one_millisecond_at_once_and_lose_nothing(
    shards: tuple[PostgresArchive, PostgresArchive],
) -> None:
    first, second = shards
    count = 150
    at_once(
        lambda: write_as_shard(first, "a", "b", count),
        lambda: write_as_shard(second, "b", "a", count),
    )
    expected = {f"${name}{n}" for name in "ab" for n in range(count)}
    expected |= {f"${name}{n}b" for name in "ab" for n in range(0, count, 3)}
    expected |= {f"$zwei{n}" for n in range(0, count, 7)}
    for reader in shards:
        assert reader.count() == len(expected)
        found = {hit.message.event_id for hit in reader.search("gemeinsam", limit=10_000)}
        assert found == expected
        assert {hit.message.event_id for hit in reader.search("b", limit=10_000)} == {
            event_id for event_id in expected if event_id.startswith("$b")
        }
        # row IDs are time order: one millisecond, so every row is in [T0 << 16, (T0 + 1) << 16)
        assert len(reader.search(since=T0, until=T0 + 1, limit=10_000)) == len(expected)
        for name, other in (("a", "b"), ("b", "a")):
            for n in range(0, count, 4):
                own = reader.get(f"${name}{n}")
                assert own is not None and own.redacted_by == ALICE
                later = reader.get(f"${other}{n + 1}")
                assert later is not None and later.redacted_by == BOB, f"${other}{n + 1}"
            for n in range(0, count, 10):
                assert reader.read_attachment(f"${name}{n}", 0) == f"{name}{n}".encode()
        held = {held.event_id for held in reader.undecrypted()}
        assert held == {f"$held-{name}{n}" for name in "ab" for n in range(0, count, 5)}
        stats = reader.stats()
        assert (stats.pending_redactions, stats.messages) == (0, len(expected))
        assert list(reader.verify_records()) == []


def test_shards_opening_a_new_database_at_once_create_one_archive(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    for _ in range(3):  # a race: a few new databases, four bots starting together on each
        dsn = new_dsn(cluster, "fresh")
        files = tmp_path / uuid.uuid4().hex
        opened = at_once(*[functools.partial(PostgresArchive, dsn, KEY, files=files) for _ in range(4)])
        try:
            for n, archive in enumerate(opened):
                archive.add(message(f"$m{n}", T0, f"start{n}"))
            for archive in opened:
                # one key salt for all: each decrypts and finds what the others wrote
                assert {hit.message.event_id for hit in archive.search()} == {f"$m{n}" for n in range(4)}
                assert archive.search("start2")[0].message.body == "start2"
        finally:
            for archive in opened:
                archive.close()
        with psycopg2.connect(dsn) as db, db.cursor() as cursor:
            cursor.execute("SELECT version FROM archive_schema_version")
            assert cursor.fetchall() == [(len(PostgresArchive.migrations),)]
            cursor.execute("SELECT name, count(*) FROM archive_meta GROUP BY name")
            assert all(count == 1 for _name, count in cursor.fetchall())


def test_shards_purging_at_once_delete_each_old_message_once(
    shards: tuple[PostgresArchive, PostgresArchive],
) -> None:
    first, second = shards
    old = [
        message(f"$old{n}", T0 + n, "alt", attachments=[Attachment("a", "text/plain", b"x")] if n % 2 else [])
        for n in range(3_000)
    ]
    first.add_many(old)
    new = [
        message(f"$new{n}", T0 + 2 * DAY + n, "neu", attachments=[Attachment("n", "text/plain", b"n")])
        for n in range(50)
    ]
    second.add_many(new)
    first.hold_undecrypted("$held-old", ROOM, "{}", T0)
    second.hold_undecrypted("$held-new", OTHER_ROOM, "{}", T0 + 2 * DAY)
    orphans = leave_orphans(first, 1_500)
    cutoff = T0 + DAY
    deleted = at_once(
        lambda: first.purge_older_than(cutoff),
        lambda: second.purge_older_than(cutoff),
        lambda: second.add_many([message(f"$during{n}", T0 + 3 * DAY + n, "neu") for n in range(20)]),
    )
    assert deleted[0] + deleted[1] == len(old)
    for reader in shards:
        assert reader.count() == len(new) + 20
        assert [held.event_id for held in reader.undecrypted()] == ["$held-new"]
        assert all(reader.read_attachment(f"$new{n}", 0) == b"n" for n in range(len(new)))
    assert not any(path.exists() for path in orphans)
    files = [path for path in first.files.rglob("*") if path.is_file()]
    assert len(files) == len(new)


def leave_orphans(archive: PostgresArchive, count: int) -> list[Path]:
    """Leftovers of crashes (files without rows), old enough for the purge to remove."""
    hours_ago = time.time() - 2 * 3600
    orphans = []
    for _ in range(count):
        name = os.urandom(16).hex()
        path = archive.files / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"leftover")
        os.utime(path, (hours_ago, hours_ago))
        orphans.append(path)
    return orphans


def test_shards_removing_orphan_files_at_once_do_not_trip_over_each_other(
    shards: tuple[PostgresArchive, PostgresArchive],
) -> None:
    """Both walk the files at once, each unlinking what the other is about to look at."""
    first, second = shards
    first.add(message("$kept", T0, "bleibt", attachments=[Attachment("k", "text/plain", b"k")]))
    for _ in range(5):
        orphans = leave_orphans(first, 2_000)
        assert at_once(lambda: first.purge_older_than(T0), lambda: second.purge_older_than(T0)) == [0, 0]
        assert not any(path.exists() for path in orphans)
    assert second.read_attachment("$kept", 0) == b"k"


def test_writers_stay_apart_when_the_server_defaults_to_repeatable_read(dsn: str, tmp_path: Path) -> None:
    """An operator's ``default_transaction_isolation`` must not let a writer take a row ID
    another writer took while it waited for the write lock."""
    with psycopg2.connect(dsn) as db, db.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        (name,) = cursor.fetchone()
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'")
    connection.close()
    files = tmp_path / "attachments"
    with (
        PostgresArchive(dsn, KEY, files=files) as first,
        PostgresArchive(dsn, KEY, files=files) as second,
    ):

        def write(archive: PostgresArchive, name: str) -> list[Any]:
            return [archive.add(message(f"${name}{n}", T0, "gleich")) for n in range(100)]

        results = at_once(lambda: write(first, "a"), lambda: write(second, "b"))
        assert all(all(added) for added in results)
        assert first.count() == 200
