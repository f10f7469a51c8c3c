"""The enrollment registry's transactions and the schema migrations, on plain SQLite.

The transaction functions take a DB-API cursor with ``?`` placeholders, which
is exactly what ``sqlite3`` offers, so no Synapse is needed. Synapse's own
``devices`` and ``access_tokens`` tables get minimal stand-ins where a query
reads them.
"""

from __future__ import annotations

import sqlite3

import pytest

from synapse_police_policy import schema
from synapse_police_policy.devices.rules import (
    APPROVED,
    CONSUMED,
    ENROLLED,
    EXPIRED,
    OPEN,
    PENDING_OPEN_LIFETIME_MS,
    REJECTED,
    REVOKED,
)
from synapse_police_policy.devices.store import (
    MAX_LINKS_PER_REQUEST,
    MAX_OPEN_REQUESTS_PER_USER,
    PENDING_KEEP_MS,
    Conflict,
    _bind_txn,
    _consume_approval_txn,
    _decide_txn,
    _devices_by_newest_token_txn,
    _end_enrollment_txn,
    _get_pending_txn,
    _lapse_pending_txn,
    _pending_by_link_txn,
    _record_auto_approval_txn,
    _record_pending_txn,
    _unenrolled_devices_txn,
    _users_binding_txn,
    enroll_txn,
    get_enrollment_txn,
)

ALICE = "@alice:police.example"
BOB = "@bob:police.example"
ADMIN = "@admin:police.example"
IP = "10.20.1.2"
NOW = 1_700_000_000_000
WINDOW_MS = 10 * 60 * 1000


@pytest.fixture
def txn(db: sqlite3.Connection) -> sqlite3.Cursor:
    cursor = db.cursor()
    schema.migrate(cursor)
    return cursor


@pytest.fixture
def synapse_txn(txn: sqlite3.Cursor) -> sqlite3.Cursor:
    """``txn`` plus stand-ins for the two Synapse tables the store reads."""
    txn.execute("CREATE TABLE devices (user_id TEXT, device_id TEXT, hidden BOOLEAN DEFAULT FALSE)")
    txn.execute(
        "CREATE TABLE access_tokens (id INTEGER PRIMARY KEY, user_id TEXT, device_id TEXT, token TEXT)"
    )
    return txn


def tables(txn: sqlite3.Cursor) -> set[str]:
    txn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in txn.fetchall()}


def versions(txn: sqlite3.Cursor) -> list[int]:
    txn.execute("SELECT version FROM police_policy_schema_version")
    return [row[0] for row in txn.fetchall()]


def state_of(txn: sqlite3.Cursor, request_id: str) -> str | None:
    pending = _get_pending_txn(txn, request_id)
    return pending.state if pending else None


def pending_states(txn: sqlite3.Cursor, user_id: str) -> dict[str, str]:
    txn.execute("SELECT request_id, state FROM police_policy_pending_logins WHERE user_id = ?", (user_id,))
    return dict(txn.fetchall())


# --- schema -------------------------------------------------------------------------------------


def test_migrate_creates_the_tables_and_is_idempotent(db: sqlite3.Connection) -> None:
    txn = db.cursor()
    assert schema.migrate(txn) == 0
    assert {
        "police_policy_schema_version",
        "police_policy_foreign_members",
        "police_policy_enrollments",
        "police_policy_pending_logins",
        "police_policy_login_links",
    } <= tables(txn)
    assert versions(txn) == [schema.SCHEMA_VERSION]
    assert schema.migrate(txn) == schema.SCHEMA_VERSION
    assert versions(txn) == [schema.SCHEMA_VERSION]


@pytest.mark.parametrize("recorded", [False, True], ids=["before-versioning", "version-1-recorded"])
def test_migrate_brings_a_version_1_database_to_the_latest(db: sqlite3.Connection, recorded: bool) -> None:
    txn = db.cursor()
    for statement in schema.MIGRATIONS[0]:
        txn.execute(statement)
    txn.execute("INSERT INTO police_policy_foreign_members VALUES ('!r:x', '@f:peer', 'join', 5)")
    if recorded:
        txn.execute("CREATE TABLE police_policy_schema_version (version INTEGER NOT NULL)")
        txn.execute("INSERT INTO police_policy_schema_version VALUES (1)")

    assert schema.migrate(txn) == (1 if recorded else 0)

    assert {"police_policy_enrollments", "police_policy_pending_logins"} <= tables(txn)
    assert versions(txn) == [schema.SCHEMA_VERSION]
    txn.execute("SELECT room_id, user_id, membership, event_ts FROM police_policy_foreign_members")
    assert txn.fetchall() == [("!r:x", "@f:peer", "join", 5)]


