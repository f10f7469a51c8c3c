"""The module's config as Synapse loads it: a bad value stops a real Synapse
at start-up with the full key path; the config `make run` writes passes
`police-policy check-config`."""

from __future__ import annotations

import subprocess
import sys

import attrs
import pytest

from devtools.homeserver import Homeserver, HomeserverSpec, SynapseError, free_port, write_config
from devtools.run import dev_spec


@pytest.mark.parametrize(
    ("module_config", "expected"),
    [
        (
            {"retention": {"device_lifetime": "seven days"}},
            "retention.device_lifetime: expected a duration such as '7d'",
        ),
        ({"rooms": {"allowed_join_rules": ["public"]}}, "rooms.allowed_join_rules[0]: expected one of"),
        ({"rooms": {"colour": "blue"}}, "rooms.colour: unknown key"),
    ],
    ids=["bad_duration", "public_join_rule", "unknown_key"],
)
def test_synapse_refuses_to_start_with_a_bad_module_config(tmp_path, module_config, expected):
    spec = HomeserverSpec(
        directory=tmp_path, server_name="bad.test", http_port=free_port(), module_config=module_config
    )
    homeserver = Homeserver(spec)
    with pytest.raises(SynapseError, match="exited with code"):
        homeserver.start(timeout=60)
    output = (tmp_path / "stdout.log").read_text()
    assert expected in output
    assert "modules" in output


def test_the_make_run_config_passes_check_config(tmp_path):
    config = write_config(attrs.evolve(dev_spec(), directory=tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "synapse_police_policy.ops.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "consistent with the police policy" in result.stdout
