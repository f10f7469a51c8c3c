"""Fixtures that start real Synapse processes (and, with POLICE_TEST_POSTGRES=1,
a throwaway PostgreSQL cluster) once per session and stop them at the end."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from devtools.homeserver import Homeserver, HomeserverSpec, free_port
from devtools.postgres import PostgresCluster, running_cluster

USE_POSTGRES = os.environ.get("POLICE_TEST_POSTGRES") == "1"


@attrs.define
class Account:
    localpart: str
    user_id: str
    password: str
    #: access token of an enrolled device
    token: str
    device_id: str


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster | None]:
    if not USE_POSTGRES:
        yield None
        return
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster(postgres: PostgresCluster | None) -> Iterator[PostgresCluster]:
    """For tests that need PostgreSQL on either run: the session's cluster with
    POLICE_TEST_POSTGRES=1, else one of the module's own."""
    if postgres is not None:
        yield postgres
        return
    with running_cluster() as own:
        yield own


StartHomeserver = Callable[..., Homeserver]


@pytest.fixture(scope="session")
def start_homeserver(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster | None
) -> Iterator[StartHomeserver]:
    """Start a homeserver: ``start_homeserver(name, module_config={...}, extra={...})``.

    It runs on SQLite, or on its own database of the session's PostgreSQL
    cluster when POLICE_TEST_POSTGRES=1. A homeserver is stopped when the test
    module that started it ends (``_stop_the_modules_homeservers``), one
    started with ``for_session=True`` when the session ends: an idle Synapse
    still runs its background jobs, and dozens of them slow every later test.
    """
    started: list[Homeserver] = []

    def start(
        name: str,
        *,
        module_config: dict[str, Any] | None = None,
        with_module: bool = True,
        extra: dict[str, Any] | None = None,
        federation_address: str | None = None,
        x_forwarded: bool = False,
        for_session: bool = False,
    ) -> Homeserver:
        """``federation_address`` (a loopback address such as 127.0.0.2) adds a
        TLS federation listener there; the server name is then address:port."""
        safe = re.sub(r"[^a-z0-9_]", "_", name.lower())
        database = postgres.create_database(f"{safe}_{uuid.uuid4().hex[:6]}") if postgres else None
        bind = federation_address or "127.0.0.1"
        federation_port = free_port(bind) if federation_address else None
        spec = HomeserverSpec(
            directory=tmp_path_factory.mktemp(safe),
            server_name=f"{bind}:{federation_port}" if federation_port else f"{safe.replace('_', '-')}.test",
            http_port=free_port(bind),
            metrics_port=free_port(bind),
            bind_address=bind,
            federation_port=federation_port,
            module_config=(module_config or {}) if with_module else None,
            database=database,
            extra=extra or {},
            x_forwarded=x_forwarded,
        )
        homeserver = Homeserver(spec)
        (session_servers if for_session else started).append(homeserver)
        homeserver.start()
        return homeserver

    session_servers: list[Homeserver] = []
    start.started = started  # type: ignore[attr-defined]
    yield start
    for homeserver in [*started, *session_servers]:
        homeserver.stop()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_homeservers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stop the homeservers this module started, after its other fixtures (its bots)
    are torn down: this fixture is set up first, so it is torn down last."""
    if not _uses_homeservers(request):
        yield
        return
    start: StartHomeserver = request.getfixturevalue("start_homeserver")
    before = len(start.started)  # type: ignore[attr-defined]
    yield
    started = start.started  # type: ignore[attr-defined]
    for homeserver in started[before:]:
        homeserver.stop()
    del started[before:]


def _uses_homeservers(request: pytest.FixtureRequest) -> bool:
    """Whether the module's tests start homeservers through the factory (the unit
    tests do not, and need no PostgreSQL cluster)."""
    return request.path.parent.name in {"integration", "browser"}


@pytest.fixture(scope="session")
def hs(start_homeserver: StartHomeserver) -> Homeserver:
    """Our homeserver with the module and its default policy."""
    return start_homeserver("ours", for_session=True)


@pytest.fixture
def make_user(hs: Homeserver) -> Callable[..., Account]:
    """Register a fresh user on ``hs`` (unique per call), logged in on an enrolled device."""

    def make(prefix: str = "user", *, admin: bool = False, homeserver: Homeserver | None = None) -> Account:
        server = homeserver or hs
        localpart = f"{prefix}-{uuid.uuid4().hex[:8]}"
        password = f"pw-{uuid.uuid4().hex}"
        token, device_id = server.register_enrolled_user(localpart, password, admin=admin)
        return Account(localpart, server.user_id(localpart), password, token, device_id)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "integration":
            item.add_marker(pytest.mark.integration)
    if USE_POSTGRES:
        # The PostgreSQL run is for what runs on the session's PostgreSQL: the homeservers and
        # stores built on the ``postgres`` fixture. Everything else runs the same either way and
        # was run by the SQLite run (``.ci/run`` runs both).
        kept = [item for item in items if "postgres" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
