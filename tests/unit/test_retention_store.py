"""The retention sweep's transactions, on plain SQLite.

Synapse's tables get minimal stand-ins with the columns the queries read;
the module's own table comes from ``schema.migrate``. The integration test
``tests/integration/test_retention_sweep.py`` pins the same queries against a
real Synapse.
"""

from __future__ import annotations

import sqlite3

import pytest

from synapse_police_policy import schema
from synapse_police_policy.retention_store import (
    WATERMARK,
    StoredEvent,
    _events_after_txn,
    _joined_rooms_txn,
    _media_uploaded_before_txn,
    _redacted_txn,
    _set_watermark_txn,
    _watermark_txn,
)
from tests.synapse_tables import SYNAPSE_TABLES

SERVER = "police.example"
SYSTEM = "@policy:police.example"
ALICE = "@alice:police.example"
ROOM_A = "!a:police.example"
ROOM_B = "!b:police.example"
NOW = 1_700_000_000_000


def create_synapse_tables(txn: sqlite3.Cursor) -> None:
    for statement in SYNAPSE_TABLES:
        txn.execute(statement)


def add_event(
    txn: sqlite3.Cursor,
    stream_ordering: int,
    event_id: str | None = None,
    *,
    type: str = "m.room.encrypted",
    room_id: str = ROOM_A,
    state_key: str | None = None,
    outlier: bool = False,
    rejection_reason: str | None = None,
    received_ts: int | None = NOW,
    sender: str = ALICE,
) -> str:
    event_id = event_id or f"$e{stream_ordering}"
    txn.execute(
        "INSERT INTO events (stream_ordering, event_id, type, room_id, state_key, outlier,"
        " rejection_reason, received_ts, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (stream_ordering, event_id, type, room_id, state_key, outlier, rejection_reason, received_ts, sender),
    )
    return event_id


@pytest.fixture
def txn(db: sqlite3.Connection) -> sqlite3.Cursor:
    cursor = db.cursor()
    schema.migrate(cursor)
    create_synapse_tables(cursor)
    return cursor


# --- schema --------------------------------------------------------------------------


def test_migration_creates_the_progress_table(txn: sqlite3.Cursor) -> None:
    txn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    assert "police_policy_retention_progress" in {row[0] for row in txn.fetchall()}


# --- watermark -----------------------------------------------------------------------


def test_watermark_starts_at_zero(txn: sqlite3.Cursor) -> None:
    assert _watermark_txn(txn) == 0


def test_set_watermark_inserts_then_updates(txn: sqlite3.Cursor) -> None:
    _set_watermark_txn(txn, 42)
    assert _watermark_txn(txn) == 42

    _set_watermark_txn(txn, 4711)
    assert _watermark_txn(txn) == 4711

    txn.execute("SELECT name, position FROM police_policy_retention_progress")
    assert txn.fetchall() == [(WATERMARK, 4711)]


def test_watermark_name(txn: sqlite3.Cursor) -> None:
    assert WATERMARK == "redaction_sweep"
    txn.execute("INSERT INTO police_policy_retention_progress (name, position) VALUES ('other', 9)")
    assert _watermark_txn(txn) == 0  # other progress rows are not the sweep's

    _set_watermark_txn(txn, 3)
    txn.execute("SELECT name, position FROM police_policy_retention_progress ORDER BY name")
    assert txn.fetchall() == [("other", 9), (WATERMARK, 3)]


def test_watermark_survives_a_commit(db: sqlite3.Connection, txn: sqlite3.Cursor) -> None:
    _set_watermark_txn(txn, 17)
    db.commit()
    assert _watermark_txn(db.cursor()) == 17


def test_watermark_is_an_int_for_large_positions(txn: sqlite3.Cursor) -> None:
    _set_watermark_txn(txn, 2**40)
    position = _watermark_txn(txn)
    assert position == 2**40
    assert type(position) is int


# --- events after the watermark -------------------------------------------------------


