"""The bots run without Synapse installed: they parse the module's policy and judge
media with its rules, and none of that imports Synapse (or Twisted)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.bots import REPO

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoSynapse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("synapse", "twisted"):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, NoSynapse())
    import bots.auditor.__main__, bots.dispatch.__main__, bots.auditor.cli
    from bots.auditor.media_rules import check_attachment
    from synapse_police_policy.config import ConfigError, parse_config
    policy = parse_config({"media": {"allowed": {"image/png": "10M"}}})
    try:
        parse_config({"media": {"allowed": "all"}})
    except ConfigError as error:
        assert error.msg.startswith("media.allowed:"), error.msg
    else:
        raise AssertionError("a broken media section was accepted")
    verdict = check_attachment(policy.media, b"#!/bin/sh\\nrm -rf /\\n")
    assert verdict.rule is not None, verdict
    print(verdict.detected)
    """
)


def test_the_bots_import_and_judge_media_without_synapse() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "no verdict printed"
