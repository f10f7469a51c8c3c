"""What an enrolled device is bound to, against an attacker with a phished password.

Device IDs are public (``/keys/query`` lists them), so an enrolled device is
claimed by its first login and keeps the identity keys it uploaded first; a
device nobody enrolled can only log out, from its first request on; a
stock-client approval is used once, by the address and user agent that asked.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from urllib.parse import quote

import pytest
from nio import AsyncClient

from devtools.homeserver import Homeserver
from tests import e2ee
from tests.admin_api import call, pending
from tests.integration.test_decision_log import decisions_for

PHISHER = {"User-Agent": "curl/8.5.0"}
ELEMENT = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Element/1.12.7"}


@pytest.fixture
def admin(make_user):
    return make_user("admin", admin=True)


def fake_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def device_keys(user_id: str, device_id: str, ed25519: str, curve25519: str) -> dict:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{device_id}": ed25519, f"curve25519:{device_id}": curve25519},
        "signatures": {user_id: {f"ed25519:{device_id}": "c2lnbmF0dXJl"}},
    }


def keys_seen_by(hs: Homeserver, token: str, user_id: str, device_id: str) -> dict[str, str]:
    status, answer = hs.request(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: [device_id]}}, token=token
    )
    assert status == 200, answer
    return answer["device_keys"][user_id][device_id]["keys"]


async def test_a_second_login_on_a_claimed_device_is_refused(hs, make_user, admin, tmp_path):
    officer, colleague = make_user("officer"), make_user("colleague")
    phone = await e2ee.login(hs, officer.localpart, officer.password, tmp_path / "phone")
    try:
        status, answer = hs.try_login(officer.localpart, officer.password, phone.device_id, headers=PHISHER)
        assert status == 403, answer
        assert "already logged in elsewhere" in answer["error"]
        [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == officer.user_id]
        assert request["device_id"] == phone.device_id
        assert request["request_id"] in answer["error"]
        [logged] = [e for e in decisions_for(hs, officer.user_id) if e["rule"] == "devices.in_use"]
        assert logged["device"] == phone.device_id

        # The phone notices nothing: it syncs, sends and tops up its one-time keys.
        room_id = await e2ee.create_room(phone)
        await e2ee.send(phone, room_id, "still mine")
        key_id = f"signed_curve25519:{uuid.uuid4().hex[:8]}"
        one_time = {key_id: {"key": fake_key(), "signatures": {officer.user_id: {}}}}
        status, answer = hs.request(
            "POST", "/_matrix/client/v3/keys/upload", {"one_time_keys": one_time}, token=phone.access_token
        )
        assert status == 200, answer
        # Others still see the phone's own identity keys.
        seen = keys_seen_by(hs, colleague.token, officer.user_id, phone.device_id)
        assert seen[f"ed25519:{phone.device_id}"] == phone.olm.account.identity_keys["ed25519"]
    finally:
        await phone.close()


async def test_identity_keys_cannot_be_replaced(hs, make_user, tmp_path):
    officer, colleague = make_user("officer"), make_user("colleague")
    phone = await e2ee.login(hs, officer.localpart, officer.password, tmp_path / "phone")
    try:
        own = phone.olm.account.identity_keys
        forged = device_keys(officer.user_id, phone.device_id, fake_key(), fake_key())
        status, answer = hs.request(
            "POST", "/_matrix/client/v3/keys/upload", {"device_keys": forged}, token=phone.access_token
        )
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), answer
        assert "cannot be replaced" in answer["error"]
        # Only one of the two keys changed: refused as well.
        half = device_keys(officer.user_id, phone.device_id, own["ed25519"], fake_key())
        status, _ = hs.request(
            "POST", "/_matrix/client/v3/keys/upload", {"device_keys": half}, token=phone.access_token
        )
        assert status == 403
        seen = keys_seen_by(hs, colleague.token, officer.user_id, phone.device_id)
        assert seen == {
            f"ed25519:{phone.device_id}": own["ed25519"],
            f"curve25519:{phone.device_id}": own["curve25519"],
        }
        [logged] = [
            e for e in decisions_for(hs, officer.user_id) if e["rule"] == "devices.identity_keys_changed"
        ][:1]
        assert logged["device"] == phone.device_id
    finally:
        await phone.close()


async def test_a_reinstalled_phone_is_let_in_by_an_approval(hs, make_user, admin, tmp_path):
    officer = make_user("officer")
    old = await e2ee.login(hs, officer.localpart, officer.password, tmp_path / "old")
    device_id, old_token = old.device_id, old.access_token
    await old.close()
    # The wiped phone logs in again on its MDM device ID: refused, then approved.
    status, _ = hs.try_login(officer.localpart, officer.password, device_id)
    assert status == 403
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == officer.user_id]
    status, answer = call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    assert status == 200, answer
    # The earlier session ended with the approval ...
    assert hs.request("GET", "/_matrix/client/v3/account/whoami", token=old_token)[0] == 401
    [ended] = decisions_for(hs, officer.user_id, decision="end_earlier_session")
    assert (ended["actor"], ended["device"]) == (admin.user_id, device_id)
    # ... and the reinstalled app claims the device with new keys.
    client = AsyncClient(hs.url, officer.user_id, device_id=device_id, store_path=str(tmp_path / "new"))
    (tmp_path / "new").mkdir()
    try:
        response = await client.login(officer.password)
        assert type(response).__name__ == "LoginResponse", response
        response = await client.keys_upload()
        assert type(response).__name__ == "KeysUploadResponse", response
    finally:
        await client.close()


def _attempts(
    hs: Homeserver, user_id: str, device_id: str, other_user: str
) -> dict[str, tuple[str, str, object]]:
    """Every kind of request a device could use before the sweep came, with what it sends."""
    txn = uuid.uuid4().hex
    user = quote(user_id, safe="")
    return {
        "sync": ("GET", "/_matrix/client/v3/sync?timeout=0", None),
        "whoami": ("GET", "/_matrix/client/v3/account/whoami", None),
        "create room": ("POST", "/_matrix/client/v3/createRoom", {}),
        "to-device": (
            "PUT",
            f"/_matrix/client/v3/sendToDevice/m.key.verification.request/{txn}",
            {"messages": {other_user: {"*": {"from_device": device_id, "methods": ["m.sas.v1"]}}}},
        ),
        "display name": (
            "PUT",
            f"/_matrix/client/v3/profile/{user}/displayname",
            {"displayname": "Leitstelle"},
        ),
        "account data": ("PUT", f"/_matrix/client/v3/user/{user}/account_data/m.direct", {"x": ["y"]}),
        "key upload": (
            "POST",
            "/_matrix/client/v3/keys/upload",
            {"device_keys": device_keys(user_id, device_id, fake_key(), fake_key())}
            if device_id
            else {"one_time_keys": {}},
        ),
        "key backup": (
            "POST",
            "/_matrix/client/v3/room_keys/version",
            {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": fake_key()}},
        ),
        "key query": ("POST", "/_matrix/client/v3/keys/query", {"device_keys": {other_user: []}}),
        "user directory": ("POST", "/_matrix/client/v3/user_directory/search", {"search_term": "a"}),
    }


def _written_by(hs: Homeserver, user_id: str, other_user: str) -> dict[str, int]:
    counts = {
        "to-device": ("SELECT COUNT(*) FROM device_inbox WHERE user_id = ?", (other_user,)),
        "account data": ("SELECT COUNT(*) FROM account_data WHERE user_id = ?", (user_id,)),
        "device keys": ("SELECT COUNT(*) FROM e2e_device_keys_json WHERE user_id = ?", (user_id,)),
        "key backup": ("SELECT COUNT(*) FROM e2e_room_keys_versions WHERE user_id = ?", (user_id,)),
        "media": ("SELECT COUNT(*) FROM local_media_repository WHERE user_id = ?", (user_id,)),
        "rooms": ("SELECT COUNT(*) FROM rooms WHERE creator = ?", (user_id,)),
    }
    return {name: hs.query(sql, args)[0][0] for name, (sql, args) in counts.items()}


def _display_name(hs: Homeserver, user_id: str) -> str | None:
    rows = hs.query("SELECT displayname FROM profiles WHERE full_user_id = ?", (user_id,))
    return rows[0][0] if rows else None


@pytest.mark.parametrize("made_by", ["registration", "admin api"])
def test_a_device_nobody_enrolled_can_only_log_out(hs, make_user, admin, made_by):
    colleague = make_user("colleague")
    localpart = f"provisioned-{uuid.uuid4().hex[:6]}"
    if made_by == "registration":
        token = hs.register_user(localpart, "pw")
        user_id = hs.user_id(localpart)
        [device_id] = [
            row[0] for row in hs.query("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
        ]
    else:
        # Synapse's admin "log in as" gives a token without a device.
        account = make_user("officer")
        user_id, device_id = account.user_id, None
        status, answer = hs.request(
            "POST", f"/_synapse/admin/v1/users/{quote(user_id)}/login", {}, token=admin.token
        )
        assert status == 200, answer
        token = answer["access_token"]
    name_before = _display_name(hs, user_id)
    written_before = _written_by(hs, user_id, colleague.user_id)

    for what, (method, path, body) in _attempts(hs, user_id, device_id, colleague.user_id).items():
        status, answer = hs.request(method, path, body, token=token)
        assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), (what, status, answer)
        assert "can only log out" in answer["error"], what
    media_status, _ = hs.request("POST", "/_matrix/media/v3/upload?filename=a.txt", "hello", token=token)
    assert media_status == 403

    assert _written_by(hs, user_id, colleague.user_id) == written_before
    assert _display_name(hs, user_id) == name_before
    # Eleven refusals, one log line (a client retrying in a loop does not flood the log).
    logged = [e for e in decisions_for(hs, user_id) if e["rule"] == "devices.request_from_unenrolled_device"]
    assert len(logged) == 1, logged
    assert logged[0]["device"] == device_id

    status, _ = hs.request("POST", "/_matrix/client/v3/logout", {}, token=token)
    assert status == 200
    assert hs.request("GET", "/_matrix/client/v3/account/whoami", token=token)[0] == 401


def test_an_approval_is_bound_to_the_user_agent(hs, make_user, admin):
    dispatcher = make_user("dispatcher")
    status, _ = hs.try_login(dispatcher.localpart, dispatcher.password, headers=ELEMENT)
    assert status == 403
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == dispatcher.user_id]
    assert request["user_agent"] == ELEMENT["User-Agent"]
    call(hs, "POST", f"pending/{request['request_id']}/approve", admin.token, {})
    # Another program on the same address does not get the approval ...
    status, _ = hs.try_login(dispatcher.localpart, dispatcher.password, headers=PHISHER)
    assert status == 403
    # ... the browser that asked for it does, once.
    status, answer = hs.try_login(dispatcher.localpart, dispatcher.password, headers=ELEMENT)
    assert status == 200, answer
    status, _ = hs.try_login(dispatcher.localpart, dispatcher.password, headers=ELEMENT)
    assert status == 403