def test_events_after_returns_content_events_in_stream_order(txn: sqlite3.Cursor) -> None:
    # inserted out of order: the query orders by stream_ordering
    add_event(txn, 5, received_ts=NOW + 5, room_id=ROOM_B)
    add_event(txn, 2, received_ts=NOW + 2)
    add_event(txn, 9, type="m.room.message", received_ts=NOW + 9)

    assert _events_after_txn(txn, 0, 10) == [
        StoredEvent(2, "$e2", ROOM_A, NOW + 2),
        StoredEvent(5, "$e5", ROOM_B, NOW + 5),
        StoredEvent(9, "$e9", ROOM_A, NOW + 9),
    ]


def test_events_after_skips_what_is_not_timeline_content(txn: sqlite3.Cursor) -> None:
    add_event(txn, 1, type="m.room.member", state_key=ALICE)
    add_event(txn, 2, type="m.room.name", state_key="")  # empty state key is still state
    add_event(txn, 3, type="m.room.redaction")
    add_event(txn, 4, outlier=True)
    add_event(txn, 5, rejection_reason="auth_error")
    add_event(txn, 6, rejection_reason="")  # rejected, however it is worded
    kept = add_event(txn, 7, type="m.sticker")

    assert [event.event_id for event in _events_after_txn(txn, 0, 100)] == [kept]


def test_events_after_starts_strictly_after_the_position(txn: sqlite3.Cursor) -> None:
    for stream_ordering in range(1, 6):
        add_event(txn, stream_ordering)

    assert [event.stream_ordering for event in _events_after_txn(txn, 3, 100)] == [4, 5]
    assert _events_after_txn(txn, 5, 100) == []
    assert _events_after_txn(txn, 99, 100) == []


def test_events_after_honours_the_limit(txn: sqlite3.Cursor) -> None:
    for stream_ordering in range(1, 11):
        add_event(txn, stream_ordering)
    add_event(txn, 11, type="m.room.topic", state_key="")

    assert [event.stream_ordering for event in _events_after_txn(txn, 0, 3)] == [1, 2, 3]
    assert [event.stream_ordering for event in _events_after_txn(txn, 8, 3)] == [9, 10]
    assert [event.stream_ordering for event in _events_after_txn(txn, 0, 1)] == [1]


def test_events_after_limit_counts_content_events_only(txn: sqlite3.Cursor) -> None:
    add_event(txn, 1, type="m.room.member", state_key=ALICE)
    add_event(txn, 2, type="m.room.redaction")
    add_event(txn, 3)
    add_event(txn, 4)

    assert [event.stream_ordering for event in _events_after_txn(txn, 0, 2)] == [3, 4]


def test_events_after_reads_a_missing_received_ts_as_zero(txn: sqlite3.Cursor) -> None:
    add_event(txn, 1, received_ts=None)
    assert _events_after_txn(txn, 0, 10) == [StoredEvent(1, "$e1", ROOM_A, 0)]


def test_events_after_on_an_empty_table(txn: sqlite3.Cursor) -> None:
    assert _events_after_txn(txn, 0, 200) == []


# --- redactions ------------------------------------------------------------------------


def test_redacted_returns_the_subset_with_a_redaction(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)",
        [("$r1", "$e1"), ("$r2", "$e3"), ("$r3", "$elsewhere"), ("$r4", "$e3")],
    )

    assert _redacted_txn(txn, ["$e1", "$e2", "$e3"]) == {"$e1", "$e3"}
    assert _redacted_txn(txn, ["$e2"]) == set()
    assert _redacted_txn(txn, {"$e1"}) == {"$e1"}


def test_redacted_of_nothing_queries_nothing(txn: sqlite3.Cursor) -> None:
    txn.execute("DROP TABLE redactions")  # would fail if it were queried
    assert _redacted_txn(txn, []) == set()


def test_redacted_takes_a_full_batch(txn: sqlite3.Cursor) -> None:
    ids = [f"$e{i}" for i in range(200)]
    txn.executemany("INSERT INTO redactions (event_id, redacts) VALUES (?, ?)", [("$r", ids[7])])
    assert _redacted_txn(txn, ids) == {ids[7]}


# --- rooms of the system user ------------------------------------------------------------


