"""How much a user uploaded recently, from Synapse's own media table.

``local_media_repository`` is Synapse's table of local uploads (one row per
file, with uploader, upload time and length); ``test_media_types.py::
test_daily_quota_across_uploads`` pins the query.

The sum is kept per process for a minute and raised by every upload the
module admits meanwhile, so the quota check does not cost a query per upload.
Within that minute it can only count too much (an admitted upload later
refused by type, an old upload leaving the 24 hours), never too little for
uploads this process admitted; uploads other processes admit are seen at the
next refresh.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from synapse.module_api import ModuleApi

from ..clock import now_ms

DAY_MS = 24 * 3600 * 1000
REFRESH_SECONDS = 60.0
LEDGER_MAX = 10_000


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
        #: user -> (when the sum was read, bytes uploaded in the 24 hours before)
        self._ledger: OrderedDict[str, tuple[float, int]] = OrderedDict()

    async def uploaded_today(self, user_id: str) -> int:
        entry = self._ledger.get(user_id)
        if entry is not None and time.monotonic() - entry[0] < REFRESH_SECONDS:
            return entry[1]
        since = now_ms() - DAY_MS
        used = await self._api.run_db_interaction(
            "police_policy_uploaded_since", _uploaded_since_txn, user_id, since
        )
        self._remember(user_id, time.monotonic(), used)
        return used

    def admitted(self, user_id: str, size: int) -> None:
        """An upload of ``size`` bytes passed the quota check."""
        entry = self._ledger.get(user_id)
        if entry is not None:
            self._remember(user_id, entry[0], entry[1] + size)

    def _remember(self, user_id: str, read_at: float, used: int) -> None:
        self._ledger[user_id] = (read_at, used)
        self._ledger.move_to_end(user_id)
        if len(self._ledger) > LEDGER_MAX:
            self._ledger.popitem(last=False)
