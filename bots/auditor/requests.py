"""Export requests: the one record of a four-eyes export, from request to delivery.

A request's course is a chain of recorded steps, each a single conditional
UPDATE, so two auditors (or a restarted bot) cannot both take the same step::

    pending --!approve--> approved --bundle in the room--> delivered
       |                     '--others could read the room--> stopped
       |--!deny--> denied
       '--its lifetime passed--> expired

Approval and delivery are separate steps: a bot stopped after the approval finds
the request approved but not delivered at its next start and delivers it then
(``undelivered``). The bundle itself is never stored (it holds the messages in
clear); it is built again from the archive, as of the approval.

``ExportRequest`` is also what a bundle's manifest says about its request
(``manifest``): the fields that describe the bot's bookkeeping stay out of it.
"""

from __future__ import annotations

import secrets
import sqlite3
from enum import StrEnum
from pathlib import Path
from typing import Any

import attrs

#: request IDs: no 0/O or 1/I to confuse when read out
_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#: the default lifetime of a request that nobody approved or denied (7 days)
DEFAULT_LIFETIME_S = 7 * 86_400
#: attrs metadata of the fields a bundle's manifest leaves out
_LOCAL = {"manifest": False}


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DELIVERED = "delivered"
    STOPPED = "stopped"
    DENIED = "denied"
    EXPIRED = "expired"


def _local(default: Any = None) -> Any:
    return attrs.field(default=default, metadata=_LOCAL)


@attrs.frozen
class ExportRequest:
    """An export request; times in milliseconds since the epoch (UTC), ``to_ms`` exclusive
    (the day after the last day)."""

    request_id: str
    room_id: str
    from_ms: int
    to_ms: int
    case_ref: str
    reason: str
    requested_by: str
    approved_by: str | None = None
    created_at_ms: int = 0
    #: the room the request was made in: the bundle goes there
    command_room: str = _local("")
    status: str = _local(Status.PENDING.value)
    #: after this a pending request can no longer be approved
    expires_at_ms: int | None = _local()
    approved_at_ms: int | None = _local()
    #: the room the approval was given in (told when the bundle arrived)
    approved_in: str | None = _local()
    #: the bundle's first message time: ``from_ms`` moved up to what was retained at approval
    bundle_from_ms: int | None = _local()
    #: who denied (or withdrew) it, and when
    denied_by: str | None = _local()
    denied_at_ms: int | None = _local()
    delivered_at_ms: int | None = _local()
    bundle_sha256: str | None = _local()
    message_count: int | None = _local()
    #: why the delivery was stopped
    stop_reason: str | None = _local()

    def manifest(self) -> dict[str, Any]:
        """What a bundle's manifest says about its request."""
        return attrs.asdict(self, filter=lambda attribute, _value: attribute.metadata.get("manifest", True))

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    @property
    def closed_by(self) -> str | None:
        """Who closed it: the approver or the one who denied it."""
        return self.denied_by if self.status == Status.DENIED else self.approved_by


_COLUMNS = (
    ("request_id", "TEXT PRIMARY KEY"),
    ("room_id", "TEXT NOT NULL"),
    ("from_ms", "INTEGER NOT NULL"),
    ("to_ms", "INTEGER NOT NULL"),
    ("case_ref", "TEXT NOT NULL"),
    ("reason", "TEXT NOT NULL"),
    ("requested_by", "TEXT NOT NULL"),
    ("command_room", "TEXT NOT NULL"),
    ("created_at_ms", "INTEGER NOT NULL"),
    ("status", "TEXT NOT NULL DEFAULT 'pending'"),
    # the first version's: who decided (approved or denied) and when
    ("decided_by", "TEXT"),
    ("decided_at_ms", "INTEGER"),
)
#: added since the first version; a file of that version gets them at its first open
_ADDED = (
    ("expires_at_ms", "INTEGER"),
    ("approved_in", "TEXT"),
    ("bundle_from_ms", "INTEGER"),
    ("delivered_at_ms", "INTEGER"),
    ("bundle_sha256", "TEXT"),
    ("message_count", "INTEGER"),
    ("stop_reason", "TEXT"),
)
_SELECT = (
    "SELECT request_id, room_id, from_ms, to_ms, case_ref, reason, requested_by, created_at_ms, "
    "command_room, status, expires_at_ms, decided_by, decided_at_ms, approved_in, bundle_from_ms, "
    "delivered_at_ms, bundle_sha256, message_count, stop_reason FROM export_requests"
)
_APPROVED = ("approved", "delivered", "stopped")


def _request(row: tuple[Any, ...]) -> ExportRequest:
    (
        request_id,
        room_id,
        from_ms,
        to_ms,
        case_ref,
        reason,
        requested_by,
        created_at_ms,
        command_room,
        status,
        expires_at_ms,
        decided_by,
        decided_at_ms,
        approved_in,
        bundle_from_ms,
        delivered_at_ms,
        bundle_sha256,
        message_count,
        stop_reason,
    ) = row
    approved = status in _APPROVED
    return ExportRequest(
        request_id=request_id,
        room_id=room_id,
        from_ms=from_ms,
        to_ms=to_ms,
        case_ref=case_ref,
        reason=reason,
        requested_by=requested_by,
        approved_by=decided_by if approved else None,
        created_at_ms=created_at_ms,
        command_room=command_room,
        status=status,
        expires_at_ms=expires_at_ms,
        approved_at_ms=decided_at_ms if approved else None,
        approved_in=approved_in,
        bundle_from_ms=bundle_from_ms,
        denied_by=decided_by if status == Status.DENIED else None,
        denied_at_ms=decided_at_ms if status == Status.DENIED else None,
        delivered_at_ms=delivered_at_ms,
        bundle_sha256=bundle_sha256,
        message_count=message_count,
        stop_reason=stop_reason,
    )


