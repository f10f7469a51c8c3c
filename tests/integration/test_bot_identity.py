"""A bot's cross-signing identity against a real Synapse, the bot as its own process: made at
the first start, kept across restarts, a new device (lost store) signed with the kept keys,
and a refusal to start, saying what to do, when the server's identity is not the bot's.

The tests run in file order on one bot account (the server keeps its identity between them)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bots.common.cross_signing import CrossSigningKeys, key_of, public_key, sign, verify
from bots.common.identity import IdentityFile
from devtools.homeserver import Homeserver
from tests.admin_api import call, pending
from tests.bots import BotProcess, auditor_config, stopped_afterwards

BOT_LOCALPART = "auditor-bot"
BOT_DEVICE = "AUDITOR-BOT"


@pytest.fixture(scope="module")
def hs(start_homeserver) -> Homeserver:
    return start_homeserver("identity")


@pytest.fixture(scope="module")
def bot(hs: Homeserver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotProcess]:
    """The auditor bot with the identity kept beside the store, not in it (as the operator
    guide advises), so a lost store can be shown on its own."""
    directory = tmp_path_factory.mktemp("identity-bot")
    config = {
        **auditor_config(hs, directory, BOT_LOCALPART, BOT_DEVICE, [hs.user_id("revisor")]),
        "identity_file": "identity/cross-signing.json",
    }
    (directory / "auditor.yaml").write_text(yaml.safe_dump(config))
    process = BotProcess(
        "bots.auditor", directory / "auditor.yaml", directory / "bot.log", "auditor bot ready"
    )
    with stopped_afterwards(process):
        yield process


def _directory(bot: BotProcess) -> Path:
    return bot.config_file.parent


def _identity(bot: BotProcess) -> IdentityFile:
    directory = _directory(bot)
    config = yaml.safe_load(bot.config_file.read_text())
    key = bytes.fromhex((directory / "archive.key").read_text())
    return IdentityFile(
        directory / config.get("identity_file", "store/cross-signing-identity.json"), config["user_id"], key
    )


def _server(
    hs: Homeserver, bot: BotProcess, localpart: str = BOT_LOCALPART, device_id: str = BOT_DEVICE
) -> dict[str, Any]:
    """What any client learns from ``/keys/query`` about the bot."""
    token = json.loads((_directory(bot) / "store" / "credentials.json").read_text())["access_token"]
    user = hs.user_id(localpart)
    status, body = hs.request(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user: []}}, token=token
    )
    assert status == 200, body
    return {
        "master": key_of(body["master_keys"].get(user)),
        "self_signing": body["self_signing_keys"].get(user),
        "device": body["device_keys"][user][device_id],
    }


def _assert_signed_by(found: dict[str, Any], keys: CrossSigningKeys, user: str) -> None:
    assert found["master"] == keys.master_public
    assert verify(found["self_signing"], user, keys.master_public), "self-signing key not signed by master"
    assert verify(found["device"], user, keys.self_signing_public), "device not signed by self-signing key"


def test_the_first_start_makes_an_identity_and_signs_the_device(hs: Homeserver, bot: BotProcess) -> None:
    bot.start(timeout=60)
    bot.stop()
    file = _identity(bot)
    keys = file.load()
    assert keys is not None, "the identity is kept in identity_file"
    assert oct(file.path.stat().st_mode & 0o777) == "0o600"
    _assert_signed_by(_server(hs, bot), keys, hs.user_id(BOT_LOCALPART))
    log = bot.log()
    assert "made a cross-signing identity" in log and "signed device AUDITOR-BOT" in log
    for seed in (keys.seeds()[i : i + 32] for i in (0, 32, 64)):
        assert seed.hex() not in log, "no private key in the log"


def test_a_restart_keeps_the_identity_and_signs_nothing_again(hs: Homeserver, bot: BotProcess) -> None:
    before = _server(hs, bot)
    bot.start(timeout=60)
    bot.stop()
    assert _server(hs, bot) == before
    assert bot.log().count("made a cross-signing identity") == 1
    assert "device AUDITOR-BOT is signed by cross-signing identity" in bot.log()


def test_a_lost_store_gives_new_device_keys_signed_with_the_kept_identity(
    hs: Homeserver, bot: BotProcess, make_user
) -> None:
    """The bot's device is still logged in with the lost store's token: its login is refused
    until an operator approves the request it names (as for a wiped phone)."""
    before = _server(hs, bot)
    token_before = json.loads((_directory(bot) / "store" / "credentials.json").read_text())["access_token"]
    shutil.rmtree(_directory(bot) / "store")
    status, logged = bot.start_refused()
    assert status != 0
    assert "already logged in elsewhere" in logged, logged
    admin = make_user("admin", admin=True)
    [request] = [entry for entry in pending(hs, admin.token) if entry["device_id"] == BOT_DEVICE]
    assert request["request_id"] in logged, "the bot names the request the operator approves"
    status, answer = call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    assert status == 200, answer

    bot.start(timeout=60)
    bot.stop()
    after = _server(hs, bot)
    assert after["device"]["keys"] != before["device"]["keys"], "a new E2EE store has new device keys"
    assert hs.request("GET", "/_matrix/client/v3/account/whoami", token=token_before)[0] == 401
    keys = _identity(bot).load()
    assert keys is not None
    _assert_signed_by(after, keys, hs.user_id(BOT_LOCALPART))
    assert after["master"] == before["master"], "the identity others know stays the same"
    assert "new self-signing key for device AUDITOR-BOT's new keys (master key unchanged)" in bot.log()


def test_a_lost_identity_file_stops_the_bot_with_what_to_do(hs: Homeserver, bot: BotProcess) -> None:
    file = _identity(bot)
    backup = file.path.read_bytes()
    file.path.unlink()
    try:
        status, log = bot.start_refused()
        assert status == 1
        assert "but" in log and f"{file.path} with its private keys is missing" in log
        assert "--reset-identity" in log and "The bots' identities" in log
        assert "Traceback" not in log
    finally:
        file.path.write_bytes(backup)
    bot.start(timeout=60)  # restored from the backup: it starts again with the same identity
    bot.stop()


def test_an_identity_reset_by_someone_else_stops_the_bot(hs: Homeserver, bot: BotProcess) -> None:
    """Whoever holds the bot's password and its access token (a thief on the bot's host)
    replaces its identity: the bot must not carry on as if nothing happened. (The password
    alone gets no token: the bot's device is logged in, so a login on it is refused.)"""
    user = hs.user_id(BOT_LOCALPART)
    token = json.loads((_directory(bot) / "store" / "credentials.json").read_text())["access_token"]
    thief = CrossSigningKeys.generate()
    path = "/_matrix/client/v3/keys/device_signing/upload"
    status, body = hs.request("POST", path, thief.upload_body(user), token=token)
    assert status == 401, body
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": (_directory(bot) / "bot-password").read_text(),
        "session": body["session"],
    }
    status, body = hs.request("POST", path, {**thief.upload_body(user), "auth": auth}, token=token)
    assert status == 200, body

    status, log = bot.start_refused()
    assert status == 1
    assert f"(master key {thief.master_public}) is not the one in" in log
    assert "someone reset it" in log and "--reset-identity" in log
    assert "Traceback" not in log


