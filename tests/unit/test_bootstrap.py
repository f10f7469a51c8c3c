"""``police-policy devices bootstrap``: enrolling straight into a SQLite homeserver database."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_police_policy.devices.rules import ENROLLED
from synapse_police_policy.ops import cli
from synapse_police_policy.ops.bootstrap import BOOTSTRAP_ACTOR, BootstrapError, enroll_directly
from synapse_police_policy.schema import SCHEMA_VERSION

SERVER = "police.example"
ADMIN = "@admin:police.example"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A homeserver database as far as bootstrap reads it: Synapse's ``users`` table."""
    path = tmp_path / "homeserver.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
        connection.execute("INSERT INTO users VALUES (?)", (ADMIN,))
    connection.close()
    return path


@pytest.fixture
def homeserver(database: Path) -> dict[str, Any]:
    return {"server_name": SERVER, "database": {"name": "sqlite3", "args": {"database": str(database)}}}


@pytest.fixture
def homeserver_yaml(tmp_path: Path, homeserver: dict[str, Any]) -> Path:
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(homeserver), encoding="utf8")
    return path


def enrollment_rows(database: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT user_id, device_id, label, enrolled_by, state FROM police_policy_enrollments"
        ).fetchall()
        version = connection.execute("SELECT version FROM police_policy_schema_version").fetchall()
    connection.close()
    assert version == [(SCHEMA_VERSION,)]
    return rows


def test_enroll_directly_enrolls_and_is_idempotent(homeserver: dict[str, Any], database: Path) -> None:
    first = enroll_directly(homeserver, ADMIN, "OPSDESK", "ops workstation")
    assert (first.user_id, first.device_id, first.label, first.state) == (
        ADMIN,
        "OPSDESK",
        "ops workstation",
        ENROLLED,
    )
    assert first.enrolled_by == BOOTSTRAP_ACTOR

    again = enroll_directly(homeserver, ADMIN, "OPSDESK", "renamed")
    assert (again.enrolled_at, again.label) == (first.enrolled_at, "renamed")
    assert enrollment_rows(database) == [(ADMIN, "OPSDESK", "renamed", BOOTSTRAP_ACTOR, ENROLLED)]


@pytest.mark.parametrize(
    ("user_id", "device_id", "words"),
    [
        ("@ghost:police.example", "OPSDESK", "user_id: there is no user @ghost:police.example"),
        ("@admin:other.example", "OPSDESK", "user_id: '@admin:other.example' is not a user of this server"),
        ("admin", "OPSDESK", "user_id: 'admin' is not a valid user ID"),
        (ADMIN, "OPS DESK", "device_id: 'OPS DESK' contains whitespace"),
    ],
)
def test_enroll_directly_refuses_bad_input(
    homeserver: dict[str, Any], database: Path, user_id: str, device_id: str, words: str
) -> None:
    with pytest.raises(BootstrapError, match=f"^{re.escape(words)}"):
        enroll_directly(homeserver, user_id, device_id, "")
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name FROM sqlite_master WHERE name LIKE 'police%'").fetchall() == []
    connection.close()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"server_name": None}, "server_name: missing"),
        (
            {"database": {"name": "mysql", "args": {}}},
            "database.name: expected sqlite3 or psycopg2, got 'mysql'",
        ),
        ({"database": {"name": "sqlite3", "args": {}}}, "database.args.database: expected the path"),
        ({"database": "homeserver.db"}, "database: expected the homeserver's database section"),
    ],
)
def test_enroll_directly_refuses_unusable_configs(
    homeserver: dict[str, Any], change: dict[str, Any], words: str
) -> None:
    config = {key: value for key, value in {**homeserver, **change}.items() if value is not None}
    with pytest.raises(BootstrapError, match=f"^{re.escape(words)}"):
        enroll_directly(config, ADMIN, "OPSDESK", "")


def test_enroll_directly_refuses_a_missing_database_file(homeserver: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"  # e.g. a relative path resolved from another directory
    homeserver["database"]["args"]["database"] = str(missing)
    with pytest.raises(BootstrapError):
        enroll_directly(homeserver, ADMIN, "OPSDESK", "")
    assert not missing.exists()


# --- the command line ---------------------------------------------------------------------------


def bootstrap(config: Path, user_id: str, device_id: str = "OPSDESK") -> int:
    return cli.main(
        ["devices", "bootstrap", "-c", str(config), user_id, device_id, "--label", "ops workstation"]
    )


def test_cli_bootstrap_enrolls(
    homeserver_yaml: Path, database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bootstrap(homeserver_yaml, ADMIN) == 0
    assert "enrolled OPSDESK of @admin:police.example" in capsys.readouterr().out
    assert enrollment_rows(database) == [(ADMIN, "OPSDESK", "ops workstation", BOOTSTRAP_ACTOR, ENROLLED)]


def test_cli_bootstrap_refuses_an_unknown_user(
    homeserver_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bootstrap(homeserver_yaml, "@ghost:police.example") == 1
    err = capsys.readouterr().err
    assert str(homeserver_yaml) in err
    assert "there is no user @ghost:police.example" in err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read the file"),
        ("server_name: [unclosed", "not valid YAML"),
        ("- a list", "expected a homeserver config"),
    ],
    ids=["missing", "bad-yaml", "not-a-mapping"],
)
def test_cli_bootstrap_unreadable_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, words: str
) -> None:
    path = tmp_path / "homeserver.yaml"
    if content is not None:
        path.write_text(content, encoding="utf8")
    assert bootstrap(path, ADMIN) == 2
    assert words in capsys.readouterr().err
