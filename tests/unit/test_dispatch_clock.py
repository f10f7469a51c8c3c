"""Times the dispatch bot prints are in the configured zone, never the host's (issue 15: the
bot's container runs in UTC while Element shows local time)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bots.dispatch.board import BoardData, render
from bots.dispatch.clock import clock, clock_zoned, zone
from bots.dispatch.config import ConfigError, parse_config
from tests.unit.test_dispatch_directory import raw_config

BERLIN = zone("Europe/Berlin")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("utc", "shown"),
    [
        # spring forward (30 March 2025, 01:00 UTC): 02:00-03:00 local does not exist
        ("2025-03-30T00:59:59", "01:59:59 CET"),
        ("2025-03-30T01:00:00", "03:00:00 CEST"),
        # fall back (26 October 2025, 01:00 UTC): 02:00-03:00 local comes twice
        ("2025-10-26T00:59:59", "02:59:59 CEST"),
        ("2025-10-26T01:00:00", "02:00:00 CET"),
        ("2025-07-01T06:02:24", "08:02:24 CEST"),
        ("2025-01-15T07:02:24", "08:02:24 CET"),
    ],
)
def test_times_are_local_to_the_zone_on_both_sides_of_a_dst_change(utc: str, shown: str) -> None:
    assert clock_zoned(at(utc), BERLIN) == shown
    assert clock(at(utc), BERLIN) == shown.split()[0]


def test_the_hosts_zone_plays_no_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert clock_zoned(at("2025-07-01T06:02:24"), BERLIN) == "08:02:24 CEST"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_board_shows_its_times_in_the_zone_and_names_it() -> None:
    plain, _ = render(BoardData([], [], {}, {}, [], zone=BERLIN), at("2025-07-01T06:02:24"))
    assert plain.startswith("Dispatch board - updated 08:02:24 CEST")


def test_the_config_defaults_to_berlin_and_takes_any_iana_zone(tmp_path: Path) -> None:
    (tmp_path / "state.key").write_text(bytes(range(32)).hex())
    assert parse_config(raw_config(), tmp_path).timezone.key == "Europe/Berlin"
    assert parse_config(raw_config(timezone=" Europe/Vienna "), tmp_path).timezone.key == "Europe/Vienna"
    assert parse_config(raw_config(timezone="UTC"), tmp_path).timezone.key == "UTC"


@pytest.mark.parametrize("value", ["Mars/Olympus", "Europe", "", "../etc/passwd", "/etc/localtime", 1])
def test_a_zone_the_system_does_not_know_is_a_config_error(tmp_path: Path, value: object) -> None:
    (tmp_path / "state.key").write_text(bytes(range(32)).hex())
    with pytest.raises(ConfigError) as error:
        parse_config(raw_config(timezone=value), tmp_path)
    assert str(error.value) == f"timezone: expected an IANA time zone such as 'Europe/Berlin', got {value!r}"
