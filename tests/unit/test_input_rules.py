"""The rules every admin API and CLI input goes through (``devices/rules.py``):
whatever comes in, the answer is the value or an ``InvalidInput`` naming the
field, never another exception; what passes fits the database and shows
plainly on a terminal; what is refused is described without being echoed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_police_policy.devices.rules import (
    MAX_TIME_MS,
    MAX_USER_ID_LENGTH,
    InvalidInput,
    parse_enrollment_body,
    parse_whole_number,
    unsafe_character,
    validate_device_id,
    validate_expiry,
    validate_label,
    validate_request_id,
    validate_user_id,
)

SERVER = "police.example"
NOW = 1_700_000_000_000
#: what a terminal must never be handed raw: bidirectional controls, other
#: format characters, line separators and controls
SPOOFING = [
    *"\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c",
    *"\u200b\u200d\ufeff\u00ad\u2028\u2029\x00\x1b\n\r\t\x85\x7f",
]
ANY_TEXT = st.text(st.characters(codec=None))  # lone surrogates too, as JSON can carry them
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=10,
)


def refused(check: Any, *args: Any, **kwargs: Any) -> InvalidInput | None:
    try:
        check(*args, **kwargs)
    except InvalidInput as error:
        message = str(error)
        assert message.startswith(f"{error.field}: "), message
        assert unsafe_character(message) is None, message
        return error
    return None


# --- whole numbers: one contract for text that carries a number ----------------------------------


@given(st.integers(min_value=0, max_value=10**6))
def test_whole_numbers_in_ascii_digits_are_read(value: int) -> None:
    assert parse_whole_number(str(value), "limit", 0, 10**6) == value
    assert parse_whole_number(f"00{value}", "limit", 0, 10**6) == value


@given(ANY_TEXT)
def test_whole_numbers_take_ascii_digits_only(text: str) -> None:
    error = refused(parse_whole_number, text, "from", 0, 2**31)
    if re.fullmatch(r"[0-9]{1,20}", text) and int(text) <= 2**31:
        assert error is None
    else:
        assert error is not None and error.field == "from"
        assert "from 0 to 2147483648 (digits 0-9 only)" in str(error)


@pytest.mark.parametrize(
    "text", ["²", "¹⁰", "١٢", "\uff15", "+5", "-1", " 5", "5\n", "1_0", "1e3", "", "9" * 21]
)
def test_whole_numbers_refuse_what_int_or_isdigit_would_take(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^limit: expected a whole number from 1 to 1000"):
        parse_whole_number(text, "limit", 1, 1000)


# --- times -------------------------------------------------------------------------------------


@given(JSON | st.integers(min_value=-(2**80), max_value=2**80) | st.just(10**4000))
def test_an_expiry_is_in_the_future_and_fits_63_bits(value: Any) -> None:
    error = refused(validate_expiry, value, NOW, "devices[3].expires_at")
    if error is None:
        assert value is None or (isinstance(value, int) and NOW < value <= MAX_TIME_MS < 2**63)
    else:
        assert error.field == "devices[3].expires_at"
        assert len(str(error)) < 400


@pytest.mark.parametrize("value", [10**20, 2**63, MAX_TIME_MS + 1, 1_700_000_000_000_000])
def test_an_expiry_past_the_year_9999_names_the_range(value: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_expiry(value, NOW)
    message = str(caught.value)
    assert f"from now ({NOW}) to {MAX_TIME_MS} (9999-12-31T23:59:59.999Z)" in message
    assert "micro- or nanoseconds" in message


def test_the_latest_expiry_is_taken() -> None:
    assert validate_expiry(MAX_TIME_MS, NOW) == MAX_TIME_MS


# --- labels and IDs ------------------------------------------------------------------------------


@given(JSON)
def test_labels_are_one_line_of_plain_text(value: Any) -> None:
    if refused(validate_label, value) is None:
        label = validate_label(value)
        assert unsafe_character(label) is None
        assert len(label) <= 256


@pytest.mark.parametrize("char", SPOOFING)
def test_labels_refuse_what_reorders_or_hides_text(char: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_label(f"asset {char}4711")
    assert f"U+{ord(char):04X}" in str(caught.value)


@given(JSON)
def test_device_ids_are_printable_without_spaces(value: Any) -> None:
    if refused(validate_device_id, value, "devices[0].device_id") is None:
        assert all(char.isprintable() and not char.isspace() for char in value)
        assert unsafe_character(value) is None


@pytest.mark.parametrize("char", [*SPOOFING, " ", "\u00a0", "\u3000"])
def test_device_ids_refuse_what_reorders_or_hides_text(char: str) -> None:
    with pytest.raises(InvalidInput, match="whitespace or control characters"):
        validate_device_id(f"IPHONE{char}4711")


@given(JSON | st.from_regex(r"@[a-z0-9._=/+-]{1,300}:police\.example", fullmatch=True))
def test_user_ids_are_local_ascii_and_short(value: Any) -> None:
    if refused(validate_user_id, value, SERVER) is None:
        assert value.isascii() and len(value) <= MAX_USER_ID_LENGTH
        assert value.endswith(f":{SERVER}")


@pytest.mark.parametrize("char", SPOOFING)
def test_user_ids_refuse_what_reorders_or_hides_text(char: str) -> None:
    assert refused(validate_user_id, f"@officer{char}:police.example", SERVER) is not None


@given(JSON | st.from_regex(r"[A-Za-z0-9]{4}-[A-Za-z0-9]{4}", fullmatch=True))
def test_request_ids_are_read_over_the_phone(value: Any) -> None:
    if refused(validate_request_id, value) is None:
        normalised = validate_request_id(value)
        assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", normalised)
        assert normalised == value.upper()


@pytest.mark.parametrize("char", SPOOFING)
def test_request_ids_refuse_what_reorders_or_hides_text(char: str) -> None:
    assert refused(validate_request_id, f"K7Q2-M9X{char}") is not None


def test_unsafe_characters_are_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_label("Streife\u202e21")
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE)" in str(caught.value)


def test_spaces_and_letters_of_any_script_are_fine_in_labels() -> None:
    label = "Funkwagen\u00a012 \u2013 \u8b66\u5bdf \u0627\u0644\u0634\u0631\u0637\u0629 e\u0301"
    assert validate_label(label) == label


# --- enrollment bodies ---------------------------------------------------------------------------


@given(JSON)
def test_any_body_is_read_or_refused_by_field(body: Any) -> None:
    error = refused(parse_enrollment_body, body, NOW, prefix="devices[7].")
    if error is None:
        label, expires_at = parse_enrollment_body(body, NOW, prefix="devices[7].")
        assert unsafe_character(label) is None
        assert expires_at is None or NOW < expires_at <= MAX_TIME_MS
    else:
        assert error.field.startswith("devices[7]"), error.field


def test_an_unknown_field_that_cannot_be_shown_is_quoted() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_enrollment_body({"lab\u202eel": "x"}, NOW)
    assert caught.value.field == "'lab\\u202eel'"
