"""``police-policy retention status``: where the two tiers stand, read from
the database on the server host (the same figures as the module's metrics,
without needing the metrics listener)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

from .bootstrap import connect_database
from .check_config import MODULE_NAME
from .config import PolicyConfig, parse_config
from .retention_store import CONTENT_EVENTS, MEDIA_UPLOADED_BEFORE, WATERMARK


@attrs.frozen
class RetentionStatus:
    system_user: str
    device_lifetime_s: int
    audit_lifetime_s: int
    watermark: int
    redacted_total: int
    expired_unredacted: int
    lag_s: float
    media_past_device_tier: int
    events_past_audit_tier: int

    def lines(self) -> list[str]:
        return [
            f"device lifetime          {self.device_lifetime_s}s (redacted on clients, media deleted)",
            f"audit lifetime           {self.audit_lifetime_s}s (history purged by Synapse's purge jobs)",
            f"system user              {self.system_user}",
            f"sweep watermark          stream position {self.watermark}",
            f"events redacted (total)  {self.redacted_total}",
            f"expired, not yet swept   {self.expired_unredacted}",
            f"sweep lag                {self.lag_s:.0f}s",
            f"media past device tier   {self.media_past_device_tier}",
            f"events past audit tier   {self.events_past_audit_tier} (still stored; purge jobs remove them)",
        ]


def _policy(homeserver: Mapping[str, Any]) -> PolicyConfig:
    for entry in homeserver.get("modules") or []:
        if isinstance(entry, Mapping) and entry.get("module") == MODULE_NAME:
            return parse_config(entry.get("config") or {})
    raise ValueError(f"modules: {MODULE_NAME} is not loaded in this homeserver config")


def retention_status(homeserver: Mapping[str, Any]) -> RetentionStatus:
    policy = _policy(homeserver)
    server_name = homeserver.get("server_name")
    if not isinstance(server_name, str):
        raise ValueError("server_name: missing from the homeserver config")
    system_user = f"@{policy.retention.system_user}:{server_name}"
    now = int(time.time() * 1000)
    device_cutoff = now - policy.retention.device_lifetime * 1000
    audit_cutoff = now - policy.retention.audit_lifetime * 1000
    connection, qmark = connect_database(homeserver.get("database", {"name": "sqlite3", "args": {}}))
    cursor = connection.cursor()

    def one(sql: str, *args: Any) -> Any:
        cursor.execute(sql if qmark else sql.replace("?", "%s"), args)
        row = cursor.fetchone()
        return row[0] if row else None

    content = CONTENT_EVENTS
    try:
        watermark = (
            one("SELECT position FROM police_policy_retention_progress WHERE name = ?", WATERMARK) or 0
        )
        pending = f"FROM events WHERE stream_ordering > ? AND received_ts <= ? AND {content}"
        oldest = one(
            f"SELECT MIN(received_ts) {pending}",
            watermark,
            device_cutoff,
            False,
        )
        return RetentionStatus(
            system_user=system_user,
            device_lifetime_s=policy.retention.device_lifetime,
            audit_lifetime_s=policy.retention.audit_lifetime,
            watermark=watermark,
            redacted_total=one(
                "SELECT COUNT(*) FROM redactions AS r JOIN events AS e ON e.event_id = r.event_id"
                " WHERE e.sender = ?",
                system_user,
            ),
            expired_unredacted=one(
                f"SELECT COUNT(*) {pending}",
                watermark,
                device_cutoff,
                False,
            ),
            lag_s=max(0.0, (device_cutoff - oldest) / 1000) if oldest is not None else 0.0,
            media_past_device_tier=one(
                f"SELECT COUNT(*) FROM ({MEDIA_UPLOADED_BEFORE}) AS expired",
                device_cutoff,
                server_name,
                server_name,
            ),
            events_past_audit_tier=one(
                f"SELECT COUNT(*) FROM events WHERE received_ts <= ? AND {content}", audit_cutoff, False
            ),
        )
    except Exception as error:
        if isinstance(error, ValueError):
            raise
        # sqlite3.Error or psycopg2.Error, most often: the module never ran on it
        raise ValueError(
            f"the database could not answer ({type(error).__name__}: {str(error).strip()}); "
            "is this the database of a Synapse that has run with the module?"
        ) from None
    finally:
        connection.close()
