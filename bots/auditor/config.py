"""The auditor bot's configuration: YAML in, a frozen ``Config`` out.

Every problem raises ``ConfigError`` whose message starts with the full key
path and says what was expected and what was found; the settings every bot has
are read by ``bots.common.config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import attrs

from ..common import config as common
from ..common.clock import DEFAULT_ZONE, timezone_setting, zone
from ..common.config import ACCOUNT_KEYS, USER_ID, Account, ConfigError, fail

if TYPE_CHECKING:
    from synapse_police_policy.config import MediaConfig

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

KEYS = ACCOUNT_KEYS | {
    "archive_path",
    "archive_postgres",
    "attachments_dir",
    "archive_key_file",
    "archive_key_env",
    "log_path",
    "auditors",
    "audit_lifetime",
    "signing_key_file",
    "exports_path",
    "policy_file",
    "admin_token_file",
    "metrics_port",
    "metrics_address",
    "purge_interval",
    "timezone",
    "signing_key_password_file",
    "signing_key_password_env",
    "signing_key_fingerprint",
    "chain_heads_file",
    "chain_head_interval",
    "dpo_room",
    "undecryptable_after",
    "export_request_lifetime",
}

#: a key fingerprint: SHA-256 of the raw Ed25519 public key, 64 hex digits
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_ROOM_ID = re.compile(r"![^:\s]+:\S+")


@attrs.frozen
class Config(Account):
    #: the SQLite archive; None when the archive is in PostgreSQL
    archive_path: Path | None
    #: the archive's main key (32 bytes)
    archive_key: bytes = attrs.field(repr=False)
    log_path: Path
    auditors: frozenset[str]
    #: seconds
    audit_lifetime: int
    #: the Ed25519 key that signs export bundles (PEM; generated at the first start, 0600)
    signing_key_file: Path
    #: the pending and closed export requests (SQLite)
    exports_path: Path
    #: a libpq connection string of the archive's PostgreSQL database (None: SQLite at archive_path)
    archive_postgres: str | None = attrs.field(default=None, repr=False)
    #: the attachment files of a PostgreSQL archive
    attachments_dir: Path | None = None
    #: the module's media rules (from ``policy_file``); None: attachments are archived, not judged
    media: MediaConfig | None = None
    #: the policy file the media rules came from
    policy_file: Path | None = None
    #: a server admin's access token, for quarantining media; None: no quarantine
    admin_token: str | None = attrs.field(default=None, repr=False)
    #: where Prometheus scrapes the bot; None: no metrics endpoint
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    #: seconds between archive purges
    purge_interval: int = 86_400
    #: the zone of every time the bot prints and of the days in !search and !export (the
    #: auditor reads local time; the host may run in UTC)
    timezone: ZoneInfo = attrs.field(factory=lambda: zone(DEFAULT_ZONE))
    #: the signing key's own key (32 bytes, from signing_key_password_file/_env), kept apart
    #: from the archive; None: the key file is stored unencrypted (a warning at start-up)
    signing_key_password: bytes | None = attrs.field(default=None, repr=False)
    #: the pinned fingerprint of the export signing key (SHA-256 of the raw public key, hex)
    signing_key_fingerprint: str | None = None
    #: where the signed consultation-log heads are appended (the operator ships it off the host)
    chain_heads_file: Path | None = None
    #: seconds between two chain-head exports
    chain_head_interval: int = 3_600
    #: the data-protection officer's room: each exported head is also sent there; None: not sent
    dpo_room: str | None = None
    #: seconds after which an event still waiting for its keys counts as undecryptable
    undecryptable_after: int = 3_600
    #: seconds after which an open export request expires
    export_request_lifetime: int = 7 * 86_400

    @property
    def audit_lifetime_ms(self) -> int:
        return self.audit_lifetime * 1000


def parse_duration(value: Any, key: str) -> int:
    """A positive duration such as '90d', '12h' or '2w', in seconds."""
    return common.duration(value, key, _UNITS_S, "90d")


def parse_config(raw: Any, base: Path | None = None) -> Config:
    """Check a parsed YAML document; relative paths are relative to ``base``."""
    base = base or Path.cwd()
    raw = common.settings(raw, KEYS)
    url = common.homeserver_url(raw)

    user_id = common.string(raw, "user_id")
    if not USER_ID.match(user_id or ""):
        raise fail("user_id", "a Matrix user ID such as '@auditor:example.org'", user_id)
    assert user_id is not None

    password = common.password(raw, base)
    device_id = common.device_id(raw)

    key = common.key(raw, "archive_key", base, "archive key")

    auditors_raw = raw.get("auditors")
    if not isinstance(auditors_raw, list) or not auditors_raw:
        raise fail("auditors", "a non-empty list of Matrix user IDs", auditors_raw)
    for index, auditor in enumerate(auditors_raw):
        if not isinstance(auditor, str) or not USER_ID.match(auditor):
            raise fail(f"auditors[{index}]", "a Matrix user ID such as '@revisor:example.org'", auditor)

    log_path = common.path(raw, "log_path", base)
    sqlite, postgres = common.exactly_one(raw, "archive_path", "archive_postgres")
    archive_path = common.path(raw, "archive_path", base) if sqlite is not None else None
    attachments_dir = None
    if postgres is not None:
        if raw.get("attachments_dir") is None:
            raise ConfigError("attachments_dir: required with archive_postgres, expected a directory")
        attachments_dir = common.path(raw, "attachments_dir", base)
    elif "attachments_dir" in raw:
        raise ConfigError(
            "attachments_dir: only with archive_postgres (a SQLite archive keeps them next to archive_path)"
        )
    local = archive_path if archive_path is not None else attachments_dir
    assert local is not None
    local_dir = local.parent
    policy_file = common.path(raw, "policy_file", base) if raw.get("policy_file") is not None else None
    media, policy_lifetime = _policy(policy_file)
    audit_lifetime = policy_lifetime or parse_duration("90d", "audit_lifetime")
    if "audit_lifetime" in raw:
        audit_lifetime = parse_duration(raw["audit_lifetime"], "audit_lifetime")
        if policy_lifetime is not None and audit_lifetime != policy_lifetime:
            # the archive must keep what the server keeps, no longer and no shorter
            raise ConfigError(
                f"audit_lifetime: {audit_lifetime}s differs from retention.audit_lifetime "
                f"({policy_lifetime}s) in policy_file; leave it out to use the module's"
            )
    store_dir, identity_file = common.store_paths(raw, base)
    return Config(
        homeserver_url=url,
        user_id=user_id,
        password=password,
        device_id=device_id,
        store_dir=store_dir,
        identity_file=identity_file,
        archive_path=archive_path,
        archive_key=key,
        log_path=log_path,
        auditors=frozenset(auditors_raw),
        audit_lifetime=audit_lifetime,
        signing_key_file=(
            common.path(raw, "signing_key_file", base)
            if "signing_key_file" in raw
            else local_dir / "export-signing-key.pem"
        ),
        exports_path=(
            common.path(raw, "exports_path", base)
            if "exports_path" in raw
            else log_path.parent / "export-requests.sqlite"
        ),
        archive_postgres=postgres,
        attachments_dir=attachments_dir,
        media=media,
        policy_file=policy_file,
        admin_token=_admin_token(raw, base),
        metrics_port=_port(raw.get("metrics_port"), "metrics_port"),
        metrics_address=common.string(raw, "metrics_address", required=False) or "127.0.0.1",
        purge_interval=parse_duration(raw.get("purge_interval", "1d"), "purge_interval"),
        timezone=timezone_setting(raw),
        signing_key_password=_signing_key_password(raw, base),
        signing_key_fingerprint=signing_key_fingerprint(raw),
        chain_heads_file=(
            common.path(raw, "chain_heads_file", base)
            if raw.get("chain_heads_file") is not None
            else log_path.parent / "chain-heads.jsonl"
        ),
        chain_head_interval=parse_duration(raw.get("chain_head_interval", "1h"), "chain_head_interval"),
        dpo_room=_room(raw, "dpo_room"),
        undecryptable_after=parse_duration(raw.get("undecryptable_after", "1h"), "undecryptable_after"),
        export_request_lifetime=parse_duration(
            raw.get("export_request_lifetime", "7d"), "export_request_lifetime"
        ),
    )


def _signing_key_password(raw: Mapping[str, Any], base: Path) -> bytes | None:
    if raw.get("signing_key_password_file") is None and raw.get("signing_key_password_env") is None:
        return None
    return common.key(raw, "signing_key_password", base, "signing key password")


def signing_key_fingerprint(raw: Mapping[str, Any]) -> str | None:
    """The pinned ``signing_key_fingerprint`` (lower-case hex), None when not set.
    ``police-audit`` reads it from the bot's config without the rest of it."""
    value = raw.get("signing_key_fingerprint")
    if value is None:
        return None
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value.strip().lower()):
        raise fail(
            "signing_key_fingerprint",
            "the export signing key's fingerprint: 64 hex digits (the bot logs it at start-up)",
            value,
        )
    return value.strip().lower()


def _room(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _ROOM_ID.fullmatch(value):
        raise fail(key, "a Matrix room ID such as '!abc:example.org'", value)
    return value


def _policy(path: Path | None) -> tuple[MediaConfig | None, int | None]:
    """The module's media rules and audit lifetime, parsed by the module's own parser."""
    if path is None:
        return None, None
    from .media_rules import PolicyFileError, load_policy  # imports Synapse: only when configured

    try:
        policy = load_policy(path)
    except PolicyFileError as error:
        raise ConfigError(f"policy_file: {error}") from None
    return policy.media, policy.retention.audit_lifetime


def _admin_token(raw: Mapping[str, Any], base: Path) -> str | None:
    """A server admin's token, for the media quarantine; None when not configured."""
    if raw.get("admin_token_file") is None:
        return None
    return common.secret_file(raw, "admin_token_file", base, "an access token")


def _port(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    raise fail(key, "a TCP port (1-65535)", value)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the YAML file at ``path``; relative paths in it are relative to its directory."""
    return parse_config(*common.read_yaml(path))
