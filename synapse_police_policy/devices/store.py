"""The enrollment registry and the pending logins, in Synapse's database.

Tables come from ``schema.py``. Some queries read Synapse's own tables:
``devices`` for the sweep, ``access_tokens`` to find the device an approved
login created, ``access_tokens``/``refresh_tokens``/``e2e_device_keys_json``
for whether a device is in use and which identity keys it holds;
``tests/integration/test_enrollment_*`` and ``test_device_binding.py`` pin them.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from typing import Any

from ..schema import Tables
from .rules import (
    APPROVED,
    CONSUMED,
    ENROLLED,
    EXPIRED,
    OPEN,
    PENDING_OPEN_LIFETIME_MS,
    REJECTED,
    Enrollment,
    PendingLogin,
    new_request_id,
)

_ENROLLMENT_COLUMNS = (
    "user_id, device_id, label, enrolled_by, enrolled_at, expires_at, state, revoked_by, revoked_at"
)
_PENDING_COLUMNS = (
    "request_id, user_id, device_id, ip, user_agent, created_at, last_attempt_at, state,"
    " decided_by, decided_at, consumed_at, bound_device_id"
)
#: Open requests kept per user; an older one lapses when a new one comes.
MAX_OPEN_REQUESTS_PER_USER = 10
#: Login links kept per request (each refused retry gets one).
MAX_LINKS_PER_REQUEST = 5
#: Decided and lapsed login requests are deleted after this long.
PENDING_KEEP_MS = 30 * 24 * 3600 * 1000


class Conflict(Exception):
    """The request cannot be decided in its current state."""

    def __init__(self, pending: PendingLogin) -> None:
        super().__init__(pending.state)
        self.pending = pending


def _enrollment(row: Sequence[Any]) -> Enrollment:
    return Enrollment(*row)


def _pending(row: Sequence[Any]) -> PendingLogin:
    return PendingLogin(*row)


def get_enrollment_txn(txn: Any, user_id: str, device_id: str) -> Enrollment | None:
    txn.execute(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM police_policy_enrollments WHERE user_id = ? AND device_id = ?",
        (user_id, device_id),
    )
    row = txn.fetchone()
    return _enrollment(row) if row else None


def enroll_txn(
    txn: Any, user_id: str, device_id: str, label: str, expires_at: int | None, by: str, now: int
) -> tuple[Enrollment, bool]:
    """Enroll or update; returns (record, whether it was not enrolled before).

    Re-enrolling an enrolled device keeps who enrolled it when, and updates
    label and expiry; a revoked or expired device starts a new enrollment."""
    existing = get_enrollment_txn(txn, user_id, device_id)
    if existing is not None and existing.state == ENROLLED:
        txn.execute(
            "UPDATE police_policy_enrollments SET label = ?, expires_at = ?"
            " WHERE user_id = ? AND device_id = ?",
            (label, expires_at, user_id, device_id),
        )
        return Enrollment(**{**existing.to_json(), "label": label, "expires_at": expires_at}), False
    record = Enrollment(user_id, device_id, label, by, now, expires_at, ENROLLED)
    if existing is None:
        txn.execute(
            f"INSERT INTO police_policy_enrollments ({_ENROLLMENT_COLUMNS})"
            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (user_id, device_id, label, by, now, expires_at, ENROLLED, None, None),
        )
    else:
        txn.execute(
            "UPDATE police_policy_enrollments SET label = ?, enrolled_by = ?, enrolled_at = ?,"
            " expires_at = ?, state = ?, revoked_by = NULL, revoked_at = NULL"
            " WHERE user_id = ? AND device_id = ?",
            (label, by, now, expires_at, ENROLLED, user_id, device_id),
        )
    return record, True


def _enroll_unless_enrolled_txn(
    txn: Any, user_id: str, device_id: str, label: str, by: str, now: int
) -> Enrollment:
    """An approval enrolls the device, but leaves an operator's own enrollment
    of it (label, expiry) as it is."""
    existing = get_enrollment_txn(txn, user_id, device_id)
    if existing is not None and existing.state == ENROLLED:
        return existing
    return enroll_txn(txn, user_id, device_id, label, None, by, now)[0]


def _end_enrollment_txn(
    txn: Any, user_id: str, device_id: str, by: str, now: int, state: str
) -> Enrollment | None:
    existing = get_enrollment_txn(txn, user_id, device_id)
    if existing is None or existing.state != ENROLLED:
        return None
    txn.execute(
        "UPDATE police_policy_enrollments SET state = ?, revoked_by = ?, revoked_at = ?"
        " WHERE user_id = ? AND device_id = ?",
        (state, by, now, user_id, device_id),
    )
    return Enrollment(**{**existing.to_json(), "state": state, "revoked_by": by, "revoked_at": now})


def _list_enrollments_txn(
    txn: Any, user_id: str | None, state: str | None, limit: int, offset: int
) -> list[Enrollment]:
    clauses, args = [], []
    if user_id is not None:
        clauses.append("user_id = ?")
        args.append(user_id)
    if state is not None:
        clauses.append("state = ?")
        args.append(state)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    txn.execute(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM police_policy_enrollments {where}"
        " ORDER BY user_id, device_id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    )
    return [_enrollment(row) for row in txn.fetchall()]


def _due_expiries_txn(txn: Any, now: int, limit: int) -> list[Enrollment]:
    txn.execute(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM police_policy_enrollments"
        " WHERE state = ? AND expires_at IS NOT NULL AND expires_at <= ? LIMIT ?",
        (ENROLLED, now, limit),
    )
    return [_enrollment(row) for row in txn.fetchall()]


def _unenrolled_devices_txn(txn: Any, limit: int) -> list[tuple[str, str]]:
    # Synapse's devices table holds local devices only; hidden rows are
    # cross-signing keys, not devices.
    txn.execute(
        "SELECT d.user_id, d.device_id FROM devices AS d"
        " LEFT JOIN police_policy_enrollments AS e"
        " ON e.user_id = d.user_id AND e.device_id = d.device_id AND e.state = ?"
        " WHERE d.hidden = ? AND e.user_id IS NULL LIMIT ?",
        (ENROLLED, False, limit),
    )
    return [(row[0], row[1]) for row in txn.fetchall()]


def _deviceless_tokens_txn(txn: Any, limit: int) -> list[tuple[str, str]]:
    # Admin "log in as user" tokens: the user they act as is puppets_user_id.
    txn.execute(
        "SELECT COALESCE(puppets_user_id, user_id), token FROM access_tokens WHERE device_id IS NULL LIMIT ?",
        (limit,),
    )
    return [(row[0], row[1]) for row in txn.fetchall()]


def _device_in_use_txn(txn: Any, user_id: str, device_id: str) -> bool:
    """Whether the device is logged in or holds keys (Synapse deletes all of
    them with the device, at logout or by an operator)."""
    for table in ("access_tokens", "refresh_tokens", "e2e_device_keys_json"):
        txn.execute(
            f"SELECT 1 FROM {table} WHERE user_id = ? AND device_id = ? LIMIT 1", (user_id, device_id)
        )
        if txn.fetchone() is not None:
            return True
    return False


def _stored_device_keys_txn(txn: Any, user_id: str, device_id: str) -> dict[str, Any] | None:
    txn.execute(
        "SELECT key_json FROM e2e_device_keys_json WHERE user_id = ? AND device_id = ?", (user_id, device_id)
    )
    row = txn.fetchone()
    if row is None:
        return None
    keys = json.loads(row[0] if isinstance(row[0], str) else bytes(row[0]).decode())
    return keys if isinstance(keys, dict) else None


def _user_devices_txn(txn: Any, user_id: str) -> list[str]:
    txn.execute("SELECT device_id FROM devices WHERE user_id = ? AND hidden = ?", (user_id, False))
    return [row[0] for row in txn.fetchall()]


def _devices_by_newest_token_txn(txn: Any, user_id: str, limit: int) -> list[str]:
    txn.execute(
        "SELECT device_id FROM access_tokens WHERE user_id = ? AND device_id IS NOT NULL"
        " ORDER BY id DESC LIMIT ?",
        (user_id, limit),
    )
    return [row[0] for row in txn.fetchall()]


def _record_pending_txn(
    txn: Any,
    user_id: str,
    device_id: str | None,
    ip: str,
    user_agent: str,
    now: int,
    link_hash: str | None = None,
) -> PendingLogin:
    """One open request per (user, device, address): a retry refreshes it.
    ``link_hash``: the hash of a new login link to the request's page."""
    pending = _open_or_new_pending_txn(txn, user_id, device_id, ip, user_agent, now)
    if link_hash is not None:
        _add_link_txn(txn, pending.request_id, link_hash, now)
    return pending


