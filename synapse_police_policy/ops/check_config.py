"""Homeserver settings that contradict the policy module's own config.

Part of the policy is carried by Synapse itself (federation whitelist, key
servers, registration, retention purges, ...). ``find_problems`` reads a
homeserver config as plain data and names every setting that would undo what
the module promises, with the key and the fix. ``find_warnings`` names settings
that are right only if something outside the file is right too (the reverse
proxy), so the operator checks that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from synapse.config._base import Config
from synapse.config._base import ConfigError as SynapseConfigError

from ..api import MODULE_NAME
from ..config import ConfigError, PolicyConfig, normalise_server_name, parse_config

#: the operator guide's section on the hop Synapse trusts
PROXY_GUIDE = 'docs/operator.md, "The reverse proxy: which address Synapse sees"'
_DAY_MS = 86400 * 1000


@attrs.frozen
class Finding:
    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}. Fix: {self.fix}"


def _duration_text(ms: int) -> str:
    if ms % _DAY_MS == 0:
        return f"{ms // _DAY_MS}d"
    return f"{ms / 1000:g}s"


def _ms(value: Any, key: str, findings: list[Finding]) -> int | None:
    try:
        return Config.parse_duration(value)
    except (TypeError, ValueError, IndexError, KeyError, SynapseConfigError):
        findings.append(Finding(key, f"{value!r} is not a duration", "use a duration such as '90d'"))
        return None


def _optional_ms(section: Mapping[str, Any], name: str, prefix: str, findings: list[Finding]) -> int | None:
    value = section.get(name)
    return None if value is None else _ms(value, f"{prefix}.{name}", findings)


def _module_config(homeserver: Mapping[str, Any], findings: list[Finding]) -> PolicyConfig:
    modules = homeserver.get("modules") or []
    for index, entry in enumerate(modules if isinstance(modules, list) else []):
        if isinstance(entry, Mapping) and entry.get("module") == MODULE_NAME:
            try:
                return parse_config(entry.get("config") or {})
            except ConfigError as error:
                findings.append(
                    Finding(
                        f"modules[{index}].config", error.msg, "correct the module config as the message says"
                    )
                )
                return PolicyConfig()
    findings.append(
        Finding(
            "modules",
            f"{MODULE_NAME} is not loaded, so none of the police policy is enforced",
            f"add an entry '- module: {MODULE_NAME}' with its config (see config/police_policy.yaml)",
        )
    )
    return PolicyConfig()


def _check_federation(homeserver: Mapping[str, Any], policy: PolicyConfig, findings: list[Finding]) -> None:
    own = homeserver.get("server_name")
    try:
        own_name = normalise_server_name(own, ("server_name",))
    except ConfigError as error:
        findings.append(Finding("server_name", error.msg, "set the homeserver's Matrix server name"))
        return
    expected = {own_name, *policy.federation.allowed_servers}
    wanted = ", ".join(sorted(expected))
    whitelist = homeserver.get("federation_domain_whitelist")
    if whitelist is None:
        findings.append(
            Finding(
                "federation_domain_whitelist",
                "not set, so only the module keeps other servers out: Synapse's own check, "
                "the defence in depth behind it, is off",
                f"set it to [{wanted}] (the own server and federation.allowed_servers)",
            )
        )
        return
    listed: set[str] = set()
    for entry in whitelist if isinstance(whitelist, list) else [whitelist]:
        try:
            listed.add(normalise_server_name(entry, ("federation_domain_whitelist",)))
        except ConfigError:
            findings.append(
                Finding(
                    "federation_domain_whitelist", f"{entry!r} is not a server name", f"set it to [{wanted}]"
                )
            )
            return
    if listed != expected:
        parts = []
        if expected - listed:
            parts.append("missing " + ", ".join(sorted(expected - listed)))
        if listed - expected:
            parts.append("lists servers the policy does not allow: " + ", ".join(sorted(listed - expected)))
        findings.append(
            Finding(
                "federation_domain_whitelist",
                "does not match federation.allowed_servers plus the own server ("
                + "; ".join(parts)
                + "); it is Synapse's own check, the defence in depth behind the module's",
                f"set it to [{wanted}]",
            )
        )


def _check_key_servers(homeserver: Mapping[str, Any], policy: PolicyConfig, findings: list[Finding]) -> None:
    """Key notaries must be allowed peers, pinned to their keys. With peers
    configured there must be some: our server never asks a foreign server for
    its keys (the module refuses, as does the whitelist), so without a peer
    vouching for them it drops foreign members' joins unseen and the module
    cannot keep our users out of a peer's room that a foreign user has joined."""
    peers = policy.federation.allowed_servers
    fix = (
        f"list allowed peers ({', '.join(sorted(peers))}) with their verify_keys"
        if peers
        else "set trusted_key_servers: []"
    )
    key_servers = homeserver.get("trusted_key_servers")
    if key_servers is None:
        findings.append(
            Finding("trusted_key_servers", "not set, so Synapse asks matrix.org for server keys", fix)
        )
        return
    if not isinstance(key_servers, list):
        findings.append(Finding("trusted_key_servers", f"{key_servers!r} is not a list", fix))
        return
    if not key_servers and peers:
        findings.append(
            Finding(
                "trusted_key_servers",
                "empty although federation.allowed_servers lists peers, so our server cannot verify "
                "(and the module cannot see) members of other servers in the peers' rooms",
                fix,
            )
        )
    for index, entry in enumerate(key_servers):
        key = f"trusted_key_servers[{index}]"
        name = entry.get("server_name") if isinstance(entry, Mapping) else None
        try:
            server = normalise_server_name(name, (key, "server_name"))
        except ConfigError:
            findings.append(Finding(key, f"{entry!r} names no valid server_name", fix))
            continue
        if server not in peers:
            findings.append(Finding(key, f"{server} is a key server outside the closed police network", fix))
        elif not entry.get("verify_keys") or entry.get("accept_keys_insecurely"):
            findings.append(
                Finding(
                    key,
                    f"{server}'s answers are accepted without checking its signing key",
                    "add its verify_keys (from its /_matrix/key/v2/server) and drop accept_keys_insecurely",
                )
            )


