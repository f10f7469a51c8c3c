"""The auditor bot prints times in its configured zone (``timezone``, default Europe/Berlin),
never the host's, and reads the days of ``!search``/``!export`` as days of that zone; the
export's JSON files keep milliseconds since the epoch."""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bots.auditor.archive import Archive, Message
from bots.auditor.config import ConfigError, parse_config
from bots.auditor.consultation_log import ConsultationLog
from bots.auditor.export import ExportRequest, build_export, generate_signing_key
from bots.auditor.replies import HealthStats
from bots.auditor.requests import ExportStore
from bots.auditor.runner import CommandRunner
from bots.common.clock import day_start, moment, zone
from tests.unit.test_auditor_commands import _raw

BERLIN = zone("Europe/Berlin")
DAY_MS = 86_400_000


def ms(text: str) -> int:
    """``text`` an ISO time in UTC, as milliseconds since the epoch."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


#: the bot's "now": 1 July 2025, 10:00 UTC (12:00 CEST)
NOW = ms("2025-07-01T10:00:00")


def message(event_id: str, at: str, body: str) -> Message:
    return Message(
        event_id=event_id,
        room_id="!room:x.test",
        sender="@alice:x.test",
        device_id="DEV",
        origin_server_ts=ms(at),
        body=body,
        msgtype="m.text",
    )


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[CommandRunner]:
    archive = Archive(tmp_path / "archive.sqlite", os.urandom(32), clock=lambda: NOW)
    log = ConsultationLog(tmp_path / "log.sqlite", clock=lambda: NOW)
    # 22:30 UTC on 30 June is 00:30 on 1 July in Berlin
    archive.add(message("$late", "2025-06-30T22:30:00", "heron seen after midnight"))
    archive.add(message("$evening", "2025-06-30T19:00:00", "heron seen in the evening"))
    # spring (summer time since 30 March): 07:02:24 UTC is 09:02:24 CEST
    archive.add(message("$spring", "2025-04-15T07:02:24", "heron in spring"))
    exports = ExportStore(tmp_path / "exports.sqlite")
    runner = CommandRunner(
        archive,
        log,
        frozenset({"@rev:x.test", "@rev2:x.test"}),
        90 * DAY_MS,
        lambda: HealthStats(0, 0, ms("2025-07-01T06:02:24")),
        clock=lambda: NOW,
        exports=exports,
        signing_key=generate_signing_key(tmp_path / "signing.pem"),
        zone=BERLIN,
    )
    yield runner
    archive.close()
    log.close()
    exports.close()


def search(runner: CommandRunner, options: str = "") -> str:
    return runner.handle("@rev:x.test", f'!search heron {options} ref:AZ-1 reason:"r"').body


def test_search_results_show_local_times_with_the_zone(runner: CommandRunner) -> None:
    body = search(runner)
    assert "- 2025-07-01 00:30 CEST @alice:x.test in !room:x.test" in body, body
    assert "- 2025-06-30 21:00 CEST @alice:x.test" in body, body
    assert "UTC" not in body
    formatted = runner.handle("@rev:x.test", '!search heron ref:AZ-1 reason:"r"').formatted_body
    assert "2025-07-01 00:30 CEST" in formatted


def test_days_are_the_zones_days(runner: CommandRunner) -> None:
    """What the auditor reads as 1 July is found as 1 July (in UTC it was still 30 June)."""
    first = search(runner, "from:2025-07-01 to:2025-07-01")
    assert "$late" in first and "$evening" not in first, first
    before = search(runner, "to:2025-06-30")
    assert "$evening" in before and "$late" not in before, before


def test_show_log_health_and_help_in_the_zone(runner: CommandRunner) -> None:
    runner.archive.mark_redacted("$spring", ms("2025-04-15T07:03:25"), "@auditor:x.test")
    shown = runner.handle("@rev:x.test", '!show $spring ref:AZ-1 reason:"r"').body
    # the redaction's time carries its seconds
    assert "2025-04-15 09:02 CEST @alice:x.test: heron in spring" in shown, shown
    assert "redacted by @auditor:x.test at 2025-04-15 09:03:25 CEST" in shown, shown
    log = runner.handle("@rev:x.test", "!log").body
    assert "2025-07-01 12:00 CEST show" in log, log
    health = runner.handle("@rev:x.test", "!health").body
    assert "running since 2025-07-01 08:02 CEST" in health, health
    assert "oldest message: 2025-04-15 09:02 CEST" in health, health
    assert runner.handle("@rev:x.test", "!help").body.endswith("Days and times are in Europe/Berlin.")


def test_winter_times_carry_the_winter_zone() -> None:
    winter = ms("2025-01-15T07:02:24")
    assert moment(winter / 1000, BERLIN) == "2025-01-15 08:02:24 CET"
    assert moment(winter / 1000, BERLIN, seconds=False) == "2025-01-15 08:02 CET"


def test_not_retained_names_the_local_cutoff(runner: CommandRunner) -> None:
    body = search(runner, "to:2025-03-01")
    # 90 days before 1 July 12:00 CEST
    assert "the archive keeps messages since 2025-04-02 12:00 CEST" in body, body


def test_the_hosts_zone_plays_no_part(runner: CommandRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert "- 2025-07-01 00:30 CEST" in search(runner)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_export_covers_the_zones_days_and_its_html_reads_local(runner: CommandRunner) -> None:
    reply = runner.handle(
        "@rev:x.test", '!export !room:x.test 2025-07-01 2025-07-01 ref:AZ-7 reason:"r"', "!dm-rev:x.test"
    )
    request_id = reply.body.split()[2].rstrip(":")
    approved = runner.handle("@rev2:x.test", f"!approve {request_id}", "!dm-rev2:x.test")
    assert approved.delivery is not None, approved.body
    with zipfile.ZipFile(io.BytesIO(approved.delivery.data)) as bundle:
        messages = json.loads(bundle.read("messages.json"))
        manifest = json.loads(bundle.read("manifest.json"))
        page = bundle.read("messages.html").decode()
        entry_time = bundle.getinfo("messages.json").date_time
    # the machine-readable files: milliseconds since the epoch, the local day's bounds
    assert [m["event_id"] for m in messages] == ["$late"]
    assert messages[0]["origin_server_ts"] == ms("2025-06-30T22:30:00")
    assert manifest["request"]["from_ms"] == ms("2025-06-30T22:00:00")
    assert manifest["request"]["to_ms"] == ms("2025-07-01T22:00:00")
    # the page people read: local times, the zone named
    assert "<th>Time (Europe/Berlin)</th>" in page
    assert "<td>2025-07-01 00:30:00 CEST</td>" in page
    assert "<tr><th>From</th><td>2025-07-01 00:00:00 CEST</td></tr>" in page
    assert "<tr><th>To (excluded)</th><td>2025-07-02 00:00:00 CEST</td></tr>" in page
    assert "<tr><th>Times in</th><td>Europe/Berlin</td></tr>" in page
    # no UTC times left (the export's random ID may hold the letters, so whole words and times)
    assert not re.search(r"\bUTC\b|\d:\d\dZ<", page)
    assert entry_time == (2025, 7, 1, 12, 0, 0)  # zip tools show it as local time


def export_record(item: Message) -> dict[str, object]:
    """An archived message as ``build_export`` takes it (no attachments)."""
    return {
        "event_id": item.event_id,
        "room_id": item.room_id,
        "sender": item.sender,
        "device_id": item.device_id,
        "origin_server_ts": item.origin_server_ts,
        "body": item.body,
        "redacted_at": None,
        "attachments": [],
    }


def test_an_export_across_the_dst_change_shows_both_zones(tmp_path: Path) -> None:
    request = ExportRequest(
        request_id="EX-AB12",
        room_id="!room:x.test",
        from_ms=ms("2025-10-25T22:00:00"),
        to_ms=ms("2025-10-26T23:00:00"),
        case_ref="AZ-1",
        reason="r",
        requested_by="@rev:x.test",
        approved_by="@rev2:x.test",
        created_at_ms=ms("2025-10-27T08:00:00"),
    )
    docs = [
        export_record(message("$a", "2025-10-26T00:59:59", "before")),
        export_record(message("$b", "2025-10-26T01:00:00", "after")),
    ]
    key = generate_signing_key(tmp_path / "key.pem")
    with zipfile.ZipFile(io.BytesIO(build_export(docs, request, key, zone=BERLIN))) as bundle:
        page = bundle.read("messages.html").decode()
    # 02:00-03:00 comes twice that night: the zone tells them apart
    assert "<td>2025-10-26 02:59:59 CEST</td>" in page
    assert "<td>2025-10-26 02:00:00 CET</td>" in page
    # without a zone, the page is in UTC (the library's default)
    with zipfile.ZipFile(io.BytesIO(build_export(docs, request, key))) as bundle:
        assert "<td>2025-10-26 00:59:59 UTC</td>" in bundle.read("messages.html").decode()


def test_a_day_starts_where_the_zone_starts_it() -> None:
    assert day_start(date(2025, 7, 1), BERLIN) == ms("2025-06-30T22:00:00") / 1000
    # Chile skips midnight when summer time begins (00:00 -> 01:00 on 8 September 2024)
    santiago = zone("America/Santiago")
    start = day_start(date(2024, 9, 8), santiago)
    assert moment(start, santiago) == "2024-09-08 01:00:00 -03"


def test_the_config_defaults_to_berlin_and_takes_any_iana_zone(tmp_path: Path) -> None:
    assert parse_config(_raw(tmp_path), tmp_path).timezone.key == "Europe/Berlin"
    assert parse_config(_raw(tmp_path, timezone="Europe/Vienna"), tmp_path).timezone.key == "Europe/Vienna"
    assert parse_config(_raw(tmp_path, timezone=" UTC "), tmp_path).timezone.key == "UTC"


@pytest.mark.parametrize("value", ["Mars/Olympus", "", "../etc/passwd", 1])
def test_a_zone_the_system_does_not_know_is_a_config_error(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(_raw(tmp_path, timezone=value), tmp_path)
    assert str(error.value) == f"timezone: expected an IANA time zone such as 'Europe/Berlin', got {value!r}"
