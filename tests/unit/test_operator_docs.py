"""docs/operator.md lists every key of the module's config, and no key the
module does not know: an operator reads the table, not config.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synapse_police_policy.config import ConfigError, parse_config

OPERATOR_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
SECTIONS = ("rooms", "federation", "retention", "devices", "media", "auditor", "directory")


def known_keys(section: str) -> set[str]:
    """The keys the parser accepts, as its unknown-key error lists them."""
    with pytest.raises(ConfigError) as error:
        parse_config({section: {"no-such-key": 1}})
    listed = error.value.msg.split("expected one of: ", 1)[1]
    return {f"{section}.{key}" for key in listed.split(", ")}


def documented_keys() -> set[str]:
    text = OPERATOR_GUIDE.read_text(encoding="utf8")
    table = text.split("## The module's configuration keys", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, flags=re.M))


def test_every_module_key_is_documented_and_nothing_else() -> None:
    known = set().union(*(known_keys(section) for section in SECTIONS))
    documented = documented_keys()
    assert known - documented == set(), "keys missing from docs/operator.md"
    assert documented - known == set(), "docs/operator.md lists keys the module does not know"


def test_the_sections_are_all_the_top_level_keys() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"no-such-section": {}})
    assert set(error.value.msg.split("expected one of: ", 1)[1].split(", ")) == set(SECTIONS)
