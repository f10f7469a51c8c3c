"""``devices.login_networks`` behind a reverse proxy: the client address
Synapse takes from X-Forwarded-For is the one checked."""

from __future__ import annotations

import uuid

import pytest

from devtools.homeserver import Homeserver
from tests.integration.test_decision_log import decisions_for

MDM_VPN = "10.8.0.0/16"


@pytest.fixture(scope="module")
def proxied(start_homeserver) -> Homeserver:
    return start_homeserver(
        "login_networks", module_config={"devices": {"login_networks": [MDM_VPN]}}, x_forwarded=True
    )


@pytest.fixture
def officer(proxied) -> tuple[str, str]:
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    proxied.register_user(localpart, "pw")
    proxied.enroll(localpart, "IPHONE-1")
    return localpart, "IPHONE-1"


def login_from(hs: Homeserver, officer: tuple[str, str], address: str | None) -> tuple[int, dict]:
    headers = {"X-Forwarded-For": address} if address else None
    return hs.try_login(officer[0], "pw", officer[1], headers=headers)


def test_enrolled_device_inside_the_network_logs_in(proxied, officer):
    status, body = login_from(proxied, officer, "10.8.3.4")
    assert status == 200, body


@pytest.mark.parametrize("address", ["192.0.2.7", "10.9.0.1", None])
def test_logins_from_elsewhere_are_refused(proxied, officer, address):
    status, body = login_from(proxied, officer, address)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    shown = address or "127.0.0.1"
    assert f"logins from {shown} are not allowed" in body["error"]
    entries = [e for e in decisions_for(proxied, proxied.user_id(officer[0])) if e.get("rule")]
    assert entries[-1]["rule"] == "devices.login_network"
