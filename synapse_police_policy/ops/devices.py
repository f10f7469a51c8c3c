"""``police-policy devices ...``: the operator's client for the module's device admin API.

Enrol and revoke devices, list enrollments, decide pending device requests and
bulk-import enrollments from CSV, all over HTTP with a server admin's token.
Exit codes: 0 ok, 1 the server refused (its errcode and error are printed),
2 usage error or the server could not be reached.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import requests
from tqdm import tqdm

from ..api import ADMIN_PREFIX, ENROLLMENT_STATES, PENDING_STATES
from ..config import duration_seconds
from ..devices.rules import (
    MAX_TIME_MS,
    InvalidInput,
    describe_character,
    parse_whole_number,
    unsafe_character,
    validate_device_id,
    validate_label,
    validate_request_id,
)
from .bootstrap import BootstrapError, enroll_directly
from .homeserver_file import HomeserverFileError, read_homeserver_config

ENV_HOMESERVER = "POLICE_HOMESERVER_URL"
ENV_TOKEN = "POLICE_ADMIN_TOKEN"
TIMEOUT_S = 30
LIST_PAGE_SIZE = 100
IMPORT_DEFAULT_BATCH = 500
IMPORT_MAX_BATCH = 1000
IMPORT_COLUMNS = ("user_id", "device_id", "label")
#: combining marks kept after one base character; more would stack over other rows
MAX_COMBINING = 2

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

DESCRIPTION = f"""\
Enrol and revoke devices, list enrollments, decide pending device requests and
import enrollments from CSV through the police policy module's admin API.
The homeserver URL and a server admin's access token come from --homeserver and
--token or from ${ENV_HOMESERVER} and ${ENV_TOKEN}.

exit codes: 0 ok, 1 the server refused (its errcode and error are printed),
2 usage error or the server could not be reached."""

_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_ENTRY_PREFIX = re.compile(r"^devices\[[0-9]+\]\.")

JsonObject = dict[str, Any]


class UsageError(Exception):
    """Bad arguments, settings or input file: nothing (more) is sent to the server."""


class Unreachable(Exception):
    """No HTTP answer at all; the URL and the low-level reason are what the operator needs."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")


class BadResponse(Exception):
    """An answer that is not the admin API's, which usually means a wrong --homeserver."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"{url}: unexpected response ({detail}); is the homeserver URL right?")


class ApiError(Exception):
    """The server answered with a Matrix error: it refused the request."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(f"{errcode}: {error} (HTTP {status})")
        self.status = status
        self.errcode = errcode
        self.error = error


# --- HTTP ---------------------------------------------------------------------------------------


class AdminClient:
    """One keep-alive session to the admin API that maps every outcome onto an exception class."""

    def __init__(self, homeserver: str, token: str, session: requests.Session) -> None:
        self.base = homeserver.rstrip("/") + ADMIN_PREFIX
        self._session = session
        # requests drops this header when a redirect leaves the host, so it never leaks elsewhere.
        session.headers["Authorization"] = f"Bearer {token}"

    def url(self, *segments: str) -> str:
        """IDs contain '@', ':' and maybe '/', so each path segment is quoted completely."""
        return self.base + "".join("/" + quote(segment, safe="") for segment in segments)

    def call(
        self,
        method: str,
        segments: Sequence[str],
        *,
        params: Mapping[str, str | int] | None = None,
        body: JsonObject | None = None,
    ) -> JsonObject:
        url = self.url(*segments)
        try:
            response = self._session.request(method, url, params=params, json=body, timeout=TIMEOUT_S)
        except requests.ConnectTimeout:
            raise Unreachable(url, f"no connection within {TIMEOUT_S}s") from None
        except requests.Timeout:
            raise Unreachable(url, f"no answer within {TIMEOUT_S}s") from None
        except requests.RequestException as error:
            raise Unreachable(url, low_level_reason(error)) from None
        return _decode(response)


def _decode(response: requests.Response) -> JsonObject:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.ok:
        if not isinstance(body, dict):
            raise BadResponse(response.url, f"HTTP {response.status_code} without a JSON object")
        return body
    if isinstance(body, dict) and isinstance(body.get("errcode"), str):
        raise ApiError(response.status_code, body["errcode"], str(body.get("error", "")))
    raise ApiError(response.status_code, f"HTTP {response.status_code}", response.reason or "")


