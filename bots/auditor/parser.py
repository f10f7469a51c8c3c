"""The auditor's commands: text in, a typed command out (pure, no I/O).

Commands come as text messages in the auditor's direct chat with the bot; every
command is declared once below (``SPECS``): its usage line, which is also its line
of the help, and its parser. A malformed command becomes ``Invalid`` with a message
that says what is wrong or missing, so the bot never acts on half a command.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

import attrs

from ..common.commands import Parser, Spec, Usage, help_text

#: key:"quoted value" (straight or typographic quotes), key:value, or a bare word
_TOKEN = re.compile(
    r"""(?P<key>[A-Za-z]+):(?:"(?P<dq>[^"]*)"|“(?P<tq>[^”]*)”|'(?P<sq>[^']*)'|(?P<plain>\S+))"""
    r"""|(?P<word>\S+)"""
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
_OPTION_KEYS = ("room", "sender", "from", "to", "ref", "reason")
REQUEST_ID = re.compile(r"^EX-[A-Z0-9]{4}\Z")


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
#: the commands whose refusal goes into the consultation log (they would have read or disclosed)
LOGGED_WHEN_INVALID = ("search", "show", "export", "approve", "deny")


@attrs.frozen
class _Arguments:
    """The text after a command's name: bare words and key:value options (known keys only)."""

    words: list[str]
    options: dict[str, str]
    repeated: list[str]

    @classmethod
    def of(cls, text: str) -> _Arguments:
        words: list[str] = []
        options: dict[str, str] = {}
        repeated: list[str] = []
        for match in _TOKEN.finditer(text):
            key = (match.group("key") or "").lower()
            if key in _OPTION_KEYS:
                value = next(v for v in match.group("dq", "tq", "sq", "plain") if v is not None)
                if key in options:
                    repeated.append(key)
                options[key] = value.strip()
            else:
                words.append(match.group(0))
        return cls(words, options, repeated)


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


def _command(name: str, parse: Callable[[_Arguments], Command]) -> Callable[[str], Command]:
    """A spec's parser: the arguments split, an option given twice refused for every command."""

    def run(rest: str) -> Command:
        arguments = _Arguments.of(rest)
        if arguments.repeated:
            return Invalid(
                name, f"!{name}: {', '.join(sorted(set(arguments.repeated)))} given more than once"
            )
        return parse(arguments)

    return run


def _no_arguments(name: str, command: Command) -> Callable[[str], Command]:
    def parse(arguments: _Arguments) -> Command:
        if arguments.words or arguments.options:
            return Invalid(name, f"!{name} takes no arguments")
        return command

    return _command(name, parse)


def _search(arguments: _Arguments) -> Command:
    words, options = arguments.words, arguments.options
    problems = []
    if not words:
        problems.append("the words to search for")
    problems += _justification(options)
    if problems:
        return Invalid("search", "!search: missing " + ", ".join(problems))
    dates: dict[str, date | None] = {}
    for key in ("from", "to"):
        if key in options:
            dates[key] = _date(options[key])
            if dates[key] is None:
                return Invalid(
                    "search", f"!search: {key}: expected a date as YYYY-MM-DD, got {options[key]!r}"
                )
    since, until = dates.get("from"), dates.get("to")
    if since and until and since > until:
        return Invalid("search", f"!search: from:{since} lies after to:{until}")
    room = options.get("room")
    if room is not None and not room.startswith("!"):
        return Invalid("search", f"!search: room: expected a room ID (!...), got {room!r}")
    sender = options.get("sender")
    if sender is not None and not (sender.startswith("@") and ":" in sender):
        return Invalid("search", f"!search: sender: expected a user ID (@user:server), got {sender!r}")
    return Search(
        words=" ".join(words),
        ref=options["ref"],
        reason=options["reason"],
        room_id=room,
        sender=sender,
        since=since,
        until=until,
    )


