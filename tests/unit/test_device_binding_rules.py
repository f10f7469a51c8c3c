"""The pure rules behind device binding: identity keys that cannot change, the one
request a device nobody enrolled may make, and a decision log a retry loop cannot flood."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_police_policy.decisions import DECISION_LOGGER, DecisionLog, Denial
from synapse_police_policy.devices import rules as enrollment

DEVICE = "PHONE-0815"
keys = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", min_size=1)


def device_keys(ed25519: str, curve25519: str, device_id: str = DEVICE) -> dict:
    return {"keys": {f"ed25519:{device_id}": ed25519, f"curve25519:{device_id}": curve25519}}


@given(keys, keys)
def test_the_same_identity_keys_may_be_uploaded_again(ed25519: str, curve25519: str) -> None:
    stored = enrollment.identity_keys(device_keys(ed25519, curve25519), DEVICE)
    assert stored == {"ed25519": ed25519, "curve25519": curve25519}
    assert enrollment.check_identity_keys("@a:x", DEVICE, stored, dict(stored)) is None


@given(keys, keys, keys, st.sampled_from(["ed25519", "curve25519", "both", "missing"]))
def test_any_change_of_identity_keys_is_refused(
    ed25519: str, curve25519: str, other: str, change: str
) -> None:
    stored = enrollment.identity_keys(device_keys(ed25519, curve25519), DEVICE)
    uploaded = {
        "ed25519": device_keys(other, curve25519),
        "curve25519": device_keys(ed25519, other),
        "both": device_keys(other, other),
        "missing": {"keys": {f"ed25519:{DEVICE}": ed25519}},
    }[change]
    found = enrollment.identity_keys(uploaded, DEVICE)
    denial = enrollment.check_identity_keys("@a:x", DEVICE, stored, found)
    assert (denial is None) == (found == stored)
    if denial is not None:
        assert denial.rule == "devices.identity_keys_changed"
        assert "cannot be replaced" in denial.reason


@given(
    st.one_of(st.none(), st.integers(), st.text(), st.lists(st.text()), st.dictionaries(st.text(), st.text()))
)
def test_malformed_key_objects_give_only_string_identity_keys(keys_field: object) -> None:
    found = enrollment.identity_keys({"keys": keys_field}, DEVICE)
    assert set(found) <= {"ed25519", "curve25519"}
    assert all(isinstance(value, str) for value in found.values())


def test_keys_of_another_device_id_are_not_this_devices() -> None:
    assert enrollment.identity_keys(device_keys("a", "b", "OTHER"), DEVICE) == {}


@pytest.mark.parametrize(
    "path", ["/_matrix/client/v3/logout", "/_matrix/client/r0/logout", "/_matrix/client/v3/logout/all"]
)
def test_logout_is_the_one_request_without_enrollment(path: str) -> None:
    assert enrollment.allowed_without_enrollment(path)


@given(st.text())
def test_nothing_else_is_allowed_without_enrollment(path: str) -> None:
    allowed = path in {
        "/_matrix/client/v3/logout",
        "/_matrix/client/r0/logout",
        "/_matrix/client/v3/logout/all",
        "/_matrix/client/r0/logout/all",
    }
    assert enrollment.allowed_without_enrollment(path) == allowed


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/logout/../sync",
        "/_matrix/client/v3/logoutx",
        "/_matrix/client/v3/logout/all/",
        "/_matrix/client/v3/logout\n",
        "/_matrix/client/v3/sync?/logout",
    ],
)
def test_paths_that_only_look_like_logout(path: str) -> None:
    assert not enrollment.allowed_without_enrollment(path)


def test_a_throttled_denial_is_counted_always_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog("police.example")
    denial = Denial(rule="devices.request_from_unenrolled_device", reason="no")
    with caplog.at_level(logging.INFO, logger=DECISION_LOGGER.name):
        for _ in range(50):
            log.deny(denial, user="@a:police.example", device="D1", throttle=("@a:police.example", "D1"))
        log.deny(denial, user="@b:police.example", device="D2", throttle=("@b:police.example", "D2"))
        log.deny(denial, user="@a:police.example", device="D1")  # unthrottled: always logged
    lines = [json.loads(record.getMessage()) for record in caplog.records]
    assert [(line["user"], line["device"]) for line in lines] == [
        ("@a:police.example", "D1"),
        ("@b:police.example", "D2"),
        ("@a:police.example", "D1"),
    ]