def _open_or_new_pending_txn(
    txn: Any, user_id: str, device_id: str | None, ip: str, user_agent: str, now: int
) -> PendingLogin:
    txn.execute(
        f"SELECT {_PENDING_COLUMNS} FROM police_policy_pending_logins"
        " WHERE user_id = ? AND state = ? AND ip = ? AND (device_id = ? OR (device_id IS NULL AND ? IS NULL))"
        " ORDER BY created_at DESC LIMIT 1",
        (user_id, OPEN, ip, device_id, device_id),
    )
    row = txn.fetchone()
    if row is not None:
        txn.execute(
            "UPDATE police_policy_pending_logins SET last_attempt_at = ?, user_agent = ?"
            " WHERE request_id = ?",
            (now, user_agent, row[0]),
        )
        return PendingLogin(**{**_pending(row).to_json(), "last_attempt_at": now, "user_agent": user_agent})
    txn.execute(
        "SELECT request_id FROM police_policy_pending_logins WHERE user_id = ? AND state = ?"
        " ORDER BY created_at DESC",
        (user_id, OPEN),
    )
    for (stale,) in txn.fetchall()[MAX_OPEN_REQUESTS_PER_USER - 1 :]:
        txn.execute(
            "UPDATE police_policy_pending_logins SET state = ? WHERE request_id = ?", (EXPIRED, stale)
        )
    pending = PendingLogin(new_request_id(), user_id, device_id, ip, user_agent, now, now, OPEN)
    txn.execute(
        f"INSERT INTO police_policy_pending_logins ({_PENDING_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        tuple(pending.to_json().values()),
    )
    return pending


