"""``police-audit``: check export bundles, the consultation log and the archive.

Exit status: 0 verified, 1 verification failed (each problem is printed),
2 the input could not be read or no trusted key was given.

Trust: a bundle and the exported chain heads count only when signed by the
auditor bot's export signing key. Which key that is comes from
``--public-key PEM``, ``--fingerprint HEX`` or, by default, the
``signing_key_fingerprint`` pinned in the bot's config (``--config``, else
``$POLICE_AUDIT_CONFIG``, else ``config/auditor.yaml``). Without any of
them the check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..common.config import ConfigError, read_yaml
from .chain_heads import append_head, check_heads, parse_heads, read_heads, signed_head
from .config import Config, signing_key_fingerprint
from .consultation_log import ChainBroken, ConsultationLog, NotAConsultationLog
from .export import ExportUnreadable, key_fingerprint, load_public_key_pem, verify_export

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREADABLE = 2

#: the bot's config when neither --config nor $POLICE_AUDIT_CONFIG names one
DEFAULT_CONFIG = Path("config/auditor.yaml")
CONFIG_ENV = "POLICE_AUDIT_CONFIG"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Untrusted(Exception):
    """No trusted key could be determined; the message says why and what to give."""


@attrs.frozen
class _Trust:
    pem: bytes | None
    fingerprint: str
    source: str


def _error(message: str) -> None:
    print(message, file=sys.stderr)


def _trust(public_key: Path | None, fingerprint: str | None, config: Path | None) -> _Trust:
    """The trusted signing key: --public-key, --fingerprint, or the config's pin."""
    if public_key is not None:
        try:
            pem = public_key.read_bytes()
        except OSError as error:
            raise _Untrusted(f"{public_key}: cannot read the public key: {error.strerror}") from None
        try:
            key = load_public_key_pem(pem)
        except ValueError as error:
            raise _Untrusted(f"{public_key}: not an Ed25519 public key in PEM format ({error})") from None
        return _Trust(pem, key_fingerprint(key), f"the public key {public_key}")
    if fingerprint is not None:
        given = fingerprint.strip().lower()
        if not _HEX64.fullmatch(given):
            raise _Untrusted(f"--fingerprint: expected 64 hex digits, got {fingerprint!r}")
        return _Trust(None, given, "--fingerprint")
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else DEFAULT_CONFIG)
    if not path.is_file():
        raise _Untrusted(
            f"no trusted signing key: give --public-key or --fingerprint, or the bot's config with "
            f"signing_key_fingerprint (--config; {path} does not exist)"
        )
    try:
        raw, _base = read_yaml(path)
        pinned = signing_key_fingerprint(raw) if isinstance(raw, dict) else None
    except ConfigError as error:
        raise _Untrusted(f"{path}: {error}") from None
    if pinned is None:
        raise _Untrusted(
            f"no trusted signing key: {path} pins no signing_key_fingerprint; pin the fingerprint the bot "
            "logs at start-up, or give --public-key or --fingerprint"
        )
    return _Trust(None, pinned, f"the fingerprint pinned in {path}")


def verify_export_command(
    path: Path, public_key: Path | None, fingerprint: str | None, config: Path | None
) -> int:
    try:
        trust = _trust(public_key, fingerprint, config)
    except _Untrusted as error:
        _error(f"{path}: verification FAILED: {error}")
        return EXIT_UNREADABLE
    try:
        result = verify_export(
            path, trust.pem, trusted_fingerprint=None if trust.pem is not None else trust.fingerprint
        )
    except ExportUnreadable as error:
        _error(str(error))
        return EXIT_UNREADABLE

    for problem in result.problems:
        print(f"{path}: {problem}")
    if not result.ok or result.signature != "trusted":
        _error(f"{path}: verification FAILED ({len(result.problems)} problem(s))")
        return EXIT_FAILED
    request_id = (result.request or {}).get("request_id")
    print(f"{path}: export {request_id} verified: every file matches the signed manifest")
    print(f"signed by the trusted key {result.embedded_fingerprint} ({trust.source})")
    return EXIT_OK


def verify_log_command(
    path: Path, heads: Path | None, public_key: Path | None, fingerprint: str | None, config: Path | None
) -> int:
    if not path.is_file():
        _error(f"{path}: no such file")
        return EXIT_UNREADABLE
    trust = None
    lines: list[str] = []
    if heads is not None:
        try:
            trust = _trust(public_key, fingerprint, config)
            lines = read_heads(heads)
        except _Untrusted as error:
            _error(f"{heads}: cannot check the chain heads: {error}")
            return EXIT_UNREADABLE
        except OSError as error:
            _error(f"{heads}: cannot read the chain heads: {error.strerror}")
            return EXIT_UNREADABLE
    try:
        with ConsultationLog(path, read_only=True) as log:
            result = log.verify()
            problems: list[str] = []
            if trust is not None:
                parsed, problems = parse_heads(lines, trust.fingerprint)
                problems += check_heads(log, parsed, log._clock())
                if not parsed and not problems:
                    problems.append("the heads file holds no chain head")
    except NotAConsultationLog as error:
        _error(f"{path}: {error}")
        return EXIT_UNREADABLE
    except sqlite3.Error as error:
        _error(f"{path}: cannot read the SQLite database: {error}")
        return EXIT_UNREADABLE
    print(f"{path}: {result.describe()}")
    for problem in problems:
        print(f"{path}: {problem}")
    if not result.ok:
        _error(f"{path}: verification FAILED at entry {result.broken_seq}")
        return EXIT_FAILED
    if problems:
        _error(f"{path}: verification FAILED: {len(problems)} problem(s) with the exported chain heads")
        return EXIT_FAILED
    if trust is not None:
        print(f"{path}: {len(parsed)} exported head(s) agree with the log")
    return EXIT_OK


