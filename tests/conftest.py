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
    cluster when POLICE_TEST_POSTGRES=1. All are stopped when the session ends.
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
        started.append(homeserver)
        homeserver.start()
        return homeserver

    yield start
    for homeserver in started:
        homeserver.stop()


@pytest.fixture(scope="session")
def hs(start_homeserver: StartHomeserver) -> Homeserver:
    """Our homeserver with the module and its default policy."""
    return start_homeserver("ours")


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "integration":
            item.add_marker(pytest.mark.integration)