def _show(arguments: _Arguments) -> Command:
    words, options = arguments.words, arguments.options
    extra = sorted(set(options) - {"ref", "reason"})
    if extra:
        return Invalid("show", f"!show: {', '.join(extra)} only apply to !search")
    problems = []
    if len(words) != 1 or not words[0].startswith("$"):
        problems.append("one event ID (starting with $)")
    problems += _justification(options)
    if problems:
        return Invalid("show", "!show: missing " + ", ".join(problems))
    return Show(words[0], options["ref"], options["reason"])


def _export(arguments: _Arguments) -> Command:
    words, options = arguments.words, arguments.options
    usage = PARSER.usage("export")
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


def _decision(name: str) -> Callable[[_Arguments], Command]:
    """!approve <id> or !deny <id> [reason:"..."]."""

    def parse(arguments: _Arguments) -> Command:
        words, options = arguments.words, arguments.options
        extra = sorted(set(options) - ({"reason"} if name == "deny" else set()))
        if extra:
            return Invalid(name, f"!{name}: {', '.join(extra)} do not apply here; send !{name} <request id>")
        if len(words) != 1 or not REQUEST_ID.match(words[0].upper()):
            return Invalid(name, f"!{name}: expected one request ID such as EX-AB12")
        if name == "approve":
            return Approve(words[0].upper())
        return Deny(words[0].upper(), options.get("reason") or None)

    return parse


#: every command once, in the help's order: its usage (one line of help) and its parser
SPECS: tuple[Spec[Command], ...] = (
    Spec(
        Usage(
            "search",
            "!search <words> [room:<room id>] [sender:<user id>] [from:YYYY-MM-DD] [to:YYYY-MM-DD]\n"
            '        ref:<case> reason:"<text>"',
            "messages containing all the words (whole words), newest first; edits, formatting,\n"
            "    locations and polls count with what Element shows",
        ),
        _command("search", _search),
    ),
    Spec(Usage("more", "!more", "the next page of your last search"), _no_arguments("more", More())),
    Spec(
        Usage(
            "show",
            '!show <event id> ref:<case> reason:"<text>"',
            "one message as Element shows it, its earlier versions, its neighbours",
        ),
        _command("show", _show),
    ),
    Spec(Usage("log", "!log", "your own consultation-log entries"), _no_arguments("log", LogView())),
    Spec(
        Usage("health", "!health", "what the archive holds, what could not be decrypted or archived"),
        _no_arguments("health", Health()),
    ),
    Spec(
        Usage(
            "export",
            '!export <room id> <from YYYY-MM-DD> <to YYYY-MM-DD> ref:<case> reason:"<text>"',
            "request a signed export of a room's messages (both days included); another\n"
            "    auditor must approve it, then the bundle comes into this chat",
        ),
        _command("export", _export),
    ),
    Spec(
        Usage("approve", "!approve <request id>", "approve another auditor's export request (four eyes)"),
        _command("approve", _decision("approve")),
    ),
    Spec(
        Usage(
            "deny", '!deny <request id> [reason:"<text>"]', "deny an export request (or withdraw your own)"
        ),
        _command("deny", _decision("deny")),
    ),
    Spec(Usage("help", "!help", "this text"), _no_arguments("help", Help())),
)
PARSER: Parser[Command] = Parser(
    SPECS, lambda name: Invalid(name, f"unknown command !{name}; send !help for the list")
)
#: the command names
COMMANDS = tuple(PARSER.specs)
HELP = help_text("Commands (only for auditors; every search and show is logged):", PARSER.usages)


def parse_command(text: str) -> Command | None:
    """The command in a message, or None when the message is no command (no leading '!')."""
    return PARSER.parse(text)


__all__ = [
    "COMMANDS",
    "HELP",
    "LOGGED_WHEN_INVALID",
    "PARSER",
    "SPECS",
    "Approve",
    "Command",
    "Deny",
    "Export",
    "Health",
    "Help",
    "Invalid",
    "LogView",
    "More",
    "Search",
    "Show",
    "parse_command",
]
