"""The device tier, enforced: redact what passed it, delete media that did.

Stock clients keep what they stored until they receive a redaction, so the
sweep redacts every content event older than the device lifetime, as the
system user, in every room it is joined to. It walks Synapse's events in
stream order from a durable watermark, so each run costs what newly expired,
and a crash between a redaction and the watermark update is harmless: an
event that already has a redaction is skipped, never redacted twice.
"""

from __future__ import annotations

import itertools
import logging
import time

from prometheus_client import Counter, Gauge
from synapse.api.errors import SynapseError
from synapse.module_api import ModuleApi

from .config import RetentionConfig
from .internals import delete_local_media, delete_remote_media
from .retention_store import RetentionStore, StoredEvent

logger = logging.getLogger(__name__)

REDACTIONS = Counter(
    "police_policy_retention_redactions",
    "Events the retention sweep redacted after the device lifetime",
    labelnames=["server_name"],
)
SKIPPED = Counter(
    "police_policy_retention_skipped",
    "Expired events the sweep could not redact (rooms the system user is not in, refusals)",
    labelnames=["server_name"],
)
MEDIA_DELETED = Counter(
    "police_policy_retention_media_deleted",
    "Media files deleted: local uploads after the device lifetime (by upload time), "
    "copies of other servers' media after the audit lifetime",
    labelnames=["server_name"],
)
ROOMS_PURGED = Counter(
    "police_policy_retention_rooms_purged",
    "Room history purges done at the audit lifetime (by Synapse's retention purge jobs)",
    labelnames=["server_name"],
)
LAG = Gauge(
    "police_policy_retention_lag_seconds",
    "Age beyond the device lifetime of the oldest expired event not yet redacted (0: none)",
    labelnames=["server_name"],
)

BATCH = 200
#: batches per run; the next run continues from the watermark
MAX_BATCHES = 50
REASON = "Retention policy: content is removed from devices after the device lifetime"


def now_ms() -> int:
    return int(time.time() * 1000)


class RetentionSweep:
    def __init__(self, config: RetentionConfig, api: ModuleApi, store: RetentionStore) -> None:
        self._config = config
        self._api = api
        self._store = store
        self.system_user = api.get_qualified_user_id(config.system_user)
        self._server = api.server_name

    def count_purge(self, room_id: str) -> None:
        ROOMS_PURGED.labels(server_name=self._server).inc()
        logger.info("Audit tier: history of %s purged", room_id)

    async def ensure_system_user(self) -> None:
        if await self._api.check_user_exists(self.system_user) is None:
            await self._api.register_user(self._config.system_user, displayname="Retention policy")
            logger.info("Created the retention system user %s", self.system_user)

    async def run(self) -> None:
        now = now_ms()
        cutoff = now - self._config.device_lifetime * 1000
        redacted, skipped, behind = await self._redact_expired(cutoff)
        media = await self._delete_expired_media(cutoff)
        media += await self._delete_remote_media(now - self._config.audit_lifetime * 1000)
        LAG.labels(server_name=self._server).set(behind)
        if redacted or skipped or media or behind:
            logger.info(
                "Retention sweep: %d events redacted, %d skipped, %d media files deleted; "
                "%.0fs behind the device lifetime",
                redacted,
                skipped,
                media,
                behind,
            )

    async def _redact_expired(self, cutoff: int) -> tuple[int, int, float]:
        """Returns (redacted, skipped, seconds the oldest unswept expired event is overdue)."""
        redacted = skipped = 0
        position = await self._store.watermark()
        joined = await self._store.joined_rooms(self.system_user)
        for _ in range(MAX_BATCHES):
            events = await self._store.events_after(position, BATCH)
            # Stream order follows arrival, so the first unexpired event ends the walk.
            expired = list(itertools.takewhile(lambda event: event.received_ts <= cutoff, events))
            if not expired:
                return redacted, skipped, 0.0
            done = await self._store.redacted([event.event_id for event in expired])
            for event in expired:
                if event.event_id in done:
                    continue
                if event.room_id in joined and await self._redact(event):
                    redacted += 1
                    REDACTIONS.labels(server_name=self._server).inc()
                else:
                    skipped += 1
                    SKIPPED.labels(server_name=self._server).inc()
            position = expired[-1].stream_ordering
            await self._store.set_watermark(position)
            if len(expired) < len(events) or len(events) < BATCH:
                return redacted, skipped, 0.0
        following = await self._store.events_after(position, 1)
        behind = (cutoff - following[0].received_ts) / 1000 if following else 0.0
        return redacted, skipped, max(behind, 0.0)

    async def _redact(self, event: StoredEvent) -> bool:
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": "m.room.redaction",
                    "room_id": event.room_id,
                    "sender": self.system_user,
                    "redacts": event.event_id,
                    "content": {"redacts": event.event_id, "reason": REASON},
                }
            )
        except SynapseError as error:
            logger.warning("Retention sweep could not redact %s: %s", event.event_id, error.msg)
            return False
        return True

    async def _delete_remote_media(self, cutoff: int) -> int:
        """The audit tier for copies of other servers' media: Synapse's own
        clean-up of them goes by last access, which a popular file never reaches."""
        deleted = 0
        for _ in range(MAX_BATCHES):
            cached = await self._store.remote_media_fetched_before(cutoff, BATCH)
            if not cached:
                break
            count = await delete_remote_media(self._api, cached)
            deleted += count
            MEDIA_DELETED.labels(server_name=self._server).inc(count)
            if count == 0 or len(cached) < BATCH:
                break
        return deleted

    async def _delete_expired_media(self, cutoff: int) -> int:
        deleted = 0
        for _ in range(MAX_BATCHES):
            media_ids = await self._store.media_uploaded_before(cutoff, BATCH)
            if not media_ids:
                break
            count = await delete_local_media(self._api, media_ids)
            deleted += count
            MEDIA_DELETED.labels(server_name=self._server).inc(count)
            if count == 0 or len(media_ids) < BATCH:
                break
        return deleted
