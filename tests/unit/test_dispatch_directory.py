"""The dispatch bot's configuration and directory: errors name the key path, typos get close matches."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.dispatch.config import ConfigError, parse_config
from bots.dispatch.directory import Directory, NotFound, close_matches


def raw_config(**changes):
    raw = {
        "homeserver_url": "http://127.0.0.1:8008",
        "user_id": "@dispatch-bot:police.example",
        "password": "secret",
        "device_id": "DISPATCH-BOT",
        "store_dir": "store",
        "state_path": "state.sqlite",
        "state_key_file": "state.key",
        "control_rooms": ["#leitstelle:police.example"],
        "roles": {"dispatcher": ["@anna:police.example"], "supervisor": ["@sven:police.example"]},
        "units": [
            {
                "name": "streife1",
                "call_sign": "Adler 11/1",
                "members": ["@otto:police.example", "@olga:police.example"],
                "supervisor": "@sven:police.example",
            },
            {"name": "streife2", "call_sign": "Adler 11/2", "members": ["@paul:police.example"]},
        ],
    }
    raw.update(changes)
    return raw


@pytest.fixture(autouse=True)
def state_key(tmp_path: Path) -> bytes:
    """The key file ``raw_config`` names, beside the config (``tmp_path`` is the base)."""
    key = bytes(range(32))
    (tmp_path / "state.key").write_text(key.hex())
    return key


def test_a_valid_config(tmp_path: Path, state_key: bytes):
    config = parse_config(raw_config(ack_deadline="90s", ack_unit="s"), tmp_path)
    assert config.state_path == tmp_path / "state.sqlite"
    assert config.ack_deadline == 90 and config.ack_unit == 1 and config.max_alerts == 3
    assert config.units[1].call_sign == "Adler 11/2"
    assert config.has_role("@otto:police.example", "officer")
    assert not config.has_role("@anna:police.example", "officer")
    assert "secret" not in repr(config)
    assert config.state_key == state_key and state_key.hex() not in repr(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"units": [{"name": "a", "members": ["otto"]}]}, "units[0].members[0]: expected a Matrix user ID"),
        ({"units": [{"name": "12", "members": ["@a:x"]}]}, "units[0].name: expected one word"),
        ({"units": [{"name": "a", "members": ["@a:x"], "colour": "red"}]}, "units[0].colour: unknown key"),
        (
            {"units": [{"name": "a", "members": ["@a:x"]}, {"name": "A", "members": ["@b:x"]}]},
            "units[1].name: 'A' is used by another unit",
        ),
        ({"units": [{"name": "a", "members": []}]}, "units[0].members: expected a list of Matrix user IDs"),
        ({"roles": {"dispatcher": []}}, "roles.dispatcher: required"),
        ({"roles": {"dispatcher": ["@a:x"], "chief": []}}, "roles.chief: unknown role"),
        ({"roles": {"dispatcher": ["@a:x"], "supervisor": ["bob"]}}, "roles.supervisor[0]"),
        (
            {"roles": {"dispatcher": ["@anna:police.example", "@dispatch-bot:police.example"]}},
            "roles.dispatcher[1]: expected a person who can be sent an escalation, got the bot itself",
        ),
        (
            {"units": [{"name": "a", "members": ["@a:x"], "supervisor": "@sven:elsewhere.example"}]},
            "units[0].supervisor: expected a user of the bot's server 'police.example' (an escalation "
            "reaches someone who has not joined the control room in a direct room the bot makes), "
            "got '@sven:elsewhere.example'",
        ),
        ({"control_rooms": ["leitstelle"]}, "control_rooms[0]: expected a room ID"),
        ({"control_rooms": []}, "control_rooms: expected a non-empty list"),
        ({"ack_deadline": "5 minutes"}, "ack_deadline: expected a positive duration"),
        ({"ack_unit": "h"}, "ack_unit: expected 'm'"),
        ({"max_alerts": 0}, "max_alerts: expected a positive whole number"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"password_file": "pw"}, "password, password_file: expected exactly one"),
        ({"state_key_env": "X"}, "state_key_file, state_key_env: expected exactly one of the two, got both"),
        (
            {"state_key_file": None},
            "state_key_file, state_key_env: expected exactly one of the two, got neither",
        ),
        ({"state_key_file": "missing.key"}, "state_key_file: state key file"),
        (
            {"state_key_file": None, "state_key_env": "DISPATCH_TEST_UNSET_KEY"},
            "state_key_env: state key environment",
        ),
    ],
)
def test_config_errors_name_the_key_path(tmp_path: Path, changes, message):
    with pytest.raises(ConfigError) as error:
        parse_config(raw_config(**changes), tmp_path)
    assert str(error.value).startswith(message), str(error.value)


def test_the_shipped_config_parses(tmp_path: Path):
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "dispatch.yaml").read_text())
    raw.pop("password_file")
    assert raw.pop("state_key_file") == "../var/dispatch-bot/state.key"  # make run writes it
    config = parse_config({**raw, "password": "x", "state_key_file": "state.key"}, tmp_path)
    assert config.units[0].name == "streife1"


@pytest.fixture
def directory(tmp_path: Path) -> Directory:
    return Directory(parse_config(raw_config(), tmp_path))


def test_units_by_name_or_call_sign_any_case(directory: Directory):
    assert directory.unit("STREIFE1").call_sign == "Adler 11/1"
    assert directory.unit("adler 11/2").name == "streife2"


def test_an_unknown_unit_lists_close_matches(directory: Directory):
    with pytest.raises(NotFound) as error:
        directory.unit("strife1")
    assert "There is no unit 'strife1'" in str(error.value)
    assert "Did you mean streife1" in str(error.value)
    with pytest.raises(NotFound) as error:
        directory.unit("zzz")
    assert "Did you mean" not in str(error.value)


def test_users_by_id_or_localpart(directory: Directory):
    assert directory.user("@otto:police.example") == "@otto:police.example"
    assert directory.user("otto") == "@otto:police.example"
    assert directory.user("@otto") == "@otto:police.example"
    with pytest.raises(NotFound) as error:
        directory.user("@oto")
    assert "@otto:police.example" in str(error.value)


def test_roles_and_labels(directory: Directory):
    assert directory.role("Supervisors") == "supervisor"
    assert directory.role("streife1") is None
    assert directory.role_members("officer") == (
        "@olga:police.example",
        "@otto:police.example",
        "@paul:police.example",
    )
    assert directory.is_commander("@sven:police.example") and not directory.is_commander(
        "@otto:police.example"
    )
    assert directory.label("@otto:police.example") == "otto (Adler 11/1)"
    assert "streife1" in str(directory.unknown_target("streif1"))


def test_close_matches_prefers_similar_then_prefixes():
    assert close_matches("alph", ["alpha", "bravo", "alphabet"])[0] == "alpha"
    assert close_matches("x", ["alpha"]) == []


def test_a_unit_supervisor_is_a_supervisor(tmp_path: Path):
    raw = raw_config()
    raw["units"][1]["supervisor"] = "@uwe:police.example"
    directory = Directory(parse_config(raw, tmp_path))
    assert directory.is_commander("@uwe:police.example")
    assert directory.user("uwe") == "@uwe:police.example"
