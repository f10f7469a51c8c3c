"""The shipped nginx configs cannot be fooled about the client's address.

Synapse's listener has ``x_forwarded: true`` and takes the left-most
X-Forwarded-For entry; the module's ``devices.login_networks`` checks that
address. A real nginx with each shipped config (``config/nginx/edge.conf``, the
default stack's edge, and ``config/nginx/workers.conf``, the workers profile's
routing, its upstreams all played by one Synapse process here) stands in front
of a real Synapse with the module. The test client connects from 127.0.0.1,
outside ``login_networks``, with every header a client could forge; it is
refused. From 127.0.0.2, inside, it logs in. The recipe of
docs/operator.md for a balancer in front (``set_real_ip_from``) is checked too:
the balancer's address is believed, and only the entry it added.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.homeserver import Homeserver, free_port
from devtools.workers import EDGE_NGINX_CONFIG, NGINX_CONFIG, NginxProxy

#: the network a forger claims to be in; login_networks lists it
FORGED = "10.99.7.7"
#: the test client's real address outside login_networks, and one inside
OUTSIDE = "127.0.0.1"
INSIDE = "127.0.0.2"
#: the load balancer of the set_real_ip_from recipe
BALANCER = "127.0.0.3"
LOGIN_NETWORKS = ["10.99.0.0/16", f"{INSIDE}/32"]

#: header sets a client could send to pass for an address inside login_networks
FORGERIES: dict[str, list[tuple[str, str]]] = {
    "single X-Forwarded-For": [("X-Forwarded-For", FORGED)],
    "chained X-Forwarded-For": [("X-Forwarded-For", f"{FORGED}, 127.0.0.1")],
    "two X-Forwarded-For headers": [("X-Forwarded-For", FORGED), ("X-Forwarded-For", INSIDE)],
    "X-Real-IP": [("X-Real-IP", FORGED)],
    "Forwarded": [("Forwarded", f"for={FORGED};proto=https")],
    "all of them": [
        ("Forwarded", f"for={FORGED}"),
        ("X-Real-IP", FORGED),
        ("X-Forwarded-For", FORGED),
    ],
}


@pytest.fixture(scope="module")
def hs(start_homeserver: Any) -> Homeserver:
    return start_homeserver(
        "proxy_headers",
        module_config={"devices": {"login_networks": LOGIN_NETWORKS}},
        x_forwarded=True,
    )


@pytest.fixture(scope="module")
def proxies(hs: Homeserver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NginxProxy]]:
    """One nginx per shipped config, plus the edge config with a balancer in front."""
    port = hs.spec.http_port
    directory = tmp_path_factory.mktemp("nginx")
    started = {
        "edge": NginxProxy(directory / "edge", free_port(), {"synapse": port}, config=EDGE_NGINX_CONFIG),
        "workers": NginxProxy(
            directory / "workers",
            free_port(),
            {"synapse": port, "generic-worker1": port, "generic-worker2": port},
            config=NGINX_CONFIG,
        ),
        "edge behind a balancer": NginxProxy(
            directory / "balanced",
            free_port(),
            {"synapse": port},
            config=EDGE_NGINX_CONFIG,
            real_ip_from=BALANCER,
        ),
    }
    running: list[NginxProxy] = []
    try:
        for proxy in started.values():
            proxy.start()
            running.append(proxy)
        yield started
    finally:
        for proxy in running:
            proxy.stop()


def login(
    proxy: NginxProxy, localpart: str, device_id: str, *, source: str, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, Any]]:
    """A password login through ``proxy``, sent from the loopback address
    ``source``, with ``headers`` as given (repeated names stay repeated)."""
    body = json.dumps(
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "pw",
            "device_id": device_id,
        }
    ).encode()
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30, source_address=(source, 0))
    try:
        connection.putrequest("POST", "/_matrix/client/v3/login")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def officer(hs: Homeserver) -> tuple[str, str]:
    """A user without any device, one device enrolled: (localpart, device ID)."""
    localpart = f"officer-{uuid.uuid4().hex[:6]}"
    hs.register_user(localpart, "pw", login=False)
    device_id = f"IPHONE-{uuid.uuid4().hex[:6].upper()}"
    hs.enroll(localpart, device_id)
    return localpart, device_id


def logged_in(hs: Homeserver, localpart: str) -> tuple[int, int]:
    """(devices, access tokens) the user has."""
    user_id = hs.user_id(localpart)
    [(devices,)] = hs.query("SELECT COUNT(*) FROM devices WHERE user_id = ?", (user_id,))
    [(tokens,)] = hs.query("SELECT COUNT(*) FROM access_tokens WHERE user_id = ?", (user_id,))
    return devices, tokens


def assert_refused_as(body: dict[str, Any], status: int, address: str) -> None:
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN", body
    # the module's denial names the address Synapse saw: the connection's
    assert f"logins from {address} are not allowed" in body["error"], body


@pytest.mark.parametrize("config", ["edge", "workers"])
@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_client_addresses_are_refused(
    hs: Homeserver, proxies: dict[str, NginxProxy], config: str, forgery: str
) -> None:
    localpart, device_id = officer(hs)
    status, body = login(proxies[config], localpart, device_id, source=OUTSIDE, headers=FORGERIES[forgery])
    assert_refused_as(body, status, OUTSIDE)
    assert logged_in(hs, localpart) == (0, 0)


@pytest.mark.parametrize("config", ["edge", "workers"])
def test_a_login_from_inside_the_network_is_accepted(
    hs: Homeserver, proxies: dict[str, NginxProxy], config: str
) -> None:
    localpart, device_id = officer(hs)
    # what the client claims does not matter in this direction either
    headers = [("X-Forwarded-For", "192.0.2.1")]
    status, body = login(proxies[config], localpart, device_id, source=INSIDE, headers=headers)
    assert status == 200, body
    assert body["device_id"] == device_id
    assert logged_in(hs, localpart) == (1, 1)


def test_a_balancer_is_believed_for_the_entry_it_added(
    hs: Homeserver, proxies: dict[str, NginxProxy]
) -> None:
    """set_real_ip_from BALANCER: its right-most X-Forwarded-For entry is the
    client's address; an entry the client put before it is not."""
    proxy = proxies["edge behind a balancer"]
    localpart, device_id = officer(hs)
    # the client forged 10.99.7.7, the balancer appended the address it saw
    forged = [("X-Forwarded-For", f"{FORGED}, 192.0.2.44")]
    status, body = login(proxy, localpart, device_id, source=BALANCER, headers=forged)
    assert_refused_as(body, status, "192.0.2.44")
    # anyone but the balancer is not believed
    status, body = login(proxy, localpart, device_id, source=OUTSIDE, headers=[("X-Forwarded-For", FORGED)])
    assert_refused_as(body, status, OUTSIDE)
    assert logged_in(hs, localpart) == (0, 0)
    # the balancer vouches for a client inside the network
    status, body = login(proxy, localpart, device_id, source=BALANCER, headers=[("X-Forwarded-For", FORGED)])
    assert status == 200, body
    assert logged_in(hs, localpart) == (1, 1)