def low_level_reason(error: BaseException) -> str:
    """The innermost OS error ('Connection refused') instead of urllib3's nested reprs."""
    reason = ""
    seen: set[int] = set()
    queue: list[BaseException] = [error]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and isinstance(current.strerror, str) and current.strerror:
            reason = current.strerror
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        queue.extend(item for item in linked if isinstance(item, BaseException))
    return reason or str(error)


# --- settings -----------------------------------------------------------------------------------


@attrs.frozen
class Target:
    homeserver: str
    token: str


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """Flags win over the environment; the token's value never appears in a message."""
    homeserver = (args.homeserver or environ.get(ENV_HOMESERVER, "")).strip()
    token = (args.token or environ.get(ENV_TOKEN, "")).strip()
    missing = []
    if not homeserver:
        missing.append(f"no homeserver URL: pass --homeserver URL or set {ENV_HOMESERVER}")
    if not token:
        missing.append(f"no admin access token: pass --token TOKEN or set {ENV_TOKEN}")
    if missing:
        raise UsageError("\n".join(missing))
    parts = urlsplit(homeserver)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"homeserver URL {homeserver!r} is not an http(s) URL such as https://matrix.example"
        )
    if not _TOKEN.match(token):
        raise UsageError("the admin access token contains spaces or control characters")
    return Target(homeserver, token)


def parse_expiry(text: str, now: datetime | None = None) -> int:
    """ms since the epoch from an ISO 8601 time (UTC unless it says otherwise) or a duration from now."""
    now = now or datetime.now(UTC)
    seconds = duration_seconds(text)
    if seconds is not None:
        try:
            when = now + timedelta(seconds=seconds)
        except (OverflowError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} ends after the year 9999") from None
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither an ISO 8601 time (2027-01-31T00:00Z)"
                " nor a duration (30d; units s, m, h, d, w)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    if when <= now:
        raise argparse.ArgumentTypeError(f"{text!r} is in the past")
    ms = int(when.timestamp() * 1000)
    if ms > MAX_TIME_MS:
        raise argparse.ArgumentTypeError(f"{text!r} ends after the year 9999")
    return ms


def batch_size(text: str) -> int:
    """Digits 0-9 only, the server's rule for numbers (``int`` would take "١٢" and " 5")."""
    try:
        return parse_whole_number(text, "--batch-size", 1, IMPORT_MAX_BATCH)
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--batch-size: ")) from None


def _argument(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from one of the server's rules: a bad value is a usage
    error (exit 2) before anything is sent."""

    def convert(text: str) -> str:
        try:
            return check(text)
        except InvalidInput as error:
            raise argparse.ArgumentTypeError(str(error).split(": ", 1)[1]) from None

    convert.__name__ = check.__name__
    return convert


def _plain_id(text: str) -> str:
    """A user ID as typed: the server checks its form; what cannot be shown is refused here."""
    if not text:
        raise InvalidInput("user_id", "empty")
    bad = unsafe_character(text)
    if bad is not None:
        raise InvalidInput("user_id", f"contains {describe_character(bad)}; user IDs are plain text")
    return text


user_id_argument = _argument(_plain_id)
device_id_argument = _argument(validate_device_id)
label_argument = _argument(validate_label)
request_id_argument = _argument(validate_request_id)


# --- output -------------------------------------------------------------------------------------


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object, width: int = 0) -> str:
    """What the server returns came from clients (user agents) or from older
    releases (labels): escape what could reorder, hide or overprint text, so
    that no value can spoof a table: controls, line breaks, bidirectional and
    other format characters, surrogates, and stacks of combining marks."""
    if value is None:
        return "-"
    out: list[str] = []
    combining = 0
    for char in str(value):
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me"):
            combining += 1
            out.append(char if combining <= MAX_COMBINING and out else _escape(char))
            continue
        combining = 0
        out.append(char if char.isprintable() and unsafe_character(char) is None else _escape(char))
    text = "".join(out)
    if width and display_width(text) > width:
        kept, used = [], 0
        for char in text:
            used += _cells(char)
            if used > width - 1:
                break
            kept.append(char)
        return "".join(kept) + "…"
    return text


def _cells(char: str) -> int:
    return 0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1


def display_width(text: str) -> int:
    """Terminal cells: wide (East Asian) characters take two, combining marks none."""
    return sum(_cells(char) for char in text)


def json_text(value: object) -> str:
    """JSON for a terminal: the same escaping as ``printable``, as JSON escapes
    (non-printable characters appear only inside strings, so it stays valid JSON)."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return "".join(
        char
        if char == "\n" or (char.isprintable() and unsafe_character(char) is None)
        else "".join(f"\\u{unit:04x}" for unit in _utf16_units(char))
        for char in text
    )


