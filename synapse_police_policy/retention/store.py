"""What the retention sweep reads and remembers in Synapse's database.

Two walks find what passes the device tier, each from a durable watermark in
``police_policy_retention_progress`` (``schema.py``), so a run costs what is
new: ``events`` in stream order (content, and state that is no longer
current when it expires), and ``current_state_delta_stream`` (state that is
superseded after it expired). ``current_state_events`` tells what is current
(it stays: the room needs it); ``redactions`` names the events that may be
redacted already (Synapse decides whether a redaction took effect,
``internals.redacted_events``); ``local_current_membership`` the rooms the
system user is in. Failed redactions wait in ``police_policy_retention_retries``;
redacted state waits for the audit tier in ``police_policy_retention_censor``.

Media: ``local_media_repository`` by upload time, ``remote_media_cache`` by
fetch time. To-device messages: ``device_inbox`` rows carry no time, so the
sweep notes the stream position each run (``police_policy_retention_marks``)
and deletes what was there a device lifetime ago; ``device_federation_outbox``
has its own time. Room names that Synapse 1.163 copies into
``sliding_sync_membership_snapshots`` (and never reads) are blanked once a
newer name supersedes them.

``tests/integration/test_retention_sweep.py`` and
``test_retention_inventory.py`` pin these queries against a real Synapse.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import attrs
from synapse.module_api import ModuleApi

from ..schema import Tables

#: progress of the walk over ``events``
WATERMARK = "redaction_sweep"
#: progress of the walk over ``current_state_delta_stream``
STATE_WATERMARK = "superseded_state_sweep"
#: the stream of to-device messages (``device_inbox``)
TO_DEVICE = "to_device"

#: State the sweep never redacts, superseded or not: it carries no free text,
#: and Synapse and clients need it as it is (Synapse refuses to redact the ACL).
KEPT_STATE_TYPES = (
    "m.room.create",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.retention",
    "m.room.server_acl",
    "io.element.functional_members",
)
_KEPT = ", ".join(f"'{kind}'" for kind in KEPT_STATE_TYPES)

#: Content events: what the purge jobs delete at the audit tier. Redactions
#: carry no content; outliers are not part of a room's timeline here.
#: One parameter: False (the outlier flag).
CONTENT_EVENTS = (
    "state_key IS NULL AND type <> 'm.room.redaction' AND outlier = ? AND rejection_reason IS NULL"
)
#: What the sweep redacts once past the device tier: content, and state that
#: can carry text (names, topics, display names, custom state) once it is no
#: longer current. One parameter: False (the outlier flag).
SWEPT_EVENTS = (
    "type <> 'm.room.redaction' AND outlier = ? AND rejection_reason IS NULL"
    f" AND (state_key IS NULL OR type NOT IN ({_KEPT}))"
)


@attrs.frozen
class StoredEvent:
    stream_ordering: int
    event_id: str
    room_id: str
    received_ts: int
    type: str = "m.room.encrypted"
    state: bool = False


@attrs.frozen
class Retry:
    """An expired event whose redaction failed before."""

    event: StoredEvent
    kind: str
    attempts: int
    first_failed_at: int


@attrs.frozen
class Failure:
    """A failed attempt to write down: the event, why, and when to try again."""

    event: StoredEvent
    kind: str
    error: str
    attempts: int
    first_failed_at: int
    next_try_at: int


def _marks(items: Collection[Any]) -> str:
    return ", ".join("?" for _ in items)


def _changed(txn: Any) -> int:
    """The rows the last statement changed: DB-API's ``rowcount`` (an int), 0 for its -1 (unknown)."""
    rowcount: int = txn.rowcount
    return max(rowcount, 0)


def _watermark_txn(txn: Any, name: str = WATERMARK) -> int:
    txn.execute("SELECT position FROM police_policy_retention_progress WHERE name = ?", (name,))
    row = txn.fetchone()
    return int(row[0]) if row else 0


