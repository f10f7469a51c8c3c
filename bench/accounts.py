"""Bench users on enrolled devices.

The module refuses logins from devices the MDM did not enroll and events sent
from them, and its sweep deletes such devices. So every bench user that logs in
or sends does so on an enrolled device:

* users are registered through the shared-secret admin API without a login
  (``Homeserver.register_user(login=False)``): the device a registration would create is not enrolled,
  and the sweep deleting it in the middle of a measurement (a device-list
  change that wakes ``/sync``) would be noise on one side only;
* their devices are enrolled straight in the homeserver's SQLite database, in
  one transaction however many there are (what ``police-policy devices
  bootstrap`` writes, one row at a time);
* they log in with that device ID, the way an MDM-managed client does.

The server without the module gets the same users and the same logins; it
gets no enrollment rows (nothing there reads them). Setup is never timed.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import yaml
from nio import AsyncClient, AsyncClientConfig, LoginResponse

from devtools.homeserver import Homeserver
from synapse_police_policy.config import parse_config
from synapse_police_policy.devices.rules import ENROLLED
from synapse_police_policy.schema import SCHEMA_VERSION

ENROLLED_BY = "bench (written to the database)"
#: how long the module may take to create its tables after start-up
TABLES_TIMEOUT_S = 60.0


class BenchError(RuntimeError):
    pass


def has_module(hs: Homeserver) -> bool:
    return hs.spec.module_config is not None


def seated_users(hs: Homeserver) -> tuple[str, ...]:
    """The localparts of the service users the module of ``hs`` seats in every
    new room: the retention system user, and the auditor bot when
    ``auditor.user_id`` is set (a user of ``hs``)."""
    if not has_module(hs):
        raise BenchError(f"{hs.server_name}: no module, nobody is seated")
    config = parse_config(hs.spec.module_config)
    seated = [config.retention.system_user]
    if config.auditor.user_id is not None:
        seated.append(config.auditor.user_id.removeprefix("@").split(":", 1)[0])
    return tuple(seated)


def device_id_for(localpart: str) -> str:
    """The enrolled device of a bench user, the same on every server."""
    return f"BENCH-{localpart.upper()}"


@functools.cache
def _homeserver_yaml(config_path: Path) -> dict:
    return yaml.safe_load(config_path.read_text())


def database_path(hs: Homeserver) -> Path:
    database = _homeserver_yaml(hs.config_path)["database"]
    if database.get("name") != "sqlite3":
        raise BenchError(f"{hs.server_name}: the benchmarks write enrollments to SQLite only")
    return Path(database["args"]["database"])


def register(hs: Homeserver, localpart: str, password: str, *, admin: bool = False) -> None:
    """Create a user with the shared secret, without a device."""
    if hs.register_user(localpart, password, admin=admin, login=False) is None:
        raise BenchError(f"{hs.server_name}: {localpart} already exists on a fresh homeserver")


def register_many(
    hs: Homeserver, localparts: Sequence[str], password: str, *, workers: int = 4, admin: bool = False
) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda localpart: register(hs, localpart, password, admin=admin), localparts))


def wait_for_module_tables(hs: Homeserver, timeout: float = TABLES_TIMEOUT_S) -> None:
    """The module migrates its tables in a background task at start-up; wait for it
    rather than race it."""
    path = database_path(hs)
    deadline = time.monotonic() + timeout
    while True:
        with closing(sqlite3.connect(path, timeout=30)) as db:
            try:
                row = db.execute("SELECT max(version) FROM police_policy_schema_version").fetchone()
            except sqlite3.OperationalError:
                row = None
        if row and row[0] is not None and row[0] >= SCHEMA_VERSION:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{hs.server_name}: the module did not create its tables within {timeout:.0f}s")
        time.sleep(0.2)


def enroll_many(hs: Homeserver, devices: Iterable[tuple[str, str]], label: str = "bench device") -> int:
    """Enroll (user ID, device ID) pairs in one transaction; returns the rows written.

    100,000 rows take well under a second, well within the time Synapse's own
    SQLite connection waits for a lock."""
    wait_for_module_tables(hs)
    now = int(time.time() * 1000)
    rows = (
        (user_id, device_id, label, ENROLLED_BY, now, None, ENROLLED, None, None)
        for user_id, device_id in devices
    )
    with closing(sqlite3.connect(database_path(hs), timeout=30)) as db:
        with db:
            written = db.executemany(
                "INSERT INTO police_policy_enrollments (user_id, device_id, label, enrolled_by,"
                " enrolled_at, expires_at, state, revoked_by, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            ).rowcount
        # Move the rows from the write-ahead log into the database file, so the
        # server does not read through a log of thousands of pages afterwards.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return written


def count_enrolled(hs: Homeserver) -> int:
    with closing(sqlite3.connect(database_path(hs), timeout=30)) as db:
        query = "SELECT count(*) FROM police_policy_enrollments WHERE state = ?"
        return db.execute(query, (ENROLLED,)).fetchone()[0]


def login(hs: Homeserver, localpart: str, password: str, device_id: str) -> str:
    """Password login naming ``device_id``; returns the access token."""
    answer = hs.login(localpart, password, device_id)
    if answer.get("device_id") != device_id:
        raise BenchError(f"{hs.server_name}: login of {localpart} got device {answer.get('device_id')!r}")
    return answer["access_token"]


async def e2ee_client(
    hs: Homeserver, localpart: str, password: str, device_id: str, store: Path, *, request_timeout: float
) -> AsyncClient:
    """A matrix-nio client with E2EE, logged in on its (enrolled) ``device_id`` with its
    keys uploaded and a first full sync done: a bench officer as Element would be."""
    store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(
        hs.url,
        hs.user_id(localpart),
        device_id=device_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, request_timeout=request_timeout),
    )
    response = await client.login(password)
    if not isinstance(response, LoginResponse):
        raise BenchError(f"login of {localpart} failed: {response}")
    await client.keys_upload()
    await client.sync(timeout=0, full_state=True)
    return client


def enrolled_users(
    hs: Homeserver, localparts: Sequence[str], password: str, *, workers: int = 4, admin: bool = False
) -> list[str]:
    """Register the users, enroll one device each (with the module) and log each
    in on it; returns their access tokens in the order of ``localparts``."""
    register_many(hs, localparts, password, workers=workers, admin=admin)
    if has_module(hs):
        enroll_many(hs, ((hs.user_id(localpart), device_id_for(localpart)) for localpart in localparts))
    with ThreadPoolExecutor(workers) as pool:
        return list(
            pool.map(lambda localpart: login(hs, localpart, password, device_id_for(localpart)), localparts)
        )


def enrolled_user(hs: Homeserver, localpart: str, password: str, *, admin: bool = False) -> str:
    """One user on one enrolled device; returns its access token."""
    return enrolled_users(hs, [localpart], password, workers=1, admin=admin)[0]
