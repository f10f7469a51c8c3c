"""Foreign members the module dropped at the federation boundary.

Tables come from ``schema.py``; every access goes through ``Tables.run``
(``ModuleApi.run_db_interaction``: Synapse's transaction layer turns ``?`` into
the engine's placeholder).
"""

from __future__ import annotations

from typing import Any

from ..schema import Tables


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


class ForeignMembers:
    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def set_foreign_member(self, room_id: str, user_id: str, membership: str, ts: int) -> None:
        """Record ``membership`` unless a newer event about this member is recorded."""
        await self._tables.run("set_foreign_member", _set_foreign_member, room_id, user_id, membership, ts)

    async def foreign_members(self, room_id: str) -> list[str]:
        return await self._tables.run("foreign_members", _foreign_members, room_id)
