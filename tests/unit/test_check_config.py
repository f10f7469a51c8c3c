"""find_problems: the config devtools writes is consistent; each broken setting
yields exactly its own finding, which names the key and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.homeserver import HomeserverSpec, write_config
from synapse_police_policy.ops.check_config import MODULE_NAME, Finding, find_problems, find_warnings

MODULE_CONFIG: dict[str, Any] = {
    "federation": {"allowed_servers": ["Polizei-BY.example:8448", "other.test"]},
    "retention": {"device_lifetime": "7d", "audit_lifetime": "90d"},
}

Homeserver = dict[str, Any]


def notaries(module_config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What an operator lists as key servers: the allowed peers, keys pinned (made up here)."""
    peers = ((module_config or {}).get("federation") or {}).get("allowed_servers", [])
    return [{"server_name": peer.lower(), "verify_keys": {"ed25519:a_1": "A" * 43}} for peer in peers]


def written_config(directory: Path, module_config: dict[str, Any] | None) -> Homeserver:
    spec = HomeserverSpec(
        directory=directory,
        server_name="hs.test",
        http_port=8008,
        module_config=module_config,
        extra={"trusted_key_servers": notaries(module_config)},
    )
    return yaml.safe_load(write_config(spec).read_text(encoding="utf8"))


@pytest.fixture
def homeserver(tmp_path: Path) -> Homeserver:
    config = written_config(tmp_path, MODULE_CONFIG)
    assert find_problems(config) == []
    return config


@pytest.fixture
def default_policy_homeserver(tmp_path: Path) -> Homeserver:
    config = written_config(tmp_path, {})
    assert find_problems(config) == []
    return config


def keys(findings: list[Finding]) -> list[str]:
    return [finding.key for finding in findings]


def only_finding(homeserver: Homeserver, key: str) -> Finding:
    findings = find_problems(homeserver)
    assert keys(findings) == [key], [str(f) for f in findings]
    return findings[0]


# --- the consistent starting point --------------------------------------------


def test_written_config_is_consistent(homeserver: Homeserver) -> None:
    assert find_problems(homeserver) == []
    assert homeserver["modules"][0]["module"] == MODULE_NAME


@pytest.mark.parametrize(
    "module_config",
    [
        {},
        {"retention": {"device_lifetime": "1d", "audit_lifetime": "30d"}},
        {"retention": {"device_lifetime": "2w", "audit_lifetime": "26w"}},
        {"federation": {"allowed_servers": ["a.example", "b.example:8448"]}},
    ],
)
def test_written_config_is_consistent_for_other_policies(
    tmp_path: Path, module_config: dict[str, Any]
) -> None:
    assert find_problems(written_config(tmp_path, module_config)) == []


def test_finding_text_has_key_problem_and_fix() -> None:
    finding = Finding("some_key", "it is wrong", "set some_key: right")
    assert str(finding) == "some_key: it is wrong. Fix: set some_key: right"


# --- module --------------------------------------------------------------------


def test_module_missing(default_policy_homeserver: Homeserver) -> None:
    default_policy_homeserver["modules"] = []
    finding = only_finding(default_policy_homeserver, "modules")
    assert MODULE_NAME in finding.problem
    assert f"- module: {MODULE_NAME}" in finding.fix


def test_modules_key_absent(default_policy_homeserver: Homeserver) -> None:
    del default_policy_homeserver["modules"]
    only_finding(default_policy_homeserver, "modules")


def test_module_found_among_other_modules(homeserver: Homeserver) -> None:
    homeserver["modules"].insert(0, {"module": "other.Module", "config": {}})
    assert find_problems(homeserver) == []


def test_module_config_invalid(default_policy_homeserver: Homeserver) -> None:
    default_policy_homeserver["modules"].insert(0, {"module": "other.Module", "config": {}})
    default_policy_homeserver["modules"][1]["config"] = {"retention": {"device_lifetime": "seven days"}}
    finding = only_finding(default_policy_homeserver, "modules[1].config")
    assert finding.problem.startswith("retention.device_lifetime: expected a duration")
    assert "'seven days'" in finding.problem
    assert "correct the module config" in finding.fix