def _set_watermark_txn(txn: Any, position: int, name: str = WATERMARK) -> None:
    txn.execute(
        "INSERT INTO police_policy_retention_progress (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(int(row[0]), row[1], row[2], int(row[3] or 0), row[4], row[5] is not None)


def _events_after_txn(txn: Any, position: int, limit: int) -> list[StoredEvent]:
    txn.execute(
        "SELECT stream_ordering, event_id, room_id, received_ts, type, state_key FROM events"
        f" WHERE stream_ordering > ? AND {SWEPT_EVENTS}"
        " ORDER BY stream_ordering LIMIT ?",
        (position, False, limit),
    )
    return [_stored(row) for row in txn.fetchall()]


_SUPERSEDED = (
    "SELECT d.stream_id, e.event_id, e.room_id, e.received_ts, e.type, e.state_key"
    " FROM current_state_delta_stream AS d JOIN events AS e ON e.event_id = d.prev_event_id"
    f" WHERE e.type NOT IN ({_KEPT}) AND e.outlier = ? AND e.rejection_reason IS NULL"
)


def _superseded_after_txn(txn: Any, position: int, limit: int) -> tuple[list[StoredEvent], int]:
    """State events replaced after ``position`` of the state delta stream, and
    the position the walk reached. Several deltas share a stream ID: a batch
    ends at a whole ID, never inside one."""
    txn.execute("SELECT MAX(stream_id) FROM current_state_delta_stream")
    row = txn.fetchone()
    end = int(row[0]) if row and row[0] is not None else position
    if end <= position:
        return [], position
    txn.execute(
        f"{_SUPERSEDED} AND d.stream_id > ? AND d.stream_id <= ? ORDER BY d.stream_id LIMIT ?",
        (False, position, end, limit),
    )
    found = [_stored(row) for row in txn.fetchall()]
    if len(found) < limit:
        return found, end
    last = found[-1].stream_ordering
    txn.execute(f"{_SUPERSEDED} AND d.stream_id = ?", (False, last))
    return [event for event in found if event.stream_ordering < last] + [
        _stored(row) for row in txn.fetchall()
    ], last


def _with_redactions_txn(txn: Any, event_ids: Collection[str]) -> set[str]:
    """The events some row of ``redactions`` names (whether it took effect or not)."""
    if not event_ids:
        return set()
    txn.execute(f"SELECT redacts FROM redactions WHERE redacts IN ({_marks(event_ids)})", tuple(event_ids))
    return {row[0] for row in txn.fetchall()}


def _current_txn(txn: Any, event_ids: Collection[str]) -> set[str]:
    if not event_ids:
        return set()
    txn.execute(
        f"SELECT event_id FROM current_state_events WHERE event_id IN ({_marks(event_ids)})",
        tuple(event_ids),
    )
    return {row[0] for row in txn.fetchall()}


def _existing_txn(txn: Any, event_ids: Collection[str]) -> dict[str, bool]:
    """event ID -> whether it is a state event, for those still stored."""
    if not event_ids:
        return {}
    txn.execute(
        f"SELECT event_id, state_key FROM events WHERE event_id IN ({_marks(event_ids)})", tuple(event_ids)
    )
    return {row[0]: row[1] is not None for row in txn.fetchall()}


def _joined_rooms_txn(txn: Any, user_id: str) -> set[str]:
    txn.execute(
        "SELECT room_id FROM local_current_membership WHERE user_id = ? AND membership = 'join'", (user_id,)
    )
    return {row[0] for row in txn.fetchall()}


# --- retries ------------------------------------------------------------------------

_RETRY_COLUMNS = "event_id, room_id, received_ts, event_type, kind, attempts, first_failed_at"


def _retry(row: Any) -> Retry:
    event = StoredEvent(0, row[0], row[1], int(row[2]), row[3], False)
    return Retry(event, row[4], int(row[5]), int(row[6]))


def _retries_due_txn(txn: Any, now: int, limit: int) -> list[Retry]:
    txn.execute(
        f"SELECT {_RETRY_COLUMNS} FROM police_policy_retention_retries"
        " WHERE next_try_at <= ? ORDER BY next_try_at LIMIT ?",
        (now, limit),
    )
    return [_retry(row) for row in txn.fetchall()]


def _retries_of_txn(txn: Any, event_ids: Collection[str]) -> dict[str, Retry]:
    if not event_ids:
        return {}
    txn.execute(
        f"SELECT {_RETRY_COLUMNS} FROM police_policy_retention_retries"
        f" WHERE event_id IN ({_marks(event_ids)})",
        tuple(event_ids),
    )
    return {row[0]: _retry(row) for row in txn.fetchall()}


def _record_failures_txn(txn: Any, failures: Iterable[Failure]) -> None:
    for failure in failures:
        event = failure.event
        txn.execute(
            "INSERT INTO police_policy_retention_retries (event_id, room_id, event_type, received_ts,"
            " kind, error, attempts, first_failed_at, next_try_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO UPDATE SET kind = excluded.kind, error = excluded.error,"
            " attempts = excluded.attempts, next_try_at = excluded.next_try_at",
            (
                event.event_id,
                event.room_id,
                event.type,
                event.received_ts,
                failure.kind,
                failure.error,
                failure.attempts,
                failure.first_failed_at,
                failure.next_try_at,
            ),
        )


def _forget_txn(txn: Any, event_ids: Collection[str]) -> None:
    if event_ids:
        txn.execute(
            f"DELETE FROM police_policy_retention_retries WHERE event_id IN ({_marks(event_ids)})",
            tuple(event_ids),
        )


def _retry_summary_txn(txn: Any) -> dict[str, tuple[int, int]]:
    """kind -> (events waiting, arrival time of the oldest)."""
    txn.execute("SELECT kind, COUNT(*), MIN(received_ts) FROM police_policy_retention_retries GROUP BY kind")
    return {row[0]: (int(row[1]), int(row[2])) for row in txn.fetchall()}


# --- media -----------------------------------------------------------------------------

#: Local media uploaded before a time (by upload time: avatars of users and
#: rooms stay, they are not content); parameters: time, server name twice.
MEDIA_UPLOADED_BEFORE = (
    "SELECT media_id FROM local_media_repository WHERE created_ts < ?"
    " AND 'mxc://' || ? || '/' || media_id NOT IN"
    " (SELECT avatar_url FROM profiles WHERE avatar_url IS NOT NULL)"
    " AND 'mxc://' || ? || '/' || media_id NOT IN"
    " (SELECT avatar FROM room_stats_state WHERE avatar IS NOT NULL)"
)


def _media_uploaded_before_txn(txn: Any, server_name: str, before_ms: int, limit: int) -> list[str]:
    txn.execute(f"{MEDIA_UPLOADED_BEFORE} LIMIT ?", (before_ms, server_name, server_name, limit))
    return [row[0] for row in txn.fetchall()]


def _remote_media_fetched_before_txn(txn: Any, before_ms: int, limit: int) -> list[tuple[str, str, str]]:
    txn.execute(
        "SELECT media_origin, media_id, filesystem_id FROM remote_media_cache WHERE created_ts < ? LIMIT ?",
        (before_ms, limit),
    )
    return [(row[0], row[1], row[2]) for row in txn.fetchall()]


# --- to-device messages ----------------------------------------------------------------


def _note_to_device_position_txn(txn: Any, now: int) -> None:
    """Remember where the to-device stream stands (once it moved)."""
    txn.execute("SELECT MAX(stream_id) FROM device_inbox")
    row = txn.fetchone()
    if not row or row[0] is None:
        return
    txn.execute(
        "SELECT MAX(position) FROM police_policy_retention_marks WHERE stream = ?",
        (TO_DEVICE,),
    )
    last = txn.fetchone()
    if last and last[0] is not None and int(last[0]) >= int(row[0]):
        return
    txn.execute(
        "INSERT INTO police_policy_retention_marks (stream, taken_at, position) VALUES (?, ?, ?)"
        " ON CONFLICT (stream, taken_at) DO UPDATE SET position = excluded.position",
        (TO_DEVICE, now, int(row[0])),
    )


def to_device_position_at(txn: Any, at: int) -> int | None:
    """The newest noted position of the to-device stream taken at or before ``at``."""
    txn.execute(
        "SELECT position FROM police_policy_retention_marks WHERE stream = ? AND taken_at <= ?"
        " ORDER BY taken_at DESC LIMIT 1",
        (TO_DEVICE, at),
    )
    row = txn.fetchone()
    return int(row[0]) if row else None


def _delete_to_device_before_txn(txn: Any, before_ms: int) -> int:
    """Delete to-device messages that waited longer than up to ``before_ms``:
    for devices that did not fetch them (Synapse deletes what a device has
    fetched), and for other servers that did not take them."""
    deleted = 0
    position = to_device_position_at(txn, before_ms)
    if position is not None:
        txn.execute("DELETE FROM device_inbox WHERE stream_id <= ?", (position,))
        deleted += _changed(txn)
        # the newest mark before the cutoff stays: it is the next run's floor
        txn.execute(
            "DELETE FROM police_policy_retention_marks WHERE stream = ? AND position < ?",
            (TO_DEVICE, position),
        )
    txn.execute("DELETE FROM device_federation_outbox WHERE queued_ts < ?", (before_ms,))
    deleted += _changed(txn)
    return deleted


# --- names Synapse copies --------------------------------------------------------------


def _blank_stale_snapshot_names_txn(txn: Any, room_ids: Collection[str]) -> int:
    """Room names in sliding-sync membership snapshots that are no longer the
    room's name (Synapse 1.163 writes the column, never reads it)."""
    if not room_ids:
        return 0
    txn.execute(
        "UPDATE sliding_sync_membership_snapshots SET room_name = NULL"
        f" WHERE room_id IN ({_marks(room_ids)}) AND room_name IS NOT NULL AND room_name <> COALESCE("
        " (SELECT s.name FROM room_stats_state AS s"
        "  WHERE s.room_id = sliding_sync_membership_snapshots.room_id), '')",
        tuple(room_ids),
    )
    return _changed(txn)


# --- the audit tier for redacted state -------------------------------------------------


def _queue_censoring_txn(txn: Any, events: Iterable[StoredEvent]) -> None:
    for event in events:
        txn.execute(
            "INSERT INTO police_policy_retention_censor (event_id, received_ts) VALUES (?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            (event.event_id, event.received_ts),
        )


def _due_for_censoring_txn(txn: Any, before_ms: int, limit: int) -> list[str]:
    """Queued redacted state events that arrived before ``before_ms``."""
    txn.execute(
        "SELECT event_id FROM police_policy_retention_censor WHERE received_ts <= ?"
        " ORDER BY received_ts LIMIT ?",
        (before_ms, limit),
    )
    return [row[0] for row in txn.fetchall()]


def _censor_txn(txn: Any, pruned: dict[str, str], checked: Collection[str]) -> None:
    """Store the censored JSON of redacted events, drop what Synapse keeps of
    their text elsewhere (search index, member profile columns), mark their
    redactions as censored, as Synapse's own censoring job does, and take every
    checked event off the queue."""
    for event_id, pruned_json in pruned.items():
        txn.execute("UPDATE event_json SET json = ? WHERE event_id = ?", (pruned_json, event_id))
    if pruned:
        ids = tuple(pruned)
        txn.execute(f"DELETE FROM event_search WHERE event_id IN ({_marks(ids)})", ids)
        txn.execute(
            "UPDATE room_memberships SET display_name = NULL, avatar_url = NULL"
            f" WHERE event_id IN ({_marks(ids)})",
            ids,
        )
    if checked:
        txn.execute(
            f"UPDATE redactions SET have_censored = ? WHERE redacts IN ({_marks(checked)})",
            (True, *checked),
        )
        txn.execute(
            f"DELETE FROM police_policy_retention_censor WHERE event_id IN ({_marks(checked)})",
            tuple(checked),
        )


class RetentionStore:
    def __init__(self, api: ModuleApi, tables: Tables) -> None:
        self._api = api
        self._tables = tables

    async def watermark(self, name: str = WATERMARK) -> int:
        return await self._tables.run("retention_watermark", _watermark_txn, name)

    async def set_watermark(self, position: int, name: str = WATERMARK) -> None:
        await self._tables.run("retention_set_watermark", _set_watermark_txn, position, name)

    async def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        return await self._tables.run("retention_events_after", _events_after_txn, position, limit)

    async def superseded_after(self, position: int, limit: int) -> tuple[list[StoredEvent], int]:
        return await self._tables.run("retention_superseded_after", _superseded_after_txn, position, limit)

    async def with_redactions(self, event_ids: Collection[str]) -> set[str]:
        return await self._tables.run("retention_with_redactions", _with_redactions_txn, list(event_ids))

    async def current(self, event_ids: Collection[str]) -> set[str]:
        return await self._tables.run("retention_current", _current_txn, list(event_ids))

    async def existing(self, event_ids: Collection[str]) -> dict[str, bool]:
        return await self._tables.run("retention_existing", _existing_txn, list(event_ids))

    async def joined_rooms(self, user_id: str) -> set[str]:
        return await self._tables.run("retention_joined_rooms", _joined_rooms_txn, user_id)

    async def retries_due(self, now: int, limit: int) -> list[Retry]:
        return await self._tables.run("retention_retries_due", _retries_due_txn, now, limit)

    async def retries_of(self, event_ids: Collection[str]) -> dict[str, Retry]:
        return await self._tables.run("retention_retries_of", _retries_of_txn, list(event_ids))

    async def record_failures(self, failures: list[Failure]) -> None:
        if failures:
            await self._tables.run("retention_record_failures", _record_failures_txn, failures)

    async def forget(self, event_ids: Collection[str]) -> None:
        if event_ids:
            await self._tables.run("retention_forget", _forget_txn, list(event_ids))

    async def retry_summary(self) -> dict[str, tuple[int, int]]:
        return await self._tables.run("retention_retry_summary", _retry_summary_txn)

    async def media_uploaded_before(self, before_ms: int, limit: int) -> list[str]:
        return await self._tables.run(
            "retention_media_before", _media_uploaded_before_txn, self._api.server_name, before_ms, limit
        )

    async def remote_media_fetched_before(self, before_ms: int, limit: int) -> list[tuple[str, str, str]]:
        return await self._tables.run(
            "retention_remote_media_before", _remote_media_fetched_before_txn, before_ms, limit
        )

    async def note_to_device_position(self, now: int) -> None:
        await self._tables.run("retention_note_to_device", _note_to_device_position_txn, now)

    async def delete_to_device_before(self, before_ms: int) -> int:
        return await self._tables.run("retention_delete_to_device", _delete_to_device_before_txn, before_ms)

    async def blank_stale_snapshot_names(self, room_ids: Collection[str]) -> int:
        return await self._tables.run(
            "retention_blank_snapshot_names", _blank_stale_snapshot_names_txn, sorted(room_ids)
        )

    async def queue_censoring(self, events: list[StoredEvent]) -> None:
        if events:
            await self._tables.run("retention_queue_censoring", _queue_censoring_txn, events)

    async def due_for_censoring(self, before_ms: int, limit: int) -> list[str]:
        return await self._tables.run("retention_due_for_censoring", _due_for_censoring_txn, before_ms, limit)

    async def censor(self, pruned: dict[str, str], checked: Collection[str]) -> None:
        await self._tables.run("retention_censor", _censor_txn, pruned, list(checked))
