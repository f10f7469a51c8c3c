"""What a dispatcher at a stock Element Web sees when a login awaits approval.

Element Web shows every 401/403 of a login as "Incorrect username and/or
password"; only M_RESOURCE_LIMIT_EXCEEDED reaches the screen, as a sentence
and a link to its ``admin_contact``. The module answers a device-less login
that way, and the link leads to a page with the request code."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.homeserver import Homeserver
from tests.admin_api import call, pending
from tests.integration.test_decision_log import DECISION_LOGGER, decisions_for

LOGIN_PAGE = "/_synapse/client/police/login-request"
ELEMENT_WEB = "Mozilla/5.0 (X11; Linux x86_64) Element/1.12.7"


def element_login(hs: Homeserver, localpart: str, password: str) -> tuple[int, Any]:
    """The body Element Web 1.12 sends: no device ID."""
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart},
        "password": password,
        "initial_device_display_name": "app.element.io: Firefox on Linux",
    }
    return hs.request("POST", "/_matrix/client/v3/login", body, headers={"User-Agent": ELEMENT_WEB})


def get_page(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def short_window(start_homeserver) -> Homeserver:
    """Approvals lapse after two seconds."""
    return start_homeserver("login_page_window", module_config={"devices": {"approval_window": "2s"}})


@pytest.fixture
def admin(make_user):
    return make_user("admin", admin=True)


def open_request(hs: Homeserver, admin_token: str, user_id: str) -> dict[str, Any]:
    [request] = [entry for entry in pending(hs, admin_token) if entry["user_id"] == user_id]
    return request


def test_element_login_gets_a_link_to_the_request_code(hs, make_user, admin):
    user = make_user("dispatcher")
    status, body = element_login(hs, user.localpart, user.password)

    assert status == 403, body
    assert set(body) == {"errcode", "error", "admin_contact", "limit_type"}
    assert body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED"
    assert body["limit_type"] == "police_device_approval"
    request = open_request(hs, admin.token, user.user_id)
    assert request["request_id"] in body["error"]
    assert "did not name an enrolled device" in body["error"]
    link = body["admin_contact"]
    assert link.startswith(f"{hs.url}{LOGIN_PAGE}/")
    assert request["request_id"] not in link

    status, headers, page = get_page(link)
    assert status == 200, page
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert f'<p class="code" id="request-code">{request["request_id"]}</p>' in page
    assert "Anmeldung wartet auf Freigabe" in page and "Login awaiting approval" in page
    assert user.user_id in page

    # The decision log has the request code, as before, but not the link.
    [entry] = [e for e in decisions_for(hs, user.user_id) if e["rule"] == "devices.not_enrolled"]
    assert request["request_id"] in entry["reason"]
    token = link.rsplit("/", 1)[1]
    decision_lines = [line for line in hs.log_path.read_text().splitlines() if DECISION_LOGGER in line]
    assert not [line for line in decision_lines if token in line]
    # The database keeps a hash of the token, not the token.
    assert hs.query("SELECT request_id FROM police_policy_login_links WHERE token_hash = ?", (token,)) == []


def test_approving_the_code_from_the_page_lets_the_next_login_in(hs, make_user, admin):
    user = make_user("dispatcher")
    _, first = element_login(hs, user.localpart, user.password)
    # A retry refreshes the same request; its new link shows the same code.
    _, retry = element_login(hs, user.localpart, user.password)
    assert first["admin_contact"] != retry["admin_contact"]
    code = open_request(hs, admin.token, user.user_id)["request_id"]
    for link in (first["admin_contact"], retry["admin_contact"]):
        status, _, page = get_page(link)
        assert status == 200 and f'id="request-code">{code}<' in page

    status, answer = call(hs, "POST", f"pending/{code}/approve", admin.token, {})
    assert status == 200, answer
    status, _, page = get_page(retry["admin_contact"])
    assert status == 200
    assert "Anmeldung freigegeben" in page and "Login approved" in page
    assert 'data-state="approved"' in page

    status, login = element_login(hs, user.localpart, user.password)
    assert status == 200, login
    status, answer = hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=login["access_token"])
    assert status == 200, answer
    # The approval is used up: its links are gone.
    for link in (first["admin_contact"], retry["admin_contact"]):
        assert get_page(link)[0] == 404


def test_a_wrong_password_gets_no_link_and_no_request(hs, make_user, admin):
    user = make_user("dispatcher")
    status, body = element_login(hs, user.localpart, "not-the-password")
    assert status == 403, body
    assert body == {"errcode": "M_FORBIDDEN", "error": "Invalid username or password"}
    assert [e for e in pending(hs, admin.token) if e["user_id"] == user.user_id] == []


def test_a_named_device_keeps_the_plain_refusal(hs, make_user):
    """Managed apps and bots name their device: they keep M_FORBIDDEN."""
    user = make_user("officer")
    status, body = hs.try_login(user.localpart, user.password, "NOT-ENROLLED-YET")
    assert status == 403
    assert set(body) == {"errcode", "error"}
    assert body["errcode"] == "M_FORBIDDEN"


def not_found(hs: Homeserver, url: str) -> str:
    status, headers, page = get_page(url)
    assert status == 404, page
    assert headers["Cache-Control"] == "no-store"
    return page


def test_unknown_rejected_and_lapsed_links_get_the_same_404(short_window, make_user):
    hs = short_window
    admin = make_user("admin", admin=True, homeserver=hs)
    made_up = not_found(hs, f"{hs.url}{LOGIN_PAGE}/{'A' * 43}")
    assert "Dieser Link ist ungültig oder abgelaufen" in made_up
    assert "This link is invalid or has expired" in made_up
    for path in ("", "/", "/short", f"/{'A' * 43}/more", "/K7Q2-M9XD"):
        assert not_found(hs, f"{hs.url}{LOGIN_PAGE}{path}") == made_up

    rejected, lapsed = make_user("dispatcher", homeserver=hs), make_user("dispatcher", homeserver=hs)
    _, rejected_body = element_login(hs, rejected.localpart, rejected.password)
    _, lapsed_body = element_login(hs, lapsed.localpart, lapsed.password)
    for account, verb in ((rejected, "reject"), (lapsed, "approve")):
        code = open_request(hs, admin.token, account.user_id)["request_id"]
        assert call(hs, "POST", f"pending/{code}/{verb}", admin.token, {})[0] == 200
    assert not_found(hs, rejected_body["admin_contact"]) == made_up
    assert get_page(lapsed_body["admin_contact"])[0] == 200
    time.sleep(2.5)
    assert not_found(hs, lapsed_body["admin_contact"]) == made_up


def test_the_page_answers_get_only(hs, make_user):
    user = make_user("dispatcher")
    _, body = element_login(hs, user.localpart, user.password)
    status, _, _ = get_page(body["admin_contact"], "POST")
    assert status == 405
    status, _, page = get_page(body["admin_contact"], "HEAD")
    assert (status, page) == (200, "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    token=st.one_of(
        st.text(max_size=80),
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            min_size=43,
            max_size=43,
        ),
        st.binary(max_size=60).map(lambda raw: raw.decode("latin-1")),
    ),
    query=st.one_of(st.none(), st.text(max_size=30)),
)
def test_no_token_breaks_the_page(hs, token, query):
    """Whatever stands where the token goes: a 4xx, never a 5xx."""
    url = f"{hs.url}{LOGIN_PAGE}/{urllib.parse.quote(token, safe='')}"
    if query is not None:
        url += "?token=" + urllib.parse.quote(query, safe="")
    status, _, _ = get_page(url)
    assert 400 <= status < 500, (token, status)
