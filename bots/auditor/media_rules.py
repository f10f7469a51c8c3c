"""Media-rule compliance of decrypted attachments, judged exactly as the module judges uploads.

The server only sees the ciphertext of an end-to-end encrypted attachment, so
the module's media rules cannot look at what it really is; the bot can. To
give the same verdict, it uses the module's own pieces: the policy YAML is
parsed by ``synapse_police_policy.config`` (no second copy of the rules), the
type comes from ``synapse_police_policy.media.filetype.sniff`` and the verdict from
``synapse_police_policy.media.rules.check_file``. Unlike on the server, content of
no known type is refused: after decryption "unrecognised" cannot mean
ciphertext.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from synapse_police_policy.api import MODULE_NAME
from synapse_police_policy.config import ConfigError as PolicyConfigError
from synapse_police_policy.config import MediaConfig, PolicyConfig, parse_config
from synapse_police_policy.media.filetype import sniff
from synapse_police_policy.media.rules import allowed_list, canonical, check_file
from synapse_police_policy.ops.homeserver_file import HomeserverFileError, read_homeserver_config

#: how the module is named in a homeserver.yaml's ``modules:`` list


class PolicyFileError(Exception):
    """The policy file cannot be read or is no valid module config; the message says which key."""


@attrs.frozen
class Verdict:
    """What the bytes are and, when they break the rules, which rule and why (no content)."""

    detected: str
    size: int
    rule: str | None = None
    reason: str | None = None

    @property
    def allowed(self) -> bool:
        return self.rule is None


def load_policy(path: Path) -> PolicyConfig:
    """The module's config from ``path``: either the module's own config block
    (``config/police_policy.yaml``) or a homeserver.yaml that loads the module."""
    try:
        raw: Any = read_homeserver_config(path)
    except HomeserverFileError as error:
        raise PolicyFileError(str(error)) from None
    prefix = ""
    if "modules" in raw:
        raw, prefix = _module_entry(raw, path)
    try:
        return parse_config(raw or {})
    except PolicyConfigError as error:
        raise PolicyFileError(f"{path}: {prefix}{error.msg}") from None


def _module_entry(homeserver: Mapping[str, Any], path: Path) -> tuple[Any, str]:
    modules = homeserver.get("modules")
    for index, entry in enumerate(modules if isinstance(modules, list) else []):
        if isinstance(entry, Mapping) and entry.get("module") == MODULE_NAME:
            return entry.get("config") or {}, f"modules[{index}].config."
    raise PolicyFileError(f"{path}: no '{MODULE_NAME}' entry under modules")


@contextlib.contextmanager
def _in_memory_file(data: bytes) -> Iterator[str]:
    """A path to ``data`` that never reaches the disk (a memfd): the plaintext of
    an encrypted attachment must not be left in the file system."""
    try:
        descriptor = os.memfd_create("auditor-attachment", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux: a private temporary file, removed at once
        with tempfile.NamedTemporaryFile(prefix="auditor-", delete=True) as file:
            file.write(data)
            file.flush()
            yield file.name
        return
    try:
        with os.fdopen(descriptor, "wb", closefd=False) as out:
            out.write(data)
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)


def check_attachment(rules: MediaConfig, data: bytes) -> Verdict:
    """The module's verdict on decrypted bytes (blocking: libmagic; call it in a thread)."""
    with _in_memory_file(data) as path:
        sniffed = sniff(path, rules)
    # decrypted bytes are no ciphertext: content of no known type is refused here
    denial = check_file(rules, sniffed, plaintext=True)
    if denial is None:
        return Verdict(detected=sniffed.mime, size=sniffed.size)
    return Verdict(detected=sniffed.mime, size=sniffed.size, rule=denial.rule, reason=denial.reason)


def allowed_summary(rules: MediaConfig) -> str:
    """The allowed types and sizes, as the module words them."""
    return allowed_list(rules)


def size_limit(rules: MediaConfig, detected: str) -> int:
    """The largest size allowed for content detected as ``detected``: its type's limit, else
    (content judged as ciphertext) ``encrypted_max_size``, as ``check_file`` judges it."""
    return rules.allowed.get(canonical(detected), rules.encrypted_max_size)


__all__ = ["PolicyFileError", "Verdict", "allowed_summary", "check_attachment", "load_policy", "size_limit"]