def _check_simple_settings(homeserver: Mapping[str, Any], findings: list[Finding]) -> None:
    if homeserver.get("enable_registration") and not homeserver.get("registration_requires_token"):
        findings.append(
            Finding(
                "enable_registration",
                "open registration without tokens lets anyone create an account",
                "set enable_registration: false (operators provision accounts) "
                "or registration_requires_token: true",
            )
        )
    if homeserver.get("url_preview_enabled"):
        findings.append(
            Finding(
                "url_preview_enabled",
                "URL previews make the server fetch links from messages, leaking them",
                "set url_preview_enabled: false",
            )
        )
    if homeserver.get("allow_public_rooms_over_federation"):
        findings.append(
            Finding(
                "allow_public_rooms_over_federation",
                "the room directory is served to other servers",
                "set allow_public_rooms_over_federation: false",
            )
        )
    if homeserver.get("encryption_enabled_by_default_for_room_type") != "all":
        findings.append(
            Finding(
                "encryption_enabled_by_default_for_room_type",
                f"is {homeserver.get('encryption_enabled_by_default_for_room_type')!r}, "
                "so Synapse does not encrypt every new room by itself",
                "set encryption_enabled_by_default_for_room_type: all",
            )
        )


def _check_retention(homeserver: Mapping[str, Any], policy: PolicyConfig, findings: list[Finding]) -> None:
    audit_ms = policy.retention.audit_lifetime * 1000
    device_ms = policy.retention.device_lifetime * 1000
    audit = _duration_text(audit_ms)
    retention = homeserver.get("retention")
    if not isinstance(retention, Mapping) or not retention.get("enabled"):
        findings.append(
            Finding(
                "retention.enabled",
                "retention is disabled, so history is never purged from the server",
                f"set retention.enabled: true with allowed_lifetime_min and allowed_lifetime_max: {audit}",
            )
        )
    else:
        # Rooms announce the device tier in m.room.retention, and a room may
        # announce longer; Synapse clamps every purge to [min, max], so both
        # bounds must be the audit tier for history to go exactly then.
        for bound in ("allowed_lifetime_min", "allowed_lifetime_max"):
            _check_purge_bound(retention, bound, audit_ms, findings)
        default_policy = retention.get("default_policy")
        default_max = default_policy.get("max_lifetime") if isinstance(default_policy, Mapping) else None
        if default_max is None:
            findings.append(
                Finding(
                    "retention.default_policy.max_lifetime",
                    "not set, so rooms without a retention policy are never purged",
                    f"set retention.default_policy.max_lifetime: {audit}",
                )
            )
        _check_purge_jobs(retention.get("purge_jobs"), device_ms, findings)

    period = homeserver.get("redaction_retention_period", "7d")
    if period is None:
        findings.append(
            Finding(
                "redaction_retention_period",
                f"null keeps redacted originals forever, beyond the audit tier ({audit})",
                f"set redaction_retention_period: {audit}",
            )
        )
        return
    period_ms = _ms(period, "redaction_retention_period", findings)
    if period_ms is not None and period_ms < audit_ms:
        findings.append(
            Finding(
                "redaction_retention_period",
                f"{_duration_text(period_ms)} drops redacted originals before the audit tier ({audit}) ends",
                f"set redaction_retention_period: {audit}",
            )
        )
    elif period_ms is not None and period_ms > audit_ms:
        findings.append(
            Finding(
                "redaction_retention_period",
                f"{_duration_text(period_ms)} keeps redacted originals beyond the audit tier ({audit})",
                f"set redaction_retention_period: {audit}",
            )
        )


def _check_purge_bound(
    retention: Mapping[str, Any], bound: str, audit_ms: int, findings: list[Finding]
) -> None:
    key = f"retention.{bound}"
    audit = _duration_text(audit_ms)
    fix = f"set {key}: {audit}"
    if retention.get(bound) is None:
        problem = (
            "not set, so rooms that announce the device tier are purged before the audit tier ends"
            if bound == "allowed_lifetime_min"
            else "not set, so rooms that announce a longer lifetime keep history beyond the audit tier"
        )
        findings.append(Finding(key, f"{problem} ({audit})", fix))
        return
    value = _ms(retention[bound], key, findings)
    if value is None or value == audit_ms:
        return
    if value < audit_ms:
        problem = f"{_duration_text(value)} lets history be purged before the audit tier ({audit}) ends"
    else:
        problem = f"{_duration_text(value)} lets history be kept beyond the audit tier ({audit})"
    findings.append(Finding(key, problem, fix))