# --- enrollments --------------------------------------------------------------------------------


def test_enroll_creates_a_record(txn: sqlite3.Cursor) -> None:
    record, created = enroll_txn(txn, ALICE, "PHONE1", "car 12", NOW + 1000, ADMIN, NOW)
    assert created
    assert (record.state, record.enrolled_by, record.enrolled_at, record.expires_at) == (
        ENROLLED,
        ADMIN,
        NOW,
        NOW + 1000,
    )
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == record


def test_re_enrolling_an_enrolled_device_keeps_who_and_when(txn: sqlite3.Cursor) -> None:
    first, _ = enroll_txn(txn, ALICE, "PHONE1", "old label", None, ADMIN, NOW)
    again, created = enroll_txn(
        txn, ALICE, "PHONE1", "new label", NOW + 99, "@other:police.example", NOW + 50
    )
    assert not created
    assert (again.enrolled_by, again.enrolled_at) == (first.enrolled_by, first.enrolled_at)
    assert (again.label, again.expires_at) == ("new label", NOW + 99)
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == again


def test_re_enrolling_a_revoked_device_starts_a_new_enrollment(txn: sqlite3.Cursor) -> None:
    enroll_txn(txn, ALICE, "PHONE1", "first", None, ADMIN, NOW)
    _end_enrollment_txn(txn, ALICE, "PHONE1", ADMIN, NOW + 10, REVOKED)
    record, created = enroll_txn(txn, ALICE, "PHONE1", "second", None, BOB, NOW + 20)
    assert created
    assert (record.state, record.enrolled_by, record.enrolled_at, record.label) == (
        ENROLLED,
        BOB,
        NOW + 20,
        "second",
    )
    assert (record.revoked_by, record.revoked_at) == (None, None)
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == record


@pytest.mark.parametrize("state", [REVOKED, EXPIRED])
def test_end_enrollment_only_ends_enrolled_rows(txn: sqlite3.Cursor, state: str) -> None:
    assert _end_enrollment_txn(txn, ALICE, "NEVER", ADMIN, NOW, state) is None
    enroll_txn(txn, ALICE, "PHONE1", "", None, ADMIN, NOW)

    ended = _end_enrollment_txn(txn, ALICE, "PHONE1", BOB, NOW + 5, state)
    assert ended is not None
    assert (ended.state, ended.revoked_by, ended.revoked_at) == (state, BOB, NOW + 5)
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == ended
    # Ending it again changes nothing: the first revocation stays on record.
    assert _end_enrollment_txn(txn, ALICE, "PHONE1", ADMIN, NOW + 9, REVOKED) is None
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == ended


# --- pending logins -----------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["PHONE1", None])
def test_record_pending_refreshes_the_open_request_of_a_retry(
    txn: sqlite3.Cursor, device_id: str | None
) -> None:
    first = _record_pending_txn(txn, ALICE, device_id, IP, "Element/1", NOW)
    retry = _record_pending_txn(txn, ALICE, device_id, IP, "Element/2", NOW + 7)
    assert retry.request_id == first.request_id
    assert (retry.created_at, retry.last_attempt_at, retry.user_agent) == (NOW, NOW + 7, "Element/2")
    assert _get_pending_txn(txn, first.request_id) == retry

    others = {
        _record_pending_txn(txn, ALICE, device_id, "10.20.9.9", "x", NOW).request_id,
        _record_pending_txn(txn, ALICE, "OTHER" if device_id else "PHONE1", IP, "x", NOW).request_id,
        _record_pending_txn(txn, BOB, device_id, IP, "x", NOW).request_id,
    }
    assert first.request_id not in others
    assert len(others) == 3


def test_record_pending_caps_open_requests_per_user(txn: sqlite3.Cursor) -> None:
    ids = [
        _record_pending_txn(txn, ALICE, f"DEV{n}", IP, "x", NOW + n).request_id
        for n in range(MAX_OPEN_REQUESTS_PER_USER + 2)
    ]
    _record_pending_txn(txn, BOB, "DEV", IP, "x", NOW)  # another user's request counts separately
    states = pending_states(txn, ALICE)
    assert [states[request_id] for request_id in ids[:2]] == [EXPIRED, EXPIRED]
    assert all(states[request_id] == OPEN for request_id in ids[2:])
    assert list(pending_states(txn, BOB).values()) == [OPEN]


