"""The auditor bot's Prometheus endpoint: what ``!health`` shows, for alerting.

An operator must notice when the bot stops being able to decrypt (an archive
with holes is an audit failure) without asking it in a chat, so the same
figures are served for scraping. Values are read at scrape time from the
bot's counters and the archive (which may be read from any thread). Only the
count of undecryptable events carries a label, the room ID (the operator must
find where keys are missing); no label carries a user or content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .archive import ArchiveStats
from .replies import HealthStats

log = logging.getLogger("bots.auditor.metrics")

PREFIX = "police_auditor"


class BotCollector(Collector):
    """Turns ``HealthStats`` and ``ArchiveStats`` into metrics at every scrape."""

    def __init__(self, health: Callable[[], HealthStats], archive_stats: Callable[[], ArchiveStats]) -> None:
        self._health = health
        self._archive_stats = archive_stats

    def collect(self) -> Iterator[Metric]:
        health = self._health()
        yield CounterMetricFamily(
            f"{PREFIX}_undecryptable_events",
            "Events the bot could not decrypt when they arrived, since it started",
            value=health.undecryptable_seen,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_undecryptable_pending",
            "Events still waiting for their keys (not archived yet)",
            value=health.undecryptable_pending,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_archive_write_failing",
            "1 while archive writes fail: syncing is paused (nothing is lost) until they work again",
            value=int(health.archive_failing_since is not None),
        )
        if health.archive_failing_since is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_archive_write_failing_since_seconds",
                "When the archive writes started failing (Unix time)",
                value=health.archive_failing_since / 1000,
            )
        yield CounterMetricFamily(
            f"{PREFIX}_malformed_events",
            "Events logged and skipped as malformed (bad timestamp, wrong types), since the bot started",
            value=health.malformed_events,
        )
        # a room's ID is no secret from the operator, who must find the room the keys are missing in
        undecryptable = GaugeMetricFamily(
            f"{PREFIX}_undecryptable_held_events",
            "Events still without their keys past undecryptable_after, by room",
            labels=["room"],
        )
        for room_id, count in sorted(health.undecryptable_by_room.items()):
            undecryptable.add_metric([room_id], count)
        yield undecryptable
        yield GaugeMetricFamily(
            f"{PREFIX}_undecryptable_held_events_total",
            "Events still without their keys past undecryptable_after, in all rooms",
            value=sum(health.undecryptable_by_room.values()),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds",
            "When the bot started (Unix time)",
            value=health.started_at_ms / 1000,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_media_rules_enabled",
            "1 when decrypted attachments are checked against the module's media rules",
            value=int(health.media_rules),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_media_quarantine_enabled",
            "1 when refused attachments are quarantined on the server (an admin token is configured)",
            value=int(health.quarantine),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_media_violations",
            "Decrypted attachments that broke the media rules (redacted), since the bot started",
            value=health.violations_found,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_media_quarantine_failures",
            "Quarantine requests for refused attachments that failed, since the bot started",
            value=health.quarantine_failures,
        )
        try:
            stats = self._archive_stats()
        except Exception:  # closed at shutdown, or locked: leave the archive figures out this time
            log.warning("the archive figures are missing from this scrape", exc_info=True)
            return
        for name, help_text, value in (
            ("archived_messages", "Messages in the archive", stats.messages),
            ("archived_redacted_messages", "Archived messages that were redacted", stats.redacted),
            ("archived_policy_violations", "Archived messages that broke a policy rule", stats.violations),
            (
                "archived_unenforced_violations",
                "Archived policy violations not yet enforced (redaction or quarantine failed; retried)",
                stats.unenforced_violations,
            ),
            ("archived_attachments", "Attachments in the archive", stats.attachments),
            (
                "archived_attachment_bytes",
                "Bytes of archived attachments (plaintext size)",
                stats.attachment_bytes,
            ),
            ("archived_rooms", "Rooms with archived messages", stats.rooms),
            ("archive_database_bytes", "Size of the archive database and its WAL", stats.database_bytes),
            ("pending_redactions", "Redactions waiting for their event", stats.pending_redactions),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=value)
        if stats.oldest_ts is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_oldest_archived_message_seconds",
                "Oldest archived message (Unix time); the purge keeps it within the audit lifetime",
                value=stats.oldest_ts / 1000,
            )


def serve_metrics(port: int, address: str, collector: Collector) -> WSGIServer:
    """Serve ``collector`` (alone: no process metrics of other code) on ``address:port``; the
    caller shuts the server down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, address, registry)
    log.info("serving metrics on %s:%d", address, port)
    return server


__all__ = ["BotCollector", "serve_metrics"]
