"""The benchmarks' plumbing, without running one (tests/integration/test_bench_smoke.py
runs every entry at smoke size): every entry imports and has a smoke mode,
``python -m bench`` refuses unknown names, and the bot config the dispatch
bench writes is one the bot accepts."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from bench import dispatch_alert
from bench.__main__ import ENTRIES, Entry
from bench.__main__ import main as bench_main
from bots.dispatch.config import parse_config


def test_every_entry_has_a_runner() -> None:
    names = [entry.name for entry in ENTRIES]
    assert len(names) == len(set(names))
    assert all(callable(entry.run) for entry in ENTRIES)
    assert "dispatch_alert" in names


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_every_entry_has_a_smoke_mode(entry: Entry) -> None:
    parameters = list(inspect.signature(entry.run).parameters.values())
    assert (parameters[0].name, parameters[0].default) == ("smoke", False)
    # further parameters (large_room's room sizes) are optional: ``entry.run(smoke)`` is the call
    assert all(p.default is not inspect.Parameter.empty for p in parameters[1:])


def test_unknown_entries_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--smoke", "no_such_bench"]) == 2
    captured = capsys.readouterr()
    assert "unknown benchmark(s): no_such_bench" in captured.err
    assert captured.out == ""


def test_the_dispatch_bench_writes_a_config_the_bot_accepts(tmp_path: Path) -> None:
    raw = dispatch_alert.write_bot_config(tmp_path, "http://127.0.0.1:1", "bench.test", ["officer-000"])
    config = parse_config(raw, tmp_path)
    assert config.user_id == "@dispatch-bot:bench.test"
