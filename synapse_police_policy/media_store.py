"""How much a user uploaded recently, from Synapse's own media table.

``local_media_repository`` is Synapse's table of local uploads (one row per
file, with uploader, upload time and length); ``test_media_quota`` pins the
query.
"""

from __future__ import annotations

from typing import Any

from synapse.module_api import ModuleApi


def _uploaded_since_txn(txn: Any, user_id: str, since_ms: int) -> int:
    txn.execute(
        "SELECT COALESCE(SUM(media_length), 0) FROM local_media_repository"
        " WHERE user_id = ? AND created_ts > ?",
        (user_id, since_ms),
    )
    row = txn.fetchone()
    return int(row[0]) if row else 0


class MediaUsage:
    def __init__(self, api: ModuleApi) -> None:
        self._api = api

    async def uploaded_since(self, user_id: str, since_ms: int) -> int:
        return await self._api.run_db_interaction(
            "police_policy_uploaded_since", _uploaded_since_txn, user_id, since_ms
        )
