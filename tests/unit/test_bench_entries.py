"""Benchmarks are not run by the tests, so what they hand to the code under
test is checked here: every entry imports, and the bot config the dispatch
bench writes is one the bot accepts."""

from __future__ import annotations

from pathlib import Path

from bench import dispatch_alert
from bench.__main__ import ENTRIES
from bots.dispatch.config import parse_config


def test_every_entry_has_a_runner() -> None:
    names = [entry.name for entry in ENTRIES]
    assert len(names) == len(set(names))
    assert all(callable(entry.run) for entry in ENTRIES)
    assert "dispatch_alert" in names


def test_the_dispatch_bench_writes_a_config_the_bot_accepts(tmp_path: Path) -> None:
    raw = dispatch_alert.write_bot_config(tmp_path, "http://127.0.0.1:1", "bench.test", ["officer-000"])
    config = parse_config(raw, tmp_path)
    assert config.user_id == "@dispatch-bot:bench.test"