def _add_link_txn(txn: Any, request_id: str, link_hash: str, now: int) -> None:
    """Each refused login gets a link of its own; a request keeps its newest few."""
    txn.execute(
        "INSERT INTO police_policy_login_links (token_hash, request_id, created_at) VALUES (?, ?, ?)",
        (link_hash, request_id, now),
    )
    txn.execute(
        "SELECT token_hash FROM police_policy_login_links WHERE request_id = ?"
        " ORDER BY created_at DESC, token_hash",
        (request_id,),
    )
    for (stale,) in txn.fetchall()[MAX_LINKS_PER_REQUEST:]:
        txn.execute("DELETE FROM police_policy_login_links WHERE token_hash = ?", (stale,))


def _pending_by_link_txn(txn: Any, link_hash: str) -> PendingLogin | None:
    txn.execute(
        f"SELECT {_PENDING_COLUMNS} FROM police_policy_pending_logins WHERE request_id ="
        " (SELECT request_id FROM police_policy_login_links WHERE token_hash = ?)",
        (link_hash,),
    )
    row = txn.fetchone()
    return _pending(row) if row else None


def _get_pending_txn(txn: Any, request_id: str) -> PendingLogin | None:
    txn.execute(
        f"SELECT {_PENDING_COLUMNS} FROM police_policy_pending_logins WHERE request_id = ?", (request_id,)
    )
    row = txn.fetchone()
    return _pending(row) if row else None


def _list_pending_txn(txn: Any, state: str | None, limit: int) -> list[PendingLogin]:
    where, args = ("WHERE state = ?", (state,)) if state else ("", ())
    txn.execute(
        f"SELECT {_PENDING_COLUMNS} FROM police_policy_pending_logins {where}"
        " ORDER BY created_at DESC, request_id LIMIT ?",
        (*args, limit),
    )
    return [_pending(row) for row in txn.fetchall()]


def _decide_txn(
    txn: Any, request_id: str, approve: bool, by: str, now: int
) -> tuple[PendingLogin | None, Enrollment | None]:
    """Approve or reject an open request. Approving a request that named its
    device enrolls that device at once; one without a device waits for the
    login it allows (see ``consume_approval``)."""
    pending = _get_pending_txn(txn, request_id)
    if pending is None:
        return None, None
    if pending.state != OPEN:
        raise Conflict(pending)
    state = APPROVED if approve else REJECTED
    bound = pending.device_id if approve else None
    txn.execute(
        "UPDATE police_policy_pending_logins SET"
        " state = ?, decided_by = ?, decided_at = ?, bound_device_id = ?"
        " WHERE request_id = ?",
        (state, by, now, bound, request_id),
    )
    enrollment = None
    if approve and pending.device_id is not None:
        label = f"approved login request {request_id}"
        enrollment = _enroll_unless_enrolled_txn(txn, pending.user_id, pending.device_id, label, by, now)
    decided = PendingLogin(
        **{**pending.to_json(), "state": state, "decided_by": by, "decided_at": now, "bound_device_id": bound}
    )
    return decided, enrollment