def _utf16_units(char: str) -> list[int]:
    raw = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def timestamp(ms: object) -> str:
    """A time the server sent; anything that is not one is shown as it came."""
    if ms is None:
        return "-"
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= MAX_TIME_MS:
        return printable(ms, width=24)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%MZ")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = list(rows)
    widths = [max(display_width(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(
            cell + " " * (width - display_width(cell)) for cell, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def warn(message: str) -> None:
    """Every message line is escaped: many quote the server or the input file."""
    for line in message.splitlines() or [""]:
        print(f"police-policy devices: {printable(line)}", file=sys.stderr)


def enrollment_row(enrollment: JsonObject) -> list[str]:
    return [
        printable(enrollment.get("user_id")),
        printable(enrollment.get("device_id")),
        printable(enrollment.get("state")),
        printable(enrollment.get("label") or None, width=30),
        timestamp(enrollment.get("enrolled_at")),
        timestamp(enrollment.get("expires_at")),
        printable(enrollment.get("enrolled_by")),
    ]


def pending_row(pending: JsonObject) -> list[str]:
    return [
        printable(pending.get("request_id")),
        printable(pending.get("user_id")),
        printable(pending.get("bound_device_id") or pending.get("device_id")),
        printable(pending.get("state")),
        timestamp(pending.get("created_at")),
        printable(pending.get("ip")),
        printable(pending.get("user_agent"), width=40),
    ]


def dump_json(value: object) -> None:
    print(json_text(value))


# --- subcommands --------------------------------------------------------------------------------


def cmd_enroll(client: AdminClient, args: argparse.Namespace) -> int:
    body: JsonObject = {}
    if args.label is not None:
        body["label"] = args.label
    if args.expires is not None:
        body["expires_at"] = args.expires
    answer = client.call("PUT", ("devices", args.user_id, args.device_id), body=body)
    enrollment = answer.get("enrollment") or {}
    verb = "enrolled" if answer.get("created") else "already enrolled"
    print(
        f"{verb} {printable(args.user_id)} {printable(args.device_id)}"
        f" (expires {timestamp(enrollment.get('expires_at'))})"
    )
    return EXIT_OK


def cmd_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    client.call("DELETE", ("devices", args.user_id, args.device_id))
    print(f"revoked {printable(args.user_id)} {printable(args.device_id)}; the server deleted the device")
    return EXIT_OK


def list_enrollments(client: AdminClient, user_id: str | None, state: str | None) -> Iterator[JsonObject]:
    """Follows next_from to the end; a repeated cursor would loop forever, so it is an error."""
    params: dict[str, str | int] = {"limit": LIST_PAGE_SIZE}
    if user_id:
        params["user_id"] = user_id
    if state:
        params["state"] = state
    seen: set[str] = set()
    while True:
        page = client.call("GET", ("devices",), params=params)
        yield from page.get("enrollments") or []
        cursor = page.get("next_from")
        if cursor is None:
            return
        if str(cursor) in seen:
            raise BadResponse(client.url("devices"), f"next_from {cursor!r} repeats")
        seen.add(str(cursor))
        params["from"] = str(cursor)


def show(
    records: list[dict[str, Any]],
    as_json: bool,
    empty: str,
    headers: tuple[str, ...],
    row: Callable[[dict[str, Any]], Sequence[str]],
) -> int:
    if as_json:
        dump_json(records)
    elif not records:
        print(empty)
    else:
        print(table(headers, map(row, records)))
    return EXIT_OK


def cmd_list(client: AdminClient, args: argparse.Namespace) -> int:
    return show(
        list(list_enrollments(client, args.user, args.state)),
        args.json,
        "no enrollments",
        ("USER", "DEVICE", "STATE", "LABEL", "ENROLLED", "EXPIRES", "ENROLLED BY"),
        enrollment_row,
    )


def cmd_pending(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"state": args.state} if args.state else None
    return show(
        client.call("GET", ("pending",), params=params).get("pending") or [],
        args.json,
        "no pending device requests",
        ("REQUEST", "USER", "DEVICE", "STATE", "CREATED", "IP", "USER AGENT"),
        pending_row,
    )


def decide(decision: str) -> Callable[[AdminClient, argparse.Namespace], int]:
    """approve and reject differ only in the last path segment and the word printed."""

    def command(client: AdminClient, args: argparse.Namespace) -> int:
        pending = client.call("POST", ("pending", args.request_id, decision), body={}).get("pending") or {}
        device = pending.get("bound_device_id") or pending.get("device_id")
        print(
            f"{printable(pending.get('state', decision))}: request {printable(args.request_id)}"
            f" from {printable(pending.get('user_id'))}, device {printable(device)}"
        )
        return EXIT_OK

    return command


# --- import -------------------------------------------------------------------------------------


@attrs.frozen
class ImportRow:
    line: int
    user_id: str
    device_id: str
    label: str

    def problem(self) -> str | None:
        """Rows the server would reject anyway are reported without a round trip."""
        empty = [name for name in ("user_id", "device_id") if not getattr(self, name)]
        if empty:
            return f"{' and '.join(empty)} empty"
        try:
            _plain_id(self.user_id)
            validate_device_id(self.device_id)
            validate_label(self.label)
        except InvalidInput as error:
            return str(error)
        return None

    def entry(self) -> JsonObject:
        # An empty label is left out so that re-running a file does not wipe labels set elsewhere.
        entry: JsonObject = {"user_id": self.user_id, "device_id": self.device_id}
        if self.label:
            entry["label"] = self.label
        return entry


def read_import_file(path: Path) -> list[ImportRow]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as lines:
            return parse_import_csv(lines, str(path))
    except OSError as error:
        raise UsageError(f"{path}: cannot read the file: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None


def parse_import_csv(lines: Iterable[str], name: str) -> list[ImportRow]:
    """Rows with the physical line each starts on (header = line 1), which quoted newlines shift."""
    reader = csv.reader(lines)
    try:
        header = next((record for record in reader if record), None)
        if header is None:
            raise UsageError(f"{name}: empty file; expected a header with {', '.join(IMPORT_COLUMNS)}")
        columns = _columns(header, f"{name}:{reader.line_num}")
        rows = []
        previous = reader.line_num
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if any(cell.strip() for cell in record):
                rows.append(_row(record, columns, start))
        return rows
    except csv.Error as error:
        raise UsageError(f"{name}:{reader.line_num}: not valid CSV: {error}") from None


def _columns(header: Sequence[str], where: str) -> dict[str, int]:
    positions: dict[str, int] = {}
    for index, column in enumerate(header):
        positions.setdefault(column.strip().lower(), index)
    missing = [column for column in IMPORT_COLUMNS if column not in positions]
    if missing:
        raise UsageError(
            f"{where}: missing column(s) {', '.join(missing)};"
            f" the header must name {', '.join(IMPORT_COLUMNS)}"
        )
    return {column: positions[column] for column in IMPORT_COLUMNS}


def _row(record: Sequence[str], columns: Mapping[str, int], line: int) -> ImportRow:
    def cell(column: str) -> str:
        index = columns[column]
        return record[index].strip() if index < len(record) else ""

    return ImportRow(line, cell("user_id"), cell("device_id"), cell("label"))


@attrs.define
class ImportTally:
    """Counts for the summary line; prints each failing row as FILE:LINE so it can be fixed."""

    name: str
    created: int = 0
    existing: int = 0
    failed: int = 0

    def fail(self, row: ImportRow, error: str) -> None:
        self.failed += 1
        ids = " ".join(value or '""' for value in (row.user_id, row.device_id))
        tqdm.write(printable(f"{self.name}:{row.line}: {ids}: {error}"), file=sys.stdout)

    def record(self, row: ImportRow, result: JsonObject) -> None:
        if result.get("ok") is True:
            if result.get("created"):
                self.created += 1
            else:
                self.existing += 1
        else:
            # "devices[3].label: ..." names the entry in the batch; the line says which row it is.
            error = _ENTRY_PREFIX.sub("", str(result.get("error", "")), count=1)
            self.fail(row, f"{result.get('errcode', 'M_UNKNOWN')}: {error}")

    def summary(self) -> str:
        return f"{self.created} enrolled (new), {self.existing} already enrolled, {self.failed} failed"


def send_batch(client: AdminClient, batch: Sequence[ImportRow]) -> list[JsonObject]:
    """The server's results in input order; an entry it skipped counts as failed, not as done."""
    answer = client.call("POST", ("devices", "import"), body={"devices": [row.entry() for row in batch]})
    results = answer.get("results")
    if not isinstance(results, list):
        raise BadResponse(client.url("devices", "import"), "no results list")
    by_index = {r["index"]: r for r in results if isinstance(r, dict) and isinstance(r.get("index"), int)}
    missing: JsonObject = {"ok": False, "errcode": "M_UNKNOWN", "error": "the server returned no result"}
    return [by_index.get(index, missing) for index in range(len(batch))]


def cmd_import(client: AdminClient, args: argparse.Namespace) -> int:
    rows = read_import_file(args.file)
    tally = ImportTally(str(args.file))
    valid = []
    for row in rows:
        problem = row.problem()
        if problem:
            tally.fail(row, problem)
        else:
            valid.append(row)
    progress = tqdm(total=len(valid), unit="row", file=sys.stderr, disable=not sys.stderr.isatty())
    with progress:
        for start in range(0, len(valid), args.batch_size):
            batch = valid[start : start + args.batch_size]
            try:
                results = send_batch(client, batch)
            except (ApiError, Unreachable, BadResponse):
                progress.close()
                print(tally.summary())
                warn(f"stopped at {args.file}:{batch[0].line}; rows before it were sent, re-running is safe")
                raise
            for row, result in zip(batch, results, strict=True):
                tally.record(row, result)
            progress.update(len(batch))
    print(tally.summary())
    return EXIT_OK if tally.failed == 0 else EXIT_REFUSED


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Needs no admin token: it writes to the database, as the module would."""
    try:
        homeserver = read_homeserver_config(args.config)
    except HomeserverFileError as error:
        warn(str(error))
        return EXIT_USAGE
    try:
        record = enroll_directly(homeserver, args.user_id, args.device_id, args.label)
    except BootstrapError as error:
        warn(f"{args.config}: {error}")
        return EXIT_REFUSED
    print(f"enrolled {record.device_id} of {record.user_id}; log in with this device ID")
    return EXIT_OK


Command = Callable[[AdminClient, argparse.Namespace], int]

COMMANDS: dict[str, Command] = {
    "enroll": cmd_enroll,
    "revoke": cmd_revoke,
    "list": cmd_list,
    "pending": cmd_pending,
    "approve": decide("approve"),
    "reject": decide("reject"),
    "import": cmd_import,
}


# --- argparse -----------------------------------------------------------------------------------


def _connection_options(with_defaults: bool) -> argparse.ArgumentParser:
    """Accepted before and after the subcommand; after it, an absent flag must not reset the value."""
    options = argparse.ArgumentParser(add_help=False)
    default = None if with_defaults else argparse.SUPPRESS
    options.add_argument(
        "--homeserver",
        metavar="URL",
        default=default,
        help=f"homeserver base URL (default: ${ENV_HOMESERVER})",
    )
    options.add_argument(
        "--token",
        metavar="TOKEN",
        default=default,
        help=f"a server admin's access token (default: ${ENV_TOKEN}; the variable keeps it out of ps)",
    )
    return options


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `devices` and its subcommands on the top-level `police-policy` parser."""
    devices = commands.add_parser(
        "devices",
        parents=[_connection_options(with_defaults=True)],
        help="enroll, revoke and list devices; decide pending device requests (admin API)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = devices.add_subparsers(dest="devices_command", required=True, metavar="SUBCOMMAND")
    shared = [_connection_options(with_defaults=False)]

    enroll = sub.add_parser("enroll", parents=shared, help="enroll a device (or update its label/expiry)")
    enroll.add_argument("user_id", type=user_id_argument, metavar="USER_ID")
    enroll.add_argument("device_id", type=device_id_argument, metavar="DEVICE_ID")
    enroll.add_argument(
        "--label",
        type=label_argument,
        help="one line of text shown in lists, e.g. the phone's inventory number",
    )
    enroll.add_argument(
        "--expires",
        type=parse_expiry,
        metavar="WHEN",
        help="an ISO 8601 time (UTC unless it has an offset), e.g. 2027-01-31T00:00Z, or a duration: 30d",
    )

    revoke = sub.add_parser(
        "revoke", parents=shared, help="revoke an enrollment; the server deletes the device"
    )
    revoke.add_argument("user_id", type=user_id_argument, metavar="USER_ID")
    revoke.add_argument("device_id", type=device_id_argument, metavar="DEVICE_ID")

    listing = sub.add_parser("list", parents=shared, help="list enrollments (all pages)")
    listing.add_argument("--user", type=user_id_argument, metavar="USER_ID", help="only this user's devices")
    listing.add_argument("--state", choices=(*ENROLLMENT_STATES, "all"), help="default: all")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")

    pending = sub.add_parser("pending", parents=shared, help="list device requests awaiting a decision")
    pending.add_argument("--state", choices=(*PENDING_STATES, "all"), help="default: open")
    pending.add_argument("--json", action="store_true", help="print a JSON array instead of a table")

    for decision in ("approve", "reject"):
        decide_parser = sub.add_parser(decision, parents=shared, help=f"{decision} a pending device request")
        decide_parser.add_argument("request_id", type=request_id_argument, metavar="REQUEST_ID")

    importing = sub.add_parser(
        "import", parents=shared, help="enroll the devices listed in a CSV file (safe to re-run)"
    )
    importing.add_argument(
        "file", type=Path, metavar="FILE.csv", help="header with user_id, device_id, label"
    )
    importing.add_argument(
        "--batch-size",
        type=batch_size,
        default=IMPORT_DEFAULT_BATCH,
        metavar="N",
        help=f"rows per request, 1 to {IMPORT_MAX_BATCH} (default: {IMPORT_DEFAULT_BATCH})",
    )

    bootstrap = sub.add_parser(
        "bootstrap",
        help="on the server host: enroll a device straight in the database (first admin, bots, MDM)",
        description="Enroll a device without the admin API, by writing to the database named in "
        "homeserver.yaml. Needs read access to that file (the database credentials), so it only "
        "works on the server host. Use it for the first admin's device and for service accounts; "
        "then log in with that device ID.",
    )
    bootstrap.add_argument("-c", "--config", type=Path, required=True, metavar="HOMESERVER_YAML")
    bootstrap.add_argument("user_id", type=user_id_argument, metavar="USER_ID")
    bootstrap.add_argument("device_id", type=device_id_argument, metavar="DEVICE_ID")
    bootstrap.add_argument(
        "--label", type=label_argument, default="", help="e.g. 'ops workstation' or 'auditor bot'"
    )


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Dispatches a parsed `devices` command and turns every failure into a message and exit code."""
    if args.devices_command == "bootstrap":
        return cmd_bootstrap(args)
    try:
        target = resolve_target(args, os.environ if environ is None else environ)
        with requests.Session() as session:
            client = AdminClient(target.homeserver, target.token, session)
            return COMMANDS[args.devices_command](client, args)
    except UsageError as error:
        for line in str(error).splitlines():
            warn(line)
        return EXIT_USAGE
    except (Unreachable, BadResponse) as error:
        warn(printable(str(error)))
        return EXIT_USAGE
    except ApiError as error:
        warn(printable(str(error)))  # one line, whatever the server put in it
        return EXIT_REFUSED