@pytest.mark.parametrize(("approve", "state"), [(True, APPROVED), (False, REJECTED)])
def test_decide_an_open_request(txn: sqlite3.Cursor, approve: bool, state: str) -> None:
    pending = _record_pending_txn(txn, ALICE, None, IP, "x", NOW)
    decided, enrollment = _decide_txn(txn, pending.request_id, approve, ADMIN, NOW + 1)
    assert decided is not None
    assert (decided.state, decided.decided_by, decided.decided_at) == (state, ADMIN, NOW + 1)
    assert enrollment is None  # no device named: the approval waits for the next login
    assert _get_pending_txn(txn, pending.request_id) == decided

    with pytest.raises(Conflict) as caught:
        _decide_txn(txn, pending.request_id, not approve, BOB, NOW + 2)
    assert caught.value.pending == decided
    assert _get_pending_txn(txn, pending.request_id) == decided


def test_decide_an_unknown_request(txn: sqlite3.Cursor) -> None:
    assert _decide_txn(txn, "ABCD-EFGH", True, ADMIN, NOW) == (None, None)


def test_approving_a_request_that_names_its_device_enrolls_it(txn: sqlite3.Cursor) -> None:
    pending = _record_pending_txn(txn, ALICE, "PHONE1", IP, "x", NOW)
    decided, enrollment = _decide_txn(txn, pending.request_id, True, ADMIN, NOW + 1)
    assert decided is not None and decided.bound_device_id == "PHONE1"
    assert enrollment is not None
    assert (enrollment.user_id, enrollment.device_id, enrollment.enrolled_by) == (ALICE, "PHONE1", ADMIN)
    assert pending.request_id in enrollment.label
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == enrollment


def test_approval_leaves_an_operators_enrollment_as_it_is(txn: sqlite3.Cursor) -> None:
    pending = _record_pending_txn(txn, ALICE, "PHONE1", IP, "x", NOW)
    own, _ = enroll_txn(txn, ALICE, "PHONE1", "asset 7", NOW + 10_000, BOB, NOW + 1)
    _, enrollment = _decide_txn(txn, pending.request_id, True, ADMIN, NOW + 2)
    assert enrollment == own
    assert get_enrollment_txn(txn, ALICE, "PHONE1") == own


def test_consume_approval_once(txn: sqlite3.Cursor) -> None:
    pending = _record_pending_txn(txn, ALICE, None, IP, "x", NOW)
    _decide_txn(txn, pending.request_id, True, ADMIN, NOW + 1)
    consumed = _consume_approval_txn(txn, ALICE, IP, "x", NOW + 2, WINDOW_MS)
    assert consumed is not None
    assert (consumed.request_id, consumed.state, consumed.consumed_at) == (
        pending.request_id,
        CONSUMED,
        NOW + 2,
    )
    assert _get_pending_txn(txn, pending.request_id) == consumed
    assert _consume_approval_txn(txn, ALICE, IP, "x", NOW + 3, WINDOW_MS) is None


def test_a_consumed_approval_is_binding_until_its_device_is_bound(txn: sqlite3.Cursor) -> None:
    """The device sweep (maybe on another worker) spares the user meanwhile."""
    pending = _record_pending_txn(txn, ALICE, None, IP, "x", NOW)
    _decide_txn(txn, pending.request_id, True, ADMIN, NOW + 1)
    assert _users_binding_txn(txn, NOW) == []
    consumed = _consume_approval_txn(txn, ALICE, IP, "x", NOW + 2, WINDOW_MS)
    assert consumed is not None
    assert _users_binding_txn(txn, NOW) == [ALICE]
    assert _users_binding_txn(txn, NOW + 2) == [], "older than the binding time"
    _bind_txn(txn, consumed, "NEWDEVICE", NOW + 3)
    assert _users_binding_txn(txn, NOW) == []