def test_the_operator_resets_the_identity_once_and_it_is_kept(hs: Homeserver, bot: BotProcess) -> None:
    thiefs = _server(hs, bot)["master"]
    bot.start(timeout=60, args=("--reset-identity",))
    bot.stop()
    keys = _identity(bot).load()
    assert keys is not None and keys.master_public != thiefs
    _assert_signed_by(_server(hs, bot), keys, hs.user_id(BOT_LOCALPART))
    assert (
        f"replaced the cross-signing identity (--reset-identity) (master key {keys.master_public})"
        in bot.log()
    )
    bot.start(timeout=60)  # a plain start afterwards keeps the new identity
    bot.stop()
    assert _server(hs, bot)["master"] == keys.master_public


def test_a_device_deleted_on_the_server_gets_its_keys_back(
    hs: Homeserver, bot: BotProcess, make_user
) -> None:
    """An operator (or a sweep) deletes the bot's device, keys and all; the bot's store still
    has them: its next start uploads them again, signed as before."""
    admin = make_user("admin", admin=True)
    user = hs.user_id(BOT_LOCALPART)
    before = _server(hs, bot)
    status, body = hs.request(
        "DELETE", f"/_synapse/admin/v2/users/{user}/devices/{BOT_DEVICE}", token=admin.token
    )
    assert status == 200, body
    bot.start(timeout=60)
    bot.stop()
    assert "the server has no keys of device AUDITOR-BOT (it was deleted): uploading them again" in bot.log()
    after = _server(hs, bot)
    assert after["device"]["keys"] == before["device"]["keys"]
    keys = _identity(bot).load()
    assert keys is not None
    _assert_signed_by(after, keys, user)


