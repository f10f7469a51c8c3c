"""DecisionLog.deny: one JSON line on the decision logger and one counter increment."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from synapse_police_policy.decisions import DecisionLog, Denial

LOGGER = "synapse_police_policy.decisions"
METRIC = "police_policy_denials_total"


def denials(rule: str, server_name: str) -> float:
    value = REGISTRY.get_sample_value(METRIC, {"rule": rule, "server_name": server_name})
    return 0.0 if value is None else value


def decision_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def test_deny_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    denial = Denial("rooms.guest_access", "Guest access 'can_join' is not allowed.")

    DecisionLog("hs-log.test").deny(denial, user="@a:hs-log.test", device="DEV1", room="!r:hs-log.test")

    records = decision_records(caplog)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.INFO
    line = record.getMessage()
    assert "\n" not in line
    assert json.loads(line) == {
        "rule": "rooms.guest_access",
        "decision": "deny",
        "user": "@a:hs-log.test",
        "device": "DEV1",
        "room": "!r:hs-log.test",
        "reason": "Guest access 'can_join' is not allowed.",
    }


def test_deny_without_device_or_room_logs_nulls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    DecisionLog("hs-log.test").deny(Denial("rooms.directory", "No."), user="@b:hs-log.test")

    (record,) = decision_records(caplog)
    entry = json.loads(record.getMessage())
    assert entry["device"] is None
    assert entry["room"] is None
    assert entry["user"] == "@b:hs-log.test"
    assert entry["decision"] == "deny"


def test_reason_with_quotes_and_newlines_stays_one_valid_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    reason = 'Join rule "pub\nlic" is not allowed'

    DecisionLog("hs-log.test").deny(Denial("rooms.join_rules", reason), user="@c:hs-log.test")

    (record,) = decision_records(caplog)
    line = record.getMessage()
    assert "\n" not in line
    assert json.loads(line)["reason"] == reason


def test_deny_increments_the_counter_for_rule_and_server() -> None:
    rule, server = "rooms.counter_test", "hs-counter.test"
    other_server = "hs-counter-other.test"
    before = denials(rule, server)
    before_other = denials(rule, other_server)
    before_other_rule = denials("rooms.counter_other_rule", server)

    log = DecisionLog(server)
    log.deny(Denial(rule, "first"), user="@a:hs-counter.test")
    assert denials(rule, server) == before + 1
    log.deny(Denial(rule, "second"), user="@a:hs-counter.test", room="!r:hs-counter.test")
    assert denials(rule, server) == before + 2

    # other label values are untouched
    assert denials(rule, other_server) == before_other
    assert denials("rooms.counter_other_rule", server) == before_other_rule


def test_counter_is_labelled_with_the_log_s_server_name() -> None:
    rule = "rooms.server_label_test"
    before_a = denials(rule, "hs-a.test")
    before_b = denials(rule, "hs-b.test")

    DecisionLog("hs-b.test").deny(Denial(rule, "r"), user="@u:hs-b.test")

    assert denials(rule, "hs-a.test") == before_a
    assert denials(rule, "hs-b.test") == before_b + 1


def test_rewrite_is_logged_and_counted_apart_from_denials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rule, server = "rooms.guest_access", "hs-rewrite.test"
    rewrites_before = (
        REGISTRY.get_sample_value("police_policy_rewrites_total", {"rule": rule, "server_name": server})
        or 0.0
    )
    denials_before = denials(rule, server)

    DecisionLog(server).rewrite(
        rule, "Guest access 'can_join' ... 'forbidden' instead.", user="@d:hs-rewrite.test", device="D1"
    )

    (record,) = decision_records(caplog)
    assert json.loads(record.getMessage()) == {
        "rule": rule,
        "decision": "rewrite",
        "user": "@d:hs-rewrite.test",
        "device": "D1",
        "room": None,
        "reason": "Guest access 'can_join' ... 'forbidden' instead.",
    }
    assert REGISTRY.get_sample_value(
        "police_policy_rewrites_total", {"rule": rule, "server_name": server}
    ) == (rewrites_before + 1)
    assert denials(rule, server) == denials_before, "a rewrite is not a denial"