@pytest.mark.parametrize(
    ("device_id", "approve", "user_id", "ip", "agent", "later_ms"),
    [
        (None, False, ALICE, IP, "x", 1),  # rejected
        (None, None, ALICE, IP, "x", 1),  # still open
        ("PHONE1", True, ALICE, IP, "x", 1),  # named its device: enrolled when approved
        (None, True, BOB, IP, "x", 1),
        (None, True, ALICE, "10.20.9.9", "x", 1),
        (None, True, ALICE, IP, "curl/8.5.0", 1),  # another program on the same address
        (None, True, ALICE, IP, "x", WINDOW_MS),  # the window has passed
    ],
    ids=["rejected", "open", "with-device", "other-user", "other-ip", "other-agent", "too-late"],
)
def test_consume_approval_finds_nothing(
    txn: sqlite3.Cursor,
    device_id: str | None,
    approve: bool | None,
    user_id: str,
    ip: str,
    agent: str,
    later_ms: int,
) -> None:
    pending = _record_pending_txn(txn, ALICE, device_id, IP, "x", NOW)
    if approve is not None:
        _decide_txn(txn, pending.request_id, approve, ADMIN, NOW)
    assert _consume_approval_txn(txn, user_id, ip, agent, NOW + later_ms, WINDOW_MS) is None
    assert state_of(txn, pending.request_id) != CONSUMED


def test_lapse_pending(txn: sqlite3.Cursor) -> None:
    now = NOW + PENDING_KEEP_MS
    stale_open = _record_pending_txn(txn, ALICE, "OLD", IP, "x", now - PENDING_OPEN_LIFETIME_MS)
    fresh_open = _record_pending_txn(txn, ALICE, "NEW", IP, "x", now - PENDING_OPEN_LIFETIME_MS + 1)
    unused = _record_pending_txn(txn, BOB, None, IP, "x", now - WINDOW_MS - 5)
    _decide_txn(txn, unused.request_id, True, ADMIN, now - WINDOW_MS)
    usable = _record_pending_txn(txn, BOB, None, "10.20.9.9", "x", now - 5)
    _decide_txn(txn, usable.request_id, True, ADMIN, now - WINDOW_MS + 1)
    ancient = _record_pending_txn(txn, BOB, "GONE", "10.20.8.8", "x", now - PENDING_KEEP_MS)
    _decide_txn(txn, ancient.request_id, False, ADMIN, now - PENDING_KEEP_MS + 1)

    assert _lapse_pending_txn(txn, now, WINDOW_MS) == 2

    assert state_of(txn, stale_open.request_id) == EXPIRED
    assert state_of(txn, fresh_open.request_id) == OPEN
    assert state_of(txn, unused.request_id) == EXPIRED
    assert state_of(txn, usable.request_id) == APPROVED
    assert state_of(txn, ancient.request_id) is None


def test_an_auto_approval_is_used_at_once_and_binds_like_an_approval(txn: sqlite3.Cursor) -> None:
    auto = _record_auto_approval_txn(txn, ALICE, IP, "Element", "auto_approve", NOW)
    assert (auto.state, auto.decided_by, auto.decided_at, auto.consumed_at) == (
        CONSUMED,
        "auto_approve",
        NOW,
        NOW,
    )
    assert _get_pending_txn(txn, auto.request_id) == auto
    assert _users_binding_txn(txn, NOW - 1) == [ALICE]
    record = _bind_txn(txn, auto, "NEWDEVICE", NOW + 1)
    assert (record.device_id, record.enrolled_by) == ("NEWDEVICE", "auto_approve")
    assert _users_binding_txn(txn, NOW - 1) == []
    assert _consume_approval_txn(txn, ALICE, IP, "x", NOW + 2, WINDOW_MS) is None


def links_of(txn: sqlite3.Cursor, request_id: str) -> list[str]:
    txn.execute("SELECT token_hash FROM police_policy_login_links WHERE request_id = ?", (request_id,))
    return sorted(row[0] for row in txn.fetchall())


def test_each_refused_login_gets_a_link_to_its_request(txn: sqlite3.Cursor) -> None:
    first = _record_pending_txn(txn, ALICE, None, IP, "x", NOW, "hash-1")
    retry = _record_pending_txn(txn, ALICE, None, IP, "x", NOW + 1, "hash-2")
    other = _record_pending_txn(txn, BOB, None, IP, "x", NOW, "hash-3")
    assert retry.request_id == first.request_id
    assert _pending_by_link_txn(txn, "hash-1") == _pending_by_link_txn(txn, "hash-2") == retry
    assert _pending_by_link_txn(txn, "hash-3") == other
    assert _pending_by_link_txn(txn, "hash-4") is None
    assert links_of(txn, first.request_id) == ["hash-1", "hash-2"]


