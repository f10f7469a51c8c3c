"""The module's configuration: YAML in, frozen attrs objects out.

Every problem raises ``ConfigError`` whose message starts with the full key
path, says what was expected and what was found, so an operator can fix the
file without reading this code. Nothing here imports Synapse: the bots parse
the same policy without it, and the module hands Synapse its own
``ConfigError`` (``module.py``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar, cast

import attrs
from attrs import Attribute

T = TypeVar("T")


class ConfigError(Exception):
    """A problem in the module's config: ``msg`` starts with the full key path, ``path``
    holds it (as Synapse's ``ConfigError`` does, which the module turns it into)."""

    def __init__(self, msg: str, path: Sequence[str] | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.path = tuple(path) if path is not None else None


MEGOLM = "m.megolm.v1.aes-sha2"

#: Join rules a room may carry. "public" is deliberately absent: the policy is
#: invite-only, so it cannot be switched on from the config either.
KNOWN_JOIN_RULES = frozenset({"invite", "knock", "restricted", "knock_restricted"})
#: History visibility values that keep history to members (never world_readable).
KNOWN_HISTORY_VISIBILITY = frozenset({"shared", "invited", "joined"})
#: Non-state event types a client may send unencrypted besides those the module
#: needs itself (``rooms/rules.py``): stock clients send reactions in clear.
DEFAULT_CLEAR_EVENT_TYPES = frozenset({"m.reaction"})
#: State event types that may carry content besides those the module governs
#: itself (``rooms/rules.py``): what stock clients need for a room's name, topic,
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

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


#: MIME types the media section may name: what libmagic reports for photos,
#: audio, video and documents (``media/rules.py`` maps libmagic's aliases).
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


# -- the value parsers: each takes the raw value and its key path -----------------------------

#: what every key's parser is: raw YAML value and key path in, the setting out
Parse = Callable[[Any, tuple[str, ...]], Any]


def _fail(path: tuple[str, ...], expected: str, found: Any) -> ConfigError:
    key = ".".join(path) or "module config"
    return ConfigError(f"{key}: expected {expected}, got {found!r}", path=path)


def _mapping(value: Any, path: tuple[str, ...], allowed: Sequence[str]) -> Mapping[str, Any]:
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
        seconds = duration_seconds(value)
        if seconds is not None:
            return seconds
    raise _fail(path, "a duration such as '7d' (units s, m, h, d, w)", value)


def duration_seconds(text: str) -> int | None:
    """'90s', '15m', '7d', '2w' in seconds; None for anything else. The one reading of the
    policy's durations: the config and the ``police-policy`` CLI both use it."""
    match = _DURATION.match(text.strip())
    return int(match.group(1)) * _DURATION_UNITS_S[match.group(2)] if match else None


def _bool(value: Any, path: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail(path, "true or false", value)


def _list_of(value: Any, path: tuple[str, ...], item: Callable[[Any, tuple[str, ...]], T]) -> list[T]:
    if not isinstance(value, list):
        raise _fail(path, "a list", value)
    return [item(entry, (*path[:-1], f"{path[-1]}[{i}]")) for i, entry in enumerate(value)]


def _frozenset_of(
    item: Callable[[Any, tuple[str, ...]], T],
) -> Callable[[Any, tuple[str, ...]], frozenset[T]]:
    return lambda value, path: frozenset(_list_of(value, path, item))


def _tuple_of(item: Callable[[Any, tuple[str, ...]], T]) -> Callable[[Any, tuple[str, ...]], tuple[T, ...]]:
    return lambda value, path: tuple(_list_of(value, path, item))


def _choice(options: frozenset[str]) -> Callable[[Any, tuple[str, ...]], str]:
    def parse(value: Any, path: tuple[str, ...]) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise _fail(path, f"one of {', '.join(sorted(options))}", value)

    return parse


_DNS_NAME = re.compile(r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*")
_PORT = re.compile(r"[0-9]{1,5}")


def _server_name(value: str) -> tuple[str, int | None] | None:
    """Host and port of a server name as the Matrix spec defines it (a DNS name, an IPv4
    address or a bracketed IPv6 literal, then ``:port``); None when it is not one."""
    host, port = value, None
    bracket = value.rfind("]")
    colon = value.rfind(":")
    if colon > bracket:
        host, digits = value[:colon], value[colon + 1 :]
        if not _PORT.fullmatch(digits):
            return None
        port = int(digits)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return host, port
    if len(host) > 255 or not _DNS_NAME.fullmatch(host):
        return None
    return host, port


def normalise_server_name(value: Any, path: tuple[str, ...]) -> str:
    """A Matrix server name (host plus optional port), host lower-cased."""
    if isinstance(value, str):
        parsed = _server_name(value)
        if parsed is not None:
            host, port = parsed
            if port is None:
                return host.lower()
            if 0 < port < 65536:
                return f"{host.lower()}:{port}"
    raise _fail(path, "a Matrix server name such as 'polizei-by.example' or 'hs.example:8448'", value)


def _join_rules(value: Any, path: tuple[str, ...]) -> frozenset[str]:
    rules = frozenset(_list_of(value, path, _choice(KNOWN_JOIN_RULES)))
    if "invite" not in rules:
        raise _fail(
            path, "a list that includes 'invite' (the rule the module gives rooms that ask for none)", value
        )
    return rules


def _event_type(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, str) and 0 < len(value) <= _EVENT_TYPE_MAX and value.strip() == value:
        return value
    raise _fail(path, "an event type such as 'm.room.topic'", value)


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


def _auditor_user(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, str) and _USER_ID.match(value):
        return value
    raise _fail(path, "a user ID such as '@auditor:police.example'", value)


def _auditor_id(value: Any, path: tuple[str, ...]) -> str | None:
    return None if value is None else _auditor_user(value, path)


def _auditor_ids(value: Any, path: tuple[str, ...]) -> tuple[str, ...]:
    ids = _list_of(value, path, _auditor_user)
    if not ids:
        raise _fail(path, "a non-empty list of user IDs such as ['@auditor-1:police.example']", value)
    for index, user in enumerate(ids):
        if user in ids[:index]:
            raise _fail((*path[:-1], f"{path[-1]}[{index}]"), "a bot not listed already", user)
    return tuple(ids)


def _localpart(value: Any, path: tuple[str, ...]) -> str:
    if isinstance(value, str) and _LOCALPART.match(value):
        return value
    raise _fail(path, "a user ID localpart such as 'policy' (lower-case letters, digits, ._=-/+)", value)


def parse_size(value: Any, path: tuple[str, ...]) -> int:
    """A positive size in bytes, or with a K, M or G suffix (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip().upper())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise _fail(path, "a size such as '30M' (bytes, or K, M, G)", value)


def _allowed_media(value: Any, path: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(value, Mapping) or not value:
        raise _fail(path, "a mapping of MIME type to size, such as {image/jpeg: 30M}", value)
    allowed = {}
    for mime, size in value.items():
        if mime not in KNOWN_MEDIA_TYPES:
            raise ConfigError(
                f"media.allowed.{mime}: unknown MIME type; "
                f"expected one of: {', '.join(sorted(KNOWN_MEDIA_TYPES))}",
                path=(*path, str(mime)),
            )
        allowed[mime] = parse_size(size, (*path, str(mime)))
    return allowed


# -- the keys: each section a frozen attrs class, each key a field with its parser ------------

_PARSE = "parse"


def _key(parse: Parse, default: Any, **field: Any) -> Any:
    """A config key: its parser and default, declared once; ``parse_config`` reads the
    accepted keys, the unknown-key errors and ``config_keys()`` from these fields."""
    return attrs.field(default=default, metadata={_PARSE: parse}, **field)


@attrs.frozen
class RoomsConfig:
    """Section ``rooms``: what every room on this server looks like."""

    #: join rules a room may be given; the module sets "invite" when none is asked for
    allowed_join_rules: frozenset[str] = _key(_join_rules, frozenset({"invite"}))
    #: history visibility set at creation when the request leaves it out
    default_history_visibility: str = _key(_choice(KNOWN_HISTORY_VISIBILITY), "shared")
    #: refuse events sent in clear text unless their type is listed below (clients must encrypt)
    refuse_unencrypted_messages: bool = _key(_bool, True)
    #: non-state event types that may be sent unencrypted
    clear_event_types: frozenset[str] = _key(_frozenset_of(_event_type), DEFAULT_CLEAR_EVENT_TYPES)
    #: state event types that may carry content (state cannot be encrypted)
    clear_state_types: frozenset[str] = _key(_frozenset_of(_event_type), DEFAULT_CLEAR_STATE_TYPES)


@attrs.frozen
class FederationConfig:
    """Section ``federation``: the closed network of police homeservers."""

    #: normalised server names (host lower-cased, port kept); the own server is implied
    allowed_servers: frozenset[str] = _key(_frozenset_of(normalise_server_name), frozenset())


@attrs.frozen
class RetentionConfig:
    """Section ``retention``: the device tier and the audit tier, in seconds."""

    device_lifetime: int = _key(parse_duration, 7 * 86400)
    audit_lifetime: int = _key(parse_duration, 90 * 86400)
    #: seconds between two runs of the redaction sweep
    sweep_interval: int = _key(parse_duration, 5 * 60)
    #: localpart of the local user that redacts expired content
    system_user: str = _key(_localpart, "policy")


@attrs.frozen
class DevicesConfig:
    """Section ``devices``: only MDM-enrolled devices log in and send events."""

    enrollment_required: bool = _key(_bool, True)
    #: seconds an approved pending login stays usable
    approval_window: int = _key(parse_duration, 15 * 60)
    #: networks logins may come from; empty means any address
    login_networks: tuple[IPNetwork, ...] = _key(_tuple_of(_network), ())
    #: seconds between two sweeps for non-enrolled devices and expired enrollments
    sweep_interval: int = _key(parse_duration, 60)
    #: stock-client logins of ``auto_approve_users`` from these networks are
    #: enrolled at once, without an operator's approval
    auto_approve_networks: tuple[IPNetwork, ...] = _key(_tuple_of(_network), ())
    auto_approve_users: frozenset[str] = _key(_frozenset_of(_user_id), frozenset())


@attrs.frozen
class MediaConfig:
    """Section ``media``: what may be uploaded, judged by content; sizes in bytes."""

    #: detected MIME type -> largest allowed size
    allowed: Mapping[str, int] = _key(
        _allowed_media,
        DEFAULT_ALLOWED_MEDIA,
        converter=lambda value: MappingProxyType(dict(value)),
        hash=False,
    )
    #: uploads that are opaque ciphertext (E2EE attachments)
    encrypted_max_size: int = _key(parse_size, 500 * _KIB**2)
    #: per user, across all uploads, over the last 24 hours
    daily_upload_quota: int = _key(parse_size, 5 * _KIB**3)
    #: refuse PDFs with JavaScript, actions run on opening or on events, launch
    #: actions, embedded files, forms that send data (``media/filetype.py``)
    refuse_pdf_active_content: bool = _key(_bool, True)
    #: refuse images with data after their end marker, and files of allowed
    #: types hiding an archive (``media/filetype.py``)
    refuse_trailing_data: bool = _key(_bool, True)

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
    """Section ``auditor``: the auditor bot, a member of every room; or several bots
    (shards of one archive), one of which is seated in each room."""

    #: the bot's user ID (a user of this server); None: no auditor bot (or ``user_ids``)
    user_id: str | None = _key(_auditor_id, None)
    #: several bots' user IDs, each archiving the rooms it is seated in (``rooms/seating.py``)
    user_ids: tuple[str, ...] = _key(_auditor_ids, ())

    @property
    def bots(self) -> tuple[str, ...]:
        """Every auditor bot, whichever key named it."""
        return (self.user_id,) if self.user_id is not None else self.user_ids


@attrs.frozen
class DirectoryConfig:
    """Section ``directory``: the user directory (the search behind Element's "Start chat")."""

    #: users left out of every search result, besides the retention system user
    #: and the auditor bot (always left out); they stay visible as room members
    hidden_users: frozenset[str] = _key(_frozenset_of(_user_id), frozenset())


@attrs.frozen
class PolicyConfig:
    """The whole config: a section a field, each parsed by its class's keys."""

    rooms: RoomsConfig = RoomsConfig()
    federation: FederationConfig = FederationConfig()
    retention: RetentionConfig = RetentionConfig()
    devices: DevicesConfig = DevicesConfig()
    media: MediaConfig = MediaConfig()
    auditor: AuditorConfig = AuditorConfig()
    directory: DirectoryConfig = DirectoryConfig()


# -- what one key cannot say alone ------------------------------------------------------------

Check = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


def _check_retention(values: Mapping[str, Any], section: Mapping[str, Any]) -> None:
    """Content must leave devices before it leaves the audit archive."""
    device, audit = values["device_lifetime"], values["audit_lifetime"]
    if device <= audit:
        return
    # name the key the operator wrote: the one that is not at its default
    if "device_lifetime" in section:
        key, expected, found = "device_lifetime", f"at most retention.audit_lifetime ({audit}s)", device
    else:
        key, expected, found = "audit_lifetime", f"at least retention.device_lifetime ({device}s)", audit
    raise ConfigError(
        f"retention.{key}: expected {expected}, got {found}s; content must leave devices "
        "before it leaves the audit archive",
        path=("retention", key),
    )


def _check_auto_approve(values: Mapping[str, Any], section: Mapping[str, Any]) -> None:
    """``auto_approve_networks`` and ``auto_approve_users`` come together."""
    networks, users = values["auto_approve_networks"], values["auto_approve_users"]
    if networks and not users:
        raise _fail(
            ("devices", "auto_approve_users"),
            "the user IDs (the dispatchers) whose logins from devices.auto_approve_networks "
            "are enrolled at once",
            section.get("auto_approve_users", []),
        )
    if users and not networks:
        raise _fail(
            ("devices", "auto_approve_networks"),
            "the networks (CIDR, the control-room LAN) from which the logins of "
            "devices.auto_approve_users are enrolled at once",
            section.get("auto_approve_networks", []),
        )


def _check_auditor(values: Mapping[str, Any], section: Mapping[str, Any]) -> None:
    """One bot (``user_id``) or several (``user_ids``), not both."""
    if values["user_id"] is not None and values["user_ids"]:
        raise ConfigError(
            "auditor.user_ids: not together with auditor.user_id; "
            "list every bot in user_ids (one bot: either key)",
            path=("auditor", "user_ids"),
        )


_CHECKS: Mapping[type, Check] = {
    RetentionConfig: _check_retention,
    DevicesConfig: _check_auto_approve,
    AuditorConfig: _check_auditor,
}


# -- parsing ------------------------------------------------------------------------------------


def _keys(section: type) -> tuple[Attribute[Any], ...]:
    return cast("tuple[Attribute[Any], ...]", attrs.fields(section))


def _parse_section(section: type[T], raw: Any, path: tuple[str, ...]) -> T:
    keys = _keys(section)
    given = _mapping(raw, path, [key.name for key in keys])
    values = {
        key.name: key.metadata[_PARSE](given[key.name], (*path, key.name))
        if key.name in given
        else key.default
        for key in keys
    }
    check = _CHECKS.get(section)
    if check is not None:
        check(values, given)
    return section(**{key.name: values[key.name] for key in keys if key.name in given})


def parse_config(raw: Any) -> PolicyConfig:
    """Turn the module's YAML config into a ``PolicyConfig`` or raise ``ConfigError``."""
    sections = _keys(PolicyConfig)
    top = _mapping(raw, (), [section.name for section in sections])
    parsed: dict[str, Any] = {
        section.name: _parse_section(type(section.default), top.get(section.name), (section.name,))
        for section in sections
    }
    return PolicyConfig(**parsed)


def config_keys() -> Iterator[tuple[str, str]]:
    """Every key as (section, key), in the order the classes declare them (the policy
    guide's key table lists exactly these: ``tests/unit/test_docs.py``)."""
    for section in _keys(PolicyConfig):
        for key in _keys(type(section.default)):
            yield section.name, key.name
