"""Foreign members the module dropped at the federation boundary.

Tables come from ``schema.py``. Every access goes through
``ModuleApi.run_db_interaction`` (Synapse's transaction layer turns ``?`` into
the engine's placeholder).
"""

from __future__ import annotations

from typing import Any

from synapse.module_api import ModuleApi

from . import internals
from .schema import migrate


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


class Tables:
    """Migrates the module's tables once per process, before their first use."""

    def __init__(self, api: ModuleApi) -> None:
        self._api = api
        self._ready = False

    async def ensure(self) -> None:
        if not self._ready:
            await self._api.run_db_interaction(
                "police_policy_migrate",
                lambda txn: migrate(txn, postgres=internals.runs_on_postgres(txn)),
            )
            self._ready = True


class PolicyStore:
    def __init__(self, api: ModuleApi, tables: Tables) -> None:
        self._api = api
        self._tables = tables

    async def set_foreign_member(self, room_id: str, user_id: str, membership: str, ts: int) -> None:
        """Record ``membership`` unless a newer event about this member is recorded."""
        await self._tables.ensure()
        await self._api.run_db_interaction(
            "police_policy_set_foreign_member", _set_foreign_member, room_id, user_id, membership, ts
        )

    async def foreign_members(self, room_id: str) -> list[str]:
        await self._tables.ensure()
        return await self._api.run_db_interaction("police_policy_foreign_members", _foreign_members, room_id)