def test_a_request_keeps_its_newest_links(txn: sqlite3.Cursor) -> None:
    hashes = [f"hash-{n:02}" for n in range(MAX_LINKS_PER_REQUEST + 3)]
    for n, link_hash in enumerate(hashes):
        pending = _record_pending_txn(txn, ALICE, None, IP, "x", NOW + n, link_hash)
    assert links_of(txn, pending.request_id) == hashes[-MAX_LINKS_PER_REQUEST:]
    assert _pending_by_link_txn(txn, hashes[0]) is None


def test_lapse_deletes_the_links_of_decided_and_lapsed_requests(txn: sqlite3.Cursor) -> None:
    still_open = _record_pending_txn(txn, ALICE, None, IP, "x", NOW, "open")
    approved = _record_pending_txn(txn, BOB, None, IP, "x", NOW, "approved")
    _decide_txn(txn, approved.request_id, True, ADMIN, NOW + 1)
    rejected = _record_pending_txn(txn, ALICE, None, "10.20.9.9", "x", NOW, "rejected")
    _decide_txn(txn, rejected.request_id, False, ADMIN, NOW + 1)
    consumed = _record_pending_txn(txn, BOB, None, "10.20.9.9", "x", NOW, "consumed")
    _decide_txn(txn, consumed.request_id, True, ADMIN, NOW + 1)
    assert _consume_approval_txn(txn, BOB, "10.20.9.9", "x", NOW + 2, WINDOW_MS) is not None

    _lapse_pending_txn(txn, NOW + 3, WINDOW_MS)
    txn.execute("SELECT token_hash FROM police_policy_login_links")
    assert sorted(row[0] for row in txn.fetchall()) == ["approved", "open"]
    assert _pending_by_link_txn(txn, "open") == _get_pending_txn(txn, still_open.request_id)


# --- queries on Synapse's tables ----------------------------------------------------------------


def test_unenrolled_devices_skips_hidden_and_enrolled_devices(synapse_txn: sqlite3.Cursor) -> None:
    txn = synapse_txn
    txn.executemany(
        "INSERT INTO devices (user_id, device_id, hidden) VALUES (?, ?, ?)",
        [
            (ALICE, "ENROLLED", False),
            (ALICE, "REVOKED", False),
            (ALICE, "STRAY", False),
            (ALICE, "master-signing-key", True),
            (BOB, "ENROLLED", False),  # enrolled for Alice, not for Bob
        ],
    )
    enroll_txn(txn, ALICE, "ENROLLED", "", None, ADMIN, NOW)
    enroll_txn(txn, ALICE, "REVOKED", "", None, ADMIN, NOW)
    _end_enrollment_txn(txn, ALICE, "REVOKED", ADMIN, NOW, REVOKED)
    enroll_txn(txn, ALICE, "master-signing-key", "", None, ADMIN, NOW)
    _end_enrollment_txn(txn, ALICE, "master-signing-key", ADMIN, NOW, REVOKED)

    found = _unenrolled_devices_txn(txn, 100)
    assert sorted(found) == [(ALICE, "REVOKED"), (ALICE, "STRAY"), (BOB, "ENROLLED")]
    assert len(_unenrolled_devices_txn(txn, 2)) == 2


def test_devices_by_newest_token(synapse_txn: sqlite3.Cursor) -> None:
    txn = synapse_txn
    txn.executemany(
        "INSERT INTO access_tokens (id, user_id, device_id, token) VALUES (?, ?, ?, ?)",
        [
            (1, ALICE, "OLDEST", "t1"),
            (5, ALICE, "NEWEST", "t5"),
            (3, ALICE, "MIDDLE", "t3"),
            (4, ALICE, None, "t4"),
            (6, BOB, "BOBS", "t6"),
        ],
    )
    assert _devices_by_newest_token_txn(txn, ALICE, 10) == ["NEWEST", "MIDDLE", "OLDEST"]
    assert _devices_by_newest_token_txn(txn, ALICE, 2) == ["NEWEST", "MIDDLE"]
    assert _devices_by_newest_token_txn(txn, "@nobody:police.example", 10) == []