def _check_purge_jobs(jobs: Any, device_ms: int, findings: list[Finding]) -> None:
    """Synapse picks rooms for a purge job by their announced max_lifetime
    (shortest < max_lifetime <= longest); one job must cover the device tier."""
    if not jobs:
        return  # Synapse then runs one daily job covering every room
    for index, job in enumerate(jobs if isinstance(jobs, list) else []):
        if not isinstance(job, Mapping):
            continue
        key = f"retention.purge_jobs[{index}]"
        low = _optional_ms(job, "shortest_max_lifetime", key, findings)
        high = _optional_ms(job, "longest_max_lifetime", key, findings)
        if (low is None or low < device_ms) and (high is None or device_ms <= high):
            return
    findings.append(
        Finding(
            "retention.purge_jobs",
            f"no purge job covers rooms whose max_lifetime is the device tier ({_duration_text(device_ms)})",
            "add a purge job without shortest_max_lifetime/longest_max_lifetime, for example {interval: 1h}",
        )
    )


def find_problems(homeserver: Mapping[str, Any]) -> list[Finding]:
    """Every setting of ``homeserver`` that contradicts the policy, in file order of concern."""
    findings: list[Finding] = []
    policy = _module_config(homeserver, findings)
    _check_federation(homeserver, policy, findings)
    _check_key_servers(homeserver, policy, findings)
    _check_simple_settings(homeserver, findings)
    _check_retention(homeserver, policy, findings)
    _check_upload_size(homeserver, policy, findings)
    return findings


def _check_upload_size(homeserver: Mapping[str, Any], policy: PolicyConfig, findings: list[Finding]) -> None:
    """Synapse refuses bodies above its own max_upload_size (default 50M)
    before the module is asked, so it must admit the largest allowed file."""
    largest = policy.media.largest_upload
    wanted = policy.media.synapse_max_upload_size
    value = homeserver.get("max_upload_size", "50M")
    try:
        size = Config.parse_size(value)
    except (TypeError, ValueError, IndexError, SynapseConfigError):
        findings.append(Finding("max_upload_size", f"{value!r} is not a size", f"set it to {wanted}"))
        return
    if size < largest:
        findings.append(
            Finding(
                "max_upload_size",
                f"{value} (Synapse's limit) is below the largest file the media policy allows ({wanted}), "
                "so such uploads fail with Synapse's generic error",
                f"set it to {wanted}",
            )
        )


def _module_index(homeserver: Mapping[str, Any]) -> int | None:
    modules = homeserver.get("modules")
    for index, entry in enumerate(modules if isinstance(modules, list) else []):
        if isinstance(entry, Mapping) and entry.get("module") == MODULE_NAME:
            return index
    return None


def _check_forwarded_listeners(homeserver: Mapping[str, Any], findings: list[Finding]) -> None:
    """Synapse believes the left-most X-Forwarded-For entry on an
    ``x_forwarded`` listener; the address-based login rules are then only as
    good as the proxy that sets it, which this file cannot show."""
    index = _module_index(homeserver)
    if index is None:
        return
    try:
        devices = parse_config(homeserver["modules"][index].get("config") or {}).devices
    except ConfigError:
        return  # find_problems reports the broken module config
    prefix = f"modules[{index}].config.devices"
    keys = [
        f"{prefix}.{name}"
        for name, networks in (
            ("login_networks", devices.login_networks),
            ("auto_approve_networks", devices.auto_approve_networks),
        )
        if networks
    ]
    if not keys:
        return
    for section in ("listeners", "worker_listeners"):
        listeners = homeserver.get(section)
        for number, listener in enumerate(listeners if isinstance(listeners, list) else []):
            if not isinstance(listener, Mapping) or not listener.get("x_forwarded"):
                continue
            findings.append(
                Finding(
                    f"{section}[{number}].x_forwarded",
                    f"true while {' and '.join(keys)} is set: Synapse takes a login's address from "
                    "the left-most X-Forwarded-For entry, so a client that reaches this listener "
                    "directly, or through a proxy that appends to its header "
                    "($proxy_add_x_forwarded_for), logs in from whatever address it writes there",
                    "let only the edge nginx reach this listener and have it overwrite the header "
                    "(proxy_set_header X-Forwarded-For $remote_addr; as config/nginx/edge.conf does), "
                    f"see {PROXY_GUIDE}",
                )
            )


def find_warnings(homeserver: Mapping[str, Any]) -> list[Finding]:
    """Settings that hold only with the right reverse proxy in front: print
    them, but they do not make the file inconsistent."""
    findings: list[Finding] = []
    _check_forwarded_listeners(homeserver, findings)
    return findings