def test_a_self_signing_key_saved_but_never_uploaded_is_uploaded_next_time(
    hs: Homeserver, bot: BotProcess
) -> None:
    """A crash between saving a new self-signing key and uploading it: same master key, the
    file's self-signing key, which the next start uploads and signs the device with."""
    file = _identity(bot)
    kept = file.load()
    assert kept is not None
    newer = kept.with_new_self_signing_key()
    file.save(newer)
    bot.start(timeout=60)
    bot.stop()
    assert bot.log().count("uploaded the kept cross-signing identity") == 1
    _assert_signed_by(_server(hs, bot), newer, hs.user_id(BOT_LOCALPART))


def test_device_keys_cannot_be_replaced_on_the_server(hs: Homeserver, bot: BotProcess) -> None:
    """Someone with the bot's access token uploads other keys for its device: the server
    refuses them, and the bot goes on with its own, signed as before."""
    user = hs.user_id(BOT_LOCALPART)
    before = _server(hs, bot)
    token = json.loads((_directory(bot) / "store" / "credentials.json").read_text())["access_token"]
    forged = CrossSigningKeys.generate()  # any Ed25519 key will do as the forged device key
    device = {
        "user_id": user,
        "device_id": BOT_DEVICE,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"ed25519:{BOT_DEVICE}": forged.master_public,
            f"curve25519:{BOT_DEVICE}": public_key(forged.user_signing),
        },
    }
    device["signatures"] = sign(device, user, forged.master)["signatures"]
    status, body = hs.request("POST", "/_matrix/client/v3/keys/upload", {"device_keys": device}, token=token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    bot.start(timeout=60)
    bot.stop()
    after = _server(hs, bot)
    assert after["device"]["keys"] == before["device"]["keys"]
    assert verify(after["device"], user, _identity(bot).load().self_signing_public)


def test_an_identity_saved_but_never_uploaded_is_uploaded_at_the_next_start(
    hs: Homeserver, tmp_path: Path
) -> None:
    """A crash between making the identity and uploading it: the server has none, the file
    has one; the bot uploads the file's instead of making another."""
    localpart, device_id = "auditor-bot-2", "AUDITOR-BOT-2"
    config = auditor_config(hs, tmp_path, localpart, device_id, [hs.user_id("revisor")])
    (tmp_path / "auditor.yaml").write_text(yaml.safe_dump(config))
    bot = BotProcess("bots.auditor", tmp_path / "auditor.yaml", tmp_path / "bot.log", "auditor bot ready")
    kept = CrossSigningKeys.generate()
    _identity(bot).save(kept)
    with stopped_afterwards(bot):
        bot.start(timeout=60)
        bot.stop()
    assert "uploaded the kept cross-signing identity" in bot.log()
    assert "made a cross-signing identity" not in bot.log()
    _assert_signed_by(_server(hs, bot, localpart, device_id), kept, hs.user_id(localpart))