def _consume_approval_txn(
    txn: Any, user_id: str, ip: str, user_agent: str, now: int, window_ms: int
) -> PendingLogin | None:
    """The approval a stock-client login uses: same user, address and user agent as
    the refused login that asked for it, within the window, once."""
    txn.execute(
        f"SELECT {_PENDING_COLUMNS} FROM police_policy_pending_logins"
        " WHERE user_id = ? AND ip = ? AND user_agent = ? AND state = ? AND device_id IS NULL"
        " AND decided_at > ? ORDER BY decided_at DESC LIMIT 1",
        (user_id, ip, user_agent, APPROVED, now - window_ms),
    )
    row = txn.fetchone()
    if row is None:
        return None
    txn.execute(
        "UPDATE police_policy_pending_logins SET state = ?, consumed_at = ?"
        " WHERE request_id = ? AND state = ?",
        (CONSUMED, now, row[0], APPROVED),
    )
    if txn.rowcount != 1:
        return None  # another login used it first
    return PendingLogin(**{**_pending(row).to_json(), "state": CONSUMED, "consumed_at": now})


def _record_auto_approval_txn(
    txn: Any, user_id: str, ip: str, user_agent: str, by: str, now: int
) -> PendingLogin:
    """A stock-client login approved by the config (``by``): a request that is
    approved and used at once, bound to its device like an operator's approval."""
    pending = PendingLogin(new_request_id(), user_id, None, ip, user_agent, now, now, CONSUMED, by, now, now)
    txn.execute(
        f"INSERT INTO police_policy_pending_logins ({_PENDING_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        tuple(pending.to_json().values()),
    )
    return pending


def _users_binding_txn(txn: Any, since: int) -> list[str]:
    """Users whose approved login was let through since ``since`` and whose
    device is not enrolled yet (the login may be on another worker)."""
    txn.execute(
        "SELECT DISTINCT user_id FROM police_policy_pending_logins"
        " WHERE state = ? AND bound_device_id IS NULL AND consumed_at > ?",
        (CONSUMED, since),
    )
    return [row[0] for row in txn.fetchall()]


def _bind_txn(txn: Any, pending: PendingLogin, device_id: str, now: int) -> Enrollment:
    txn.execute(
        "UPDATE police_policy_pending_logins SET bound_device_id = ? WHERE request_id = ?",
        (device_id, pending.request_id),
    )
    label = f"approved login request {pending.request_id} ({pending.user_agent})"[:256]
    return _enroll_unless_enrolled_txn(
        txn, pending.user_id, device_id, label, pending.decided_by or "unknown", now
    )


def _lapse_pending_txn(txn: Any, now: int, window_ms: int) -> int:
    txn.execute(
        "UPDATE police_policy_pending_logins SET state = ? WHERE state = ? AND created_at <= ?",
        (EXPIRED, OPEN, now - PENDING_OPEN_LIFETIME_MS),
    )
    lapsed: int = txn.rowcount
    txn.execute(
        "UPDATE police_policy_pending_logins SET state = ?"
        " WHERE state = ? AND device_id IS NULL AND decided_at <= ?",
        (EXPIRED, APPROVED, now - window_ms),
    )
    lapsed += txn.rowcount
    txn.execute(
        "DELETE FROM police_policy_pending_logins WHERE state <> ? AND created_at <= ?",
        (OPEN, now - PENDING_KEEP_MS),
    )
    # A link works while its request is open or approved; older ones go.
    txn.execute(
        "DELETE FROM police_policy_login_links WHERE request_id NOT IN"
        " (SELECT request_id FROM police_policy_pending_logins WHERE state IN (?, ?))",
        (OPEN, APPROVED),
    )
    return lapsed