def test_joined_rooms_are_those_with_membership_join(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO local_current_membership (room_id, user_id, membership) VALUES (?, ?, ?)",
        [
            (ROOM_A, SYSTEM, "join"),
            (ROOM_B, SYSTEM, "invite"),
            ("!c:police.example", SYSTEM, "leave"),
            ("!d:police.example", SYSTEM, "ban"),
            ("!e:police.example", ALICE, "join"),
            ("!f:police.example", SYSTEM, "join"),
        ],
    )

    assert _joined_rooms_txn(txn, SYSTEM) == {ROOM_A, "!f:police.example"}
    assert _joined_rooms_txn(txn, ALICE) == {"!e:police.example"}
    assert _joined_rooms_txn(txn, "@nobody:police.example") == set()


# --- media -----------------------------------------------------------------------------------


def add_media(txn: sqlite3.Cursor, media_id: str, created_ts: int) -> None:
    txn.execute(
        "INSERT INTO local_media_repository (media_id, created_ts) VALUES (?, ?)", (media_id, created_ts)
    )


def test_media_uploaded_before_the_cutoff(txn: sqlite3.Cursor) -> None:
    add_media(txn, "old", NOW - 1)
    add_media(txn, "older", NOW - 86_400_000)
    add_media(txn, "at_cutoff", NOW)
    add_media(txn, "new", NOW + 1)

    assert sorted(_media_uploaded_before_txn(txn, SERVER, NOW, 100)) == ["old", "older"]


def test_media_avatars_of_users_and_rooms_stay(txn: sqlite3.Cursor) -> None:
    for media_id in ("user_avatar", "room_avatar", "photo", "other_server_avatar"):
        add_media(txn, media_id, NOW - 1000)
    txn.executemany(
        "INSERT INTO profiles (user_id, avatar_url) VALUES (?, ?)",
        [
            (ALICE, f"mxc://{SERVER}/user_avatar"),
            ("@bob:police.example", None),
            # the same media ID on another server is not this server's upload
            ("@carol:police.example", "mxc://other.example/other_server_avatar"),
        ],
    )
    txn.executemany(
        "INSERT INTO room_stats_state (room_id, avatar) VALUES (?, ?)",
        [(ROOM_A, f"mxc://{SERVER}/room_avatar"), (ROOM_B, None)],
    )

    assert sorted(_media_uploaded_before_txn(txn, SERVER, NOW, 100)) == ["other_server_avatar", "photo"]


def test_media_mxc_uses_the_server_name_given(txn: sqlite3.Cursor) -> None:
    add_media(txn, "avatar", NOW - 1000)
    txn.execute("INSERT INTO profiles (user_id, avatar_url) VALUES (?, ?)", (ALICE, f"mxc://{SERVER}/avatar"))

    assert _media_uploaded_before_txn(txn, SERVER, NOW, 100) == []
    # read as another server's store, the avatar is not one of its own
    assert _media_uploaded_before_txn(txn, "other.example", NOW, 100) == ["avatar"]


def test_media_with_null_avatars_everywhere_is_not_excluded(txn: sqlite3.Cursor) -> None:
    """NULLs in the subqueries would make NOT IN unknown; they are filtered out."""
    add_media(txn, "photo", NOW - 1000)
    txn.execute("INSERT INTO profiles (user_id, avatar_url) VALUES (?, NULL)", (ALICE,))
    txn.execute("INSERT INTO room_stats_state (room_id, avatar) VALUES (?, NULL)", (ROOM_A,))

    assert _media_uploaded_before_txn(txn, SERVER, NOW, 100) == ["photo"]


def test_media_uploaded_before_honours_the_limit(txn: sqlite3.Cursor) -> None:
    for i in range(5):
        add_media(txn, f"m{i}", NOW - 1000 - i)

    found = _media_uploaded_before_txn(txn, SERVER, NOW, 3)
    assert len(found) == 3
    assert set(found) <= {f"m{i}" for i in range(5)}
    assert _media_uploaded_before_txn(txn, SERVER, NOW, 0) == []


def test_media_uploaded_before_on_an_empty_table(txn: sqlite3.Cursor) -> None:
    assert _media_uploaded_before_txn(txn, SERVER, NOW, 100) == []
