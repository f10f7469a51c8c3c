"""Device enrollment rules, as pure functions on plain data.

Who may log in on which device, what an enrollment request must look like,
and the words of every refusal. ``glue.py`` applies these rules to
Synapse's callbacks, ``admin_api.py`` to HTTP requests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from synapse.api.errors import Codes

# the states are the wire contract's; the rules and the store read them from here too
from ..api import APPROVED as APPROVED
from ..api import CONSUMED as CONSUMED
from ..api import ENROLLED as ENROLLED
from ..api import ENROLLMENT_STATES as ENROLLMENT_STATES
from ..api import EXPIRED as EXPIRED
from ..api import OPEN as OPEN
from ..api import PENDING_STATES as PENDING_STATES
from ..api import REJECTED as REJECTED
from ..api import REQUEST_ID, REQUEST_ID_ALPHABET
from ..api import REVOKED as REVOKED
from ..config import IPNetwork
from ..decisions import Denial, quote

#: Synapse refuses longer device IDs at login; the registry does the same.
MAX_DEVICE_ID_LENGTH = 512
MAX_LABEL_LENGTH = 256
#: Synapse's own limit (``synapse.api.constants.MAX_USERID_LENGTH``).
MAX_USER_ID_LENGTH = 255
#: The latest time the module takes, 9999-12-31T23:59:59.999Z: it fits a
#: signed 64-bit column and every tool can print it. Values past it are
#: nearly always micro- or nanoseconds sent where milliseconds belong.
MAX_TIME_MS = 253_402_300_799_999
#: the identity keys a device uploads once (``<algorithm>:<device_id>``)
IDENTITY_KEY_ALGORITHMS = ("ed25519", "curve25519")
#: An open login request nobody decided on lapses after a day.
PENDING_OPEN_LIFETIME_MS = 24 * 3600 * 1000
_USER_ID = re.compile(r"^@[a-z0-9._=\-/+]+:(.+)$")
#: Unicode categories no label or ID may contain: controls and line breaks,
#: format characters (bidirectional overrides and isolates, zero-width
#: characters), lone surrogates, private-use and unassigned code points.
#: Each can reorder, hide or fake what an operator's terminal shows.
#: Non-breaking and other spaces (Zs) are fine in labels.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: ASCII digits only: ``str.isdigit`` and ``int`` also take "²" or "١٢".
_DIGITS = re.compile(r"[0-9]{1,20}")
_LOGOUT_PATH = re.compile(r"/_matrix/client/(?:r0|v3)/logout(?:/all)?")
#: The token of a login link: 32 random bytes, URL-safe base64 without padding.
_LINK_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
#: ``limit_type`` of the awaiting-approval answer. Element Web has sentences
#: for ``monthly_active_user`` and ``hs_blocked``; any other value gets its
#: neutral "This homeserver has exceeded one of its resource limits."
AWAITING_APPROVAL_LIMIT_TYPE = "police_device_approval"


@attrs.frozen
class Enrollment:
    user_id: str
    device_id: str
    label: str
    enrolled_by: str
    enrolled_at: int
    expires_at: int | None
    state: str
    revoked_by: str | None = None
    revoked_at: int | None = None

    def is_active(self, now_ms: int) -> bool:
        return self.state == ENROLLED and (self.expires_at is None or self.expires_at > now_ms)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class PendingLogin:
    """A login refused for a missing enrollment; ``device_id`` is None for
    stock clients that let the server pick the device ID."""

    request_id: str
    user_id: str
    device_id: str | None
    ip: str
    user_agent: str
    created_at: int
    last_attempt_at: int
    state: str
    decided_by: str | None = None
    decided_at: int | None = None
    consumed_at: int | None = None
    bound_device_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class InvalidInput(ValueError):
    """A request field that cannot be used; ``field`` names it for the 400 answer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def new_request_id() -> str:
    """Short enough to read out over the phone: XXXX-XXXX without 0/O/1/I."""
    chars = "".join(secrets.choice(REQUEST_ID_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def new_link_token() -> str:
    """The secret part of a login link; only its hash is stored."""
    return secrets.token_urlsafe(32)


def link_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def is_link_token(value: str) -> bool:
    """Whether ``value`` has the shape of a link token (anything else is not looked up)."""
    return _LINK_TOKEN.fullmatch(value) is not None


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` in ``UNSAFE_CATEGORIES``, if any."""
    for char in text:
        if unicodedata.category(char) in UNSAFE_CATEGORIES:
            return char
    return None


def describe_character(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: names a character an error cannot show."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def _number(value: int) -> str:
    """A client's number for a message; a huge one is described, not printed."""
    return str(value) if value.bit_length() <= 128 else f"a number of {value.bit_length()} bits"


def parse_whole_number(text: str, field: str, minimum: int, maximum: int) -> int:
    """The one contract for a number written as text (query parameters, CLI
    options): ASCII digits only, no sign, no spaces, within the bounds."""
    if _DIGITS.fullmatch(text) is None or not minimum <= int(text) <= maximum:
        raise InvalidInput(
            field, f"expected a whole number from {minimum} to {maximum} (digits 0-9 only), got {quote(text)}"
        )
    return int(text)


def validate_user_id(value: Any, server_name: str, field: str = "user_id") -> str:
    """A user ID of this server (only local users have devices here)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"expected a user ID such as '@officer:{server_name}', got {quote(value)}")
    if len(value) > MAX_USER_ID_LENGTH:
        raise InvalidInput(field, f"longer than {MAX_USER_ID_LENGTH} characters")
    match = _USER_ID.fullmatch(value)
    if match is None:
        raise InvalidInput(
            field, f"{quote(value)} is not a valid user ID (expected '@localpart:{server_name}')"
        )
    if match.group(1) != server_name:
        raise InvalidInput(
            field,
            f"{quote(value)} is not a user of this server ({server_name}); "
            "enroll devices at the user's home server",
        )
    return value


def validate_device_id(value: Any, field: str = "device_id") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, f"expected a non-empty device ID, got {quote(value)}")
    if len(value) > MAX_DEVICE_ID_LENGTH:
        raise InvalidInput(field, f"longer than {MAX_DEVICE_ID_LENGTH} characters")
    # Not printable: every category of UNSAFE_CATEGORIES, and spaces but " ".
    bad = next((char for char in value if char.isspace() or not char.isprintable()), None)
    if bad is not None:
        raise InvalidInput(
            field,
            f"{quote(value)} contains whitespace or control characters ({describe_character(bad)}); "
            "formatting characters such as bidirectional overrides are not allowed either",
        )
    return value


def validate_request_id(value: Any, field: str = "request_id") -> str:
    """A login request ID as read over the phone; lower case is taken too."""
    if not isinstance(value, str) or REQUEST_ID.fullmatch(value.upper()) is None:
        raise InvalidInput(
            field, f"expected a login request ID such as K7Q2-M9XD (see 'pending'), got {quote(value)}"
        )
    return value.upper()


def validate_label(value: Any, field: str = "label") -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(field, f"expected a string such as an MDM asset number, got {quote(value)}")
    if len(value) > MAX_LABEL_LENGTH:
        raise InvalidInput(field, f"longer than {MAX_LABEL_LENGTH} characters")
    bad = unsafe_character(value)
    if bad is not None:
        raise InvalidInput(
            field,
            f"contains {describe_character(bad)}; a label is one line of plain text, without control "
            "characters, line breaks or formatting characters (such as bidirectional overrides)",
        )
    return value


def validate_expiry(value: Any, now_ms: int, field: str = "expires_at") -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(field, f"expected milliseconds since the epoch (an integer), got {quote(value)}")
    if value <= now_ms:
        raise InvalidInput(field, f"{_number(value)} is not in the future (now is {now_ms})")
    if value > MAX_TIME_MS:
        raise InvalidInput(
            field,
            f"{_number(value)} is out of range: expected milliseconds since the epoch from now ({now_ms}) "
            f"to {MAX_TIME_MS} (9999-12-31T23:59:59.999Z); is it in micro- or nanoseconds?",
        )
    return value


def parse_enrollment_body(
    body: Any, now_ms: int, *, prefix: str = "", also: frozenset[str] = frozenset()
) -> tuple[str, int | None]:
    """``{"label": ..., "expires_at": ...}`` of an enroll request: (label, expiry).
    ``prefix`` names where the object sits (``devices[3].``); ``also`` lists
    further fields the caller reads itself."""
    if not isinstance(body, Mapping):
        raise InvalidInput(prefix.rstrip(".") or "body", f"expected a JSON object, got {quote(body)}")
    known = {"label", "expires_at"} | also
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        raise InvalidInput(
            f"{prefix}{field_name(unknown[0])}", f"unknown field; expected {', '.join(sorted(known))}"
        )
    label = validate_label(body.get("label"), f"{prefix}label")
    expires_at = validate_expiry(body.get("expires_at"), now_ms, f"{prefix}expires_at")
    return label, expires_at


def field_name(name: str) -> str:
    """A client's field name as it can appear in an error: quoted unless plain."""
    return name if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name) else quote(name)


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    # An IPv4 client on a dual-stack listener shows up as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_login_network(networks: Iterable[IPNetwork], ip: str) -> Denial | None:
    networks = tuple(networks)
    if not networks:
        return None
    address = parse_ip(ip)
    if address is not None and any(address in network for network in networks):
        return None
    return Denial(
        rule="devices.login_network",
        reason=f"Login refused: logins from {ip} are not allowed on this server "
        "(devices.login_networks); connect through the MDM VPN or the control-room network",
    )


def auto_approves(networks: Iterable[IPNetwork], users: Iterable[str], user_id: str, ip: str) -> bool:
    """Whether a stock-client login is enrolled without an operator
    (``devices.auto_approve_networks`` and ``devices.auto_approve_users``)."""
    address = parse_ip(ip)
    return user_id in set(users) and address is not None and any(address in network for network in networks)


def device_not_enrolled(user_id: str, device_id: str | None, request_id: str) -> Denial:
    if device_id is None:
        reason = (
            f"Login refused: this client did not name an enrolled device, and {user_id} may only log in on "
            f"MDM-enrolled devices. Login request {request_id} is waiting for an operator: once it is "
            "approved, log in again from the same network."
        )
    else:
        reason = (
            f"Login refused: device {quote(device_id)} is not enrolled for {user_id}; only MDM-enrolled "
            f"devices may log in. Login request {request_id} is waiting for an operator."
        )
    return Denial(rule="devices.not_enrolled", reason=reason)


@attrs.frozen
class AwaitingApproval(Denial):
    """A stock-client login refused until an operator approves its request.

    Element Web shows every 401/403 of a login as "Incorrect username and/or
    password" and never the server's message, except for
    ``M_RESOURCE_LIMIT_EXCEEDED``: that one it shows with a link to the
    ``admin_contact`` URI. The link leads to the page that shows the request
    code (``login_page.py``); the rule, the reason and the log stay those of
    ``devices.not_enrolled``."""

    link: str = ""

    def error_fields(self) -> dict[str, str]:
        return {
            "error": self.reason,
            "admin_contact": self.link,
            "limit_type": AWAITING_APPROVAL_LIMIT_TYPE,
        }


def login_awaits_approval(user_id: str, request_id: str, link: str) -> AwaitingApproval:
    """A login that named no device, refused with a link to its request's page."""
    denial = device_not_enrolled(user_id, None, request_id)
    return AwaitingApproval(
        rule=denial.rule, reason=denial.reason, errcode=Codes.RESOURCE_LIMIT_EXCEEDED, link=link
    )


def device_in_use(user_id: str, device_id: str, request_id: str) -> Denial:
    """A login naming an enrolled device that is logged in (or holds keys) already.

    Device IDs are public (every ``/keys/query`` lists them): naming one proves
    nothing, so the device's first login claims it until it logs out."""
    return Denial(
        rule="devices.in_use",
        reason=f"Login refused: device {quote(device_id)} of {user_id} is already logged in elsewhere, and "
        "an enrolled device is claimed by its first login. If the phone was wiped or the app "
        f"reinstalled, an operator can approve login request {request_id}; that ends the earlier "
        "session, then log in again.",
    )


def identity_keys(device_keys: Mapping[str, Any], device_id: str) -> dict[str, str]:
    """The identity keys (``ed25519``, ``curve25519``) of a ``device_keys`` object;
    malformed parts are left out (Synapse validated the upload's shape)."""
    keys = device_keys.get("keys")
    if not isinstance(keys, Mapping):
        return {}
    found = {}
    for algorithm in IDENTITY_KEY_ALGORITHMS:
        value = keys.get(f"{algorithm}:{device_id}")
        if isinstance(value, str):
            found[algorithm] = value
    return found


def check_identity_keys(
    user_id: str, device_id: str, stored: Mapping[str, str], uploaded: Mapping[str, str]
) -> Denial | None:
    """A device keeps the identity keys it uploaded first: whoever replaces them
    (a second login on a public device ID) would receive what others encrypt to it."""
    if not stored or dict(stored) == dict(uploaded):
        return None
    return Denial(
        rule="devices.identity_keys_changed",
        reason=f"Key upload refused: device {quote(device_id)} of {user_id} already has identity keys, "
        "and they cannot be replaced. A reinstalled app needs a new login: log out, or ask an operator "
        "to re-enroll the device.",
    )


def allowed_without_enrollment(path: str) -> bool:
    """The only client requests a device nobody enrolled may make: logging out."""
    return _LOGOUT_PATH.fullmatch(path) is not None


def request_from_unenrolled_device(user_id: str, device_id: str | None) -> Denial:
    """Any client request but a logout, with a token of a device nobody enrolled."""
    device = f"device {quote(device_id)}" if device_id is not None else "an access token without a device"
    return Denial(
        rule="devices.request_from_unenrolled_device",
        reason=f"Refused: {device} of {user_id} is not enrolled, and such a device can only log out. "
        "Log in on an MDM-enrolled device.",
    )


def enrollment_ended(record: Enrollment) -> Denial:
    """The login names a device whose enrollment is over (``record`` is not active)."""
    device = f"device {quote(record.device_id)} of {record.user_id}"
    if record.state == REVOKED:
        return Denial(
            rule="devices.revoked",
            reason=f"Login refused: {device} was revoked (lost or replaced); "
            "only an operator can enroll it again",
        )
    return Denial(
        rule="devices.enrollment_expired",
        reason=f"Login refused: the enrollment of {device} expired; ask your operator to enroll it again",
    )


def event_from_unenrolled_device(user_id: str, device_id: str) -> Denial:
    return Denial(
        rule="devices.event_from_unenrolled_device",
        reason=f"Device {quote(device_id)} of {user_id} is not enrolled: events from devices that were "
        "not enrolled through the MDM are refused. Log in on an enrolled device.",
    )


def unusable_admin_device(user_id: str, device_id: str | None) -> Denial:
    return Denial(
        rule="devices.admin_device_not_enrolled",
        reason=f"The admin API needs an access token of an enrolled device; device {quote(device_id)} of "
        f"{user_id} is not enrolled (see 'police-policy devices bootstrap')",
    )


def link_shows(pending: PendingLogin, now_ms: int, window_ms: int) -> str | None:
    """What the page of a login link shows: ``open`` (the request code) while
    nobody decided, ``approved`` until the approval lapses; None (no page) once
    the request is used, rejected or lapsed. Only stock-client requests have links."""
    if pending.device_id is not None:
        return None
    if pending.state == OPEN and pending.created_at > now_ms - PENDING_OPEN_LIFETIME_MS:
        return OPEN
    if pending.state == APPROVED and (pending.decided_at or 0) > now_ms - window_ms:
        return APPROVED
    return None


def candidate_devices_for_approval(
    newest_first: Iterable[str], enrolled: Iterable[str], known_before: Iterable[str]
) -> str | None:
    """The device an approved stock-client login created: the newest device of
    the user that is neither enrolled nor existed before the login."""
    skip = set(enrolled) | set(known_before)
    for device_id in newest_first:
        if device_id not in skip:
            return device_id
    return None