def _bot_config(path: Path | None) -> Config:
    from .config import load_config

    return load_config(path or Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG))


def verify_archive_command(config_path: Path | None) -> int:
    from .archive import Archive, ArchiveError, CorruptRecordError

    try:
        config = _bot_config(config_path)
    except ConfigError as error:
        _error(str(error))
        return EXIT_UNREADABLE
    try:
        if config.archive_postgres is not None:
            from .archive_pg import PostgresArchive

            assert config.attachments_dir is not None
            archive: Archive = PostgresArchive(
                config.archive_postgres, config.archive_key, files=config.attachments_dir, create=False
            )
        else:
            assert config.archive_path is not None
            archive = Archive(config.archive_path, config.archive_key, create=False)
    except CorruptRecordError as error:
        _error(f"archive verification FAILED: {error}")
        return EXIT_FAILED
    except ArchiveError as error:
        _error(f"cannot open the archive: {error}")
        return EXIT_UNREADABLE
    with archive:
        problems = 0
        for problem in archive.verify_records():
            print(problem)
            problems += 1
        count = archive.count()
    if problems:
        _error(f"archive verification FAILED: {problems} of {count} record(s) altered")
        return EXIT_FAILED
    print(f"archive intact: {count} message(s), every column authenticated")
    return EXIT_OK


def export_head_command(config_path: Path | None) -> int:
    """Append the log's signed head to ``chain_heads_file`` and print it (for a timer)."""
    from .export import SigningKeyError, load_signing_key

    try:
        config = _bot_config(config_path)
        key = load_signing_key(config.signing_key_file, config.signing_key_password)
    except (ConfigError, SigningKeyError, OSError) as error:
        _error(str(error))
        return EXIT_UNREADABLE
    if config.signing_key_fingerprint and key_fingerprint(key.public_key()) != config.signing_key_fingerprint:
        _error(f"{config.signing_key_file}: not the pinned signing key {config.signing_key_fingerprint}")
        return EXIT_FAILED
    assert config.chain_heads_file is not None
    try:
        with ConsultationLog(config.log_path, read_only=True) as log:
            line = signed_head(log, key, log._clock())
    except ChainBroken as error:
        _error(f"{config.log_path}: the chain is broken, no head exported: {error}")
        return EXIT_FAILED
    append_head(config.chain_heads_file, line)
    print(line)
    return EXIT_OK


def _trust_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public-key", type=Path, metavar="PEM", help="the auditor bot's published Ed25519 public key"
    )
    parser.add_argument("--fingerprint", metavar="HEX", help="the signing key's fingerprint (64 hex digits)")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help=f"the bot's config, whose signing_key_fingerprint is trusted (default ${CONFIG_ENV}, "
        f"else {DEFAULT_CONFIG})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="police-audit", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "verify-export",
        help="check an export bundle's signature against the trusted key, and its files "
        "(exit 0 ok, 1 failed, 2 unreadable or no trusted key)",
    )
    export.add_argument("file", type=Path, metavar="FILE", help="the export bundle (zip)")
    _trust_arguments(export)
    log = commands.add_parser(
        "verify-log",
        help="check the consultation log's hash chain, its checkpoint and, with --heads, the exported "
        "chain heads (exit 0 ok, 1 broken, 2 unreadable)",
    )
    log.add_argument("db", type=Path, metavar="DB", help="the consultation log (SQLite)")
    log.add_argument("--heads", type=Path, metavar="FILE", help="signed chain heads (chain_heads_file)")
    _trust_arguments(log)
    archive = commands.add_parser(
        "verify-archive", help="check every archived record's authentication (exit 0 ok, 1 altered)"
    )
    archive.add_argument("--config", type=Path, metavar="YAML", help="the auditor bot's config")
    head = commands.add_parser(
        "export-head", help="append the consultation log's signed head to chain_heads_file and print it"
    )
    head.add_argument("--config", type=Path, metavar="YAML", help="the auditor bot's config")
    args = parser.parse_args(argv)
    if args.command == "verify-export":
        return verify_export_command(args.file, args.public_key, args.fingerprint, args.config)
    if args.command == "verify-log":
        return verify_log_command(args.db, args.heads, args.public_key, args.fingerprint, args.config)
    if args.command == "verify-archive":
        return verify_archive_command(args.config)
    if args.command == "export-head":
        return export_head_command(args.config)
    parser.error(f"unknown command {args.command}")
    return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
