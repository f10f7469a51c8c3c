"""The auditor's commands: parsing (a pure function) and running them.

Commands come as text messages in the auditor's direct chat with the bot::

    !help
    !search <words> [room:<id>] [sender:<user>] [from:YYYY-MM-DD] [to:YYYY-MM-DD] ref:<case> reason:"<text>"
    !more
    !show <event id> ref:<case> reason:"<text>"
    !log
    !health
    !export <room id> <from YYYY-MM-DD> <to YYYY-MM-DD> ref:<case> reason:"<text>"
    !approve <request id>
    !deny <request id> [reason:"<text>"]

An export is four-eyes: one auditor requests it, another approves it; the
signed bundle then goes (encrypted) into the requester's command room.

Only the configured auditors may use them; everyone else gets a refusal, and
the refusal is written to the consultation log. Every search, page and show
is written to the consultation log before the answer is sent.
"""

from __future__ import annotations

import hashlib
import html
import re
import secrets
import sqlite3
from collections.abc import Callable
from datetime import UTC, date, timedelta, tzinfo
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..common.clock import day_of, day_start, moment, zone_name
from .archive import Archive, ArchivedMessage, SearchHit, now_ms
from .consultation_log import Action, ConsultationLog
from .export import ExportRequest, build_export

#: hits per page of !search and !more
PAGE_SIZE = 10
#: entries !log shows (the newest)
LOG_ENTRIES = 20

