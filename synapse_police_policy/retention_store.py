"""What the retention sweep reads and remembers in Synapse's database.

The sweep walks Synapse's ``events`` table in stream order from a durable
watermark (table ``police_policy_retention_progress``, ``schema.py``), and
reads ``redactions`` and ``local_current_membership`` to skip what is done
or out of reach; ``local_media_repository`` gives uploads by upload time,
``remote_media_cache`` other servers' media by the time it was fetched.
``tests/integration/test_retention_sweep.py`` pins these queries against a
real Synapse.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs
from synapse.module_api import ModuleApi

from .store import Tables

WATERMARK = "redaction_sweep"


@attrs.frozen
class StoredEvent:
    stream_ordering: int
    event_id: str
    room_id: str
    received_ts: int


def _watermark_txn(txn: Any) -> int:
    txn.execute("SELECT position FROM police_policy_retention_progress WHERE name = ?", (WATERMARK,))
    row = txn.fetchone()
    return int(row[0]) if row else 0


def _set_watermark_txn(txn: Any, position: int) -> None:
    txn.execute(
        "INSERT INTO police_policy_retention_progress (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (WATERMARK, position),
    )


#: The events the sweep redacts: content only. State stays (rooms need it),
#: redactions carry none, outliers are not part of a room's timeline here.
#: One parameter: False (the outlier flag).
CONTENT_EVENTS = (
    "state_key IS NULL AND type <> 'm.room.redaction' AND outlier = ? AND rejection_reason IS NULL"
)


def _events_after_txn(txn: Any, position: int, limit: int) -> list[StoredEvent]:
    txn.execute(
        "SELECT stream_ordering, event_id, room_id, received_ts FROM events"
        f" WHERE stream_ordering > ? AND {CONTENT_EVENTS}"
        " ORDER BY stream_ordering LIMIT ?",
        (position, False, limit),
    )
    return [StoredEvent(int(row[0]), row[1], row[2], int(row[3] or 0)) for row in txn.fetchall()]


def _redacted_txn(txn: Any, event_ids: Collection[str]) -> set[str]:
    if not event_ids:
        return set()
    marks = ", ".join("?" for _ in event_ids)
    txn.execute(f"SELECT redacts FROM redactions WHERE redacts IN ({marks})", tuple(event_ids))
    return {row[0] for row in txn.fetchall()}


def _joined_rooms_txn(txn: Any, user_id: str) -> set[str]:
    txn.execute(
        "SELECT room_id FROM local_current_membership WHERE user_id = ? AND membership = 'join'", (user_id,)
    )
    return {row[0] for row in txn.fetchall()}


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


class RetentionStore:
    def __init__(self, api: ModuleApi, tables: Tables) -> None:
        self._api = api
        self._tables = tables

    async def _run(self, name: str, func: Any, *args: Any) -> Any:
        await self._tables.ensure()
        return await self._api.run_db_interaction(f"police_policy_{name}", func, *args)

    async def watermark(self) -> int:
        return await self._run("retention_watermark", _watermark_txn)

    async def set_watermark(self, position: int) -> None:
        await self._run("retention_set_watermark", _set_watermark_txn, position)

    async def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        return await self._run("retention_events_after", _events_after_txn, position, limit)

    async def redacted(self, event_ids: Collection[str]) -> set[str]:
        return await self._run("retention_redacted", _redacted_txn, list(event_ids))

    async def joined_rooms(self, user_id: str) -> set[str]:
        return await self._run("retention_joined_rooms", _joined_rooms_txn, user_id)

    async def media_uploaded_before(self, before_ms: int, limit: int) -> list[str]:
        return await self._run(
            "retention_media_before", _media_uploaded_before_txn, self._api.server_name, before_ms, limit
        )

    async def remote_media_fetched_before(self, before_ms: int, limit: int) -> list[tuple[str, str, str]]:
        return await self._run(
            "retention_remote_media_before", _remote_media_fetched_before_txn, before_ms, limit
        )