class EnrollmentStore:
    """Async access for the module; each method is one transaction."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables

    async def get(self, user_id: str, device_id: str) -> Enrollment | None:
        return await self._tables.run("get_enrollment", get_enrollment_txn, user_id, device_id)

    async def enroll(
        self, user_id: str, device_id: str, label: str, expires_at: int | None, by: str, now: int
    ) -> tuple[Enrollment, bool]:
        return await self._tables.run("enroll", enroll_txn, user_id, device_id, label, expires_at, by, now)

    async def enroll_many(
        self, rows: Sequence[tuple[str, str, str, int | None]], by: str, now: int
    ) -> list[tuple[Enrollment, bool]]:
        def txn_func(txn: Any) -> list[tuple[Enrollment, bool]]:
            return [enroll_txn(txn, *row, by, now) for row in rows]

        return await self._tables.run("enroll_many", txn_func)

    async def end(self, user_id: str, device_id: str, by: str, now: int, state: str) -> Enrollment | None:
        """Mark an enrolled device revoked or expired; None when it was not enrolled."""
        return await self._tables.run(
            "end_enrollment", _end_enrollment_txn, user_id, device_id, by, now, state
        )

    # below this method, ``list`` in the class body names it: annotations there say ``builtins.list``
    async def list(self, user_id: str | None, state: str | None, limit: int, offset: int) -> list[Enrollment]:
        return await self._tables.run(
            "list_enrollments", _list_enrollments_txn, user_id, state, limit, offset
        )

    async def due_expiries(self, now: int, limit: int) -> builtins.list[Enrollment]:
        return await self._tables.run("due_expiries", _due_expiries_txn, now, limit)

    async def unenrolled_devices(self, limit: int) -> builtins.list[tuple[str, str]]:
        return await self._tables.run("unenrolled_devices", _unenrolled_devices_txn, limit)

    async def deviceless_tokens(self, limit: int) -> builtins.list[tuple[str, str]]:
        return await self._tables.run("deviceless_tokens", _deviceless_tokens_txn, limit)

    async def device_in_use(self, user_id: str, device_id: str) -> bool:
        return await self._tables.run("device_in_use", _device_in_use_txn, user_id, device_id)

    async def stored_device_keys(self, user_id: str, device_id: str) -> dict[str, Any] | None:
        """The ``device_keys`` object Synapse holds for the device, if any."""
        return await self._tables.run("stored_device_keys", _stored_device_keys_txn, user_id, device_id)

    async def user_devices(self, user_id: str) -> builtins.list[str]:
        return await self._tables.run("user_devices", _user_devices_txn, user_id)

    async def devices_by_newest_token(self, user_id: str, limit: int = 20) -> builtins.list[str]:
        return await self._tables.run("devices_by_newest_token", _devices_by_newest_token_txn, user_id, limit)

    async def record_pending(
        self,
        user_id: str,
        device_id: str | None,
        ip: str,
        user_agent: str,
        now: int,
        link_hash: str | None = None,
    ) -> PendingLogin:
        return await self._tables.run(
            "record_pending", _record_pending_txn, user_id, device_id, ip, user_agent, now, link_hash
        )

    async def pending_by_link(self, link_hash: str) -> PendingLogin | None:
        return await self._tables.run("pending_by_link", _pending_by_link_txn, link_hash)

    async def list_pending(self, state: str | None, limit: int) -> builtins.list[PendingLogin]:
        return await self._tables.run("list_pending", _list_pending_txn, state, limit)

    async def decide(
        self, request_id: str, approve: bool, by: str, now: int
    ) -> tuple[PendingLogin | None, Enrollment | None]:
        return await self._tables.run("decide_pending", _decide_txn, request_id, approve, by, now)

    async def consume_approval(
        self, user_id: str, ip: str, user_agent: str, now: int, window_ms: int
    ) -> PendingLogin | None:
        return await self._tables.run(
            "consume_approval", _consume_approval_txn, user_id, ip, user_agent, now, window_ms
        )

    async def record_auto_approval(
        self, user_id: str, ip: str, user_agent: str, by: str, now: int
    ) -> PendingLogin:
        return await self._tables.run(
            "record_auto_approval", _record_auto_approval_txn, user_id, ip, user_agent, by, now
        )

    async def users_binding(self, since: int) -> builtins.list[str]:
        return await self._tables.run("users_binding", _users_binding_txn, since)

    async def bind(self, pending: PendingLogin, device_id: str, now: int) -> Enrollment:
        return await self._tables.run("bind_approval", _bind_txn, pending, device_id, now)

    async def lapse_pending(self, now: int, window_ms: int) -> int:
        return await self._tables.run("lapse_pending", _lapse_pending_txn, now, window_ms)
