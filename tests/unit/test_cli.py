"""`police-policy check-config FILE` as the operator runs it: exit codes and output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.homeserver import HomeserverSpec, write_config

REPO_ROOT = Path(__file__).resolve().parents[2]
FINDING_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w.\[\]]*): .+\. Fix: .+$")


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synapse_police_policy.ops.cli", "check-config", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def homeserver_yaml(tmp_path: Path) -> Path:
    spec = HomeserverSpec(
        directory=tmp_path / "hs",
        server_name="hs.test",
        http_port=8008,
        module_config={"federation": {"allowed_servers": ["other.test"]}},
        extra={
            "trusted_key_servers": [{"server_name": "other.test", "verify_keys": {"ed25519:a": "A" * 43}}]
        },
    )
    return write_config(spec)


def rewrite(path: Path, change: dict[str, Any], remove: tuple[str, ...] = ()) -> Path:
    config = yaml.safe_load(path.read_text(encoding="utf8"))
    config.update(change)
    for key in remove:
        del config[key]
    path.write_text(yaml.safe_dump(config), encoding="utf8")
    return path


def test_consistent_file(homeserver_yaml: Path) -> None:
    result = check_config(homeserver_yaml)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{homeserver_yaml}: consistent with the police policy"]
    assert result.stderr == ""


def test_a_warning_is_printed_but_keeps_the_exit_status(homeserver_yaml: Path) -> None:
    config = yaml.safe_load(homeserver_yaml.read_text(encoding="utf8"))
    config["modules"][0]["config"]["devices"] = {"login_networks": ["10.99.0.0/16"]}
    config["listeners"][0]["x_forwarded"] = True
    rewrite(homeserver_yaml, config)

    result = check_config(homeserver_yaml)

    assert result.returncode == 0, result.stderr
    [warning, summary] = result.stdout.splitlines()
    assert warning.startswith("warning: listeners[0].x_forwarded: ")
    assert FINDING_LINE.match(warning.removeprefix("warning: ")), warning
    assert summary == f"{homeserver_yaml}: consistent with the police policy"


def test_file_with_problems(homeserver_yaml: Path) -> None:
    rewrite(homeserver_yaml, {"url_preview_enabled": True}, remove=("trusted_key_servers",))

    result = check_config(homeserver_yaml)

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert FINDING_LINE.match(line), line
    assert [FINDING_LINE.match(line)["key"] for line in lines] == [
        "trusted_key_servers",
        "url_preview_enabled",
    ]
    assert lines[1] == (
        "url_preview_enabled: URL previews make the server fetch links from messages, leaking them. "
        "Fix: set url_preview_enabled: false"
    )
    assert "consistent" not in result.stdout
    assert f"{homeserver_yaml}: 2 setting(s) contradict the police policy" in result.stderr


def test_file_with_invalid_module_config(homeserver_yaml: Path) -> None:
    config = yaml.safe_load(homeserver_yaml.read_text(encoding="utf8"))
    config["modules"][0]["config"] = {"rooms": {"allowed_join_rules": ["public"]}}
    homeserver_yaml.write_text(yaml.safe_dump(config), encoding="utf8")

    result = check_config(homeserver_yaml)

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("modules[0].config: rooms.allowed_join_rules[0]: expected one of ")
    assert all(FINDING_LINE.match(line) for line in lines)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    result = check_config(missing)

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{missing}: cannot read the file: No such file or directory" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server_name: hs.test\nmodules: [\n  - {module: x\n", "not valid YAML"),
        (
            "- server_name: hs.test\n- modules: []\n",
            "expected a homeserver config (a YAML mapping), got list",
        ),
        ("", "expected a homeserver config (a YAML mapping), got NoneType"),
    ],
    ids=["invalid_yaml", "list_instead_of_mapping", "empty_file"],
)
def test_unusable_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text(text, encoding="utf8")

    result = check_config(path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}: {message}" in result.stderr


def test_a_file_name_that_is_not_utf8_is_printed_escaped(homeserver_yaml: Path) -> None:
    """argv carries such a name as surrogates; a strict UTF-8 stdout must not end in a traceback."""
    odd = homeserver_yaml.parent / os.fsdecode(b"home\xffserver.yaml")
    odd.write_bytes(homeserver_yaml.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "synapse_police_policy.ops.cli", "check-config", os.fsencode(odd)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert b"home\\udcffserver.yaml: consistent with the police policy" in result.stdout
    assert b"Traceback" not in result.stderr


def test_missing_argument_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synapse_police_policy.ops.cli", "check-config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "HOMESERVER_YAML" in result.stderr


# --- police-policy retention status -------------------------------------------------


def retention_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synapse_police_policy.ops.cli", "retention", "status", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_retention_status_needs_the_config_option() -> None:
    result = retention_status()

    assert result.returncode == 2
    assert "HOMESERVER_YAML" in result.stderr


def test_retention_status_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    result = retention_status("-c", str(missing))

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{missing}: cannot read the file: No such file or directory" in result.stderr


def test_retention_status_without_the_module(homeserver_yaml: Path) -> None:
    rewrite(homeserver_yaml, {"modules": []})

    result = retention_status("-c", str(homeserver_yaml))

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{homeserver_yaml}: modules: synapse_police_policy.PolicePolicy is not loaded" in result.stderr


def test_retention_status_before_synapse_created_the_database(homeserver_yaml: Path) -> None:
    """The SQLite file does not exist yet: said so, and not created by the command."""
    database = Path(
        yaml.safe_load(homeserver_yaml.read_text(encoding="utf8"))["database"]["args"]["database"]
    )
    assert not database.exists()

    result = retention_status("--config", str(homeserver_yaml))

    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{homeserver_yaml}: database.args.database: cannot open {database}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not database.exists()
