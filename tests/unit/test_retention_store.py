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
from synapse_police_policy.retention.store import (
    KEPT_STATE_TYPES,
    WATERMARK,
    Failure,
    Retry,
    StoredEvent,
    _blank_stale_snapshot_names_txn,
    _censor_txn,
    _current_txn,
    _delete_to_device_before_txn,
    _due_for_censoring_txn,
    _events_after_txn,
    _existing_txn,
    _forget_txn,
    _joined_rooms_txn,
    _media_uploaded_before_txn,
    _note_to_device_position_txn,
    _queue_censoring_txn,
    _record_failures_txn,
    _retries_due_txn,
    _retries_of_txn,
    _retry_summary_txn,
    _set_watermark_txn,
    _superseded_after_txn,
    _watermark_txn,
    _with_redactions_txn,
    to_device_position_at,
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
        StoredEvent(9, "$e9", ROOM_A, NOW + 9, "m.room.message"),
    ]


def test_events_after_skips_what_is_never_swept(txn: sqlite3.Cursor) -> None:
    add_event(txn, 1, type="m.room.power_levels", state_key="")
    add_event(txn, 2, type="m.room.create", state_key="")
    add_event(txn, 3, type="m.room.redaction")
    add_event(txn, 4, outlier=True)
    add_event(txn, 5, rejection_reason="auth_error")
    add_event(txn, 6, rejection_reason="")  # rejected, however it is worded
    kept = add_event(txn, 7, type="m.sticker")

    assert [event.event_id for event in _events_after_txn(txn, 0, 100)] == [kept]


@pytest.mark.parametrize("kind", KEPT_STATE_TYPES)
def test_state_without_text_is_never_swept(txn: sqlite3.Cursor, kind: str) -> None:
    add_event(txn, 1, type=kind, state_key="")
    assert _events_after_txn(txn, 0, 100) == []


def test_state_that_can_carry_text_is_walked_and_marked_as_state(txn: sqlite3.Cursor) -> None:
    add_event(txn, 1, type="m.room.member", state_key=ALICE)
    add_event(txn, 2, type="m.room.name", state_key="")  # an empty state key is still state
    add_event(txn, 3, type="com.example.note", state_key="x")

    assert _events_after_txn(txn, 0, 100) == [
        StoredEvent(1, "$e1", ROOM_A, NOW, "m.room.member", True),
        StoredEvent(2, "$e2", ROOM_A, NOW, "m.room.name", True),
        StoredEvent(3, "$e3", ROOM_A, NOW, "com.example.note", True),
    ]


def test_events_after_starts_strictly_after_the_position(txn: sqlite3.Cursor) -> None:
    for stream_ordering in range(1, 6):
        add_event(txn, stream_ordering)

    assert [event.stream_ordering for event in _events_after_txn(txn, 3, 100)] == [4, 5]
    assert _events_after_txn(txn, 5, 100) == []
    assert _events_after_txn(txn, 99, 100) == []


def test_events_after_honours_the_limit(txn: sqlite3.Cursor) -> None:
    for stream_ordering in range(1, 11):
        add_event(txn, stream_ordering)
    add_event(txn, 11, type="m.room.power_levels", state_key="")

    assert [event.stream_ordering for event in _events_after_txn(txn, 0, 3)] == [1, 2, 3]
    assert [event.stream_ordering for event in _events_after_txn(txn, 8, 3)] == [9, 10]
    assert [event.stream_ordering for event in _events_after_txn(txn, 0, 1)] == [1]


def test_events_after_limit_counts_swept_events_only(txn: sqlite3.Cursor) -> None:
    add_event(txn, 1, type="m.room.join_rules", state_key="")
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


def test_with_redactions_returns_the_subset_some_redaction_names(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)",
        [("$r1", "$e1"), ("$r2", "$e3"), ("$r3", "$elsewhere"), ("$r4", "$e3")],
    )

    assert _with_redactions_txn(txn, ["$e1", "$e2", "$e3"]) == {"$e1", "$e3"}
    assert _with_redactions_txn(txn, ["$e2"]) == set()
    assert _with_redactions_txn(txn, {"$e1"}) == {"$e1"}


def test_with_redactions_of_nothing_queries_nothing(txn: sqlite3.Cursor) -> None:
    txn.execute("DROP TABLE redactions")  # would fail if it were queried
    assert _with_redactions_txn(txn, []) == set()


