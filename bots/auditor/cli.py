"""``police-audit``: check export bundles and the consultation log.

Exit status: 0 verified, 1 verification failed (each problem is printed),
2 the input could not be read.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from .consultation_log import ConsultationLog, NotAConsultationLog
from .export import ExportUnreadable, verify_export

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREADABLE = 2


def _error(message: str) -> None:
    print(message, file=sys.stderr)


def verify_export_command(path: Path, public_key: Path | None) -> int:
    trusted_pem = None
    if public_key is not None:
        try:
            trusted_pem = public_key.read_bytes()
        except OSError as error:
            _error(f"{public_key}: cannot read the public key: {error.strerror}")
            return EXIT_UNREADABLE
    try:
        result = verify_export(path, trusted_pem)
    except ValueError as error:
        _error(f"{public_key}: not an Ed25519 public key in PEM format ({error})")
        return EXIT_UNREADABLE
    except ExportUnreadable as error:
        _error(str(error))
        return EXIT_UNREADABLE

    for problem in result.problems:
        print(f"{path}: {problem}")
    if not result.ok:
        _error(f"{path}: verification FAILED ({len(result.problems)} problem(s))")
        return EXIT_FAILED
    request_id = (result.request or {}).get("request_id")
    print(f"{path}: export {request_id} verified: every file matches the signed manifest")
    if result.signature == "trusted":
        print(f"signed by the trusted key {result.embedded_fingerprint}")
    else:
        print(
            f"signature valid under the key embedded in the bundle ({result.embedded_fingerprint}) only:"
            " that shows the bundle is unchanged since signing, not who signed it."
            " Pass --public-key with the auditor bot's published key to check that."
        )
    return EXIT_OK


def verify_log_command(path: Path) -> int:
    if not path.is_file():
        _error(f"{path}: no such file")
        return EXIT_UNREADABLE
    try:
        with ConsultationLog(path, read_only=True) as log:
            result = log.verify()
    except NotAConsultationLog as error:
        _error(f"{path}: {error}")
        return EXIT_UNREADABLE
    except sqlite3.Error as error:
        _error(f"{path}: cannot read the SQLite database: {error}")
        return EXIT_UNREADABLE
    if not result.ok:
        print(f"{path}: {result.describe()}")
        _error(f"{path}: verification FAILED at entry {result.broken_seq}")
        return EXIT_FAILED
    print(f"{path}: {result.describe()}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="police-audit", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "verify-export",
        help="check an export bundle's signature and files (exit 0 ok, 1 failed, 2 unreadable)",
    )
    export.add_argument("file", type=Path, metavar="FILE", help="the export bundle (zip)")
    export.add_argument(
        "--public-key",
        type=Path,
        metavar="PEM",
        help="the auditor bot's published Ed25519 public key; without it only the key in the bundle is used",
    )
    log = commands.add_parser(
        "verify-log", help="check the consultation log's hash chain (exit 0 ok, 1 broken, 2 unreadable)"
    )
    log.add_argument("db", type=Path, metavar="DB", help="the consultation log (SQLite)")
    args = parser.parse_args(argv)
    if args.command == "verify-export":
        return verify_export_command(args.file, args.public_key)
    if args.command == "verify-log":
        return verify_log_command(args.db)
    parser.error(f"unknown command {args.command}")
    return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
