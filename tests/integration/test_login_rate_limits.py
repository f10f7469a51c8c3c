"""Login rate limits as deployed, not lifted as in the other tests: `make run`'s fit a developer
trying Element and a phone beside the bots' own logins, production's fit a control room's
shift change behind one address while password guessing stays slow; Synapse's defaults, the
control, lock such a burst out."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from devtools.homeserver import REPO_ROOT, Homeserver
from devtools.run import dev_spec

#: Synapse's own defaults (docs: rc_login), which the test harness otherwise lifts
SYNAPSE_DEFAULT = {
    "rc_login": {
        "address": {"per_second": 0.003, "burst_count": 5},
        "account": {"per_second": 0.003, "burst_count": 5},
        "failed_attempts": {"per_second": 0.003, "burst_count": 5},
    }
}
PRODUCTION = {"rc_login": yaml.safe_load((REPO_ROOT / "config" / "homeserver.yaml").read_text())["rc_login"]}


def _accounts(hs: Homeserver, count: int) -> list[tuple[str, str, str]]:
    """``count`` users with an enrolled device each: (localpart, password, device)."""
    made = []
    for _ in range(count):
        localpart, password = f"user-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
        hs.register_user(localpart, password, login=False)
        hs.enroll(localpart, "PHONE-1")
        made.append((localpart, password, "PHONE-1"))
    return made


def _burst(hs: Homeserver, logins: list[tuple[str, str, str]]) -> list[int]:
    """The status of each login; each successful one logs out again, so that the next
    login on the same enrolled device is its first (a device in use cannot be claimed)."""
    statuses = []
    for localpart, password, device in logins:
        status, answer = hs.try_login(localpart, password, device)
        if status == 200:
            hs.request("POST", "/_matrix/client/v3/logout", {}, token=answer["access_token"])
        statuses.append(status)
    return statuses


@pytest.fixture(scope="module")
def servers(start_homeserver) -> dict[str, Homeserver]:
    extra: dict[str, dict[str, Any]] = {
        "makerun": dev_spec().extra,
        "production": PRODUCTION,
        "synapsedefault": SYNAPSE_DEFAULT,
        # Synapse's default message limit; logins lifted as in the other tests
        "messages": {"rc_message": {"per_second": 0.2, "burst_count": 10}},
    }
    return {name: start_homeserver(f"limits-{name}", extra=settings) for name, settings in extra.items()}


def test_make_run_admits_a_developer_with_element_and_a_phone_beside_the_bots(servers) -> None:
    hs = servers["makerun"]
    admin, auditor_bot, dispatch_bot, dispatcher, officer = _accounts(hs, 5)
    # make run's own three, then Element (twice: refused, then approved), a phone, retries
    logins = [admin, auditor_bot, dispatch_bot, dispatcher, dispatcher, officer, dispatcher, officer]
    assert _burst(hs, logins + logins[3:]) == [200] * 13


def test_production_admits_a_shift_change_behind_one_address(servers) -> None:
    hs = servers["production"]
    assert _burst(hs, _accounts(hs, 15)) == [200] * 15


def test_production_keeps_password_guessing_slow(servers) -> None:
    hs = servers["production"]
    (localpart, _, device), *_ = _accounts(hs, 1)
    answers = [hs.try_login(localpart, "wrong password", device)[0] for _ in range(8)]
    assert answers[0] == 403 and 429 in answers, answers


def test_synapse_defaults_lock_the_same_burst_out(servers) -> None:
    """The control: without the settings above, the developer's burst is refused."""
    hs = servers["synapsedefault"]
    assert 429 in _burst(hs, _accounts(hs, 8))


def test_the_bots_are_exempt_from_the_message_rate_limit_others_keep(servers) -> None:
    """Synapse's default message limit (0.2/s, burst 10) answered the dispatch bot 429 three
    times in one short flow; make run lifts it for the bots as the operator guide does."""
    hs = servers["messages"]
    admin = f"admin-{uuid.uuid4().hex[:6]}"
    hs.register_user(admin, "pw-admin", admin=True, login=False)
    hs.enroll(admin, "OPS")
    admin_token = hs.login(admin, "pw-admin", "OPS")["access_token"]
    (bot, bot_password, device), (person, person_password, _) = _accounts(hs, 2)
    hs.exempt_from_rate_limits(hs.user_id(bot), admin_token)

    def burst(localpart: str, password: str) -> list[int]:
        token = hs.login(localpart, password, device)["access_token"]
        status, body = hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
        assert status == 200, body
        room = quote(body["room_id"], safe="")
        return [
            hs.request(
                "PUT",
                f"/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/{uuid.uuid4().hex}",
                {
                    "algorithm": "m.megolm.v1.aes-sha2",
                    "ciphertext": "AwgA",
                    "session_id": "s",
                    "device_id": device,
                },
                token=token,
            )[0]
            for _ in range(15)
        ]

    assert burst(bot, bot_password) == [200] * 15
    assert 429 in burst(person, person_password), "the control: everyone else keeps the limit"