def test_with_redactions_takes_a_full_batch(txn: sqlite3.Cursor) -> None:
    ids = [f"$e{i}" for i in range(200)]
    txn.executemany("INSERT INTO redactions (event_id, redacts) VALUES (?, ?)", [("$r", ids[7])])
    assert _with_redactions_txn(txn, ids) == {ids[7]}


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


# --- state superseded after it expired -------------------------------------------------


def add_delta(txn: sqlite3.Cursor, stream_id: int, prev_event_id: str | None, room_id: str = ROOM_A) -> None:
    txn.execute(
        "INSERT INTO current_state_delta_stream"
        " (stream_id, room_id, type, state_key, event_id, prev_event_id) VALUES (?, ?, 'x', '', '$new', ?)",
        (stream_id, room_id, prev_event_id),
    )


def test_superseded_state_is_read_from_the_delta_stream(txn: sqlite3.Cursor) -> None:
    topic = add_event(txn, 1, type="m.room.topic", state_key="")
    levels = add_event(txn, 2, type="m.room.power_levels", state_key="")
    member = add_event(txn, 3, type="m.room.member", state_key=ALICE, room_id=ROOM_B)
    add_delta(txn, 10, topic)
    add_delta(txn, 11, levels)  # kept type: never redacted
    add_delta(txn, 12, None)  # new state, nothing superseded
    add_delta(txn, 13, member, ROOM_B)

    found, reached = _superseded_after_txn(txn, 0, 100)

    assert found == [
        StoredEvent(10, topic, ROOM_A, NOW, "m.room.topic", True),
        StoredEvent(13, member, ROOM_B, NOW, "m.room.member", True),
    ]
    assert reached == 13
    assert _superseded_after_txn(txn, 13, 100) == ([], 13)
    assert _superseded_after_txn(txn, 10, 100) == (found[1:], 13)


def test_superseded_walk_passes_deltas_that_supersede_nothing_swept(txn: sqlite3.Cursor) -> None:
    levels = add_event(txn, 1, type="m.room.power_levels", state_key="")
    add_delta(txn, 5, levels)
    add_delta(txn, 6, None)

    assert _superseded_after_txn(txn, 0, 100) == ([], 6)


def test_superseded_batches_end_at_a_whole_stream_id(txn: sqlite3.Cursor) -> None:
    """Several deltas share a stream ID; a batch never ends inside one."""
    for index in range(5):
        event_id = add_event(txn, index + 1, type="m.room.member", state_key=f"@u{index}:police.example")
        add_delta(txn, 7 if index < 2 else 8, event_id)

    found, reached = _superseded_after_txn(txn, 0, 3)

    # the limit cut into stream ID 8: all of 8 is read, and the walk reaches 8
    assert [event.stream_ordering for event in found] == [7, 7, 8, 8, 8]
    assert reached == 8


def test_superseded_batch_of_one_stream_id_reads_it_all(txn: sqlite3.Cursor) -> None:
    for index in range(4):
        event_id = add_event(txn, index + 1, type="m.room.member", state_key=f"@u{index}:police.example")
        add_delta(txn, 9, event_id)
    add_delta(txn, 10, add_event(txn, 99, type="m.room.topic", state_key=""))

    found, reached = _superseded_after_txn(txn, 0, 2)

    assert ([event.stream_ordering for event in found], reached) == ([9, 9, 9, 9], 9)
    assert [event.stream_ordering for event in _superseded_after_txn(txn, 9, 2)[0]] == [10]


def test_current_and_existing(txn: sqlite3.Cursor) -> None:
    topic = add_event(txn, 1, type="m.room.topic", state_key="")
    old = add_event(txn, 2, type="m.room.topic", state_key="")
    txn.execute(
        "INSERT INTO current_state_events (event_id, room_id, type, state_key) VALUES (?, ?, ?, '')",
        (topic, ROOM_A, "m.room.topic"),
    )

    message = add_event(txn, 3)
    assert _current_txn(txn, [topic, old, "$gone"]) == {topic}
    assert _existing_txn(txn, [topic, message, "$gone"]) == {topic: True, message: False}
    txn.execute("DROP TABLE events")  # empty lists query nothing
    assert _current_txn(txn, []) == set()
    assert _existing_txn(txn, []) == {}


