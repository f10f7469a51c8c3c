"""``police-policy``: the operator's command line."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synapse.config._base import ConfigError as SynapseConfigError

from ..config import ConfigError
from . import devices as devices_cli
from .bootstrap import BootstrapError
from .check_config import find_problems, find_warnings
from .homeserver_file import HomeserverFileError, read_homeserver_config
from .retention_status import retention_status

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNREADABLE = 2


def check_config(path: Path) -> int:
    homeserver = _read_homeserver(path)
    if homeserver is None:
        return EXIT_UNREADABLE
    findings = find_problems(homeserver)
    for finding in findings:
        print(finding)
    for warning in find_warnings(homeserver):  # true only with a proxy set up right: no exit status
        print(f"warning: {warning}")
    if findings:
        print(f"{path}: {len(findings)} setting(s) contradict the police policy", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{path}: consistent with the police policy")
    return EXIT_OK


def _read_homeserver(path: Path) -> dict[str, Any] | None:
    """The homeserver config as a mapping, or None after saying why not."""
    try:
        return read_homeserver_config(path)
    except HomeserverFileError as error:
        print(error, file=sys.stderr)
        return None


def show_retention_status(path: Path) -> int:
    homeserver = _read_homeserver(path)
    if homeserver is None:
        return EXIT_UNREADABLE
    try:
        status = retention_status(homeserver)
    except (ValueError, ConfigError, SynapseConfigError, BootstrapError) as error:
        print(f"{path}: {getattr(error, 'msg', None) or error}", file=sys.stderr)
        return EXIT_PROBLEMS
    print("\n".join(status.lines()))
    return EXIT_OK


def _tolerant_output() -> None:
    """A file name that is not UTF-8 (argv carries it as surrogates) or a
    terminal that is not UTF-8 must not end a command in a traceback."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_output()
    parser = argparse.ArgumentParser(prog="police-policy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-config",
        help="report homeserver settings that contradict the police policy module's config",
    )
    check.add_argument("homeserver_yaml", type=Path, metavar="HOMESERVER_YAML")
    devices_cli.add_parser(commands)
    retention = commands.add_parser("retention", help="the retention tiers (run on the server host)")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    status = retention_commands.add_parser(
        "status", help="sweep progress and lag, redactions, media and events past their tier"
    )
    status.add_argument("-c", "--config", type=Path, required=True, metavar="HOMESERVER_YAML")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.homeserver_yaml)
    if args.command == "devices":
        return devices_cli.run(args)
    if args.command == "retention":
        return show_retention_status(args.config)
    parser.error(f"unknown command {args.command}")
    return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
