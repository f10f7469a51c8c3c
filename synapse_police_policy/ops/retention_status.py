"""``police-policy retention status``: where the two tiers stand, and what
the server keeps in clear, read from the database on the server host (the
same figures as the module's metrics, without needing the metrics listener),
so an operator or a data-protection officer sees every category of the
inventory in docs/policy.md with its count and the age of its oldest item."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

from ..api import MODULE_NAME
from ..config import PolicyConfig, parse_config
from ..retention.store import (
    _KEPT,
    CONTENT_EVENTS,
    MEDIA_UPLOADED_BEFORE,
    SWEPT_EVENTS,
    TO_DEVICE,
    WATERMARK,
)
from .bootstrap import connect_database


@attrs.frozen
class Kept:
    """One category of what the server keeps in clear: how many items, the
    arrival time of the oldest (None: not recorded), and why it stays."""

    label: str
    count: int
    oldest_ms: int | None
    rule: str


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
    #: failure kind -> (events waiting for a retry, arrival time of the oldest)
    retries: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    kept: list[Kept] = attrs.field(factory=list)
    now_ms: int = 0

    def _retry_line(self) -> str:
        total = sum(count for count, _ in self.retries.values())
        if not total:
            return "redactions to retry      0"
        kinds = ", ".join(f"{kind} {count}" for kind, (count, _) in sorted(self.retries.items()))
        oldest = min(received for _, received in self.retries.values())
        overdue = max(0, (self.now_ms - oldest) // 1000 - self.device_lifetime_s)
        return f"redactions to retry      {total} ({kinds}); oldest {overdue}s past the device lifetime"

    def _kept_lines(self) -> list[str]:
        lines = ["kept in clear            count  oldest    why"]
        for item in self.kept:
            age = "-" if item.oldest_ms is None else f"{max(0, (self.now_ms - item.oldest_ms) // 1000)}s"
            lines.append(f"  {item.label:<34} {item.count:>5}  {age:>8}  {item.rule}")
        return lines

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
            self._retry_line(),
            *self._kept_lines(),
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
    now = int(time.time() * 1000)  # patched by the tests as ``time``
    device_cutoff = now - policy.retention.device_lifetime * 1000
    audit_cutoff = now - policy.retention.audit_lifetime * 1000
    connection, qmark = connect_database(homeserver.get("database", {"name": "sqlite3", "args": {}}))
    cursor = connection.cursor()

    def row(sql: str, *args: Any) -> Any:
        cursor.execute(sql if qmark else sql.replace("?", "%s"), args)
        return cursor.fetchone()

    def one(sql: str, *args: Any) -> Any:
        found = row(sql, *args)
        return found[0] if found else None

    def all_rows(sql: str, *args: Any) -> list[Any]:
        cursor.execute(sql if qmark else sql.replace("?", "%s"), args)
        return list(cursor.fetchall())

    content = CONTENT_EVENTS
    try:
        watermark = (
            one("SELECT position FROM police_policy_retention_progress WHERE name = ?", WATERMARK) or 0
        )
        pending = f"FROM events WHERE stream_ordering > ? AND received_ts <= ? AND {SWEPT_EVENTS}"
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
            retries={
                kind: (int(count), int(oldest_ms))
                for kind, count, oldest_ms in all_rows(
                    "SELECT kind, COUNT(*), MIN(received_ts)"
                    " FROM police_policy_retention_retries GROUP BY kind"
                )
            },
            kept=[_kept(label, row(sql, *args), rule) for label, sql, args, rule in _inventory(server_name)],
            now_ms=now,
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


def _kept(label: str, found: Any, rule: str) -> Kept:
    count = int(found[0] or 0) if found else 0
    oldest = found[1] if found and len(found) > 1 and found[1] is not None else None
    return Kept(label, count, None if oldest is None else int(oldest), rule)


_CURRENT = "FROM current_state_events AS c JOIN events AS e ON e.event_id = c.event_id"


def _inventory(server_name: str) -> list[tuple[str, str, tuple[Any, ...], str]]:
    """(label, query giving (count, oldest arrival or None), its parameters,
    why it stays); the inventory in docs/policy.md in the same order."""
    return [
        (
            "room names and topics",
            f"SELECT COUNT(*), MIN(e.received_ts) {_CURRENT} WHERE c.type IN ('m.room.name', 'm.room.topic')",
            (),
            "current ones stay (rooms need them)",
        ),
        (
            "room avatars (state)",
            f"SELECT COUNT(*), MIN(e.received_ts) {_CURRENT} WHERE c.type = 'm.room.avatar'",
            (),
            "current ones stay",
        ),
        (
            "pinned-event lists",
            f"SELECT COUNT(*), MIN(e.received_ts) {_CURRENT} WHERE c.type = 'm.room.pinned_events'",
            (),
            "current ones stay",
        ),
        (
            "custom room state",
            f"SELECT COUNT(*), MIN(e.received_ts) {_CURRENT}"
            f" WHERE substr(c.type, 1, 2) <> 'm.' AND c.type NOT IN ({_KEPT})",
            (),
            "current ones stay",
        ),
        (
            "display names in rooms",
            f"SELECT COUNT(*), MIN(e.received_ts) {_CURRENT}"
            " JOIN room_memberships AS m ON m.event_id = c.event_id WHERE c.type = 'm.room.member'"
            " AND (m.display_name IS NOT NULL OR m.avatar_url IS NOT NULL)",
            (),
            "current members' stay",
        ),
        (
            "profiles (display name, avatar)",
            "SELECT COUNT(*) FROM profiles WHERE displayname IS NOT NULL OR avatar_url IS NOT NULL",
            (),
            "stay while the account exists",
        ),
        (
            "avatar images (with thumbnails)",
            "SELECT COUNT(*), MIN(created_ts) FROM local_media_repository"
            " WHERE 'mxc://' || ? || '/' || media_id IN"
            " (SELECT avatar_url FROM profiles WHERE avatar_url IS NOT NULL"
            " UNION SELECT avatar FROM room_stats_state WHERE avatar IS NOT NULL)",
            (server_name,),
            "current avatars stay",
        ),
        (
            "to-device messages waiting",
            "SELECT (SELECT COUNT(*) FROM device_inbox) + (SELECT COUNT(*) FROM device_federation_outbox),"
            " (SELECT MIN(taken_at) FROM police_policy_retention_marks WHERE stream = ?"
            "  AND position >= (SELECT MIN(stream_id) FROM device_inbox))",
            (TO_DEVICE,),
            "deleted after the device lifetime",
        ),
        (
            "redacted originals",
            "SELECT COUNT(DISTINCT r.redacts), MIN(e.received_ts) FROM redactions AS r"
            " JOIN events AS e ON e.event_id = r.redacts WHERE r.have_censored = ?",
            (False,),
            "until the audit lifetime",
        ),
        (
            "room aliases",
            "SELECT COUNT(*) FROM room_aliases",
            (),
            "stay while the alias exists",
        ),
        (
            "device names",
            "SELECT COUNT(*) FROM devices WHERE display_name IS NOT NULL",
            (),
            "stay while the device exists",
        ),
    ]
