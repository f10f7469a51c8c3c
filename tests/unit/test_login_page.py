"""The page a refused stock-client login links to: what it says in which state."""

from __future__ import annotations

import html.parser

import pytest

from synapse_police_policy.api import ADMIN_PREFIX
from synapse_police_policy.api import LOGIN_PAGE_PREFIX as PREFIX
from synapse_police_policy.api import login_link as link
from synapse_police_policy.devices.login_page import (
    NOT_FOUND_PAGE,
    duration_words,
    render_approved,
    render_open,
)
from synapse_police_policy.devices.rules import APPROVED, OPEN, PendingLogin

NOW = 1_700_000_000_000


def pending(user_id: str = "@dispatcher:police.example", state: str = OPEN) -> PendingLogin:
    return PendingLogin("K7Q2-M9XD", user_id, None, "10.0.0.1", "Element", NOW, NOW, state)


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.ids: dict[str, str] = {}
        self._id: str | None = None
        self.state: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self._id = values.get("id")
        if tag == "body":
            self.state = values.get("data-state")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        if self._id is not None:
            self.ids[self._id] = data
            self._id = None

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def parse(page: bytes) -> _Text:
    parser = _Text()
    parser.feed(page.decode("utf-8"))
    return parser


def test_link_sits_under_the_public_base_url() -> None:
    assert link("https://matrix.police.example/", "TOKEN") == (f"https://matrix.police.example{PREFIX}/TOKEN")
    assert link("https://matrix.police.example", "TOKEN") == f"https://matrix.police.example{PREFIX}/TOKEN"
    assert not PREFIX.startswith(ADMIN_PREFIX), "the admin API's prefix stays off the proxy"


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (900, ("15 Minuten", "15 minutes")),
        (60, ("1 Minute", "1 minute")),
        (3600, ("1 Stunde", "1 hour")),
        (7200, ("2 Stunden", "2 hours")),
        (90, ("90 Sekunden", "90 seconds")),
        (1, ("1 Sekunde", "1 second")),
    ],
)
def test_duration_words(seconds: int, words: tuple[str, str]) -> None:
    assert duration_words(seconds) == words


def test_open_request_page_shows_the_code_in_german_and_english() -> None:
    page = parse(render_open(pending(), 900))
    assert page.state == OPEN
    assert page.ids["request-code"] == "K7Q2-M9XD"
    assert "Anmeldung wartet auf Freigabe" in page.text
    assert "Nennen Sie dem Betreiber diesen Anfragecode: K7Q2-M9XD" in page.text
    assert "innerhalb von 15 Minuten erneut an" in page.text
    assert "Login awaiting approval" in page.text
    assert "Give the operator this request code: K7Q2-M9XD" in page.text
    assert "@dispatcher:police.example" in page.text
    assert b'http-equiv="refresh"' in render_open(pending(), 900)


def test_approved_request_page_says_log_in_again() -> None:
    raw = render_approved(pending(state=APPROVED), 120)
    page = parse(raw)
    assert page.state == APPROVED
    assert page.ids["request-code"] == "K7Q2-M9XD"
    assert "Anmeldung freigegeben" in page.text and "Login approved" in page.text
    assert "innerhalb von 2 Minuten nach der Freigabe" in page.text
    assert "within 2 minutes of the approval" in page.text
    assert b'http-equiv="refresh"' not in raw


def test_the_page_escapes_what_it_shows() -> None:
    raw = render_open(pending("@<script>alert(1)</script>:police.example"), 900)
    assert b"<script>" not in raw
    assert b"&lt;script&gt;" in raw


def test_not_found_page_names_nothing() -> None:
    page = parse(NOT_FOUND_PAGE)
    assert page.state == "invalid"
    assert page.ids == {}
    assert "Dieser Link ist ungültig oder abgelaufen" in page.text
    assert "This link is invalid or has expired" in page.text
