"""How long the retention sweep waits before it tries a failed redaction again."""

from __future__ import annotations

import pytest

from synapse_police_policy.retention.sweep import MAX_RETRY_DELAY_S, retry_delay_s

WEEK = 7 * 86_400


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 300), (2, 600), (3, 1200), (4, 2400), (5, 3600), (6, 3600), (400, 3600)]
)
def test_back_off_doubles_from_the_sweep_interval_up_to_an_hour(attempts: int, delay: int) -> None:
    assert retry_delay_s(attempts, 300, WEEK) == delay
    assert MAX_RETRY_DELAY_S == 3600


def test_short_device_lifetimes_cap_the_wait() -> None:
    """An expired event should not wait longer than it was allowed to live."""
    assert [retry_delay_s(attempts, 1, 4) for attempts in range(1, 6)] == [1, 2, 4, 4, 4]


def test_the_wait_is_never_shorter_than_the_sweep_interval() -> None:
    assert retry_delay_s(1, 600, 60) == 600
    assert retry_delay_s(9, 600, 60) == 600
