"""The module's tables in Synapse's database, and their migrations.

The module owns these tables (Synapse's schema tooling knows nothing of
them). ``police_policy_schema_version`` holds the version reached; start-up
applies the missing steps in one transaction. Every statement is valid on
SQLite and PostgreSQL and repeatable (``IF NOT EXISTS``), so two processes
starting at once (Synapse workers) cannot break each other. The bootstrap
command (``police-policy devices bootstrap``) runs the same steps through a
plain DB-API connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from synapse.module_api import ModuleApi

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Step N brings the schema from version N-1 to N. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # The latest membership of each foreign user whose membership event the
        # module dropped at the federation boundary: Synapse's room state never
        # shows them, yet they are in the room on the peer's side. Events can
        # arrive out of order (a missing join pulled after a later kick), so the
        # newest origin_server_ts wins.
        """
        CREATE TABLE IF NOT EXISTS police_policy_foreign_members (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            membership TEXT NOT NULL,
            event_ts BIGINT NOT NULL,
            PRIMARY KEY (room_id, user_id)
        )
        """,
    ),
    (
        # The enrollment registry: one row per (user, device) ever enrolled.
        # Revoked and expired rows stay, so the registry answers "who enrolled
        # this phone, and who revoked it when".
        """
        CREATE TABLE IF NOT EXISTS police_policy_enrollments (
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            label TEXT NOT NULL,
            enrolled_by TEXT NOT NULL,
            enrolled_at BIGINT NOT NULL,
            expires_at BIGINT,
            state TEXT NOT NULL,
            revoked_by TEXT,
            revoked_at BIGINT,
            PRIMARY KEY (user_id, device_id)
        )
        """,
        "CREATE INDEX IF NOT EXISTS police_policy_enrollments_expiry"
        " ON police_policy_enrollments (state, expires_at)",
        # Logins refused for a missing enrollment, waiting for an operator.
        """
        CREATE TABLE IF NOT EXISTS police_policy_pending_logins (
            request_id TEXT NOT NULL PRIMARY KEY,
            user_id TEXT NOT NULL,
            device_id TEXT,
            ip TEXT NOT NULL,
            user_agent TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            last_attempt_at BIGINT NOT NULL,
            state TEXT NOT NULL,
            decided_by TEXT,
            decided_at BIGINT,
            consumed_at BIGINT,
            bound_device_id TEXT
        )
        """,
        "CREATE INDEX IF NOT EXISTS police_policy_pending_logins_user"
        " ON police_policy_pending_logins (user_id, state)",
        "CREATE INDEX IF NOT EXISTS police_policy_pending_logins_created"
        " ON police_policy_pending_logins (created_at)",
    ),
    (
        # Progress of the retention sweep: the stream position up to which every
        # expired event has been redacted (or found redacted, or skipped).
        """
        CREATE TABLE IF NOT EXISTS police_policy_retention_progress (
            name TEXT NOT NULL PRIMARY KEY,
            position BIGINT NOT NULL
        )
        """,
    ),
    (
        # The links a refused stock-client login gets (its admin_contact): a
        # page that shows the request code. Only a hash of the link's token is
        # kept; a link works while its request is open or approved.
        """
        CREATE TABLE IF NOT EXISTS police_policy_login_links (
            token_hash TEXT NOT NULL PRIMARY KEY,
            request_id TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS police_policy_login_links_request"
        " ON police_policy_login_links (request_id, created_at)",
    ),
    (
        # Expired events whose redaction failed (or that lie in a room the
        # system user is not in): retried with back-off until a redaction takes
        # effect or the audit tier purges the event. One row per event; `kind`
        # is the latest failure's, `error` Synapse's message (never content).
        """
        CREATE TABLE IF NOT EXISTS police_policy_retention_retries (
            event_id TEXT NOT NULL PRIMARY KEY,
            room_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            received_ts BIGINT NOT NULL,
            kind TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            first_failed_at BIGINT NOT NULL,
            next_try_at BIGINT NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS police_policy_retention_retries_due"
        " ON police_policy_retention_retries (next_try_at)",
        # Redacted state events, censored by the sweep at the audit tier (the
        # purge jobs keep state events): queued when the sweep finds them redacted.
        """
        CREATE TABLE IF NOT EXISTS police_policy_retention_censor (
            event_id TEXT NOT NULL PRIMARY KEY,
            received_ts BIGINT NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS police_policy_retention_censor_due"
        " ON police_policy_retention_censor (received_ts)",
        # Positions of a Synapse stream over time, for tables whose rows carry
        # no time (device_inbox): "every row up to `position` existed at `taken_at`".
        """
        CREATE TABLE IF NOT EXISTS police_policy_retention_marks (
            stream TEXT NOT NULL,
            taken_at BIGINT NOT NULL,
            position BIGINT NOT NULL,
            PRIMARY KEY (stream, taken_at)
        )
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


#: pg_advisory_xact_lock key: Synapse's processes (main and workers) start
#: together, and concurrent CREATE TABLE IF NOT EXISTS collide on PostgreSQL
MIGRATION_LOCK = 0x706F6C6963


def migrate(txn: Any, *, postgres: bool = False) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` on a DB-API cursor; returns the
    version found. A database newer than this code is left alone."""
    if postgres:
        txn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    txn.execute("CREATE TABLE IF NOT EXISTS police_policy_schema_version (version INTEGER NOT NULL)")
    txn.execute("SELECT version FROM police_policy_schema_version")
    row = txn.fetchone()
    found = int(row[0]) if row else 0
    if found >= SCHEMA_VERSION:
        return found
    for step in MIGRATIONS[found:]:
        for statement in step:
            txn.execute(statement)
    if row:
        txn.execute(f"UPDATE police_policy_schema_version SET version = {SCHEMA_VERSION}")
    else:
        txn.execute(f"INSERT INTO police_policy_schema_version (version) VALUES ({SCHEMA_VERSION})")
    return found


class Tables:
    """Migrates the module's tables once per process, before their first use."""

    def __init__(self, api: ModuleApi) -> None:
        self._api = api
        self._ready = False

    async def ensure(self) -> None:
        from . import internals  # Synapse's: not imported where only ``migrate`` is used

        if not self._ready:
            await self._api.run_db_interaction(
                "police_policy_migrate",
                lambda txn: migrate(txn, postgres=internals.runs_on_postgres(txn)),
            )
            self._ready = True

    async def run(
        self, name: str, func: Callable[Concatenate[Any, _P], _R], *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """One transaction of the module's (``police_policy_{name}`` in Synapse's metrics),
        after the tables are migrated."""
        await self.ensure()
        return await self._api.run_db_interaction(f"police_policy_{name}", func, *args, **kwargs)
