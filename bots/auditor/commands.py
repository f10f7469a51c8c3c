"""The auditor's commands: parsing (a pure function) and running them.

Commands come as text messages in the auditor's direct chat with the bot::

    !help
    !search <words> [room:<id>] [sender:<user>] [from:YYYY-MM-DD] [to:YYYY-MM-DD] ref:<case> reason:"<text>"
    !more
    !show <event id> ref:<case> reason:"<text>"
    !log
    !health

Only the configured auditors may use them; everyone else gets a refusal, and
the refusal is written to the consultation log. Every search, page and show
is written to the consultation log before the answer is sent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import attrs

from .archive import Archive, ArchivedMessage, SearchHit, now_ms
from .consultation_log import Action, ConsultationLog

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

COMMANDS = ("help", "search", "more", "show", "log", "health")

HELP = """Commands (only for auditors; every search and show is logged):
!search <words> [room:<room id>] [sender:<user id>] [from:YYYY-MM-DD] [to:YYYY-MM-DD]
        ref:<case> reason:"<text>"
    messages containing all the words (whole words), newest first
!more    the next page of your last search
!show <event id> ref:<case> reason:"<text>"    one message in full, with its neighbours
!log     your own consultation-log entries
!health  what the archive holds and how many messages could not be decrypted
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
class Invalid:
    """A command that could not be parsed; ``message`` says what is wrong or missing."""

    command: str
    message: str


Command = Help | Search | More | Show | LogView | Health | Invalid


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


# -- running them ---------------------------------------------------------------------------------


@attrs.frozen
class Reply:
    body: str
    formatted_body: str

    @classmethod
    def text(cls, body: str) -> Reply:
        return cls(body, "<pre>" + html.escape(body) + "</pre>" if "\n" in body else html.escape(body))

    def content(self) -> dict[str, str]:
        return {
            "msgtype": "m.notice",
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.formatted_body,
        }


@attrs.frozen
class HealthStats:
    undecryptable_seen: int
    undecryptable_pending: int
    started_at_ms: int


@attrs.define
class _LastSearch:
    search: Search
    since_ms: int
    until_ms: int | None
    offset: int


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


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
    ) -> None:
        self.archive = archive
        self.log = log
        self.auditors = auditors
        self.audit_lifetime_ms = audit_lifetime_ms
        self.health = health
        self.clock = clock
        self._last: dict[str, _LastSearch] = {}

    def handle(self, sender: str, text: str) -> Reply | None:
        """The answer to ``text`` from ``sender``; None when it is no command."""
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
                if command.command in ("search", "show"):
                    self.log.append(
                        auditor=sender,
                        action=Action.REFUSAL,
                        reason=command.message,
                        recipient=sender,
                        query={"command": text[:500]},
                    )
                return Reply.text(command.message)
            case Help():
                return Reply.text(HELP)
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
        raise AssertionError(command)

    # -- search -----------------------------------------------------------------------------------

    def _retained_since(self) -> int:
        return self.clock() - self.audit_lifetime_ms

    def _search(self, auditor: str, search: Search) -> Reply:
        cutoff = self._retained_since()
        cutoff_day = datetime.fromtimestamp(cutoff / 1000, tz=UTC).date()
        until_ms = _day_ms(search.until + timedelta(days=1)) if search.until else None
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
                f"(the archive keeps messages since {_when(cutoff)})."
            )
        since_ms = cutoff
        if search.since is not None:
            if _day_ms(search.since) < cutoff:
                note = f"Messages before {cutoff_day} are not retained.\n"
            since_ms = max(cutoff, _day_ms(search.since))
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
        lines = [_hit_line(hit) for hit in hits]
        body = "\n".join([head, *lines, tail])
        items = "".join(f"<li>{_hit_html(hit)}</li>" for hit in hits)
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
            lines.append(f"{mark} {_describe(item)}")
            text = html.escape(_describe(item))
            parts.append(f"<li><b>{text}</b></li>" if item.event_id == show.event_id else f"<li>{text}</li>")
        body = "\n".join(lines)
        return Reply(body, f"<p>{html.escape(lines[0])}</p><ul>{''.join(parts)}</ul>")

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
                f"#{entry.seq} {_when(entry.time_ms)} {entry.action}{ref} reason {entry.reason!r} "
                f"results {entry.result_count} {entry.query}"
            )
        return Reply.text("\n".join(lines))

    def _health(self) -> Reply:
        stats = self.archive.stats()
        health = self.health()
        oldest = _when(stats.oldest_ts) if stats.oldest_ts is not None else "-"
        lines = [
            f"archived messages: {stats.messages} "
            f"(redacted {stats.redacted}, attachments {stats.attachments})",
            f"undecryptable messages: {health.undecryptable_pending} waiting for keys, "
            f"{health.undecryptable_seen} seen since start",
            f"rooms: {stats.rooms}, oldest message: {oldest}",
            f"running since {_when(health.started_at_ms)}",
        ]
        return Reply.text("\n".join(lines))


def _describe(message: ArchivedMessage) -> str:
    text = f"{_when(message.origin_server_ts)} {message.sender}: {message.body}"
    if message.attachments:
        text += " [" + ", ".join(f"{a.name} ({a.mimetype}, {a.size} B)" for a in message.attachments) + "]"
    if message.redacted:
        text += f" (redacted by {message.redacted_by})"
    return text


def _hit_line(hit: SearchHit) -> str:
    m = hit.message
    redacted = " (redacted)" if m.redacted else ""
    return f"- {_when(m.origin_server_ts)} {m.sender} in {m.room_id}{redacted}: {hit.snippet} [{m.event_id}]"


def _hit_html(hit: SearchHit) -> str:
    m = hit.message
    redacted = " <i>(redacted)</i>" if m.redacted else ""
    return (
        f"{html.escape(_when(m.origin_server_ts))} <b>{html.escape(m.sender)}</b> in "
        f"<code>{html.escape(m.room_id)}</code>{redacted}: {html.escape(hit.snippet)} "
        f"<code>{html.escape(m.event_id)}</code>"
    )
