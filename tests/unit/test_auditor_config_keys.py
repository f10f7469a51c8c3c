"""The auditor config's settings of issue 19: the signing key's own key and pin, chain heads,
the DPO's room, the time until an event counts as undecryptable, request expiry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bots.auditor.config import parse_config
from bots.common.config import ConfigError


def raw(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    (tmp_path / "key").write_text(os.urandom(32).hex())
    settings: dict[str, Any] = {
        "homeserver_url": "http://localhost:8008",
        "user_id": "@auditor:x.test",
        "password": "pw",
        "device_id": "AUDITOR-BOT",
        "store_dir": "store",
        "archive_path": "archive.sqlite",
        "archive_key_file": "key",
        "log_path": "log/log.sqlite",
        "auditors": ["@rev:x.test"],
    }
    settings.update(changes)
    return {key: value for key, value in settings.items() if value is not None}


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(raw(tmp_path), tmp_path)
    assert config.signing_key_password is None and config.signing_key_fingerprint is None
    assert config.chain_heads_file == tmp_path / "log" / "chain-heads.jsonl"
    assert (config.chain_head_interval, config.undecryptable_after) == (3600, 3600)
    assert config.export_request_lifetime == 7 * 86400
    assert config.dpo_room is None


def test_the_signing_key_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "signing-pw").write_text(bytes(range(32)).hex())
    fingerprint = "AB" * 32
    config = parse_config(
        raw(
            tmp_path,
            signing_key_password_file="signing-pw",
            signing_key_fingerprint=fingerprint,
            chain_heads_file="/srv/heads.jsonl",
            chain_head_interval="15m",
            dpo_room="!dsb:x.test",
            undecryptable_after="2h",
            export_request_lifetime="3d",
        ),
        tmp_path,
    )
    assert config.signing_key_password == bytes(range(32))
    assert "signing_key_password" not in repr(config)
    assert config.signing_key_fingerprint == fingerprint.lower()
    assert config.chain_heads_file == Path("/srv/heads.jsonl")
    assert (config.chain_head_interval, config.undecryptable_after) == (900, 7200)
    assert (config.dpo_room, config.export_request_lifetime) == ("!dsb:x.test", 3 * 86400)
    monkeypatch.setenv("SIGNING_PW", bytes(range(32)).hex())
    env = parse_config(raw(tmp_path, signing_key_password_env="SIGNING_PW"), tmp_path)
    assert env.signing_key_password == bytes(range(32))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"signing_key_fingerprint": "abc"}, "signing_key_fingerprint: expected"),
        ({"signing_key_password_file": "missing"}, "signing_key_password_file"),
        ({"signing_key_password_file": "key", "signing_key_password_env": "X"}, "signing_key_password"),
        ({"dpo_room": "#dsb:x.test"}, "dpo_room: expected"),
        ({"undecryptable_after": "soon"}, "undecryptable_after"),
        ({"export_request_lifetime": 0}, "export_request_lifetime"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw(tmp_path, **changes), tmp_path)
