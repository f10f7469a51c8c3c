"""parse_config: defaults, the commented default file, and every error path.

Each error must be a ConfigError whose message starts with the full
key path, says what was expected and shows what was found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_police_policy.config import (
    DEFAULT_ALLOWED_MEDIA,
    KNOWN_HISTORY_VISIBILITY,
    KNOWN_JOIN_RULES,
    KNOWN_MEDIA_TYPES,
    ConfigError,
    MediaConfig,
    PolicyConfig,
    parse_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY_FILE = REPO_ROOT / "config" / "police_policy.yaml"

SECTIONS = ("rooms", "federation", "retention", "devices", "media", "auditor", "directory")
DURATION_EXPECTED = "expected a duration such as '7d' (units s, m, h, d, w)"
SERVER_EXPECTED = "expected a Matrix server name such as 'polizei-by.example' or 'hs.example:8448'"


def config_error(raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.msg


# --- defaults ---------------------------------------------------------------


@pytest.mark.parametrize("raw", [{}, None], ids=["empty-mapping", "null"])
def test_defaults(raw: Any) -> None:
    config = parse_config(raw)

    assert config.retention.device_lifetime == 604800  # 7d
    assert config.retention.audit_lifetime == 7776000  # 90d
    assert config.rooms.allowed_join_rules == frozenset({"invite"})
    assert config.rooms.default_history_visibility == "shared"
    assert config.rooms.refuse_unencrypted_messages is True
    assert config.rooms.clear_event_types == frozenset({"m.reaction"})
    assert {"m.room.name", "m.room.topic", "m.room.pinned_events"} <= config.rooms.clear_state_types
    assert config.federation.allowed_servers == frozenset()
    assert config == PolicyConfig()


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("value", [{}, None], ids=["empty-mapping", "null"])
def test_empty_sections_mean_defaults(section: str, value: Any) -> None:
    assert parse_config({section: value}) == PolicyConfig()


def test_commented_default_policy_file_parses_to_the_defaults() -> None:
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text(encoding="utf8"))

    # every section is spelled out in the file, so it documents all of them
    assert set(raw) == set(SECTIONS)
    assert parse_config(raw) == PolicyConfig()


def test_config_is_frozen() -> None:
    config = parse_config({})
    with pytest.raises(AttributeError):
        config.retention.device_lifetime = 1  # type: ignore[misc]


# --- accepted values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("2w", 1209600), ("13w", 13 * 604800)],
)
def test_durations_in_every_unit(text: str, seconds: int) -> None:
    config = parse_config({"retention": {"device_lifetime": text, "audit_lifetime": "13w"}})
    assert config.retention.device_lifetime == seconds


def test_device_lifetime_may_equal_audit_lifetime() -> None:
    config = parse_config({"retention": {"device_lifetime": "30d", "audit_lifetime": "30d"}})
    assert config.retention.device_lifetime == config.retention.audit_lifetime == 30 * 86400


def test_rooms_section_values() -> None:
    config = parse_config(
        {
            "rooms": {
                "allowed_join_rules": ["invite", "knock", "restricted", "knock_restricted"],
                "default_history_visibility": "joined",
                "refuse_unencrypted_messages": False,
            }
        }
    )
    assert config.rooms.allowed_join_rules == frozenset({"invite", "knock", "restricted", "knock_restricted"})
    assert config.rooms.default_history_visibility == "joined"
    assert config.rooms.refuse_unencrypted_messages is False


def test_clear_type_lists_replace_the_defaults() -> None:
    config = parse_config(
        {
            "rooms": {
                "clear_event_types": [],
                "clear_state_types": ["m.room.name", "im.vector.modular.widgets"],
            }
        }
    )
    assert config.rooms.clear_event_types == frozenset()
    assert config.rooms.clear_state_types == frozenset({"m.room.name", "im.vector.modular.widgets"})


@pytest.mark.parametrize("key", ["clear_event_types", "clear_state_types"])
@pytest.mark.parametrize("value", ["", " m.reaction", 5, None, "x" * 256])
def test_clear_type_entries_must_be_event_types(key: str, value: Any) -> None:
    msg = config_error({"rooms": {key: ["m.reaction", value]}})
    assert msg == f"rooms.{key}[1]: expected an event type such as 'm.room.topic', got {value!r}"


@pytest.mark.parametrize("visibility", sorted(KNOWN_HISTORY_VISIBILITY))
def test_every_member_only_history_visibility_is_accepted(visibility: str) -> None:
    config = parse_config({"rooms": {"default_history_visibility": visibility}})
    assert config.rooms.default_history_visibility == visibility


def test_server_names_are_normalised() -> None:
    config = parse_config(
        {"federation": {"allowed_servers": ["Polizei-BY.example:8448", "POLIZEI-NRW.example", "[::1]:8448"]}}
    )
    assert config.federation.allowed_servers == frozenset(
        {"polizei-by.example:8448", "polizei-nrw.example", "[::1]:8448"}
    )


# --- unknown keys ------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    msg = config_error({"room": {}})
    assert msg.startswith("room: unknown key")
    for section in SECTIONS:
        assert section in msg  # lists what is expected


@pytest.mark.parametrize(
    ("section", "known"),
    [
        (
            "rooms",
            [
                "allowed_join_rules",
                "clear_event_types",
                "clear_state_types",
                "default_history_visibility",
                "refuse_unencrypted_messages",
            ],
        ),
        ("federation", ["allowed_servers"]),
        ("retention", ["audit_lifetime", "device_lifetime", "sweep_interval", "system_user"]),
        (
            "devices",
            [
                "approval_window",
                "auto_approve_networks",
                "auto_approve_users",
                "enrollment_required",
                "login_networks",
                "sweep_interval",
            ],
        ),
        (
            "media",
            [
                "allowed",
                "daily_upload_quota",
                "encrypted_max_size",
                "refuse_pdf_active_content",
                "refuse_trailing_data",
            ],
        ),
        ("auditor", ["user_id", "user_ids"]),
        ("directory", ["hidden_users"]),
    ],
)
def test_unknown_key_in_each_section(section: str, known: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: {"bogus_key": 1}})

    msg = info.value.msg
    assert msg.startswith(f"{section}.bogus_key: unknown key; expected one of: ")
    assert msg.endswith(", ".join(known) if known else "(none yet)")
    assert tuple(info.value.path) == (section, "bogus_key")


# --- wrong types -------------------------------------------------------------


def test_top_level_not_a_mapping() -> None:
    msg = config_error(["rooms"])
    assert msg == "module config: expected a mapping, got ['rooms']"


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("value", [["a"], "text", 3])
def test_section_not_a_mapping(section: str, value: Any) -> None:
    msg = config_error({section: value})
    assert msg == f"{section}: expected a mapping, got {value!r}"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("rooms", "allowed_join_rules"),
        ("rooms", "clear_event_types"),
        ("rooms", "clear_state_types"),
        ("federation", "allowed_servers"),
    ],
)
@pytest.mark.parametrize("value", ["invite", {"invite": True}, None])
def test_list_expected(section: str, key: str, value: Any) -> None:
    msg = config_error({section: {key: value}})
    assert msg == f"{section}.{key}: expected a list, got {value!r}"


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "true"])
def test_bool_expected(value: Any) -> None:
    msg = config_error({"rooms": {"refuse_unencrypted_messages": value}})
    assert msg == f"rooms.refuse_unencrypted_messages: expected true or false, got {value!r}"


# --- durations ---------------------------------------------------------------


def test_spec_example_duration_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"retention": {"device_lifetime": "seven days"}})

    assert info.value.msg == (
        "retention.device_lifetime: expected a duration such as '7d' (units s, m, h, d, w), got 'seven days'"
    )
    assert tuple(info.value.path) == ("retention", "device_lifetime")


@pytest.mark.parametrize("key", ["device_lifetime", "audit_lifetime"])
@pytest.mark.parametrize("value", ["seven days", 7, "0d", "-1d", "7x", "7", "d", "1.5d", "07d", None, True])
def test_bad_durations(key: str, value: Any) -> None:
    msg = config_error({"retention": {key: value}})
    assert msg == f"retention.{key}: {DURATION_EXPECTED}, got {value!r}"


def test_device_lifetime_longer_than_audit_lifetime() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"retention": {"device_lifetime": "100d", "audit_lifetime": "90d"}})

    msg = info.value.msg
    assert msg.startswith("retention.device_lifetime: expected at most retention.audit_lifetime")
    assert "(7776000s)" in msg  # what was expected
    assert "got 8640000s" in msg  # what was found
    assert tuple(info.value.path) == ("retention", "device_lifetime")


def test_audit_lifetime_shorter_than_default_device_lifetime() -> None:
    """Only audit_lifetime was written, so the error names it, not the default it clashes with."""
    msg = config_error({"retention": {"audit_lifetime": "1d"}})
    assert msg.startswith("retention.audit_lifetime: expected at least retention.device_lifetime (604800s)")
    assert "got 86400s" in msg


# --- rooms values ------------------------------------------------------------


def test_public_join_rule_refused() -> None:
    msg = config_error({"rooms": {"allowed_join_rules": ["invite", "public"]}})
    assert msg.startswith("rooms.allowed_join_rules[1]: expected one of ")
    assert msg.endswith("got 'public'")
    for rule in KNOWN_JOIN_RULES:
        assert rule in msg
    assert "public," not in msg  # never offered as an option


@pytest.mark.parametrize("entry", ["Invite", 1, None, ["invite"]])
def test_join_rule_entries_must_be_known_strings(entry: Any) -> None:
    msg = config_error({"rooms": {"allowed_join_rules": ["invite", entry]}})
    assert msg.startswith("rooms.allowed_join_rules[1]: expected one of ")
    assert msg.endswith(f"got {entry!r}")


@pytest.mark.parametrize("rules", [["knock"], ["restricted", "knock_restricted"], []])
def test_allowed_join_rules_without_invite(rules: list[str]) -> None:
    msg = config_error({"rooms": {"allowed_join_rules": rules}})
    assert msg == (
        "rooms.allowed_join_rules: expected a list that includes 'invite' "
        f"(the rule the module gives rooms that ask for none), got {rules!r}"
    )


@pytest.mark.parametrize("value", ["world_readable", "public", "", 1])
def test_bad_default_history_visibility(value: Any) -> None:
    msg = config_error({"rooms": {"default_history_visibility": value}})
    assert msg == f"rooms.default_history_visibility: expected one of invited, joined, shared, got {value!r}"


# --- federation values -------------------------------------------------------


@pytest.mark.parametrize("bad", ["not a server!", "", 123, "host:", "a..b", "host:port", None])
def test_malformed_server_names(bad: Any) -> None:
    msg = config_error({"federation": {"allowed_servers": ["ok.example", bad]}})
    assert msg == f"federation.allowed_servers[1]: {SERVER_EXPECTED}, got {bad!r}"


@pytest.mark.parametrize("bad", ["host:99999", "host:0", "host:-1"])
def test_out_of_range_ports_are_malformed_server_names(bad: str) -> None:
    msg = config_error({"federation": {"allowed_servers": [bad]}})
    assert msg == f"federation.allowed_servers[0]: {SERVER_EXPECTED}, got {bad!r}"


# --- devices -------------------------------------------------------------------


def test_devices_section_values() -> None:
    devices = parse_config(
        {
            "devices": {
                "enrollment_required": False,
                "approval_window": "5m",
                "login_networks": ["10.8.0.0/16", "2001:db8::/32"],
                "sweep_interval": "30s",
            }
        }
    ).devices
    assert devices.enrollment_required is False
    assert devices.approval_window == 300
    assert [str(network) for network in devices.login_networks] == ["10.8.0.0/16", "2001:db8::/32"]
    assert devices.sweep_interval == 30


def test_devices_defaults() -> None:
    devices = parse_config({}).devices
    assert (devices.enrollment_required, devices.approval_window, devices.login_networks) == (True, 900, ())
    assert devices.sweep_interval == 60


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("10.0.0.5/8", "devices.login_networks[1]: expected a network in CIDR notation"),
        ("vpn-pool", "devices.login_networks[1]: expected a network in CIDR notation"),
        (8, "devices.login_networks[1]: expected a network in CIDR notation"),
    ],
)
def test_bad_login_networks_name_the_entry(bad: Any, expected: str) -> None:
    assert config_error({"devices": {"login_networks": ["10.8.0.0/16", bad]}}).startswith(expected)


@pytest.mark.parametrize("key", ["approval_window", "sweep_interval"])
def test_bad_device_durations(key: str) -> None:
    assert config_error({"devices": {key: "soon"}}).startswith(f"devices.{key}: {DURATION_EXPECTED}")


def test_auto_approve_networks_and_users() -> None:
    devices = parse_config(
        {
            "devices": {
                "auto_approve_networks": ["10.30.0.0/24"],
                "auto_approve_users": ["@dispatcher:police.example", "@lagedienst:police.example"],
            }
        }
    ).devices
    assert [str(network) for network in devices.auto_approve_networks] == ["10.30.0.0/24"]
    assert devices.auto_approve_users == {"@dispatcher:police.example", "@lagedienst:police.example"}
    defaults = parse_config({}).devices
    assert (defaults.auto_approve_networks, defaults.auto_approve_users) == ((), frozenset())


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"auto_approve_networks": ["10.30.0.0/24"]},
            "devices.auto_approve_users: expected the user IDs (the dispatchers) whose logins from "
            "devices.auto_approve_networks are enrolled at once, got []",
        ),
        (
            {"auto_approve_users": ["@dispatcher:police.example"], "auto_approve_networks": []},
            "devices.auto_approve_networks: expected the networks (CIDR, the control-room LAN) from "
            "which the logins of devices.auto_approve_users are enrolled at once, got []",
        ),
        (
            {"auto_approve_networks": ["10.30.0.0/24", "leitstelle"], "auto_approve_users": ["@d:p.example"]},
            "devices.auto_approve_networks[1]: expected a network in CIDR notation",
        ),
        (
            {"auto_approve_networks": ["10.30.0.0/24"], "auto_approve_users": ["@d:p.example", "dispatcher"]},
            "devices.auto_approve_users[1]: expected a user ID such as '@dispatch-bot:police.example', "
            "got 'dispatcher'",
        ),
        (
            {"auto_approve_networks": "10.30.0.0/24", "auto_approve_users": ["@d:p.example"]},
            "devices.auto_approve_networks: expected a list, got '10.30.0.0/24'",
        ),
    ],
)
def test_bad_auto_approve_names_the_key(section: dict[str, Any], expected: str) -> None:
    assert config_error({"devices": section}).startswith(expected)


def test_enrollment_required_must_be_a_bool() -> None:
    assert config_error({"devices": {"enrollment_required": "yes"}}).startswith(
        "devices.enrollment_required: expected true or false"
    )


# --- media -------------------------------------------------------------------

SIZE_EXPECTED = "expected a size such as '30M' (bytes, or K, M, G)"


def test_media_defaults() -> None:
    media = parse_config({}).media
    assert media == MediaConfig()
    assert dict(media.allowed) == dict(DEFAULT_ALLOWED_MEDIA)
    assert media.encrypted_max_size == 500 * 1024**2
    assert media.daily_upload_quota == 5 * 1024**3
    assert media.largest_upload == 500 * 1024**2


def test_media_default_types_are_all_known() -> None:
    assert set(DEFAULT_ALLOWED_MEDIA) <= KNOWN_MEDIA_TYPES


def test_media_keys_absent_mean_defaults() -> None:
    media = parse_config({"media": {"encrypted_max_size": "1G"}}).media
    assert dict(media.allowed) == dict(DEFAULT_ALLOWED_MEDIA)
    assert media.encrypted_max_size == 1024**3
    assert media.daily_upload_quota == 5 * 1024**3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("30M", 30 * 1024**2),
        ("512K", 512 * 1024),
        ("2G", 2 * 1024**3),
        ("1000", 1000),
        (1000, 1000),
        (1, 1),
        ("30m", 30 * 1024**2),
        ("512k", 512 * 1024),
        ("2g", 2 * 1024**3),
        (" 30M ", 30 * 1024**2),
    ],
)
def test_media_sizes(text: Any, size: int) -> None:
    media = parse_config(
        {"media": {"allowed": {"image/png": text}, "encrypted_max_size": text, "daily_upload_quota": text}}
    ).media
    assert dict(media.allowed) == {"image/png": size}
    assert media.encrypted_max_size == size
    assert media.daily_upload_quota == size


def test_media_allowed_replaces_the_defaults() -> None:
    media = parse_config({"media": {"allowed": {"image/jpeg": "10M", "application/pdf": "20M"}}}).media
    assert dict(media.allowed) == {"image/jpeg": 10 * 1024**2, "application/pdf": 20 * 1024**2}


def test_media_config_is_frozen() -> None:
    media = parse_config({"media": {"allowed": {"image/png": "1M"}}}).media
    with pytest.raises(TypeError):
        media.allowed["image/png"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        media.encrypted_max_size = 1  # type: ignore[misc]


BAD_SIZES = [0, -1, "0", "-1", "1T", "big", "1.5M", "30 M", "030M", "M", "", 1.5, True, False, None, ["30M"]]


@pytest.mark.parametrize("value", BAD_SIZES)
def test_bad_allowed_size_names_the_type(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"media": {"allowed": {"image/jpeg": "30M", "image/png": value}}})
    assert info.value.msg == f"media.allowed.image/png: {SIZE_EXPECTED}, got {value!r}"
    assert tuple(info.value.path) == ("media", "allowed", "image/png")


@pytest.mark.parametrize("key", ["encrypted_max_size", "daily_upload_quota"])
@pytest.mark.parametrize("value", BAD_SIZES)
def test_bad_media_sizes(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"media": {key: value}})
    assert info.value.msg == f"media.{key}: {SIZE_EXPECTED}, got {value!r}"
    assert tuple(info.value.path) == ("media", key)


@pytest.mark.parametrize(
    "mime", ["text/html", "image/svg+xml", "application/zip", "IMAGE/PNG", "image/x-ms-bmp"]
)
def test_unknown_media_type(mime: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"media": {"allowed": {"image/png": "1M", mime: "1M"}}})
    assert info.value.msg.startswith(f"media.allowed.{mime}: unknown MIME type; expected one of: ")
    assert info.value.msg.endswith(", ".join(sorted(KNOWN_MEDIA_TYPES)))
    assert tuple(info.value.path) == ("media", "allowed", mime)


def test_unknown_media_type_spec_example() -> None:
    assert config_error({"media": {"allowed": {"text/html": "1M"}}}).startswith(
        "media.allowed.text/html: unknown MIME type"
    )


def test_unknown_media_type_that_is_not_a_string() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"media": {"allowed": {42: "1M"}}})
    assert info.value.msg.startswith("media.allowed.42: unknown MIME type")
    assert tuple(info.value.path) == ("media", "allowed", "42")


@pytest.mark.parametrize("value", [{}, [], None, "image/png", ["image/png"], 30])
def test_media_allowed_empty_or_not_a_mapping(value: Any) -> None:
    msg = config_error({"media": {"allowed": value}})
    assert msg == (
        f"media.allowed: expected a mapping of MIME type to size, such as {{image/jpeg: 30M}}, got {value!r}"
    )


def test_unknown_key_in_media() -> None:
    msg = config_error({"media": {"max_size": "1M"}})
    assert msg == (
        "media.max_size: unknown key; expected one of: allowed, daily_upload_quota, encrypted_max_size, "
        "refuse_pdf_active_content, refuse_trailing_data"
    )


@pytest.mark.parametrize(
    ("media", "largest"),
    [
        ({}, 500 * 1024**2),
        ({"allowed": {"image/png": "1M"}, "encrypted_max_size": "2M"}, 2 * 1024**2),
        ({"allowed": {"image/png": "1M", "video/mp4": "3G"}, "encrypted_max_size": "2M"}, 3 * 1024**3),
        ({"allowed": {"video/mp4": "2M"}, "encrypted_max_size": "2M"}, 2 * 1024**2),
        ({"allowed": {"image/png": 1000}, "encrypted_max_size": 999}, 1000),
    ],
)
def test_largest_upload(media: dict[str, Any], largest: int) -> None:
    assert parse_config({"media": media}).media.largest_upload == largest


def test_largest_upload_ignores_the_daily_quota() -> None:
    media = parse_config({"media": {"encrypted_max_size": "1M", "allowed": {"image/png": "1M"}}}).media
    assert media.daily_upload_quota > media.largest_upload == 1024**2


# --- retention: sweep interval and system user ---------------------------------

LOCALPART_EXPECTED = "expected a user ID localpart such as 'policy' (lower-case letters, digits, ._=-/+)"


def test_retention_sweep_defaults() -> None:
    retention = parse_config({}).retention
    assert retention.sweep_interval == 300  # 5m
    assert retention.system_user == "policy"


def test_retention_keys_absent_mean_defaults() -> None:
    retention = parse_config({"retention": {"device_lifetime": "1d"}}).retention
    assert (retention.sweep_interval, retention.system_user) == (300, "policy")


def test_retention_section_values() -> None:
    retention = parse_config(
        {
            "retention": {
                "device_lifetime": "1d",
                "audit_lifetime": "30d",
                "sweep_interval": "30s",
                "system_user": "retention-bot",
            }
        }
    ).retention
    assert (retention.device_lifetime, retention.audit_lifetime) == (86400, 30 * 86400)
    assert retention.sweep_interval == 30
    assert retention.system_user == "retention-bot"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1w", 604800), (" 10m ", 600)],
)
def test_retention_sweep_interval_durations(text: str, seconds: int) -> None:
    assert parse_config({"retention": {"sweep_interval": text}}).retention.sweep_interval == seconds


@pytest.mark.parametrize("value", ["often", 300, "0s", "-5m", "5", "5x", "1.5m", "05m", "", None, True])
def test_bad_retention_sweep_interval(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"retention": {"sweep_interval": value}})
    assert info.value.msg == f"retention.sweep_interval: {DURATION_EXPECTED}, got {value!r}"
    assert tuple(info.value.path) == ("retention", "sweep_interval")


@pytest.mark.parametrize(
    "localpart",
    ["policy", "p", "0", "retention.bot", "retention_bot", "a=b", "a-b", "a/b", "a+b", "x.y_z=0-9/+"],
)
def test_retention_system_user_localparts(localpart: str) -> None:
    assert parse_config({"retention": {"system_user": localpart}}).retention.system_user == localpart


@pytest.mark.parametrize(
    "value",
    [
        "Policy",
        "POLICY",
        "@policy:x",
        "@policy",
        "policy:x",
        "",
        5,
        None,
        True,
        ["policy"],
        "policy\n",
        " policy",
        "pol icy",
        "pölicy",
        "policy!",
    ],
)
def test_bad_retention_system_user(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"retention": {"system_user": value}})
    assert info.value.msg == f"retention.system_user: {LOCALPART_EXPECTED}, got {value!r}"
    assert tuple(info.value.path) == ("retention", "system_user")


def test_retention_unknown_key_lists_the_new_keys() -> None:
    msg = config_error({"retention": {"sweep": "5m"}})
    assert msg == (
        "retention.sweep: unknown key; expected one of: "
        "audit_lifetime, device_lifetime, sweep_interval, system_user"
    )


# --- directory ---------------------------------------------------------------


def test_hidden_users() -> None:
    config = parse_config(
        {"directory": {"hidden_users": ["@dispatch-bot:police.example", "@x:peer.example:8448"]}}
    )
    assert config.directory.hidden_users == frozenset(
        {"@dispatch-bot:police.example", "@x:peer.example:8448"}
    )
    assert parse_config({}).directory.hidden_users == frozenset()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "@dispatch-bot:police.example",
            "directory.hidden_users: expected a list, got '@dispatch-bot:police.example'",
        ),
        (["@ok:police.example", "dispatch-bot"], "directory.hidden_users[1]: expected a user ID such as "),
        ([7], "directory.hidden_users[0]: expected a user ID such as '@dispatch-bot:police.example', got 7"),
        (["@Upper:police.example"], "directory.hidden_users[0]: expected a user ID"),
    ],
)
def test_hidden_users_errors_name_the_entry(value: Any, message: str) -> None:
    assert config_error({"directory": {"hidden_users": value}}).startswith(message)


# --- auditor -----------------------------------------------------------------


def test_auditor_bots_from_either_key() -> None:
    assert parse_config({}).auditor.bots == ()
    assert parse_config({"auditor": {"user_id": "@auditor:police.example"}}).auditor.bots == (
        "@auditor:police.example",
    )
    shards = ["@auditor-1:police.example", "@auditor-2:police.example"]
    assert parse_config({"auditor": {"user_ids": shards}}).auditor.bots == tuple(shards)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"user_ids": "@a:police.example"}, "auditor.user_ids: expected a list, got '@a:police.example'"),
        ({"user_ids": []}, "auditor.user_ids: expected a non-empty list of user IDs"),
        ({"user_ids": ["@a:police.example", 7]}, "auditor.user_ids[1]: expected a user ID such as '@auditor"),
        (
            {"user_ids": ["@a:police.example", "@a:police.example"]},
            "auditor.user_ids[1]: expected a bot not listed already, got '@a:police.example'",
        ),
        (
            {"user_id": "@a:police.example", "user_ids": ["@b:police.example"]},
            "auditor.user_ids: not together with auditor.user_id",
        ),
        ({"user_id": ["@a:police.example"]}, "auditor.user_id: expected a user ID such as '@auditor"),
    ],
)
def test_auditor_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    assert config_error({"auditor": section}).startswith(message)
