"""Reading a homeserver.yaml for the commands that take one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class HomeserverFileError(Exception):
    """Why the file is no usable homeserver config, prefixed with its path."""


def read_homeserver_config(path: Path) -> dict[str, Any]:
    try:
        homeserver = yaml.safe_load(path.read_text(encoding="utf8"))
    except OSError as error:
        raise HomeserverFileError(f"{path}: cannot read the file: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise HomeserverFileError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(homeserver, dict):
        raise HomeserverFileError(
            f"{path}: expected a homeserver config (a YAML mapping), got {type(homeserver).__name__}"
        )
    return homeserver