# --- retries ---------------------------------------------------------------------------


def failure(event_id: str, kind: str = "forbidden", attempts: int = 1, next_try_at: int = NOW) -> Failure:
    event = StoredEvent(1, event_id, ROOM_A, NOW - 100, "m.room.encrypted")
    return Failure(event, kind, "You don't have permission to redact events", attempts, NOW - 50, next_try_at)


def test_failures_are_recorded_updated_and_read_back(txn: sqlite3.Cursor) -> None:
    _record_failures_txn(txn, [failure("$a", next_try_at=NOW + 10), failure("$b", "not_in_room")])
    _record_failures_txn(txn, [failure("$a", "refused", attempts=2, next_try_at=NOW + 20)])

    found = _retries_of_txn(txn, ["$a", "$b", "$c"])

    event = StoredEvent(0, "$a", ROOM_A, NOW - 100, "m.room.encrypted")
    assert found["$a"] == Retry(event, "refused", 2, NOW - 50)  # the first failure's time stays
    assert set(found) == {"$a", "$b"}
    txn.execute("SELECT error, next_try_at FROM police_policy_retention_retries WHERE event_id = '$a'")
    assert txn.fetchall() == [("You don't have permission to redact events", NOW + 20)]
    assert _retries_of_txn(txn, []) == {}


def test_retries_come_due_in_order(txn: sqlite3.Cursor) -> None:
    _record_failures_txn(
        txn,
        [
            failure("$late", next_try_at=NOW + 5),
            failure("$due", next_try_at=NOW),
            failure("$early", next_try_at=NOW - 9),
        ],
    )

    assert [retry.event.event_id for retry in _retries_due_txn(txn, NOW, 10)] == ["$early", "$due"]
    assert [retry.event.event_id for retry in _retries_due_txn(txn, NOW, 1)] == ["$early"]
    assert len(_retries_due_txn(txn, NOW + 5, 10)) == 3


def test_forget_and_summary(txn: sqlite3.Cursor) -> None:
    _record_failures_txn(txn, [failure("$a"), failure("$b"), failure("$c", "not_in_room")])
    assert _retry_summary_txn(txn) == {"forbidden": (2, NOW - 100), "not_in_room": (1, NOW - 100)}

    _forget_txn(txn, ["$a", "$c", "$unknown"])
    _forget_txn(txn, [])

    assert _retry_summary_txn(txn) == {"forbidden": (1, NOW - 100)}


# --- to-device messages ----------------------------------------------------------------


def add_to_device(txn: sqlite3.Cursor, stream_id: int) -> None:
    txn.execute(
        "INSERT INTO device_inbox (user_id, device_id, stream_id, message_json) VALUES (?, 'D', ?, '{}')",
        (ALICE, stream_id),
    )


def inbox(txn: sqlite3.Cursor) -> list[int]:
    txn.execute("SELECT stream_id FROM device_inbox ORDER BY stream_id")
    return [row[0] for row in txn.fetchall()]


def test_to_device_messages_go_once_they_waited_a_device_lifetime(txn: sqlite3.Cursor) -> None:
    _note_to_device_position_txn(txn, NOW)  # nothing waiting: no mark
    assert to_device_position_at(txn, NOW) is None
    add_to_device(txn, 1)
    add_to_device(txn, 2)
    _note_to_device_position_txn(txn, NOW)
    add_to_device(txn, 3)
    _note_to_device_position_txn(txn, NOW + 10)
    _note_to_device_position_txn(txn, NOW + 20)  # the stream did not move: no new mark

    assert _delete_to_device_before_txn(txn, NOW - 1) == 0  # no mark that old
    assert inbox(txn) == [1, 2, 3]
    assert _delete_to_device_before_txn(txn, NOW + 9) == 2  # what was there at NOW
    assert inbox(txn) == [3]
    assert _delete_to_device_before_txn(txn, NOW + 10) == 1
    assert inbox(txn) == []
    # the newest usable mark stays as the floor, older ones go
    txn.execute("SELECT taken_at, position FROM police_policy_retention_marks")
    assert txn.fetchall() == [(NOW + 10, 3)]


