"""The device tier, enforced: redact what passed it, delete media and
to-device messages that did; and at the audit tier, censor redacted state.

Stock clients keep what they stored until they receive a redaction, so the
sweep redacts, as the system user, every content event older than the device
lifetime, and every state event that can carry text (names, topics, display
names, custom state) once it is both that old and no longer current. It walks
Synapse's events (and its state deltas, for state superseded later) in stream
order from durable watermarks, so each run costs what newly expired.

Only a redaction that took effect counts as done: Synapse stores redactions
by users without power but does not apply them. A redaction that fails (the
system user lost its power, or is not in the room) is remembered and retried
with back-off, counted, and written to the decision log once per event and
kind, until a redaction takes effect or the audit tier purges the event. A
crash between a redaction and the watermark update is harmless: the next run
finds the event redacted and sends nothing twice.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import cast

import attrs
from prometheus_client import Counter, Gauge
from synapse.api.errors import SynapseError
from synapse.module_api import ModuleApi

from ..clock import now_ms
from ..config import RetentionConfig
from ..decisions import RETENTION_FAILURES, DecisionLog
from ..internals import delete_local_media, delete_remote_media, pruned_json_of_redacted, redacted_events
from .store import STATE_WATERMARK, Failure, RetentionStore, Retry, StoredEvent

logger = logging.getLogger(__name__)

REDACTIONS = Counter(
    "police_policy_retention_redactions",
    "Events the retention sweep redacted after the device lifetime",
    labelnames=["server_name"],
)
RETRIES = Gauge(
    "police_policy_retention_retries",
    "Expired events waiting for a retry of their redaction, by the kind of the last failure",
    labelnames=["kind", "server_name"],
)
MEDIA_DELETED = Counter(
    "police_policy_retention_media_deleted",
    "Media files deleted: local uploads after the device lifetime (by upload time), "
    "copies of other servers' media after the audit lifetime",
    labelnames=["server_name"],
)
TO_DEVICE_DELETED = Counter(
    "police_policy_retention_to_device_deleted",
    "To-device messages deleted because no device (or other server) fetched them within the device lifetime",
    labelnames=["server_name"],
)
CENSORED = Counter(
    "police_policy_retention_censored",
    "Redacted state events whose stored original was censored at the audit lifetime",
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
#: batches per run of each walk but the one over events; the next run continues from the watermark
MAX_BATCHES = 50
#: share of the sweep interval the walk over events may take: behind (an
#: incident's messages expiring, days after an outage), it redacts as fast as
#: Synapse lets it, not MAX_BATCHES x BATCH per interval (33 a second at 5 min),
#: and leaves the rest of the interval to the other walks and the next run
EVENT_WALK_SHARE = 0.8
#: ... but at least this long: at short intervals a run may overrun (the next waits)
EVENT_WALK_MIN_S = 60
#: the longest wait between two attempts at one event
MAX_RETRY_DELAY_S = 3600
REASON = "Retention policy: content is removed from devices after the device lifetime"

#: why a redaction failed: the system user is not in the room; Synapse refused
#: it for want of power (403); Synapse refused it otherwise; something broke
FAILURE_KINDS = ("not_in_room", "forbidden", "refused", "error")


def retry_delay_s(attempts: int, sweep_interval_s: int, device_lifetime_s: int) -> int:
    """Back-off after the given number of failed attempts: from the sweep
    interval, doubling, to at most an hour (or the device lifetime, if shorter:
    an expired event should not wait longer than it was allowed to live)."""
    ceiling = max(sweep_interval_s, min(MAX_RETRY_DELAY_S, device_lifetime_s))
    # attempts >= 1 (it counts failures): the exponent is not negative, so the power is an int
    factor = cast(int, 2 ** min(attempts - 1, 20))
    return min(sweep_interval_s * factor, ceiling)


class RetentionSweep:
    def __init__(
        self,
        config: RetentionConfig,
        api: ModuleApi,
        store: RetentionStore,
        decisions: DecisionLog,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._monotonic = monotonic
        self._api = api
        self._store = store
        self._decisions = decisions
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
        audit_cutoff = now - self._config.audit_lifetime * 1000
        joined = await self._store.joined_rooms(self.system_user)
        tally = _Tally()
        behind = await self._walk_events(cutoff, now, joined, tally)
        await self._walk_superseded(cutoff, now, joined, tally)
        await self._retry(now, joined, tally)
        media = await self._delete_expired_media(cutoff)
        media += await self._delete_remote_media(audit_cutoff)
        to_device = await self._delete_to_device(cutoff, now)
        censored = await self._censor(audit_cutoff)
        waiting = await self._store.retry_summary()
        for kind in FAILURE_KINDS:
            RETRIES.labels(kind=kind, server_name=self._server).set(waiting.get(kind, (0, 0))[0])
        if waiting:
            oldest = min(received for _, received in waiting.values())
            behind = max(behind, (cutoff - oldest) / 1000)
        LAG.labels(server_name=self._server).set(behind)
        if tally.redacted or tally.failed or media or to_device or censored or behind:
            logger.info(
                "Retention sweep: %d events redacted, %d skipped (the redaction failed: retried later; "
                "%d events waiting), %d media files deleted, %d to-device messages deleted, "
                "%d redacted state events censored; %.0fs behind the device lifetime",
                tally.redacted,
                tally.failed,
                sum(count for count, _ in waiting.values()),
                media,
                to_device,
                censored,
                behind,
            )

    async def _walk_events(self, cutoff: int, now: int, joined: set[str], tally: _Tally) -> float:
        """Returns how many seconds the oldest expired event not yet walked is
        overdue. At least one batch; more until caught up or its time is spent
        (EVENT_WALK_SHARE of the sweep interval, at least EVENT_WALK_MIN_S)."""
        budget_s = max(self._config.sweep_interval * EVENT_WALK_SHARE, EVENT_WALK_MIN_S)
        deadline = self._monotonic() + budget_s
        position = await self._store.watermark()
        while True:
            events = await self._store.events_after(position, BATCH)
            # Stream order follows arrival, so the first unexpired event ends the walk.
            expired = list(itertools.takewhile(lambda event: event.received_ts <= cutoff, events))
            if not expired:
                return 0.0
            await self._settle(expired, now, joined, tally)
            position = expired[-1].stream_ordering
            await self._store.set_watermark(position)
            if len(expired) < len(events) or len(events) < BATCH:
                return 0.0
            if self._monotonic() >= deadline:
                break
        following = await self._store.events_after(position, 1)
        behind = (cutoff - following[0].received_ts) / 1000 if following else 0.0
        return max(behind, 0.0)

    async def _walk_superseded(self, cutoff: int, now: int, joined: set[str], tally: _Tally) -> None:
        """State replaced since the last run: redacted now if it is past the
        device tier (else the walk over events meets it when it is)."""
        position = await self._store.watermark(STATE_WATERMARK)
        for _ in range(MAX_BATCHES):
            events, reached = await self._store.superseded_after(position, BATCH)
            await self._settle([event for event in events if event.received_ts <= cutoff], now, joined, tally)
            renamed = {event.room_id for event in events if event.type == "m.room.name"}
            await self._store.blank_stale_snapshot_names(renamed)
            if reached == position:
                return
            position = reached
            await self._store.set_watermark(position, STATE_WATERMARK)
            if len(events) < BATCH:
                return

    async def _retry(self, now: int, joined: set[str], tally: _Tally) -> None:
        for _ in range(MAX_BATCHES):
            due = await self._store.retries_due(now, BATCH)
            if not due:
                return
            existing = await self._store.existing([retry.event.event_id for retry in due])
            gone = [retry for retry in due if retry.event.event_id not in existing]
            for retry in gone:
                self._decisions.retention(
                    "redaction_abandoned",
                    user=self.system_user,
                    room=retry.event.room_id,
                    event=retry.event.event_id,
                    kind=retry.kind,
                    attempts=retry.attempts,
                    reason="the event was purged from the server (audit tier) before a redaction "
                    "took effect; clients that stored it keep their copy",
                )
            await self._store.forget([retry.event.event_id for retry in gone])
            await self._settle(
                [
                    attrs.evolve(retry.event, state=existing[retry.event.event_id])
                    for retry in due
                    if retry.event.event_id in existing
                ],
                now,
                joined,
                tally,
            )
            if len(due) < BATCH:
                return

    async def _settle(self, events: list[StoredEvent], now: int, joined: set[str], tally: _Tally) -> None:
        """Redact each expired event unless a redaction of it took effect or it
        is current state; remember the failures, forget the resolved retries."""
        if not events:
            return
        ids = [event.event_id for event in events]
        done = await redacted_events(self._api, await self._store.with_redactions(ids))
        current = await self._store.current(ids)
        previous = await self._store.retries_of(ids)
        resolved: list[str] = []
        failures: list[Failure] = []
        censor: list[StoredEvent] = []
        for event in events:
            if event.event_id in done or event.event_id in current:
                resolved.append(event.event_id)
                if event.state and event.event_id in done:
                    censor.append(event)
                continue
            if event.room_id in joined:
                failure = await self._redact(event)
            else:
                failure = ("not_in_room", f"{self.system_user} is not in the room")
            before = previous.get(event.event_id)
            if failure is None:
                tally.redacted += 1
                REDACTIONS.labels(server_name=self._server).inc()
                resolved.append(event.event_id)
                if event.state:
                    censor.append(event)
                if before is not None:
                    self._decisions.retention(
                        "redacted_after_retry",
                        user=self.system_user,
                        room=event.room_id,
                        event=event.event_id,
                        attempts=before.attempts + 1,
                    )
            else:
                tally.failed += 1
                failures.append(self._failed(event, *failure, before, now))
        await self._store.forget([event_id for event_id in resolved if event_id in previous])
        await self._store.record_failures(failures)
        await self._store.queue_censoring(censor)

    def _failed(self, event: StoredEvent, kind: str, error: str, before: Retry | None, now: int) -> Failure:
        attempts = before.attempts + 1 if before is not None else 1
        delay = retry_delay_s(attempts, self._config.sweep_interval, self._config.device_lifetime)
        RETENTION_FAILURES.labels(kind=kind, server_name=self._server).inc()
        if before is None or before.kind != kind:
            logger.warning(
                "Retention sweep could not redact %s in %s (%s: %s); retrying",
                event.event_id,
                event.room_id,
                kind,
                error,
            )
            self._decisions.retention(
                "redaction_failed",
                user=self.system_user,
                room=event.room_id,
                event=event.event_id,
                kind=kind,
                reason=error,
                attempts=attempts,
                retry_in_s=delay,
            )
        return Failure(
            event=event,
            kind=kind,
            error=error,
            attempts=attempts,
            first_failed_at=before.first_failed_at if before is not None else now,
            next_try_at=now + delay * 1000,
        )

    async def _redact(self, event: StoredEvent) -> tuple[str, str] | None:
        """None once redacted, else (failure kind, Synapse's message)."""
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
            return ("forbidden" if error.code == 403 else "refused"), error.msg
        except Exception as error:  # one broken event must not stop the sweep
            logger.warning("Retention sweep failed on %s", event.event_id, exc_info=True)
            return "error", type(error).__name__
        return None

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

    async def _delete_to_device(self, cutoff: int, now: int) -> int:
        """To-device messages (room keys, verification requests, anything a
        client sends) that waited a device lifetime for a device that never
        fetched them: the content they would unlock has been redacted by then."""
        deleted = await self._store.delete_to_device_before(cutoff)
        await self._store.note_to_device_position(now)
        TO_DEVICE_DELETED.labels(server_name=self._server).inc(deleted)
        return deleted

    async def _censor(self, audit_cutoff: int) -> int:
        """Redacted state past the audit tier: the purge jobs keep state events,
        and Synapse censors a redacted original only a retention period after
        the redaction (past the audit tier by the device lifetime), so the sweep
        censors the state it found redacted at the audit tier itself."""
        censored = 0
        for _ in range(MAX_BATCHES):
            event_ids = await self._store.due_for_censoring(audit_cutoff, BATCH)
            if not event_ids:
                break
            pruned = await pruned_json_of_redacted(self._api, event_ids)
            await self._store.censor(pruned, event_ids)
            censored += len(pruned)
            CENSORED.labels(server_name=self._server).inc(len(pruned))
            if len(event_ids) < BATCH:
                break
        return censored


class _Tally:
    """What one run did, for its log line."""

    def __init__(self) -> None:
        self.redacted = 0
        self.failed = 0