# --- federation ----------------------------------------------------------------

WANTED_WHITELIST = "[hs.test, other.test, polizei-by.example:8448]"


def test_federation_whitelist_missing(homeserver: Homeserver) -> None:
    del homeserver["federation_domain_whitelist"]
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "only the module keeps other servers out" in finding.problem
    assert "defence in depth" in finding.problem
    assert f"set it to {WANTED_WHITELIST}" in finding.fix


def test_federation_whitelist_missing_own_server(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"].remove("hs.test")
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "missing hs.test" in finding.problem
    assert "does not allow" not in finding.problem
    assert finding.fix == f"set it to {WANTED_WHITELIST}"


def test_federation_whitelist_extra_server(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"].append("matrix.org")
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "lists servers the policy does not allow: matrix.org" in finding.problem
    assert "missing" not in finding.problem
    assert finding.fix == f"set it to {WANTED_WHITELIST}"


def test_federation_whitelist_missing_allowed_server(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"] = ["hs.test", "other.test"]
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "missing polizei-by.example:8448" in finding.problem
    assert "defence in depth" in finding.problem
    assert finding.fix == f"set it to {WANTED_WHITELIST}"


def test_federation_whitelist_missing_and_extra(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"] = ["hs.test", "other.test", "evil.example"]
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "missing polizei-by.example:8448" in finding.problem
    assert "does not allow: evil.example" in finding.problem


def test_federation_whitelist_compares_normalised_names(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"] = ["HS.test", "Other.Test", "polizei-by.EXAMPLE:8448"]
    assert find_problems(homeserver) == []


def test_federation_whitelist_port_matters(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"] = ["hs.test", "other.test", "polizei-by.example"]
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "missing polizei-by.example:8448" in finding.problem
    assert "does not allow: polizei-by.example" in finding.problem


def test_federation_whitelist_entry_not_a_server_name(homeserver: Homeserver) -> None:
    homeserver["federation_domain_whitelist"].append("not a server!")
    finding = only_finding(homeserver, "federation_domain_whitelist")
    assert "'not a server!' is not a server name" in finding.problem
    assert finding.fix == f"set it to {WANTED_WHITELIST}"


def test_invalid_own_server_name(homeserver: Homeserver) -> None:
    homeserver["server_name"] = "not a server!"
    finding = only_finding(homeserver, "server_name")
    assert "'not a server!'" in finding.problem


# --- simple settings -------------------------------------------------------------


def test_trusted_key_servers_missing(homeserver: Homeserver) -> None:
    del homeserver["trusted_key_servers"]
    finding = only_finding(homeserver, "trusted_key_servers")
    assert "matrix.org" in finding.problem
    assert finding.fix == "list allowed peers (other.test, polizei-by.example:8448) with their verify_keys"


def test_trusted_key_servers_outside_the_network(homeserver: Homeserver) -> None:
    homeserver["trusted_key_servers"].append({"server_name": "matrix.org", "verify_keys": {"ed25519:x": "C"}})
    finding = only_finding(homeserver, "trusted_key_servers[2]")
    assert "matrix.org is a key server outside the closed police network" in finding.problem


def test_trusted_key_servers_empty_with_peers(homeserver: Homeserver) -> None:
    """Behind the whitelist, nobody could vouch for a foreign member's join."""
    homeserver["trusted_key_servers"] = []
    finding = only_finding(homeserver, "trusted_key_servers")
    assert "cannot verify" in finding.problem
    assert "with their verify_keys" in finding.fix


def test_trusted_key_servers_empty_without_peers(default_policy_homeserver: Homeserver) -> None:
    assert default_policy_homeserver["trusted_key_servers"] == []
    assert find_problems(default_policy_homeserver) == []


def test_a_peer_without_pinned_keys(homeserver: Homeserver) -> None:
    del homeserver["trusted_key_servers"][1]["verify_keys"]
    finding = only_finding(homeserver, "trusted_key_servers[1]")
    assert "other.test's answers are accepted without checking its signing key" in finding.problem
    assert "verify_keys" in finding.fix


def test_a_key_server_entry_without_a_name(homeserver: Homeserver) -> None:
    homeserver["trusted_key_servers"].append({"verify_keys": {}})
    finding = only_finding(homeserver, "trusted_key_servers[2]")
    assert "names no valid server_name" in finding.problem


def test_open_registration_without_token(homeserver: Homeserver) -> None:
    homeserver["enable_registration"] = True
    finding = only_finding(homeserver, "enable_registration")
    assert "enable_registration: false" in finding.fix
    assert "registration_requires_token: true" in finding.fix


def test_registration_with_token_is_fine(homeserver: Homeserver) -> None:
    homeserver["enable_registration"] = True
    homeserver["registration_requires_token"] = True
    assert find_problems(homeserver) == []


def test_url_preview_enabled(homeserver: Homeserver) -> None:
    homeserver["url_preview_enabled"] = True
    finding = only_finding(homeserver, "url_preview_enabled")
    assert finding.fix == "set url_preview_enabled: false"


def test_public_rooms_over_federation(homeserver: Homeserver) -> None:
    homeserver["allow_public_rooms_over_federation"] = True
    finding = only_finding(homeserver, "allow_public_rooms_over_federation")
    assert finding.fix == "set allow_public_rooms_over_federation: false"


@pytest.mark.parametrize("value", ["invite", "off", None])
def test_encryption_by_default_not_all(homeserver: Homeserver, value: Any) -> None:
    homeserver["encryption_enabled_by_default_for_room_type"] = value
    finding = only_finding(homeserver, "encryption_enabled_by_default_for_room_type")
    assert repr(value) in finding.problem
    assert finding.fix == "set encryption_enabled_by_default_for_room_type: all"


def test_encryption_by_default_missing(homeserver: Homeserver) -> None:
    del homeserver["encryption_enabled_by_default_for_room_type"]
    finding = only_finding(homeserver, "encryption_enabled_by_default_for_room_type")
    assert finding.fix == "set encryption_enabled_by_default_for_room_type: all"


# --- retention -------------------------------------------------------------------


@pytest.mark.parametrize(
    "breakage",
    [
        lambda hs: hs["retention"].update(enabled=False),
        lambda hs: hs["retention"].pop("enabled"),
        lambda hs: hs.pop("retention"),
        lambda hs: hs.update(retention=None),
    ],
    ids=["enabled-false", "enabled-missing", "section-missing", "section-null"],
)
def test_retention_disabled(homeserver: Homeserver, breakage: Callable[[Homeserver], Any]) -> None:
    breakage(homeserver)
    finding = only_finding(homeserver, "retention.enabled")
    assert "never purged" in finding.problem
    assert finding.fix == (
        "set retention.enabled: true with allowed_lifetime_min and allowed_lifetime_max: 90d"
    )


def test_allowed_lifetime_min_missing_purges_before_audit(homeserver: Homeserver) -> None:
    del homeserver["retention"]["allowed_lifetime_min"]
    finding = only_finding(homeserver, "retention.allowed_lifetime_min")
    assert "purged before the audit tier ends (90d)" in finding.problem
    assert finding.fix == "set retention.allowed_lifetime_min: 90d"


@pytest.mark.parametrize("bound", ["allowed_lifetime_min", "allowed_lifetime_max"])
def test_bound_below_audit(homeserver: Homeserver, bound: str) -> None:
    homeserver["retention"][bound] = "30d"
    finding = only_finding(homeserver, f"retention.{bound}")
    assert "30d lets history be purged before the audit tier (90d) ends" in finding.problem
    assert finding.fix == f"set retention.{bound}: 90d"


def test_allowed_lifetime_min_beyond_audit_names_min(homeserver: Homeserver) -> None:
    homeserver["retention"]["allowed_lifetime_min"] = "120d"
    homeserver["retention"]["allowed_lifetime_max"] = "120d"
    findings = find_problems(homeserver)
    assert {f.key for f in findings} == {"retention.allowed_lifetime_min", "retention.allowed_lifetime_max"}
    for finding in findings:
        assert "120d lets history be kept beyond the audit tier (90d)" in finding.problem
        assert finding.fix.endswith(": 90d")


@pytest.mark.parametrize("maximum", ["365d", None], ids=["max-365d", "max-absent"])
def test_allowed_lifetime_max_beyond_audit(homeserver: Homeserver, maximum: str | None) -> None:
    if maximum is None:
        del homeserver["retention"]["allowed_lifetime_max"]
    else:
        homeserver["retention"]["allowed_lifetime_max"] = maximum
    finding = only_finding(homeserver, "retention.allowed_lifetime_max")
    assert "beyond the audit tier" in finding.problem
    assert finding.fix == "set retention.allowed_lifetime_max: 90d"


@pytest.mark.parametrize(
    "breakage",
    [
        lambda hs: hs["retention"]["default_policy"].pop("max_lifetime"),
        lambda hs: hs["retention"].pop("default_policy"),
        lambda hs: hs["retention"]["default_policy"].update(max_lifetime=None),
    ],
    ids=["max-lifetime-missing", "default-policy-missing", "max-lifetime-null"],
)
def test_default_policy_max_lifetime_missing(
    homeserver: Homeserver, breakage: Callable[[Homeserver], Any]
) -> None:
    breakage(homeserver)
    finding = only_finding(homeserver, "retention.default_policy.max_lifetime")
    assert "never purged" in finding.problem
    assert finding.fix == "set retention.default_policy.max_lifetime: 90d"


@pytest.mark.parametrize(
    "jobs",
    [
        [{"interval": "1h", "shortest_max_lifetime": "30d"}],
        [{"interval": "1h", "shortest_max_lifetime": "7d"}],  # lower bound is exclusive
        [{"interval": "1h", "longest_max_lifetime": "6d"}],
        [{"interval": "1h", "shortest_max_lifetime": "1d", "longest_max_lifetime": "6d"}],
        [
            {"interval": "1h", "longest_max_lifetime": "1d"},
            {"interval": "1d", "shortest_max_lifetime": "8d"},
        ],
        ["not a job"],
    ],
)
def test_purge_jobs_not_covering_device_tier(homeserver: Homeserver, jobs: list[Any]) -> None:
    homeserver["retention"]["purge_jobs"] = jobs
    finding = only_finding(homeserver, "retention.purge_jobs")
    assert "device tier (7d)" in finding.problem
    assert "add a purge job without shortest_max_lifetime/longest_max_lifetime" in finding.fix


@pytest.mark.parametrize(
    "jobs",
    [
        None,
        [],
        [{"interval": "1h"}],
        [{"interval": "1h", "shortest_max_lifetime": "6d", "longest_max_lifetime": "7d"}],  # upper inclusive
        [{"interval": "1h", "longest_max_lifetime": "7d"}],
        [
            {"interval": "1h", "shortest_max_lifetime": "30d"},
            {"interval": "5m", "longest_max_lifetime": "30d"},
        ],
    ],
)
def test_purge_jobs_covering_device_tier(homeserver: Homeserver, jobs: list[Any] | None) -> None:
    homeserver["retention"]["purge_jobs"] = jobs
    assert find_problems(homeserver) == []


def test_purge_jobs_follow_the_policy_s_device_tier(tmp_path: Path) -> None:
    config = written_config(tmp_path, {"retention": {"device_lifetime": "1d", "audit_lifetime": "30d"}})
    config["retention"]["purge_jobs"] = [{"interval": "1h", "shortest_max_lifetime": "2d"}]
    finding = only_finding(config, "retention.purge_jobs")
    assert "device tier (1d)" in finding.problem


# --- redaction_retention_period --------------------------------------------------


def test_redaction_retention_period_absent_uses_synapse_default(homeserver: Homeserver) -> None:
    del homeserver["redaction_retention_period"]
    finding = only_finding(homeserver, "redaction_retention_period")
    assert "7d drops redacted originals before the audit tier (90d) ends" in finding.problem
    assert finding.fix == "set redaction_retention_period: 90d"


def test_redaction_retention_period_shorter(homeserver: Homeserver) -> None:
    homeserver["redaction_retention_period"] = "30d"
    finding = only_finding(homeserver, "redaction_retention_period")
    assert "30d drops redacted originals before the audit tier (90d) ends" in finding.problem
    assert finding.fix == "set redaction_retention_period: 90d"


@pytest.mark.parametrize(("value", "shown"), [("365d", "365d"), ("1y", "365d"), ("91d", "91d")])
def test_redaction_retention_period_longer(homeserver: Homeserver, value: str, shown: str) -> None:
    homeserver["redaction_retention_period"] = value
    finding = only_finding(homeserver, "redaction_retention_period")
    assert f"{shown} keeps redacted originals beyond the audit tier (90d)" in finding.problem
    assert finding.fix == "set redaction_retention_period: 90d"


def test_redaction_retention_period_null(homeserver: Homeserver) -> None:
    homeserver["redaction_retention_period"] = None
    finding = only_finding(homeserver, "redaction_retention_period")
    assert "forever" in finding.problem
    assert finding.fix == "set redaction_retention_period: 90d"


@pytest.mark.parametrize("value", ["90d", "129600m", 90 * 86400 * 1000, "7776000s"])
def test_redaction_retention_period_equal_to_audit_in_any_spelling(
    homeserver: Homeserver, value: Any
) -> None:
    homeserver["redaction_retention_period"] = value
    assert find_problems(homeserver) == []


def test_redaction_retention_period_follows_the_policy_s_audit_tier(tmp_path: Path) -> None:
    config = written_config(tmp_path, {"retention": {"device_lifetime": "1d", "audit_lifetime": "30d"}})
    config["redaction_retention_period"] = "90d"
    finding = only_finding(config, "redaction_retention_period")
    assert "beyond the audit tier (30d)" in finding.problem
    assert finding.fix == "set redaction_retention_period: 30d"


# --- values that are not durations ----------------------------------------------


@pytest.mark.parametrize("value", ["ninety days", "soon", "1.5d", True, [90]])
def test_redaction_retention_period_not_a_duration(homeserver: Homeserver, value: Any) -> None:
    homeserver["redaction_retention_period"] = value
    finding = only_finding(homeserver, "redaction_retention_period")
    assert finding.problem == f"{value!r} is not a duration"
    assert finding.fix == "use a duration such as '90d'"


def test_allowed_lifetime_min_not_a_duration(homeserver: Homeserver) -> None:
    homeserver["retention"]["allowed_lifetime_min"] = "ninety days"
    finding = only_finding(homeserver, "retention.allowed_lifetime_min")
    assert finding.problem == "'ninety days' is not a duration"


def test_allowed_lifetime_max_not_a_duration(homeserver: Homeserver) -> None:
    homeserver["retention"]["allowed_lifetime_max"] = {"days": 90}
    finding = only_finding(homeserver, "retention.allowed_lifetime_max")
    assert finding.problem == "{'days': 90} is not a duration"


def test_purge_job_bound_not_a_duration(homeserver: Homeserver) -> None:
    homeserver["retention"]["purge_jobs"] = [{"interval": "1h", "shortest_max_lifetime": "a while"}]
    finding = only_finding(homeserver, "retention.purge_jobs[0].shortest_max_lifetime")
    assert finding.problem == "'a while' is not a duration"


@pytest.mark.parametrize(
    "breakage",
    [
        lambda hs: hs.update(redaction_retention_period=""),
        lambda hs: hs["retention"].update(allowed_lifetime_min=""),
    ],
    ids=["redaction_retention_period", "allowed_lifetime_min"],
)
def test_empty_string_is_not_a_duration(
    homeserver: Homeserver, breakage: Callable[[Homeserver], Any]
) -> None:
    breakage(homeserver)
    findings = find_problems(homeserver)
    assert any(finding.problem == "'' is not a duration" for finding in findings)


# --- max_upload_size ---------------------------------------------------------------

MiB = 1024**2
#: a policy whose largest file is 20M, below Synapse's default of 50M
SMALL_MEDIA = {"media": {"allowed": {"image/jpeg": "10M"}, "encrypted_max_size": "20M"}}
#: a policy whose largest file is a 2G video
LARGE_MEDIA = {"media": {"allowed": {"video/mp4": "2G"}, "encrypted_max_size": "100M"}}


def test_written_config_admits_the_largest_allowed_file(homeserver: Homeserver) -> None:
    assert homeserver["max_upload_size"] == "500M"


@pytest.mark.parametrize("value", ["100M", "499M", 500 * MiB - 1, "511999K", "50M"])
def test_max_upload_size_below_the_largest_allowed_file(homeserver: Homeserver, value: Any) -> None:
    homeserver["max_upload_size"] = value
    finding = only_finding(homeserver, "max_upload_size")
    assert finding.problem == (
        f"{value} (Synapse's limit) is below the largest file the media policy allows (500M), "
        "so such uploads fail with Synapse's generic error"
    )
    assert finding.fix == "set it to 500M"


def test_max_upload_size_unset_means_synapse_s_default_50m(default_policy_homeserver: Homeserver) -> None:
    del default_policy_homeserver["max_upload_size"]
    finding = only_finding(default_policy_homeserver, "max_upload_size")
    assert finding.problem.startswith("50M (Synapse's limit) is below the largest file")
    assert "(500M)" in finding.problem
    assert finding.fix == "set it to 500M"


@pytest.mark.parametrize("value", ["500M", 500 * MiB, "512000K", "1G", "1T", str(500 * MiB)])
def test_max_upload_size_sufficient(homeserver: Homeserver, value: Any) -> None:
    homeserver["max_upload_size"] = value
    assert find_problems(homeserver) == []


def test_max_upload_size_follows_a_small_media_policy(tmp_path: Path) -> None:
    config = written_config(tmp_path, SMALL_MEDIA)
    assert config["max_upload_size"] == "20M"
    assert find_problems(config) == []
    del config["max_upload_size"]  # Synapse's 50M admits 20M
    assert find_problems(config) == []
    config["max_upload_size"] = "19M"
    finding = only_finding(config, "max_upload_size")
    assert "allows (20M)" in finding.problem
    assert finding.fix == "set it to 20M"


def test_max_upload_size_follows_a_large_allowed_type(tmp_path: Path) -> None:
    config = written_config(tmp_path, LARGE_MEDIA)
    assert find_problems(config) == []
    config["max_upload_size"] = "1G"
    finding = only_finding(config, "max_upload_size")
    assert "allows (2048M)" in finding.problem
    assert finding.fix == "set it to 2048M"


def test_max_upload_size_with_an_invalid_module_config_uses_the_default_policy(
    default_policy_homeserver: Homeserver,
) -> None:
    default_policy_homeserver["modules"][0]["config"] = {"media": {"allowed": {"text/html": "1M"}}}
    default_policy_homeserver["max_upload_size"] = "20M"
    findings = find_problems(default_policy_homeserver)
    assert keys(findings) == ["modules[0].config", "max_upload_size"]
    assert findings[0].problem.startswith("media.allowed.text/html: unknown MIME type")
    assert findings[1].fix == "set it to 500M"


@pytest.mark.parametrize("value", ["big", "1.5M", "500m", "500 MB", "M", None, True, [500], {"M": 500}])
def test_max_upload_size_not_a_size(homeserver: Homeserver, value: Any) -> None:
    homeserver["max_upload_size"] = value
    finding = only_finding(homeserver, "max_upload_size")
    assert finding.problem == f"{value!r} is not a size"
    assert finding.fix == "set it to 500M"


def test_max_upload_size_empty_string_is_not_a_size(homeserver: Homeserver) -> None:
    homeserver["max_upload_size"] = ""
    finding = only_finding(homeserver, "max_upload_size")
    assert finding.problem == "'' is not a size"


def test_max_upload_size_fix_admits_a_largest_size_that_is_not_whole_mebibytes(tmp_path: Path) -> None:
    config = written_config(
        tmp_path, {"media": {"allowed": {"image/jpeg": "1M"}, "encrypted_max_size": "1500K"}}
    )
    config["max_upload_size"] = "1K"
    finding = only_finding(config, "max_upload_size")
    config["max_upload_size"] = finding.fix.removeprefix("set it to ")
    assert find_problems(config) == []


# --- x_forwarded and the address-based login rules (warnings) --------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def with_networks(homeserver: Homeserver, **devices: Any) -> Homeserver:
    homeserver["modules"][0]["config"]["devices"] = devices
    return homeserver


def test_no_warning_for_the_written_config(homeserver: Homeserver) -> None:
    assert find_warnings(homeserver) == []


def test_x_forwarded_with_login_networks_warns_and_points_to_the_guide(homeserver: Homeserver) -> None:
    with_networks(homeserver, login_networks=["10.99.0.0/16"])
    homeserver["listeners"][0]["x_forwarded"] = True

    [warning] = find_warnings(homeserver)

    assert warning.key == "listeners[0].x_forwarded"
    assert "modules[0].config.devices.login_networks is set" in warning.problem
    assert "left-most X-Forwarded-For entry" in warning.problem
    assert "$proxy_add_x_forwarded_for" in warning.problem
    assert "proxy_set_header X-Forwarded-For $remote_addr" in warning.fix
    assert 'docs/operator.md, "The reverse proxy: which address Synapse sees"' in warning.fix
    # right with the right proxy in front: a warning, not a contradiction
    assert find_problems(homeserver) == []


def test_the_guide_has_the_section_the_warning_names() -> None:
    guide = (REPO_ROOT / "docs" / "operator.md").read_text()
    assert "\n## The reverse proxy: which address Synapse sees\n" in guide


def test_x_forwarded_alone_or_login_networks_alone_is_quiet(homeserver: Homeserver) -> None:
    homeserver["listeners"][0]["x_forwarded"] = True
    assert find_warnings(homeserver) == []
    homeserver["listeners"][0]["x_forwarded"] = False
    with_networks(homeserver, login_networks=["10.99.0.0/16"])
    assert find_warnings(homeserver) == []
    del homeserver["listeners"][0]["x_forwarded"]
    assert find_warnings(homeserver) == []


def test_auto_approve_networks_warns_too(homeserver: Homeserver) -> None:
    """An address in auto_approve_networks enrolls a new device on the password alone."""
    with_networks(
        homeserver, auto_approve_networks=["10.30.0.0/24"], auto_approve_users=["@leitstelle:hs.test"]
    )
    homeserver["listeners"][0]["x_forwarded"] = True
    [warning] = find_warnings(homeserver)
    assert "modules[0].config.devices.auto_approve_networks is set" in warning.problem


def test_each_forwarded_listener_is_named(homeserver: Homeserver) -> None:
    """The module's index and the listener's: the key paths the operator edits."""
    homeserver["modules"].insert(0, {"module": "other.Module", "config": {}})
    homeserver["modules"][1]["config"]["devices"] = {"login_networks": ["10.99.0.0/16"]}
    homeserver["listeners"].append({"port": 8009, "type": "http", "x_forwarded": True})
    # a worker's file, as a worker reads it
    homeserver["worker_listeners"] = [{"port": 8010, "type": "http", "x_forwarded": True}]
    warnings = find_warnings(homeserver)
    assert keys(warnings) == ["listeners[1].x_forwarded", "worker_listeners[0].x_forwarded"]
    assert all("modules[1].config.devices.login_networks" in w.problem for w in warnings)


def test_no_warning_without_the_module_or_with_its_config_broken(homeserver: Homeserver) -> None:
    homeserver["listeners"][0]["x_forwarded"] = True
    with_networks(homeserver, login_networks=["10.99.0.0/16"], sweep_interval="often")
    assert find_warnings(homeserver) == []  # find_problems names the broken config
    assert "modules[0].config" in keys(find_problems(homeserver))
    homeserver["modules"] = []
    assert find_warnings(homeserver) == []
