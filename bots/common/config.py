"""Configuration helpers both bots share: YAML in, checked values out.

Every problem raises ``ConfigError`` whose message starts with the full key
path and says what was expected and what was found, so an operator can fix
the file without reading code. ``strip`` keeps each bot's way with surrounding
blanks (the dispatch bot strips strings, the auditor takes them as written).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from .crypto import KeyLoadError, load_key

USER_ID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-:\[\]]+\Z")
DEVICE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,255}\Z")
_DURATION = re.compile(r"^(\d+)\s*([a-z])\Z")


#: the settings of the bot's account and device, which every bot has
ACCOUNT_KEYS = frozenset(
    {"homeserver_url", "user_id", "password", "password_file", "device_id", "store_dir", "identity_file"}
)
#: where the cross-signing identity is kept when ``identity_file`` is not set
IDENTITY_FILE = "cross-signing-identity.json"


class ConfigError(Exception):
    """The configuration is wrong; the message names the key and what was expected."""


@attrs.frozen
class Account:
    """The bot's account on its enrolled device: what ``bots.common.session`` logs in with.
    Each bot's ``Config`` extends it."""

    homeserver_url: str
    user_id: str
    password: str = attrs.field(repr=False)
    #: the device enrolled for the bot (the module refuses a login on any other)
    device_id: str
    #: nio's E2EE store and the saved access token
    store_dir: Path
    #: the cross-signing identity's private keys, sealed with the bot's main key
    identity_file: Path


def fail(key: str, expected: str, found: Any) -> ConfigError:
    """The one shape of every error: ``key: expected X, got Y``."""
    return ConfigError(f"{key}: expected {expected}, got {found!r}")


def duration(value: Any, key: str, units: Mapping[str, int], example: str) -> int:
    """A positive duration such as ``example`` in seconds; ``units`` maps a unit letter to seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match and int(match.group(1)) > 0 and match.group(2) in units:
            return int(match.group(1)) * units[match.group(2)]
    raise fail(key, f"a positive duration such as '{example}' (units {', '.join(units)})", value)


def string(
    raw: Mapping[str, Any], key: str, path: str | None = None, *, required: bool = True, strip: bool = False
) -> str | None:
    """A non-empty string setting; ``path`` names it in errors when it sits deeper than the top."""
    path = path or key
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{path}: required, expected a non-empty string")
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(path, "a non-empty string", value)
    return value.strip() if strip else value


def path(raw: Mapping[str, Any], key: str, base: Path, *, strip: bool = False) -> Path:
    """A required path; a relative one is relative to ``base`` (the config file's directory)."""
    value = string(raw, key, strip=strip)
    assert value is not None
    found = Path(value).expanduser()
    return found if found.is_absolute() else base / found


def store_paths(raw: Mapping[str, Any], base: Path, *, strip: bool = False) -> tuple[Path, Path]:
    """``store_dir`` and ``identity_file`` (by default in the store; set it elsewhere to keep
    the identity when the store is lost)."""
    store = path(raw, "store_dir", base, strip=strip)
    identity = (
        path(raw, "identity_file", base, strip=strip) if "identity_file" in raw else store / IDENTITY_FILE
    )
    return store, identity


def exactly_one(
    raw: Mapping[str, Any], first: str, second: str, *, strip: bool = False
) -> tuple[str | None, str | None]:
    """Two settings of which exactly one must be given (a secret inline or in a file)."""
    values = string(raw, first, required=False, strip=strip), string(raw, second, required=False, strip=strip)
    if (values[0] is None) == (values[1] is None):
        raise ConfigError(
            f"{first}, {second}: expected exactly one of the two, got " + ("both" if values[0] else "neither")
        )
    return values


def secret_file(raw: Mapping[str, Any], key: str, base: Path, what: str, *, strip: bool = False) -> str:
    """A secret read from the file that setting ``key`` names (secrets stay out of the config)."""
    file = path(raw, key, base, strip=strip)
    try:
        secret = file.read_text().strip()
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {file}: {error.strerror}") from None
    if not secret:
        raise ConfigError(f"{key}: expected a file holding {what}, {file} is empty")
    return secret


def key(raw: Mapping[str, Any], setting: str, base: Path, what: str, *, strip: bool = False) -> bytes:
    """A 32-byte main key from ``<setting>_file`` or ``<setting>_env``, exactly one: the key
    itself never stands in the config, so it can be kept apart from what it protects."""
    file_key, env_key = f"{setting}_file", f"{setting}_env"
    file, env = exactly_one(raw, file_key, env_key, strip=strip)
    if file is not None:
        file = str(path(raw, file_key, base, strip=strip))
    try:
        return load_key(file=file, env=env, what=what)
    except KeyLoadError as error:
        raise ConfigError(f"{file_key if file is not None else env_key}: {error}") from None


def password(raw: Mapping[str, Any], base: Path, *, strip: bool = False) -> str:
    """The bot account's password: ``password`` inline or ``password_file``, exactly one."""
    inline, _file = exactly_one(raw, "password", "password_file", strip=strip)
    if inline is not None:
        return inline
    return secret_file(raw, "password_file", base, "the password", strip=strip)


def settings(raw: Any, keys: frozenset[str]) -> Mapping[str, Any]:
    """The top level: a mapping with known keys only (a typo must not pass as a default)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"(top level): expected a mapping of settings, got {raw!r}")
    unknown = sorted(str(key) for key in raw if key not in keys)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; expected one of: {', '.join(sorted(keys))}")
    return raw


def homeserver_url(raw: Mapping[str, Any], *, strip: bool = False) -> str:
    """``homeserver_url``: http(s), without a trailing slash (nio adds the API paths)."""
    url = string(raw, "homeserver_url", strip=strip)
    assert url is not None
    if not url.startswith(("http://", "https://")):
        raise fail("homeserver_url", "an http:// or https:// URL", url)
    return url.rstrip("/")


def device_id(raw: Mapping[str, Any], *, strip: bool = False) -> str:
    """``device_id``: the device enrolled for the bot (the module refuses logins on others)."""
    value = string(raw, "device_id", strip=strip)
    if not DEVICE_ID.match(value or ""):
        raise fail("device_id", "the enrolled device ID (letters, digits, '.', '_', '-')", value)
    assert value is not None
    return value


def read_yaml(file: str | os.PathLike[str]) -> tuple[Any, Path]:
    """The parsed YAML document at ``file`` and its directory (the base of relative paths)."""
    file = Path(file)
    try:
        text = file.read_text()
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the configuration: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    return raw, file.resolve().parent
