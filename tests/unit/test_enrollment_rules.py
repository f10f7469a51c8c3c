"""Device enrollment rules: pure functions over plain data."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from synapse_police_policy.devices.rules import (
    APPROVED,
    CONSUMED,
    ENROLLED,
    EXPIRED,
    MAX_DEVICE_ID_LENGTH,
    MAX_LABEL_LENGTH,
    OPEN,
    PENDING_OPEN_LIFETIME_MS,
    REJECTED,
    REVOKED,
    Enrollment,
    InvalidInput,
    PendingLogin,
    auto_approves,
    candidate_devices_for_approval,
    check_login_network,
    device_not_enrolled,
    enrollment_ended,
    is_link_token,
    link_shows,
    link_token_hash,
    login_awaits_approval,
    new_link_token,
    new_request_id,
    parse_enrollment_body,
    parse_ip,
    validate_device_id,
    validate_expiry,
    validate_label,
    validate_user_id,
)

SERVER = "police.example"
NOW = 1_700_000_000_000
NETWORKS = (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("2001:db8::/32"))


# --- user IDs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["@officer:police.example", "@a.b_c=d-e/f+9:police.example"])
def test_validate_user_id_accepts_local_users(user_id: str) -> None:
    assert validate_user_id(user_id, SERVER) == user_id


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("@officer:other.example", "not a user of this server (police.example)"),
        ("@officer:police.example:8448", "not a user of this server"),
        ("officer", "not a valid user ID"),
        ("@:police.example", "not a valid user ID"),
        ("@Officer:police.example", "not a valid user ID"),
        ("", "expected a user ID such as '@officer:police.example'"),
        (None, "expected a user ID"),
        (42, "expected a user ID"),
    ],
)
def test_validate_user_id_refuses_and_names_the_field(value: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_user_id(value, SERVER, field="devices[2].user_id")
    assert caught.value.field == "devices[2].user_id"
    assert str(caught.value).startswith("devices[2].user_id: ")
    assert words in str(caught.value)


def test_validate_user_id_refuses_a_trailing_newline() -> None:
    with pytest.raises(InvalidInput):
        validate_user_id("@officer:police.example\n", SERVER)


# --- device IDs, labels, expiry -----------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["ABCDEFGHIJ", "mdm-4711/phone", "x" * MAX_DEVICE_ID_LENGTH])
def test_validate_device_id_accepts(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "expected a non-empty device ID"),
        (None, "expected a non-empty device ID"),
        (17, "expected a non-empty device ID"),
        ("x" * (MAX_DEVICE_ID_LENGTH + 1), f"longer than {MAX_DEVICE_ID_LENGTH} characters"),
        ("MY PHONE", "whitespace or control characters"),
        ("PHONE\t1", "whitespace or control characters"),
        ("PHONE\n", "whitespace or control characters"),
        ("PHONE\x00", "whitespace or control characters"),
        ("PHONE\u200b", "whitespace or control characters"),  # zero-width space: not printable
    ],
)
def test_validate_device_id_refuses(value: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_device_id(value)
    assert caught.value.field == "device_id"
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("", ""),
        ("MDM asset 4711 (Streife 12)", "MDM asset 4711 (Streife 12)"),
        # a non-breaking space, as spreadsheets export them
        ("Funkwagen\u00a012 \u2013 Ärger", "Funkwagen\u00a012 \u2013 Ärger"),
    ],
)
def test_validate_label_accepts(value: str | None, expected: str) -> None:
    assert validate_label(value) == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (4711, "expected a string"),
        ("x" * (MAX_LABEL_LENGTH + 1), f"longer than {MAX_LABEL_LENGTH} characters"),
        ("line\nbreak", "control characters"),
        ("tab\there", "control characters"),
        ("para\u2029graph", "line breaks"),
    ],
)
def test_validate_label_refuses(value: Any, words: str) -> None:
    with pytest.raises(InvalidInput, match=f"^label: .*{re.escape(words)}"):
        validate_label(value)


@pytest.mark.parametrize("value", [None, NOW + 1])
def test_validate_expiry_accepts_none_and_the_future(value: int | None) -> None:
    assert validate_expiry(value, NOW) == value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (NOW, "not in the future"),
        (NOW - 1, "not in the future"),
        (True, "expected milliseconds since the epoch"),
        (float(NOW + 1000), "expected milliseconds since the epoch"),
        (str(NOW + 1000), "expected milliseconds since the epoch"),
    ],
)
def test_validate_expiry_refuses(value: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_expiry(value, NOW)
    assert caught.value.field == "expires_at"
    assert words in str(caught.value)


# --- enrollment request bodies ------------------------------------------------------------------


def test_parse_enrollment_body_reads_label_and_expiry() -> None:
    assert parse_enrollment_body({"label": "car 12", "expires_at": NOW + 5}, NOW) == ("car 12", NOW + 5)
    assert parse_enrollment_body({}, NOW) == ("", None)
    # Fields the caller reads itself are allowed through.
    body = {"user_id": "@a:police.example", "label": "x"}
    assert parse_enrollment_body(body, NOW, also=frozenset({"user_id"})) == ("x", None)


@pytest.mark.parametrize(
    ("body", "prefix", "field"),
    [
        ({"label": "x", "colour": "blue"}, "devices[3].", "devices[3].colour"),
        ({"colour": "blue", "bogus": 1}, "", "bogus"),  # the first in sorted order
        ({"label": 5}, "devices[3].", "devices[3].label"),
        ({"expires_at": NOW}, "devices[3].", "devices[3].expires_at"),
        (["label"], "devices[3].", "devices[3]"),
        ("label", "", "body"),
        (None, "", "body"),
    ],
)
def test_parse_enrollment_body_names_the_bad_field(body: Any, prefix: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_enrollment_body(body, NOW, prefix=prefix)
    assert caught.value.field == field


# --- request IDs and addresses ------------------------------------------------------------------


def test_new_request_id_is_readable_over_the_phone() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) > 190  # random, not a counter
    for request_id in ids:
        assert re.fullmatch(r"[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}", request_id), request_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.20.1.2", ipaddress.IPv4Address("10.20.1.2")),
        ("::ffff:10.20.1.2", ipaddress.IPv4Address("10.20.1.2")),
        ("2001:db8::1", ipaddress.IPv6Address("2001:db8::1")),
        ("not-an-ip", None),
        ("", None),
    ],
)
def test_parse_ip_normalises_ipv4_mapped_addresses(
    value: str, expected: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> None:
    assert parse_ip(value) == expected


@pytest.mark.parametrize("ip", ["192.0.2.1", "not-an-ip", ""])
def test_check_login_network_without_networks_allows_any_address(ip: str) -> None:
    assert check_login_network((), ip) is None


@pytest.mark.parametrize("ip", ["10.20.0.1", "10.20.255.254", "::ffff:10.20.3.4", "2001:db8::7"])
def test_check_login_network_allows_addresses_inside(ip: str) -> None:
    assert check_login_network(NETWORKS, ip) is None


@pytest.mark.parametrize("ip", ["10.21.0.1", "192.0.2.1", "::ffff:192.0.2.1", "2001:db9::1", "garbage"])
def test_check_login_network_refuses_and_names_the_address(ip: str) -> None:
    denial = check_login_network(NETWORKS, ip)
    assert denial is not None
    assert denial.rule == "devices.login_network"
    assert f"logins from {ip} are not allowed" in denial.reason


@pytest.mark.parametrize(
    ("user_id", "ip", "approved"),
    [
        ("@d:police.example", "10.20.3.4", True),
        ("@d:police.example", "::ffff:10.20.3.4", True),
        ("@d:police.example", "2001:db8::7", True),
        ("@d:police.example", "10.21.0.1", False),
        ("@d:police.example", "garbage", False),
        ("@other:police.example", "10.20.3.4", False),
    ],
)
def test_auto_approves_listed_users_inside_the_networks(user_id: str, ip: str, approved: bool) -> None:
    assert auto_approves(NETWORKS, {"@d:police.example"}, user_id, ip) is approved
    assert auto_approves((), {"@d:police.example"}, user_id, ip) is False


# --- refusals and enrollment records ------------------------------------------------------------


def test_device_not_enrolled_quotes_the_request_id() -> None:
    named = device_not_enrolled("@a:police.example", "PHONE1", "ABCD-EFGH")
    unnamed = device_not_enrolled("@a:police.example", None, "ABCD-EFGH")
    assert named.rule == unnamed.rule == "devices.not_enrolled"
    for denial in (named, unnamed):
        assert "Login request ABCD-EFGH is waiting for an operator" in denial.reason
        assert "@a:police.example" in denial.reason
    assert "device 'PHONE1' is not enrolled" in named.reason
    assert "did not name an enrolled device" in unnamed.reason
    assert "log in again from the same network" in unnamed.reason
    assert named.reason != unnamed.reason


def test_a_stock_client_login_awaits_approval_in_a_shape_element_shows() -> None:
    """Element Web shows M_RESOURCE_LIMIT_EXCEEDED with a link to admin_contact;
    every other 403 reads "Incorrect username and/or password"."""
    link = "https://matrix.police.example/_synapse/client/police/login-request/abc"
    denial = login_awaits_approval("@a:police.example", "ABCD-EFGH", link)
    plain = device_not_enrolled("@a:police.example", None, "ABCD-EFGH")
    assert (denial.rule, denial.reason, denial.http_status) == (plain.rule, plain.reason, 403)
    assert denial.errcode == "M_RESOURCE_LIMIT_EXCEEDED"
    assert denial.error_fields() == {
        "error": plain.reason,
        "admin_contact": link,
        "limit_type": "police_device_approval",
    }
    assert link not in denial.reason, "the reason is logged; the link is not"


def test_link_tokens() -> None:
    tokens = {new_link_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(is_link_token(token) for token in tokens)
    token = tokens.pop()
    assert link_token_hash(token) == link_token_hash(token) != token
    assert len(link_token_hash(token)) == 64
    for bad in ["", token[:-1], token + "A", token[:-1] + "=", token[:-1] + "/", "ABCD-EFGH", "é" * 43]:
        assert not is_link_token(bad), bad


def pending_login(state: str, device_id: str | None = None, decided_at: int | None = None) -> PendingLogin:
    return PendingLogin(
        "ABCD-EFGH", "@a:police.example", device_id, "10.0.0.1", "x", NOW, NOW, state, None, decided_at
    )


@pytest.mark.parametrize(
    ("pending", "now", "shows"),
    [
        (pending_login(OPEN), NOW + 1, OPEN),
        (pending_login(OPEN), NOW + PENDING_OPEN_LIFETIME_MS - 1, OPEN),
        (pending_login(OPEN), NOW + PENDING_OPEN_LIFETIME_MS, None),  # lapsed, the sweep not yet run
        (pending_login(APPROVED, decided_at=NOW), NOW + 999, APPROVED),
        (pending_login(APPROVED, decided_at=NOW), NOW + 1000, None),  # the approval window has passed
        (pending_login(REJECTED, decided_at=NOW), NOW + 1, None),
        (pending_login(CONSUMED, decided_at=NOW), NOW + 1, None),
        (pending_login(EXPIRED), NOW + 1, None),
        (pending_login(OPEN, "PHONE1"), NOW + 1, None),  # only stock-client requests have a page
    ],
)
def test_what_a_login_link_shows(pending: PendingLogin, now: int, shows: str | None) -> None:
    assert link_shows(pending, now, 1000) == shows


@pytest.mark.parametrize(
    ("newest_first", "enrolled", "known_before", "expected"),
    [
        (["NEW", "OLD"], [], ["OLD"], "NEW"),
        (["ENR", "OLD", "NEW"], ["ENR"], ["OLD"], "NEW"),  # newest that is neither
        (["NEW2", "NEW1"], [], [], "NEW2"),
        (["ENR", "OLD"], ["ENR"], ["OLD"], None),
        ([], [], [], None),
    ],
)
def test_candidate_devices_for_approval(
    newest_first: list[str], enrolled: list[str], known_before: list[str], expected: str | None
) -> None:
    assert candidate_devices_for_approval(newest_first, enrolled, known_before) == expected


@pytest.mark.parametrize(
    ("state", "expires_at", "active"),
    [
        (ENROLLED, None, True),
        (ENROLLED, NOW + 1, True),
        (ENROLLED, NOW, False),
        (ENROLLED, NOW - 1, False),
        (REVOKED, None, False),
        (EXPIRED, NOW + 1, False),
        (APPROVED, None, False),  # not an enrollment state at all
    ],
)
def test_enrollment_is_active(state: str, expires_at: int | None, active: bool) -> None:
    record = Enrollment("@a:police.example", "PHONE1", "", "@admin:police.example", 1, expires_at, state)
    assert record.is_active(NOW) is active


@pytest.mark.parametrize(
    ("state", "expires_at", "rule", "words"),
    [
        ("revoked", None, "devices.revoked", "was revoked"),
        ("expired", 5, "devices.enrollment_expired", "expired"),
        ("enrolled", 5, "devices.enrollment_expired", "expired"),
    ],
)
def test_enrollment_ended_says_why(state: str, expires_at: int | None, rule: str, words: str) -> None:
    record = Enrollment("@a:police.example", "PHONE", "", "@admin:police.example", 1, expires_at, state)
    denial = enrollment_ended(record)
    assert denial.rule == rule
    assert words in denial.reason and "'PHONE'" in denial.reason