#: key:"quoted value" (straight or typographic quotes), key:value, or a bare word
_TOKEN = re.compile(
    r"""(?P<key>[A-Za-z]+):(?:"(?P<dq>[^"]*)"|“(?P<tq>[^”]*)”|'(?P<sq>[^']*)'|(?P<plain>\S+))"""
    r"""|(?P<word>\S+)"""
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")

_REQUEST_ID = re.compile(r"^EX-[A-Z0-9]{4}\Z")
#: request IDs: no 0/O or 1/I to confuse when read out
_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#: archived messages fetched per query while collecting an export
_EXPORT_BATCH = 500

COMMANDS = ("help", "search", "more", "show", "log", "health", "export", "approve", "deny")

HELP = """Commands (only for auditors; every search and show is logged):
!search <words> [room:<room id>] [sender:<user id>] [from:YYYY-MM-DD] [to:YYYY-MM-DD]
        ref:<case> reason:"<text>"
    messages containing all the words (whole words), newest first
!more    the next page of your last search
!show <event id> ref:<case> reason:"<text>"    one message in full, with its neighbours
!log     your own consultation-log entries
!health  what the archive holds and how many messages could not be decrypted
!export <room id> <from YYYY-MM-DD> <to YYYY-MM-DD> ref:<case> reason:"<text>"
    request a signed export of a room's messages (both days included); another
    auditor must approve it, then the bundle comes into this chat
!approve <request id>    approve another auditor's export request (four eyes)
!deny <request id> [reason:"<text>"]    deny an export request (or withdraw your own)
!help    this text"""


# -- parsed commands ------------------------------------------------------------------------------


@attrs.frozen
class Help:
    pass


@attrs.frozen
class Search:
    words: str
    ref: str
    reason: str
    room_id: str | None = None
    sender: str | None = None
    since: date | None = None
    #: inclusive: the whole day counts
    until: date | None = None


@attrs.frozen
class More:
    pass


@attrs.frozen
class Show:
    event_id: str
    ref: str
    reason: str


@attrs.frozen
class LogView:
    pass


@attrs.frozen
class Health:
    pass


@attrs.frozen
class Export:
    room_id: str
    since: date
    #: inclusive: the whole day counts
    until: date
    ref: str
    reason: str


@attrs.frozen
class Approve:
    request_id: str


@attrs.frozen
class Deny:
    request_id: str
    reason: str | None = None


@attrs.frozen
class Invalid:
    """A command that could not be parsed; ``message`` says what is wrong or missing."""

    command: str
    message: str


Command = Help | Search | More | Show | LogView | Health | Export | Approve | Deny | Invalid


def _tokens(text: str) -> tuple[list[str], dict[str, str], list[str]]:
    """Bare words, key:value options (known keys only) and repeated keys."""
    words: list[str] = []
    options: dict[str, str] = {}
    repeated: list[str] = []
    for match in _TOKEN.finditer(text):
        key = (match.group("key") or "").lower()
        if key in ("room", "sender", "from", "to", "ref", "reason"):
            value = next(v for v in match.group("dq", "tq", "sq", "plain") if v is not None)
            if key in options:
                repeated.append(key)
            options[key] = value.strip()
        else:
            words.append(match.group(0))
    return words, options, repeated


def _date(value: str) -> date | None:
    if not _DATE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _justification(options: dict[str, str]) -> list[str]:
    missing = []
    if not options.get("ref"):
        missing.append("ref:<case number>")
    if not options.get("reason"):
        missing.append('reason:"<why you need it>"')
    return missing


def parse_command(text: str) -> Command | None:
    """The command in a message, or None when the message is no command (no leading '!')."""
    text = text.strip()
    if not text.startswith("!"):
        return None
    name, _, rest = text[1:].partition(" ")
    name = name.strip().lower()
    if name not in COMMANDS:
        return Invalid(name, f"unknown command !{name}; send !help for the list")
    words, options, repeated = _tokens(rest)
    if repeated:
        return Invalid(name, f"!{name}: {', '.join(sorted(set(repeated)))} given more than once")
    if name in ("help", "more", "log", "health"):
        if words or options:
            return Invalid(name, f"!{name} takes no arguments")
        return {"help": Help(), "more": More(), "log": LogView(), "health": Health()}[name]

    if name == "export":
        return _parse_export(words, options)
    if name in ("approve", "deny"):
        allowed = {"reason"} if name == "deny" else set()
        extra = sorted(set(options) - allowed)
        if extra:
            return Invalid(name, f"!{name}: {', '.join(extra)} do not apply here; send !{name} <request id>")
        if len(words) != 1 or not _REQUEST_ID.match(words[0].upper()):
            return Invalid(name, f"!{name}: expected one request ID such as EX-AB12")
        if name == "approve":
            return Approve(words[0].upper())
        return Deny(words[0].upper(), options.get("reason") or None)

    if name == "show":
        extra = sorted(set(options) - {"ref", "reason"})
        if extra:
            return Invalid(name, f"!show: {', '.join(extra)} only apply to !search")
        problems = []
        if len(words) != 1 or not words[0].startswith("$"):
            problems.append("one event ID (starting with $)")
        problems += _justification(options)
        if problems:
            return Invalid(name, "!show: missing " + ", ".join(problems))
        return Show(words[0], options["ref"], options["reason"])

    # search
    problems = []
    if not words:
        problems.append("the words to search for")
    problems += _justification(options)
    if problems:
        return Invalid(name, "!search: missing " + ", ".join(problems))
    dates: dict[str, date | None] = {}
    for key in ("from", "to"):
        if key in options:
            dates[key] = _date(options[key])
            if dates[key] is None:
                return Invalid(name, f"!search: {key}: expected a date as YYYY-MM-DD, got {options[key]!r}")
    since, until = dates.get("from"), dates.get("to")
    if since and until and since > until:
        return Invalid(name, f"!search: from:{since} lies after to:{until}")
    room = options.get("room")
    if room is not None and not room.startswith("!"):
        return Invalid(name, f"!search: room: expected a room ID (!...), got {room!r}")
    sender = options.get("sender")
    if sender is not None and not (sender.startswith("@") and ":" in sender):
        return Invalid(name, f"!search: sender: expected a user ID (@user:server), got {sender!r}")
    return Search(
        words=" ".join(words),
        ref=options["ref"],
        reason=options["reason"],
        room_id=room,
        sender=sender,
        since=since,
        until=until,
    )


def _parse_export(words: list[str], options: dict[str, str]) -> Command:
    usage = '!export <room id> <from YYYY-MM-DD> <to YYYY-MM-DD> ref:<case> reason:"<text>"'
    extra = sorted(set(options) - {"ref", "reason"})
    if extra:
        return Invalid("export", f"!export: {', '.join(extra)} do not apply here; usage: {usage}")
    problems = []
    if len(words) != 3:
        problems.append("the room ID, the first and the last day")
    problems += _justification(options)
    if problems:
        return Invalid("export", "!export: missing " + ", ".join(problems) + f"; usage: {usage}")
    room, since_text, until_text = words
    if not room.startswith("!") or len(room) < 2:
        # room version 12 IDs have no ":server" part
        return Invalid("export", f"!export: expected a room ID (!...), got {room!r}")
    since, until = _date(since_text), _date(until_text)
    if since is None:
        return Invalid("export", f"!export: from: expected a date as YYYY-MM-DD, got {since_text!r}")
    if until is None:
        return Invalid("export", f"!export: to: expected a date as YYYY-MM-DD, got {until_text!r}")
    if since > until:
        return Invalid("export", f"!export: from {since} lies after to {until}")
    return Export(room, since, until, options["ref"], options["reason"])


# -- export requests ------------------------------------------------------------------------------

_EXPORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_requests (
    request_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    from_ms INTEGER NOT NULL,
    to_ms INTEGER NOT NULL,
    case_ref TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    command_room TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    decided_by TEXT,
    decided_at_ms INTEGER
);
"""


@attrs.frozen
class PendingExport:
    """An export request as stored; ``to_ms`` is exclusive (the day after the last day)."""

    request_id: str
    room_id: str
    from_ms: int
    to_ms: int
    case_ref: str
    reason: str
    requested_by: str
    #: where the request was made: the bundle goes there
    command_room: str
    created_at_ms: int
    status: str
    decided_by: str | None
    decided_at_ms: int | None


class ExportStore:
    """Export requests in a small SQLite file, so they survive a restart."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5)
        self._db.executescript(_EXPORT_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create(
        self,
        *,
        room_id: str,
        from_ms: int,
        to_ms: int,
        case_ref: str,
        reason: str,
        requested_by: str,
        command_room: str,
        created_at_ms: int,
    ) -> str:
        while True:
            request_id = "EX-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
            try:
                self._db.execute(
                    "INSERT INTO export_requests (request_id, room_id, from_ms, to_ms, case_ref, reason, "
                    "requested_by, command_room, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        request_id,
                        room_id,
                        from_ms,
                        to_ms,
                        case_ref,
                        reason,
                        requested_by,
                        command_room,
                        created_at_ms,
                    ),
                )
            except sqlite3.IntegrityError:
                continue  # the ID is taken: draw another
            return request_id

    def get(self, request_id: str) -> PendingExport | None:
        row = self._db.execute(
            "SELECT request_id, room_id, from_ms, to_ms, case_ref, reason, requested_by, command_room, "
            "created_at_ms, status, decided_by, decided_at_ms FROM export_requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        return PendingExport(*row) if row else None

    def decide(self, request_id: str, status: str, by: str, at_ms: int) -> bool:
        """Close a pending request; False when it was not pending (any more)."""
        cursor = self._db.execute(
            "UPDATE export_requests SET status = ?, decided_by = ?, decided_at_ms = ? "
            "WHERE request_id = ? AND status = 'pending'",
            (status, by, at_ms, request_id),
        )
        return cursor.rowcount == 1

    def reopen(self, request_id: str) -> None:
        """Back to pending (the approved bundle could not be delivered)."""
        self._db.execute(
            "UPDATE export_requests SET status = 'pending', decided_by = NULL, decided_at_ms = NULL "
            "WHERE request_id = ?",
            (request_id,),
        )


# -- running them ---------------------------------------------------------------------------------


@attrs.frozen
class Delivery:
    """An approved export bundle for the bot to upload (encrypted) into ``room_id``."""

    request_id: str
    room_id: str
    recipient: str
    filename: str
    data: bytes = attrs.field(repr=False)
    #: the notice for the recipient that goes with the file
    notice: Reply


@attrs.frozen
class Reply:
    body: str
    formatted_body: str
    delivery: Delivery | None = None
    #: another room to tell (room ID, notice): the requester of a denied export
    notify: tuple[str, Reply] | None = None

    @classmethod
    def text(cls, body: str) -> Reply:
        return cls(body, "<pre>" + html.escape(body) + "</pre>" if "\n" in body else html.escape(body))

    def with_delivery(self, delivery: Delivery) -> Reply:
        return attrs.evolve(self, delivery=delivery)

    def content(self) -> dict[str, str]:
        return {
            "msgtype": "m.notice",
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.formatted_body,
        }


@attrs.frozen
class HealthStats:
    """What the bot knows about itself beyond the archive (for !health and the metrics)."""

    undecryptable_seen: int
    undecryptable_pending: int
    started_at_ms: int
    #: decrypted attachments are judged by the module's media rules
    media_rules: bool = False
    #: refused files' server copies are quarantined (an admin token is configured)
    quarantine: bool = False
    #: attachments found breaking the media rules since start
    violations_found: int = 0
    #: quarantine requests that failed since start
    quarantine_failures: int = 0


@attrs.frozen
class ExportJob:
    """An approved export whose bundle is still to be built (see ``CommandRunner.start``)."""

    request: PendingExport
    approver: str
    now_ms: int
    #: the export's start, moved up to the oldest retained time
    from_ms: int


@attrs.frozen
class BuiltExport:
    job: ExportJob
    message_count: int
    bundle: bytes = attrs.field(repr=False)


@attrs.define
class _LastSearch:
    search: Search
    since_ms: int
    until_ms: int | None
    offset: int


def _day_ms(day: date, zone: tzinfo) -> int:
    """The first moment of ``day`` in ``zone`` (the auditor's days are local days)."""
    return int(day_start(day, zone) * 1000)


def _when(ms: int, zone: tzinfo) -> str:
    return moment(ms / 1000, zone, seconds=False)


class CommandRunner:
    """Runs parsed commands for one bot: the archive, the log and the auditors it knows."""

    def __init__(
        self,
        archive: Archive,
        log: ConsultationLog,
        auditors: frozenset[str],
        audit_lifetime_ms: int,
        health: Callable[[], HealthStats],
        clock: Callable[[], int] = now_ms,
        *,
        exports: ExportStore | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        zone: tzinfo = UTC,
    ) -> None:
        self.archive = archive
        self.log = log
        self.auditors = auditors
        self.audit_lifetime_ms = audit_lifetime_ms
        self.health = health
        self.clock = clock
        self.exports = exports
        self.signing_key = signing_key
        #: the zone of every time in the answers and of the days in !search and !export
        self.zone = zone
        self._last: dict[str, _LastSearch] = {}
        #: approved exports whose bundle is being built (request IDs)
        self._building: set[str] = set()

    def handle(self, sender: str, text: str, room_id: str = "") -> Reply | None:
        """The answer to ``text`` from ``sender`` in ``room_id`` (the command room); None when
        it is no command. An approved export's reply carries the bundle in ``delivery``."""
        step = self.start(sender, text, room_id)
        if isinstance(step, ExportJob):
            return self.finish_export(self.build(step))
        return step

    def start(self, sender: str, text: str, room_id: str = "") -> Reply | ExportJob | None:
        """Like ``handle``, but an approved export comes back as an ``ExportJob``: ``build`` it
        (in a thread: it may read gigabytes), then ``finish_export`` it (on the caller's thread,
        which owns the log)."""
        command = parse_command(text)
        if command is None:
            return None
        if sender not in self.auditors:
            self.log.append(
                auditor=sender,
                action=Action.REFUSAL,
                reason="not an auditor",
                recipient=sender,
                query={"command": text[:500]},
            )
            return Reply.text("Refused: only auditors may use this bot. This attempt was logged.")
        match command:
            case Invalid():
                if command.command in ("search", "show", "export", "approve", "deny"):
                    self.log.append(
                        auditor=sender,
                        action=Action.REFUSAL,
                        reason=command.message,
                        recipient=sender,
                        query={"command": text[:500]},
                    )
                return Reply.text(command.message)
            case Help():
                return Reply.text(f"{HELP}\nDays and times are in {zone_name(self.zone)}.")
            case Search():
                return self._search(sender, command)
            case More():
                return self._more(sender)
            case Show():
                return self._show(sender, command)
            case LogView():
                return self._log_view(sender)
            case Health():
                return self._health()
            case Export():
                return self._export(sender, command, room_id)
            case Approve():
                return self._approve(sender, command)
            case Deny():
                return self._deny(sender, command)
        raise AssertionError(command)

    # -- search -----------------------------------------------------------------------------------

    def _retained_since(self) -> int:
        return self.clock() - self.audit_lifetime_ms

    def _search(self, auditor: str, search: Search) -> Reply:
        cutoff = self._retained_since()
        cutoff_day = day_of(cutoff / 1000, self.zone)
        until_ms = _day_ms(search.until + timedelta(days=1), self.zone) if search.until else None
        note = ""
        if until_ms is not None and until_ms <= cutoff:
            self.log.append(
                auditor=auditor,
                action=Action.REFUSAL,
                case_ref=search.ref,
                reason=search.reason,
                recipient=auditor,
                query={**self._parameters(search), "refused": "not retained"},
            )
            return Reply.text(
                f"Not retained: messages up to {search.until} are past the audit lifetime "
                f"(the archive keeps messages since {_when(cutoff, self.zone)})."
            )
        since_ms = cutoff
        if search.since is not None:
            if _day_ms(search.since, self.zone) < cutoff:
                note = f"Messages before {cutoff_day} are not retained.\n"
            since_ms = max(cutoff, _day_ms(search.since, self.zone))
        last = _LastSearch(search, since_ms, until_ms, 0)
        self._last[auditor] = last
        return self._page(auditor, last, note)

    def _more(self, auditor: str) -> Reply:
        last = self._last.get(auditor)
        if last is None:
            return Reply.text("No search to continue: send !search first.")
        last.offset += PAGE_SIZE
        return self._page(auditor, last, "")

    def _parameters(self, search: Search) -> dict[str, object]:
        return {
            "words": search.words,
            "room": search.room_id,
            "sender": search.sender,
            "from": search.since.isoformat() if search.since else None,
            "to": search.until.isoformat() if search.until else None,
        }

    def _page(self, auditor: str, last: _LastSearch, note: str) -> Reply:
        search = last.search
        try:
            hits = self.archive.search(
                search.words,
                room_id=search.room_id,
                sender=search.sender,
                since=last.since_ms,
                until=last.until_ms,
                limit=PAGE_SIZE + 1,
                offset=last.offset,
            )
        except ValueError as error:
            return Reply.text(f"!search: {error}")
        more = len(hits) > PAGE_SIZE
        hits = hits[:PAGE_SIZE]
        self.log.append(
            auditor=auditor,
            action=Action.SEARCH,
            case_ref=search.ref,
            reason=search.reason,
            recipient=auditor,
            query={**self._parameters(search), "offset": last.offset},
            result_count=len(hits),
        )
        if not hits:
            what = "No more results." if last.offset else "No messages found."
            return Reply.text(note + what)
        first = last.offset + 1
        head = f"{note}Results {first}-{last.offset + len(hits)} for {search.words!r} (ref {search.ref}):"
        tail = "Send !more for the next page." if more else "No more results."
        lines = [_hit_line(hit, self.zone) for hit in hits]
        body = "\n".join([head, *lines, tail])
        items = "".join(f"<li>{_hit_html(hit, self.zone)}</li>" for hit in hits)
        formatted = f"<p>{html.escape(head)}</p><ol start='{first}'>{items}</ol><p>{html.escape(tail)}</p>"
        return Reply(body, formatted)

    # -- show -------------------------------------------------------------------------------------

    def _show(self, auditor: str, show: Show) -> Reply:
        message = self.archive.get(show.event_id)
        if message is not None and message.origin_server_ts < self._retained_since():
            message = None
        context = self.archive.context(show.event_id) if message else []
        self.log.append(
            auditor=auditor,
            action=Action.SHOW,
            case_ref=show.ref,
            reason=show.reason,
            recipient=auditor,
            query={"event_id": show.event_id, "context": [m.event_id for m in context]},
            result_count=len(context),
        )
        if message is None:
            return Reply.text(f"{show.event_id} is not in the archive (or no longer retained).")
        lines = [f"{show.event_id} in {message.room_id}:"]
        parts = []
        for item in context:
            mark = ">>" if item.event_id == show.event_id else "  "
            lines.append(f"{mark} {_describe(item, self.zone)}")
            text = html.escape(_describe(item, self.zone))
            parts.append(f"<li><b>{text}</b></li>" if item.event_id == show.event_id else f"<li>{text}</li>")
        body = "\n".join(lines)
        return Reply(body, f"<p>{html.escape(lines[0])}</p><ul>{''.join(parts)}</ul>")

    # -- exports ----------------------------------------------------------------------------------

    def _refuse(self, auditor: str, reason: str, **query: Any) -> None:
        self.log.append(auditor=auditor, action=Action.REFUSAL, reason=reason, recipient=auditor, query=query)

    def _export(self, auditor: str, export: Export, room_id: str) -> Reply:
        parameters = {
            "room": export.room_id,
            "from": export.since.isoformat(),
            "to": export.until.isoformat(),
        }
        if self.exports is None or self.signing_key is None or not room_id:
            self._refuse(auditor, "exports are not set up", **parameters)
            return Reply.text("Exports are not set up on this bot.")
        cutoff = self._retained_since()
        from_ms = _day_ms(export.since, self.zone)
        to_ms = _day_ms(export.until + timedelta(days=1), self.zone)
        if to_ms <= cutoff:
            self.log.append(
                auditor=auditor,
                action=Action.REFUSAL,
                case_ref=export.ref,
                reason=export.reason,
                recipient=auditor,
                query={**parameters, "refused": "not retained"},
            )
            return Reply.text(
                f"Not retained: messages up to {export.until} are past the audit lifetime "
                f"(the archive keeps messages since {_when(cutoff, self.zone)})."
            )
        note = ""
        if from_ms < cutoff:
            cutoff_day = day_of(cutoff / 1000, self.zone)
            note = f" Messages before {cutoff_day} are not retained and will not be in it."
        request_id = self.exports.create(
            room_id=export.room_id,
            from_ms=from_ms,
            to_ms=to_ms,
            case_ref=export.ref,
            reason=export.reason,
            requested_by=auditor,
            command_room=room_id,
            created_at_ms=self.clock(),
        )
        self.log.append(
            auditor=auditor,
            action=Action.EXPORT_REQUEST,
            case_ref=export.ref,
            reason=export.reason,
            recipient=auditor,
            query={"request_id": request_id, **parameters},
        )
        return Reply.text(
            f"Export request {request_id}: {export.room_id} from {export.since} to {export.until} "
            f"(ref {export.ref}).{note} Another auditor must approve it with !approve {request_id}; "
            "the signed bundle then comes into this chat."
        )

    def _closed(
        self, auditor: str, request_id: str, command: str
    ) -> tuple[PendingExport | None, Reply | None]:
        """The pending request, or the refusal (logged) when it is unknown or closed."""
        request = self.exports.get(request_id) if self.exports is not None else None
        if request is None:
            self._refuse(auditor, "unknown export request", command=command, request_id=request_id)
            return None, Reply.text(f"There is no export request {request_id}.")
        if request.status != "pending":
            self._refuse(auditor, f"export request {request.status}", command=command, request_id=request_id)
            by = f" by {request.decided_by}" if request.decided_by else ""
            return None, Reply.text(f"Export request {request_id} is closed: it was {request.status}{by}.")
        return request, None

    def _approve(self, approver: str, approve: Approve) -> Reply | ExportJob:
        request, refusal = self._closed(approver, approve.request_id, "approve")
        if request is None:
            assert refusal is not None
            return refusal
        if request.requested_by == approver:
            self.log.append(
                auditor=approver,
                action=Action.REFUSAL,
                case_ref=request.case_ref,
                reason="four eyes: the requester cannot approve their own export",
                recipient=approver,
                query={"command": "approve", "request_id": request.request_id},
            )
            return Reply.text(
                f"Refused: you requested {request.request_id} yourself; another auditor must approve it. "
                "This attempt was logged."
            )
        if self.signing_key is None:
            self._refuse(approver, "exports are not set up", request_id=request.request_id)
            return Reply.text("Exports are not set up on this bot.")
        if request.request_id in self._building:
            return Reply.text(f"Export {request.request_id} is already approved and being built.")
        self._building.add(request.request_id)
        now = self.clock()
        return ExportJob(
            request=request,
            approver=approver,
            now_ms=now,
            from_ms=max(request.from_ms, now - self.audit_lifetime_ms),
        )

    def build(self, job: ExportJob) -> BuiltExport:
        """The signed bundle of an approved export. Reads only the archive and the signing key
        (no log, no request store), so it may run in another thread."""
        request, approver, now = job.request, job.approver, job.now_ms
        assert self.signing_key is not None
        messages = self._collect(request.room_id, job.from_ms, request.to_ms)
        bundle = build_export(
            messages,
            ExportRequest(
                request_id=request.request_id,
                room_id=request.room_id,
                from_ms=request.from_ms,
                to_ms=request.to_ms,
                case_ref=request.case_ref,
                reason=request.reason,
                requested_by=request.requested_by,
                approved_by=approver,
                created_at_ms=now,
            ),
            self.signing_key,
            zone=self.zone,
        )
        return BuiltExport(job=job, message_count=len(messages), bundle=bundle)

    def abandon(self, job: ExportJob) -> None:
        """Building ``job`` failed: the request may be approved again."""
        self._building.discard(job.request.request_id)

    def finish_export(self, built: BuiltExport) -> Reply:
        """Close the request as approved, log the disclosure and hand the bundle over."""
        self.abandon(built.job)
        request, approver, now = built.job.request, built.job.approver, built.job.now_ms
        from_ms, bundle, message_count = built.job.from_ms, built.bundle, built.message_count
        if not self.exports or not self.exports.decide(request.request_id, "approved", approver, now):
            return Reply.text(f"Export request {request.request_id} was closed meanwhile.")
        self.log.append(
            auditor=approver,
            action=Action.EXPORT_APPROVE,
            case_ref=request.case_ref,
            reason=request.reason,
            recipient=request.requested_by,
            query={
                "request_id": request.request_id,
                "room": request.room_id,
                "from_ms": from_ms,
                "to_ms": request.to_ms,
                "requested_by": request.requested_by,
                "bundle_sha256": hashlib.sha256(bundle).hexdigest(),
            },
            result_count=message_count,
        )
        count = f"{message_count} message{'s' if message_count != 1 else ''}"
        notice = Reply.text(
            f"Export {request.request_id} (ref {request.case_ref}) was approved by {approver}: "
            f"{count} from {request.room_id}. The signed bundle is the file {request.request_id}.zip "
            "(check it with: police-audit verify-export FILE)."
        )
        delivery = Delivery(
            request_id=request.request_id,
            room_id=request.command_room,
            recipient=request.requested_by,
            filename=f"{request.request_id}.zip",
            data=bundle,
            notice=notice,
        )
        return Reply.text(
            f"Approved {request.request_id}: {count} from {request.room_id} go to {request.requested_by}."
        ).with_delivery(delivery)

    def delivery_failed(self, delivery: Delivery) -> None:
        """The bundle could not be handed over: the request may be approved again."""
        if self.exports is not None:
            self.exports.reopen(delivery.request_id)

    def _collect(self, room_id: str, since: int, until: int) -> list[dict[str, Any]]:
        collected: list[dict[str, Any]] = []
        offset = 0
        while True:
            hits = self.archive.search(
                room_id=room_id, since=since, until=until, limit=_EXPORT_BATCH, offset=offset
            )
            for hit in hits:
                message = hit.message
                collected.append(
                    {
                        "event_id": message.event_id,
                        "room_id": message.room_id,
                        "sender": message.sender,
                        "device_id": message.device_id,
                        "origin_server_ts": message.origin_server_ts,
                        "body": message.body,
                        "redacted_at": message.redacted_at,
                        "policy_violation": message.violation,
                        "attachments": [
                            {
                                "name": attachment.name,
                                "mimetype": attachment.mimetype,
                                "data": self.archive.read_attachment(message.event_id, attachment.index),
                            }
                            for attachment in message.attachments
                        ],
                    }
                )
            if len(hits) < _EXPORT_BATCH:
                return collected
            offset += _EXPORT_BATCH

    def _deny(self, auditor: str, deny: Deny) -> Reply:
        request, refusal = self._closed(auditor, deny.request_id, "deny")
        if request is None:
            assert refusal is not None
            return refusal
        if self.exports is None or not self.exports.decide(
            request.request_id, "denied", auditor, self.clock()
        ):
            return Reply.text(f"Export request {request.request_id} was closed meanwhile.")
        self.log.append(
            auditor=auditor,
            action=Action.EXPORT_DENY,
            case_ref=request.case_ref,
            reason=deny.reason or request.reason,
            recipient=request.requested_by,
            query={"request_id": request.request_id, "room": request.room_id, "denial": deny.reason},
        )
        if auditor == request.requested_by:
            return Reply.text(f"Export request {request.request_id} is withdrawn; nothing was exported.")
        because = f": {deny.reason}" if deny.reason else ""
        notice = Reply.text(
            f"Your export request {request.request_id} (ref {request.case_ref}) "
            f"was denied by {auditor}{because}."
        )
        reply = Reply.text(f"Export request {request.request_id} is denied; nothing was exported.")
        return attrs.evolve(reply, notify=(request.command_room, notice))

    # -- log and health ---------------------------------------------------------------------------

    def _log_view(self, auditor: str) -> Reply:
        entries = self.log.entries(auditor)[-LOG_ENTRIES:]
        self.log.append(
            auditor=auditor,
            action=Action.LOG_VIEW,
            reason="own consultation-log entries",
            recipient=auditor,
            result_count=len(entries),
        )
        if not entries:
            return Reply.text("Your consultation log is empty.")
        lines = [f"Your last {len(entries)} consultation-log entries:"]
        for entry in entries:
            ref = f" ref {entry.case_ref}" if entry.case_ref else ""
            lines.append(
                f"#{entry.seq} {_when(entry.time_ms, self.zone)} {entry.action}{ref} reason {entry.reason!r} "
                f"results {entry.result_count} {entry.query}"
            )
        return Reply.text("\n".join(lines))

    def _health(self) -> Reply:
        stats = self.archive.stats()
        health = self.health()
        oldest = _when(stats.oldest_ts, self.zone) if stats.oldest_ts is not None else "-"
        waiting = stats.unenforced_violations
        unenforced = f" ({waiting} not yet enforced)" if waiting else ""
        lines = [
            f"archived messages: {stats.messages} "
            f"(redacted {stats.redacted}, policy violations {stats.violations}{unenforced}, "
            f"attachments {stats.attachments})",
            f"undecryptable messages: {health.undecryptable_pending} waiting for keys, "
            f"{health.undecryptable_seen} seen since start",
            _media_line(health),
            f"rooms: {stats.rooms}, oldest message: {oldest}",
            f"running since {_when(health.started_at_ms, self.zone)}",
        ]
        return Reply.text("\n".join(lines))


def _media_line(health: HealthStats) -> str:
    if not health.media_rules:
        return "media rules: off (no policy_file): attachments are archived, not checked"
    line = f"media rules: on, {health.violations_found} violating attachments since start; "
    if health.quarantine:
        failed = f", {health.quarantine_failures} failed" if health.quarantine_failures else ""
        return line + f"quarantine: on{failed}"
    return line + "quarantine: off (no admin_token_file: refused files are redacted, not quarantined)"


def _describe(message: ArchivedMessage, zone: tzinfo) -> str:
    text = f"{_when(message.origin_server_ts, zone)} {message.sender}: {message.body}"
    if message.attachments:
        text += " [" + ", ".join(f"{a.name} ({a.mimetype}, {a.size} B)" for a in message.attachments) + "]"
    if message.redacted_at is not None:
        text += f" (redacted by {message.redacted_by} at {moment(message.redacted_at / 1000, zone)})"
    if message.violation:
        text += f" (policy violation: {message.violation})"
    return text


def _hit_line(hit: SearchHit, zone: tzinfo) -> str:
    m = hit.message
    redacted = " (redacted)" if m.redacted else ""
    when = _when(m.origin_server_ts, zone)
    return f"- {when} {m.sender} in {m.room_id}{redacted}: {hit.snippet} [{m.event_id}]"


def _hit_html(hit: SearchHit, zone: tzinfo) -> str:
    m = hit.message
    redacted = " <i>(redacted)</i>" if m.redacted else ""
    return (
        f"{html.escape(_when(m.origin_server_ts, zone))} <b>{html.escape(m.sender)}</b> in "
        f"<code>{html.escape(m.room_id)}</code>{redacted}: {html.escape(hit.snippet)} "
        f"<code>{html.escape(m.event_id)}</code>"
    )