def test_to_device_messages_for_other_servers_go_by_their_queue_time(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO device_federation_outbox (destination, stream_id, queued_ts, messages_json)"
        " VALUES ('peer', ?, ?, '{}')",
        [(1, NOW - 10), (2, NOW + 10)],
    )

    assert _delete_to_device_before_txn(txn, NOW) == 1
    txn.execute("SELECT stream_id FROM device_federation_outbox")
    assert txn.fetchall() == [(2,)]


# --- copies of names, and censoring at the audit tier --------------------------------------


def test_stale_room_names_in_snapshots_are_blanked(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO room_stats_state (room_id, name) VALUES (?, ?)", [(ROOM_A, "Lage"), (ROOM_B, None)]
    )
    txn.executemany(
        "INSERT INTO sliding_sync_membership_snapshots (room_id, user_id, room_name) VALUES (?, ?, ?)",
        [
            (ROOM_A, ALICE, "Lage"),
            (ROOM_A, SYSTEM, "Einsatz alt"),
            (ROOM_B, ALICE, "Alt"),
            ("!c:x", ALICE, "C"),
        ],
    )

    assert _blank_stale_snapshot_names_txn(txn, [ROOM_A, ROOM_B]) == 2
    assert _blank_stale_snapshot_names_txn(txn, []) == 0

    txn.execute(
        "SELECT room_id, user_id, room_name FROM sliding_sync_membership_snapshots ORDER BY room_id, user_id"
    )
    assert txn.fetchall() == [
        ("!a:police.example", ALICE, "Lage"),  # the current name stays
        ("!a:police.example", SYSTEM, None),
        ("!b:police.example", ALICE, None),
        ("!c:x", ALICE, "C"),  # rooms not asked for are left alone
    ]


def test_redacted_state_is_queued_once_and_comes_due_at_the_audit_tier(txn: sqlite3.Cursor) -> None:
    old = StoredEvent(1, "$old", ROOM_A, NOW - 100, "m.room.topic", True)
    young = StoredEvent(2, "$young", ROOM_A, NOW + 100, "m.room.member", True)
    _queue_censoring_txn(txn, [old, young])
    _queue_censoring_txn(txn, [old])  # queued again: nothing changes

    assert _due_for_censoring_txn(txn, NOW, 10) == ["$old"]
    assert _due_for_censoring_txn(txn, NOW + 100, 10) == ["$old", "$young"]
    assert _due_for_censoring_txn(txn, NOW + 100, 1) == ["$old"]


def test_censoring_replaces_the_json_and_drops_the_copies(txn: sqlite3.Cursor) -> None:
    txn.executemany(
        "INSERT INTO event_json (event_id, json) VALUES (?, ?)", [("$t", '{"topic": "x"}'), ("$u", "{}")]
    )
    txn.executemany("INSERT INTO event_search (event_id, value) VALUES (?, ?)", [("$t", "x"), ("$u", "y")])
    txn.execute(
        "INSERT INTO room_memberships (event_id, display_name, avatar_url) VALUES ('$t', 'KOK Meier', 'mxc://a/b')"
    )
    txn.executemany(
        "INSERT INTO redactions (event_id, redacts) VALUES (?, ?)",
        [("$r1", "$t"), ("$r2", "$u"), ("$r3", "$v")],
    )
    _queue_censoring_txn(
        txn, [StoredEvent(1, event_id, ROOM_A, NOW, "m.room.topic", True) for event_id in ("$t", "$u", "$v")]
    )

    _censor_txn(txn, {"$t": '{"pruned": true}'}, ["$t", "$u"])

    txn.execute("SELECT event_id, json FROM event_json ORDER BY event_id")
    assert txn.fetchall() == [("$t", '{"pruned": true}'), ("$u", "{}")]
    txn.execute("SELECT event_id FROM event_search")
    assert txn.fetchall() == [("$u",)]
    txn.execute("SELECT display_name, avatar_url FROM room_memberships")
    assert txn.fetchall() == [(None, None)]
    txn.execute("SELECT redacts, have_censored FROM redactions ORDER BY redacts")
    assert txn.fetchall() == [("$t", 1), ("$u", 1), ("$v", 0)]  # checked, whether redacted or not
    assert _due_for_censoring_txn(txn, NOW, 10) == ["$v"]  # the checked ones left the queue
