"""The page a refused stock-client login links to: "your login awaits approval,
give the operator this request code", in German and English.

Element Web shows no server message for a refused login; it shows the link of
an ``M_RESOURCE_LIMIT_EXCEEDED`` answer's ``admin_contact`` (see
``enrollment.AwaitingApproval``). That link is
``{public_baseurl}_synapse/client/police/login-request/{token}``: the token is
random, handed out only in the answer to a login whose password was right,
stored only as a hash, and works while its request is open or approved. Any
other token gets the same 404 page, so the page tells nothing about other
logins. The path lies outside the admin API's prefix, which operators keep off
the public proxy: the control room's browsers must reach this page.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Protocol

from synapse.http.server import DirectServeHtmlResource, finish_request
from synapse.http.site import SynapseRequest

from ..api import APPROVED, LOGIN_PAGE_PREFIX
from .rules import PendingLogin

if TYPE_CHECKING:
    from .glue import DeviceEnrollment

#: seconds between reloads of a page that waits for the operator
REFRESH_SECONDS = 10

_HEADERS = {
    b"Content-Type": b"text/html; charset=utf-8",
    b"Cache-Control": b"no-store",
    b"Referrer-Policy": b"no-referrer",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"X-Robots-Tag": b"noindex, nofollow",
    b"Content-Security-Policy": b"default-src 'none'; style-src 'unsafe-inline'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


class _Response(Protocol):
    """What ``_send_response`` calls on the request, typed: Twisted leaves
    ``Request.setHeader`` and ``Request.write`` without annotations."""

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def write(self, data: bytes) -> None: ...


_STYLE = (
    "body{font-family:sans-serif;max-width:40em;margin:2em auto;padding:0 1em;line-height:1.5;color:#17191c}"
    "section{margin-bottom:2em}h1{font-size:1.4em}"
    ".code{font-family:monospace;font-size:2.2em;letter-spacing:.1em;font-weight:bold;margin:.3em 0}"
    "hr{border:0;border-top:1px solid #ccc}"
)


def duration_words(seconds: int) -> tuple[str, str]:
    """``approval_window`` in words: ("15 Minuten", "15 minutes")."""
    for size, german, english in (
        (3600, ("Stunde", "Stunden"), ("hour", "hours")),
        (60, ("Minute", "Minuten"), ("minute", "minutes")),
        (1, ("Sekunde", "Sekunden"), ("second", "seconds")),
    ):
        if seconds % size == 0:
            count = seconds // size
            plural = 0 if count == 1 else 1
            return f"{count} {german[plural]}", f"{count} {english[plural]}"
    raise AssertionError("unreachable")


def _page(title: str, body: str, state: str, refresh: bool = False) -> bytes:
    meta_refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="de"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex, nofollow">{meta_refresh}'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body data-state="{state}">{body}</body></html>\n'
    ).encode()


def render_open(pending: PendingLogin, window_seconds: int) -> bytes:
    user = html.escape(pending.user_id)
    code = html.escape(pending.request_id)
    window_de, window_en = duration_words(window_seconds)
    body = (
        '<section lang="de"><h1>Anmeldung wartet auf Freigabe</h1>'
        f"<p>Benutzername und Passwort sind richtig. Dieser Arbeitsplatz ist für <b>{user}</b> "
        "aber noch nicht freigegeben.</p>"
        "<p>Nennen Sie dem Betreiber diesen Anfragecode:</p>"
        f'<p class="code" id="request-code">{code}</p>'
        "<p>Sobald der Betreiber die Anfrage freigegeben hat, melden Sie sich an diesem Arbeitsplatz "
        f"innerhalb von {window_de} erneut an. Diese Seite zeigt die Freigabe an.</p></section><hr>"
        '<section lang="en"><h1>Login awaiting approval</h1>'
        f"<p>Your username and password are correct, but this workstation is not yet approved "
        f"for <b>{user}</b>.</p>"
        "<p>Give the operator this request code:</p>"
        f'<p class="code">{code}</p>'
        "<p>Once the operator has approved the request, log in again at this workstation "
        f"within {window_en}. This page shows the approval.</p></section>"
    )
    return _page("Anmeldung wartet auf Freigabe · Login awaiting approval", body, "open", refresh=True)


def render_approved(pending: PendingLogin, window_seconds: int) -> bytes:
    user = html.escape(pending.user_id)
    code = html.escape(pending.request_id)
    window_de, window_en = duration_words(window_seconds)
    body = (
        '<section lang="de"><h1>Anmeldung freigegeben</h1>'
        f'<p>Der Betreiber hat die Anfrage <span id="request-code">{code}</span> für <b>{user}</b> '
        "freigegeben. Melden Sie sich jetzt an diesem Arbeitsplatz erneut an, innerhalb von "
        f"{window_de} nach der Freigabe.</p></section><hr>"
        '<section lang="en"><h1>Login approved</h1>'
        f"<p>The operator approved request {code} for <b>{user}</b>. Log in again at this "
        f"workstation now, within {window_en} of the approval.</p></section>"
    )
    return _page("Anmeldung freigegeben · Login approved", body, APPROVED)


NOT_FOUND_PAGE = _page(
    "Link ungültig · Invalid link",
    '<section lang="de"><h1>Link ungültig</h1>'
    "<p>Dieser Link ist ungültig oder abgelaufen. Melden Sie sich erneut an, um einen neuen zu "
    "erhalten.</p></section><hr>"
    '<section lang="en"><h1>Invalid link</h1>'
    "<p>This link is invalid or has expired. Log in again to get a new one.</p></section>",
    "invalid",
)


class LoginPageResource(DirectServeHtmlResource):
    """``GET {LOGIN_PAGE_PREFIX}/{token}``: 200 with the request's page, else 404."""

    isLeaf = True

    def __init__(self, devices: DeviceEnrollment, window_seconds: int) -> None:
        super().__init__()
        self._devices = devices
        self._window_seconds = window_seconds

    async def _async_render_GET(self, request: SynapseRequest) -> tuple[int, bytes]:
        path = request.path.decode("ascii", "replace")
        token = path[len(LOGIN_PAGE_PREFIX) + 1 :] if path.startswith(LOGIN_PAGE_PREFIX + "/") else ""
        found = await self._devices.pending_for_link(token)
        if found is None:
            return 404, NOT_FOUND_PAGE
        pending, shows = found
        if shows == APPROVED:
            return 200, render_approved(pending, self._window_seconds)
        return 200, render_open(pending, self._window_seconds)

    def _send_response(self, request: SynapseRequest, code: int, response_object: Any) -> None:
        """Like Synapse's HTML answers, with headers that keep the page out
        of caches, frames and Referer headers, and allow no scripts."""
        request.setResponseCode(code)
        if request._disconnected:
            return
        response: _Response = request
        for name, value in _HEADERS.items():
            response.setHeader(name, value)
        response.setHeader(b"Content-Length", b"%d" % len(response_object))
        response.write(response_object)
        finish_request(request)