class ExportStore:
    """Export requests in a small SQLite file, so they survive a restart."""

    def __init__(self, path: str | Path, lifetime_ms: int = DEFAULT_LIFETIME_S * 1000) -> None:
        self.lifetime_ms = lifetime_ms
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5)
        columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS + _ADDED)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS export_requests ({columns})")
        self._migrate()

    def _migrate(self) -> None:
        """A file of the first version: add the new columns. Its approved requests were
        delivered or reopened by that version (it recorded the approval after the upload
        began), so they count as delivered, not as deliveries still to make."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(export_requests)")}
        missing = [(name, kind) for name, kind in _ADDED if name not in present]
        if not missing:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for name, kind in missing:
                self._db.execute(f"ALTER TABLE export_requests ADD COLUMN {name} {kind}")
            self._db.execute(
                "UPDATE export_requests SET status = 'delivered', delivered_at_ms = decided_at_ms "
                "WHERE status = 'approved'"
            )
            self._db.execute(
                "UPDATE export_requests SET expires_at_ms = created_at_ms + ?", (self.lifetime_ms,)
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def create(
        self,
        *,
        room_id: str,
        from_ms: int,
        to_ms: int,
        case_ref: str,
        reason: str,
        requested_by: str,
        command_room: str,
        created_at_ms: int,
    ) -> str:
        """A new pending request; its ID (random, not guessable from the others)."""
        while True:
            request_id = "EX-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
            try:
                self._db.execute(
                    "INSERT INTO export_requests (request_id, room_id, from_ms, to_ms, case_ref, reason, "
                    "requested_by, command_room, created_at_ms, expires_at_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        request_id,
                        room_id,
                        from_ms,
                        to_ms,
                        case_ref,
                        reason,
                        requested_by,
                        command_room,
                        created_at_ms,
                        created_at_ms + self.lifetime_ms,
                    ),
                )
            except sqlite3.IntegrityError:
                continue  # the ID is taken: draw another
            return request_id

    def get(self, request_id: str) -> ExportRequest | None:
        row = self._db.execute(f"{_SELECT} WHERE request_id = ?", (request_id,)).fetchone()
        return _request(row) if row else None

    def undelivered(self) -> list[ExportRequest]:
        """Approved requests whose bundle has not arrived yet, oldest approval first."""
        rows = self._db.execute(f"{_SELECT} WHERE status = 'approved' ORDER BY decided_at_ms, request_id")
        return [_request(row) for row in rows]

    def _step(self, request_id: str, before: str, sql: str, params: tuple[Any, ...]) -> bool:
        cursor = self._db.execute(
            f"UPDATE export_requests SET {sql} WHERE request_id = ? AND status = ?",
            (*params, request_id, before),
        )
        return cursor.rowcount == 1

    def approve(self, request_id: str, by: str, at_ms: int, *, room: str, bundle_from_ms: int) -> bool:
        """Pending (and not expired) to approved; False when it was not (any more)."""
        cursor = self._db.execute(
            "UPDATE export_requests SET status = 'approved', decided_by = ?, decided_at_ms = ?, "
            "approved_in = ?, bundle_from_ms = ? WHERE request_id = ? AND status = 'pending' "
            "AND (expires_at_ms IS NULL OR expires_at_ms > ?)",
            (by, at_ms, room, bundle_from_ms, request_id, at_ms),
        )
        return cursor.rowcount == 1

    def deny(self, request_id: str, by: str, at_ms: int) -> bool:
        """Pending to denied (or withdrawn, when ``by`` is the requester)."""
        return self._step(
            request_id, "pending", "status = 'denied', decided_by = ?, decided_at_ms = ?", (by, at_ms)
        )

    def expire(self, request_id: str, now_ms: int) -> bool:
        """Pending to expired, when its lifetime has passed."""
        cursor = self._db.execute(
            "UPDATE export_requests SET status = 'expired' WHERE request_id = ? AND status = 'pending' "
            "AND expires_at_ms IS NOT NULL AND expires_at_ms <= ?",
            (request_id, now_ms),
        )
        return cursor.rowcount == 1

    def delivered(self, request_id: str, at_ms: int, *, bundle_sha256: str, message_count: int) -> bool:
        """Approved to delivered: the bundle is in the requester's room."""
        return self._step(
            request_id,
            "approved",
            "status = 'delivered', delivered_at_ms = ?, bundle_sha256 = ?, message_count = ?",
            (at_ms, bundle_sha256, message_count),
        )

    def stop(self, request_id: str, reason: str) -> bool:
        """Approved to stopped: the bundle must not go where it was asked for."""
        return self._step(request_id, "approved", "status = 'stopped', stop_reason = ?", (reason,))


__all__ = ["DEFAULT_LIFETIME_S", "ExportRequest", "ExportStore", "Status"]
