"""The module's configuration: YAML in, frozen attrs objects out.

Every problem becomes a Synapse ``ConfigError`` whose message starts with the
full key path, says what was expected and what was found, so an operator can
fix the file without reading this code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
from synapse.config._base import ConfigError
from synapse.util.stringutils import parse_and_validate_server_name

T = TypeVar("T")

MEGOLM = "m.megolm.v1.aes-sha2"

#: Join rules a room may carry. "public" is deliberately absent: the policy is
#: invite-only, so it cannot be switched on from the config either.
KNOWN_JOIN_RULES = frozenset({"invite", "knock", "restricted", "knock_restricted"})
#: History visibility values that keep history to members (never world_readable).
KNOWN_HISTORY_VISIBILITY = frozenset({"shared", "invited", "joined"})
#: Non-state event types a client may send unencrypted besides those the module
#: needs itself (``rooms.py``): stock clients send reactions in clear.
DEFAULT_CLEAR_EVENT_TYPES = frozenset({"m.reaction"})
#: State event types that may carry content besides those the module governs
#: itself (``rooms.py``): what stock clients need for a room's name, topic,
#: avatar, address, pinned messages, server ACL, upgrades and spaces.
DEFAULT_CLEAR_STATE_TYPES = frozenset(
    {
        "m.room.name",
        "m.room.topic",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.pinned_events",
        "m.room.server_acl",
        "m.room.tombstone",
        "m.space.child",
        "m.space.parent",
    }
)
#: Synapse's limit on the length of an event type
_EVENT_TYPE_MAX = 255

_USER_ID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-:\[\]]+\Z")
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+\Z")
_DURATION = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w)$")
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@attrs.frozen
class RoomsConfig:
    """Section ``rooms``: what every room on this server looks like."""

    #: join rules a room may be given; the module sets "invite" when none is asked for
    allowed_join_rules: frozenset[str] = frozenset({"invite"})
    #: history visibility set at creation when the request leaves it out
    default_history_visibility: str = "shared"
    #: refuse events sent in clear text unless their type is listed below (clients must encrypt)
    refuse_unencrypted_messages: bool = True
    #: non-state event types that may be sent unencrypted
    clear_event_types: frozenset[str] = DEFAULT_CLEAR_EVENT_TYPES
    #: state event types that may carry content (state cannot be encrypted)
    clear_state_types: frozenset[str] = DEFAULT_CLEAR_STATE_TYPES


@attrs.frozen
class FederationConfig:
    """Section ``federation``: the closed network of police homeservers."""

    #: normalised server names (host lower-cased, port kept); the own server is implied
    allowed_servers: frozenset[str] = frozenset()


@attrs.frozen
class RetentionConfig:
    """Section ``retention``: the device tier and the audit tier, in seconds."""

    device_lifetime: int = 7 * 86400
    audit_lifetime: int = 90 * 86400
    #: seconds between two runs of the redaction sweep
    sweep_interval: int = 5 * 60
    #: localpart of the local user that redacts expired content
    system_user: str = "policy"


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class DevicesConfig:
    """Section ``devices``: only MDM-enrolled devices log in and send events."""

    enrollment_required: bool = True
    #: seconds an approved pending login stays usable
    approval_window: int = 15 * 60
    #: networks logins may come from; empty means any address
    login_networks: tuple[IPNetwork, ...] = ()
    #: seconds between two sweeps for non-enrolled devices and expired enrollments
    sweep_interval: int = 60
    #: stock-client logins of ``auto_approve_users`` from these networks are
    #: enrolled at once, without an operator's approval
    auto_approve_networks: tuple[IPNetwork, ...] = ()
    auto_approve_users: frozenset[str] = frozenset()


#: MIME types the media section may name: what libmagic reports for photos,
#: audio, video and documents (``media.py`` maps libmagic's aliases).
KNOWN_MEDIA_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/heic",
        "image/heif",
        "image/avif",
        "image/webp",
        "image/tiff",
        "image/bmp",
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/3gpp",
        "audio/mp4",
        "audio/mpeg",
        "audio/ogg",
        "audio/flac",
        "audio/wav",
        "audio/aac",
        "audio/webm",
        "application/pdf",
    }
)
_KIB = 1024
_SIZE = re.compile(r"^([1-9][0-9]*)([KMG]?)$")
_SIZE_UNITS = {"": 1, "K": _KIB, "M": _KIB**2, "G": _KIB**3}
DEFAULT_ALLOWED_MEDIA: Mapping[str, int] = MappingProxyType(
    {
        "image/jpeg": 30 * _KIB**2,
        "image/png": 30 * _KIB**2,
        "image/heic": 30 * _KIB**2,
        "image/heif": 30 * _KIB**2,
        "image/webp": 30 * _KIB**2,
        "video/mp4": 500 * _KIB**2,
        "video/quicktime": 500 * _KIB**2,
        "audio/mp4": 100 * _KIB**2,
        "audio/mpeg": 100 * _KIB**2,
        "audio/ogg": 100 * _KIB**2,
        "application/pdf": 50 * _KIB**2,
    }
)


@attrs.frozen
class MediaConfig:
    """Section ``media``: what may be uploaded, judged by content; sizes in bytes."""

    #: detected MIME type -> largest allowed size
    allowed: Mapping[str, int] = attrs.field(
        default=DEFAULT_ALLOWED_MEDIA, converter=lambda value: MappingProxyType(dict(value)), hash=False
    )
    #: uploads that are opaque ciphertext (E2EE attachments)
    encrypted_max_size: int = 500 * _KIB**2
    #: per user, across all uploads, over the last 24 hours
    daily_upload_quota: int = 5 * _KIB**3
    #: refuse PDFs with JavaScript, actions run on opening or on events, launch
    #: actions, embedded files, forms that send data (``filetype.py``)
    refuse_pdf_active_content: bool = True
    #: refuse images with data after their end marker, and files of allowed
    #: types hiding an archive (``filetype.py``)
    refuse_trailing_data: bool = True

    @property
    def largest_upload(self) -> int:
        return max([self.encrypted_max_size, *self.allowed.values()])

    @property
    def synapse_max_upload_size(self) -> str:
        """Synapse's ``max_upload_size`` that admits the largest allowed file
        (whole MiB, rounded up)."""
        return f"{-(-self.largest_upload // _KIB**2)}M"


@attrs.frozen
class AuditorConfig:
    """Section ``auditor``: the auditor bot, a member of every room."""

    #: the bot's user ID (a user of this server); None: no auditor bot
    user_id: str | None = None


@attrs.frozen
class DirectoryConfig:
    """Section ``directory``: the user directory (the search behind Element's "Start chat")."""

    #: users left out of every search result, besides the retention system user
    #: and the auditor bot (always left out); they stay visible as room members
    hidden_users: frozenset[str] = frozenset()


@attrs.frozen
class PolicyConfig:
    rooms: RoomsConfig = RoomsConfig()
    federation: FederationConfig = FederationConfig()
    retention: RetentionConfig = RetentionConfig()
    devices: DevicesConfig = DevicesConfig()
    media: MediaConfig = MediaConfig()
    auditor: AuditorConfig = AuditorConfig()
    directory: DirectoryConfig = DirectoryConfig()


def _fail(path: tuple[str, ...], expected: str, found: Any) -> ConfigError:
    key = ".".join(path) or "module config"
    return ConfigError(f"{key}: expected {expected}, got {found!r}", path=path)


def _mapping(value: Any, path: tuple[str, ...], allowed: set[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, "a mapping", value)
    for key in value:
        if key not in allowed:
            key_path = (*path, str(key)) if path else (str(key),)
            raise ConfigError(
                f"{'.'.join(key_path)}: unknown key; "
                f"expected one of: {', '.join(sorted(allowed)) or '(none yet)'}",
                path=key_path,
            )
    return value


def parse_duration(value: Any, path: tuple[str, ...]) -> int:
    """A positive duration such as '90s', '15m', '7d' or '2w', in seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return int(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
    raise _fail(path, "a duration such as '7d' (units s, m, h, d, w)", value)


def _bool(value: Any, path: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(path, "true or false", value)


def _list_of(value: Any, path: tuple[str, ...], item: Callable[[Any, tuple[str, ...]], T]) -> list[T]:
    if not isinstance(value, list):
        raise _fail(path, "a list", value)
    return [item(entry, (*path[:-1], f"{path[-1]}[{i}]")) for i, entry in enumerate(value)]


def _choice(options: frozenset[str]) -> Callable[[Any, tuple[str, ...]], str]:
    def parse(value: Any, path: tuple[str, ...]) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise _fail(path, f"one of {', '.join(sorted(options))}", value)

    return parse


def normalise_server_name(value: Any, path: tuple[str, ...]) -> str:
    """A Matrix server name (host plus optional port), host lower-cased."""
    if isinstance(value, str):
        try:
            host, port = parse_and_validate_server_name(value)
        except ValueError:
            pass
        else:
            if port is None:
                return host.lower()
            if 0 < port < 65536:
                return f"{host.lower()}:{port}"
    raise _fail(path, "a Matrix server name such as 'polizei-by.example' or 'hs.example:8448'", value)


def _parse_rooms(raw: Any) -> RoomsConfig:
    section = _mapping(
        raw,
        ("rooms",),
        {
            "allowed_join_rules",
            "default_history_visibility",
            "refuse_unencrypted_messages",
            "clear_event_types",
            "clear_state_types",
        },
    )
    defaults = RoomsConfig()
    join_rules = defaults.allowed_join_rules
    if "allowed_join_rules" in section:
        path = ("rooms", "allowed_join_rules")
        join_rules = frozenset(_list_of(section["allowed_join_rules"], path, _choice(KNOWN_JOIN_RULES)))
        if "invite" not in join_rules:
            raise _fail(
                path,
                "a list that includes 'invite' (the rule the module gives rooms that ask for none)",
                section["allowed_join_rules"],
            )
    history = defaults.default_history_visibility
    if "default_history_visibility" in section:
        history = _choice(KNOWN_HISTORY_VISIBILITY)(
            section["default_history_visibility"], ("rooms", "default_history_visibility")
        )
    refuse = defaults.refuse_unencrypted_messages
    if "refuse_unencrypted_messages" in section:
        refuse = _bool(section["refuse_unencrypted_messages"], ("rooms", "refuse_unencrypted_messages"))
    clear_events, clear_state = defaults.clear_event_types, defaults.clear_state_types
    if "clear_event_types" in section:
        clear_events = frozenset(
            _list_of(section["clear_event_types"], ("rooms", "clear_event_types"), _event_type)
        )
    if "clear_state_types" in section:
        clear_state = frozenset(
            _list_of(section["clear_state_types"], ("rooms", "clear_state_types"), _event_type)
        )
    return RoomsConfig(
        allowed_join_rules=join_rules,
        default_history_visibility=history,
        refuse_unencrypted_messages=refuse,
        clear_event_types=clear_events,
        clear_state_types=clear_state,
    )


def _event_type(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, str) and 0 < len(value) <= _EVENT_TYPE_MAX and value.strip() == value:
        return value
    raise _fail(path, "an event type such as 'm.room.topic'", value)


def _parse_federation(raw: Any) -> FederationConfig:
    section = _mapping(raw, ("federation",), {"allowed_servers"})
    if "allowed_servers" not in section:
        return FederationConfig()
    servers = _list_of(section["allowed_servers"], ("federation", "allowed_servers"), normalise_server_name)
    return FederationConfig(allowed_servers=frozenset(servers))


def _network(value: Any, path: tuple[str, ...]) -> IPNetwork:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip())
        except ValueError as error:
            raise _fail(path, f"a network in CIDR notation such as '10.8.0.0/16' ({error})", value) from None
    raise _fail(path, "a network in CIDR notation such as '10.8.0.0/16'", value)


def _user_id(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, str) and _USER_ID.match(value):
        return value
    raise _fail(path, "a user ID such as '@dispatch-bot:police.example'", value)


def _parse_auto_approve(section: Mapping[str, Any]) -> dict[str, Any]:
    """``auto_approve_networks`` and ``auto_approve_users`` come together."""
    networks_path, users_path = ("devices", "auto_approve_networks"), ("devices", "auto_approve_users")
    networks = _list_of(section.get("auto_approve_networks", []), networks_path, _network)
    users = _list_of(section.get("auto_approve_users", []), users_path, _user_id)
    if networks and not users:
        raise _fail(
            users_path,
            "the user IDs (the dispatchers) whose logins from devices.auto_approve_networks "
            "are enrolled at once",
            section.get("auto_approve_users", []),
        )
    if users and not networks:
        raise _fail(
            networks_path,
            "the networks (CIDR, the control-room LAN) from which the logins of "
            "devices.auto_approve_users are enrolled at once",
            section.get("auto_approve_networks", []),
        )
    return {"auto_approve_networks": tuple(networks), "auto_approve_users": frozenset(users)}


def _parse_devices(raw: Any) -> DevicesConfig:
    section = _mapping(
        raw,
        ("devices",),
        {
            "enrollment_required",
            "approval_window",
            "login_networks",
            "sweep_interval",
            "auto_approve_networks",
            "auto_approve_users",
        },
    )
    defaults = DevicesConfig()
    return DevicesConfig(
        enrollment_required=_bool(section["enrollment_required"], ("devices", "enrollment_required"))
        if "enrollment_required" in section
        else defaults.enrollment_required,
        approval_window=parse_duration(section["approval_window"], ("devices", "approval_window"))
        if "approval_window" in section
        else defaults.approval_window,
        login_networks=tuple(_list_of(section["login_networks"], ("devices", "login_networks"), _network))
        if "login_networks" in section
        else defaults.login_networks,
        sweep_interval=parse_duration(section["sweep_interval"], ("devices", "sweep_interval"))
        if "sweep_interval" in section
        else defaults.sweep_interval,
        **_parse_auto_approve(section),
    )


def parse_size(value: Any, path: tuple[str, ...]) -> int:
    """A positive size in bytes, or with a K, M or G suffix (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip().upper())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise _fail(path, "a size such as '30M' (bytes, or K, M, G)", value)


def _parse_media(raw: Any) -> MediaConfig:
    section = _mapping(
        raw,
        ("media",),
        {
            "allowed",
            "encrypted_max_size",
            "daily_upload_quota",
            "refuse_pdf_active_content",
            "refuse_trailing_data",
        },
    )
    defaults = MediaConfig()
    allowed = defaults.allowed
    if "allowed" in section:
        path = ("media", "allowed")
        entries = section["allowed"]
        if not isinstance(entries, Mapping) or not entries:
            raise _fail(path, "a mapping of MIME type to size, such as {image/jpeg: 30M}", entries)
        allowed = {}
        for mime, size in entries.items():
            if mime not in KNOWN_MEDIA_TYPES:
                raise ConfigError(
                    f"media.allowed.{mime}: unknown MIME type; "
                    f"expected one of: {', '.join(sorted(KNOWN_MEDIA_TYPES))}",
                    path=(*path, str(mime)),
                )
            allowed[mime] = parse_size(size, (*path, str(mime)))
    return MediaConfig(
        allowed=allowed,
        encrypted_max_size=parse_size(section["encrypted_max_size"], ("media", "encrypted_max_size"))
        if "encrypted_max_size" in section
        else defaults.encrypted_max_size,
        daily_upload_quota=parse_size(section["daily_upload_quota"], ("media", "daily_upload_quota"))
        if "daily_upload_quota" in section
        else defaults.daily_upload_quota,
        refuse_pdf_active_content=_bool(
            section["refuse_pdf_active_content"], ("media", "refuse_pdf_active_content")
        )
        if "refuse_pdf_active_content" in section
        else defaults.refuse_pdf_active_content,
        refuse_trailing_data=_bool(section["refuse_trailing_data"], ("media", "refuse_trailing_data"))
        if "refuse_trailing_data" in section
        else defaults.refuse_trailing_data,
    )


def _parse_retention(raw: Any) -> RetentionConfig:
    section = _mapping(
        raw, ("retention",), {"device_lifetime", "audit_lifetime", "sweep_interval", "system_user"}
    )
    defaults = RetentionConfig()
    device = defaults.device_lifetime
    audit = defaults.audit_lifetime
    if "device_lifetime" in section:
        device = parse_duration(section["device_lifetime"], ("retention", "device_lifetime"))
    if "audit_lifetime" in section:
        audit = parse_duration(section["audit_lifetime"], ("retention", "audit_lifetime"))
    if device > audit:
        # Name the key the operator wrote: the one that is not at its default.
        if "device_lifetime" in section:
            key, expected, found = "device_lifetime", f"at most retention.audit_lifetime ({audit}s)", device
        else:
            key, expected, found = "audit_lifetime", f"at least retention.device_lifetime ({device}s)", audit
        raise ConfigError(
            f"retention.{key}: expected {expected}, got {found}s; content must leave devices "
            "before it leaves the audit archive",
            path=("retention", key),
        )
    sweep = defaults.sweep_interval
    if "sweep_interval" in section:
        sweep = parse_duration(section["sweep_interval"], ("retention", "sweep_interval"))
    system_user = defaults.system_user
    if "system_user" in section:
        system_user = section["system_user"]
        if not isinstance(system_user, str) or not _LOCALPART.match(system_user):
            raise _fail(
                ("retention", "system_user"),
                "a user ID localpart such as 'policy' (lower-case letters, digits, ._=-/+)",
                system_user,
            )
    return RetentionConfig(
        device_lifetime=device, audit_lifetime=audit, sweep_interval=sweep, system_user=system_user
    )


def _parse_auditor(raw: Any) -> AuditorConfig:
    section = _mapping(raw, ("auditor",), {"user_id"})
    user_id = section.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or not _USER_ID.match(user_id)):
        raise _fail(("auditor", "user_id"), "a user ID such as '@auditor:police.example'", user_id)
    return AuditorConfig(user_id=user_id)


def _parse_directory(raw: Any) -> DirectoryConfig:
    section = _mapping(raw, ("directory",), {"hidden_users"})
    if "hidden_users" not in section:
        return DirectoryConfig()
    users = _list_of(section["hidden_users"], ("directory", "hidden_users"), _user_id)
    return DirectoryConfig(hidden_users=frozenset(users))


def parse_config(raw: Any) -> PolicyConfig:
    """Turn the module's YAML config into a ``PolicyConfig`` or raise ``ConfigError``."""
    top = _mapping(raw, (), {"rooms", "federation", "retention", "devices", "media", "auditor", "directory"})
    return PolicyConfig(
        rooms=_parse_rooms(top.get("rooms")),
        federation=_parse_federation(top.get("federation")),
        retention=_parse_retention(top.get("retention")),
        devices=_parse_devices(top.get("devices")),
        media=_parse_media(top.get("media")),
        auditor=_parse_auditor(top.get("auditor")),
        directory=_parse_directory(top.get("directory")),
    )
