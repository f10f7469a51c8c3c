"""The module's own tables in Synapse's database (SQLite or PostgreSQL).

Tables are created at start-up when missing (``CREATE TABLE IF NOT EXISTS``
works on both engines, and Synapse's transaction layer turns ``?`` into the
engine's placeholder). Every access goes through ``ModuleApi.run_db_interaction``.
"""

from __future__ import annotations

from typing import Any

from synapse.module_api import ModuleApi

_SCHEMA = (
    # The latest membership of each foreign user whose membership event the
    # module dropped at the federation boundary: Synapse's room state never
    # shows them, yet they are in the room on the peer's side. Events can
    # arrive out of order (a missing join pulled after a later kick), so the
    # newest origin_server_ts wins.
    """
    CREATE TABLE IF NOT EXISTS police_policy_foreign_members (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        membership TEXT NOT NULL,
        event_ts BIGINT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    )
    """,
)


def _create_tables(txn: Any) -> None:
    for statement in _SCHEMA:
        txn.execute(statement)


def _set_foreign_member(txn: Any, room_id: str, user_id: str, membership: str, ts: int) -> None:
    txn.execute(
        "INSERT INTO police_policy_foreign_members (room_id, user_id, membership, event_ts)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (room_id, user_id) DO UPDATE"
        " SET membership = excluded.membership, event_ts = excluded.event_ts"
        " WHERE excluded.event_ts >= police_policy_foreign_members.event_ts",
        (room_id, user_id, membership, ts),
    )


def _foreign_members(txn: Any, room_id: str) -> list[str]:
    txn.execute(
        "SELECT user_id FROM police_policy_foreign_members WHERE room_id = ? AND membership = 'join'",
        (room_id,),
    )
    return [row[0] for row in txn.fetchall()]


class PolicyStore:
    def __init__(self, api: ModuleApi) -> None:
        self._api = api
        self._created = False

    async def ensure_tables(self) -> None:
        """Create the tables once per process (also run at start-up)."""
        if not self._created:
            await self._api.run_db_interaction("police_policy_create_tables", _create_tables)
            self._created = True

    async def set_foreign_member(self, room_id: str, user_id: str, membership: str, ts: int) -> None:
        """Record ``membership`` unless a newer event about this member is recorded."""
        await self.ensure_tables()
        await self._api.run_db_interaction(
            "police_policy_set_foreign_member", _set_foreign_member, room_id, user_id, membership, ts
        )

    async def foreign_members(self, room_id: str) -> list[str]:
        await self.ensure_tables()
        return await self._api.run_db_interaction("police_policy_foreign_members", _foreign_members, room_id)
