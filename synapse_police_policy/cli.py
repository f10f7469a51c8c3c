"""``police-policy``: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import devices_cli
from .check_config import find_problems

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNREADABLE = 2


def check_config(path: Path) -> int:
    try:
        homeserver = yaml.safe_load(path.read_text(encoding="utf8"))
    except OSError as error:
        print(f"{path}: cannot read the file: {error.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        print(f"{path}: not valid YAML: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    if not isinstance(homeserver, dict):
        print(
            f"{path}: expected a homeserver config (a YAML mapping), got {type(homeserver).__name__}",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    findings = find_problems(homeserver)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{path}: {len(findings)} setting(s) contradict the police policy", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{path}: consistent with the police policy")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="police-policy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-config",
        help="report homeserver settings that contradict the police policy module's config",
    )
    check.add_argument("homeserver_yaml", type=Path, metavar="HOMESERVER_YAML")
    devices_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.homeserver_yaml)
    if args.command == "devices":
        return devices_cli.run(args)
    parser.error(f"unknown command {args.command}")
    return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
