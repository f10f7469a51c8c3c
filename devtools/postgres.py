"""A throwaway PostgreSQL 15 cluster on a loopback port, for tests.

``initdb`` refuses to run as root, so as root the cluster belongs to the
``postgres`` user (commands go through ``runuser``); otherwise to the current
user. Synapse needs UTF8 and the C collation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from devtools.homeserver import free_port

PG_BIN = Path(os.environ.get("POLICE_PG_BIN", "/usr/lib/postgresql/15/bin"))
DB_USER = "synapse"


class PostgresCluster:
    def __init__(self, port: int) -> None:
        self.port = port
        self.directory = Path(tempfile.mkdtemp(prefix="police-pg-"))
        self.data = self.directory / "data"
        self._as_postgres = os.geteuid() == 0

    def _run_as_owner(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *command], check=True, capture_output=True)

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(PG_BIN / tool), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN / 'initdb'} not found: install postgresql-15 (make test does)")
        if self._as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run_as_owner(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            DB_USER,
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run_as_owner(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "start",
        )

    def create_database(self, name: str) -> dict[str, Any]:
        """A new database and the Synapse ``database`` section that points at it."""
        self._client("createdb", "-T", "template0", "-E", "UTF8", "--locale=C", name)
        return {
            "name": "psycopg2",
            "args": {
                "user": DB_USER,
                "database": name,
                "host": "127.0.0.1",
                "port": self.port,
                "cp_min": 1,
                "cp_max": 5,
            },
        }

    def dump(self, name: str) -> bytes:
        """Every row of the database as pg_dump writes it (values decompressed)."""
        return self._client("pg_dump", "--data-only", name).stdout

    def sql(self, database: str, statement: str) -> str:
        """Run one statement with psql; its unaligned output."""
        return self._client(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", statement
        ).stdout.decode()

    @contextlib.contextmanager
    def full_disk(self, database: str, room: int = 256 * 1024) -> Iterator[Callable[[], None]]:
        """The tables of ``database`` on a filesystem of their own with ``room`` bytes to spare,
        which runs full as they grow (writes fail with "No space left on device", as on a full
        disk); the block gets a function that gives the filesystem space again. Afterwards the
        tables are back where they were. Mounting needs root."""
        public = "FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        tables = self.sql(database, f"SELECT quote_ident(relname) {public}").split()
        used = int(self.sql(database, f"SELECT coalesce(sum(pg_total_relation_size(oid)), 0) {public}"))
        mount = self.directory / f"full-disk-{database}"
        mount.mkdir()
        options = f"size={used + room},mode=0700"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
        tablespace = f"full_disk_{database}"

        def space_back() -> None:
            subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)

        def move(to: str) -> None:
            for table in tables:
                self.sql(database, f"ALTER TABLE {table} SET TABLESPACE {to}")

        try:
            if self._as_postgres:
                shutil.chown(mount, "postgres", "postgres")
            self.sql(database, f"CREATE TABLESPACE {tablespace} LOCATION '{mount}'")
            move(tablespace)
            yield space_back
        finally:
            space_back()
            move("pg_default")
            self.sql(database, f"DROP TABLESPACE IF EXISTS {tablespace}")
            subprocess.run(["umount", str(mount)], check=True)

    def stop(self) -> None:
        try:
            self._run_as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A new cluster on a free loopback port, stopped and removed when the block ends."""
    cluster = PostgresCluster(free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
