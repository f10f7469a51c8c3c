"""The dispatch commands: text in, a typed command out (pure, no I/O).

Bad input becomes ``Invalid`` with a short answer that says what is wrong and
how to write it, so the bot never acts on half a command.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs

from ..common.commands import LETTERS, Handlers, Parser, Spec, Usage, help_text

R = TypeVar("R")

#: German radio status codes (FMS) an officer sends with `!s <code>`
STATUS_CODES = {
    0: "urgent request to speak",
    1: "free on radio",
    2: "free at station",
    3: "assignment accepted",
    4: "on scene",
    5: "request to speak",
    6: "not available",
    7: "bound to incident",
    8: "conditionally available",
    9: "other",
}
#: codes that alert the control room at once
URGENT_CODES = frozenset({0, 5})

_INCIDENT = re.compile(r"^#?(\d{1,9})\Z")
_GEO = re.compile(r"^geo:(-?\d{1,2}(?:\.\d+)?),(-?\d{1,3}(?:\.\d+)?)(?:;.*)?\Z")


@attrs.frozen
class Help:
    pass


@attrs.frozen
class IncidentNew:
    title: str
    prio: int = 2
    units: tuple[str, ...] = ()
    location: str | None = None


@attrs.frozen
class Assign:
    incident: int
    unit: str


@attrs.frozen
class Release:
    incident: int
    unit: str


@attrs.frozen
class Alert:
    targets: tuple[str, ...]
    text: str
    #: the deadline in the config's ack unit (minutes), or None for the default
    ack: int | None = None


@attrs.frozen
class Status:
    pass


@attrs.frozen
class Sitrep:
    incident: int
    text: str


@attrs.frozen
class Handover:
    user: str


@attrs.frozen
class Close:
    incident: int
    text: str = ""


@attrs.frozen
class Log:
    incident: int


@attrs.frozen
class OfficerStatus:
    code: int


@attrs.frozen
class Invalid:
    """What is wrong and how to write it."""

    message: str


Command = (
    Help | IncidentNew | Assign | Release | Alert | Status | Sitrep | Handover | Close | Log | OfficerStatus
)
#: commands that change or show the dispatch state: control rooms only, dispatchers and supervisors only
CONTROL_COMMANDS = (IncidentNew, Assign, Release, Alert, Status, Sitrep, Handover, Close, Log, Help)


def strip_reply_fallback(body: str) -> str:
    """A reply's body may quote the original ('> ...' lines, then a blank line); drop them."""
    lines = body.splitlines()
    while lines and lines[0].startswith(">"):
        lines.pop(0)
    return "\n".join(lines).strip()


def _invalid(name: str, problem: str) -> Invalid:
    return Invalid(f"{problem} Write: {USAGE[name]}")


def parse_incident(word: str) -> int | None:
    match = _INCIDENT.match(word.strip())
    return int(match.group(1)) if match else None


def split_options(text: str, keys: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """Free text plus `key:value` options; a value runs to the next option (addresses have spaces)."""
    pattern = re.compile(r"(?:^|(?<=\s))(" + "|".join(keys) + r"):", re.IGNORECASE)
    matches = list(pattern.finditer(text))
    if not matches:
        return text.strip(), {}
    options: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        options[match.group(1).lower()] = _unquote(text[match.end() : end].strip())
    return text[: matches[0].start()].strip(), options


def _unquote(value: str) -> str:
    for left, right in (('"', '"'), ("'", "'"), ("“", "”"), ("„", "“")):
        if len(value) >= 2 and value.startswith(left) and value.endswith(right):
            return value[1:-1].strip()
    return value


def _incident_and_rest(name: str, rest: str, *, text_required: bool) -> tuple[int, str] | Invalid:
    parts = rest.split(None, 1)
    if not parts:
        return _invalid(name, "The incident number is missing.")
    incident = parse_incident(parts[0])
    if incident is None:
        return _invalid(name, f"{parts[0]!r} is not an incident number (such as 12 or #12).")
    text = parts[1].strip() if len(parts) > 1 else ""
    if text_required and not text:
        return _invalid(name, "The text is missing.")
    return incident, text


def _incident_new(rest: str) -> Command | Invalid:
    words = rest.split(None, 1)
    if not words or words[0].lower() != "new":
        return _invalid("incident", "Only `!incident new` exists.")
    title, options = split_options(words[1] if len(words) > 1 else "", ("prio", "units", "loc"))
    title = _unquote(title)
    if not title:
        return _invalid("incident", "The title is missing.")
    prio = 2
    if "prio" in options:
        if options["prio"] not in ("1", "2", "3"):
            return _invalid("incident", f"prio must be 1, 2 or 3, not {options['prio']!r}.")
        prio = int(options["prio"])
    units: tuple[str, ...] = ()
    if "units" in options:
        units = tuple(u.strip() for u in options["units"].split(",") if u.strip())
        if not units:
            return _invalid("incident", "units: needs at least one unit name.")
    location = options.get("loc") or None
    if "loc" in options and not location:
        return _invalid("incident", "loc: needs an address or geo:lat,lon.")
    if location and location.lower().startswith("geo:"):
        match = _GEO.match(location.lower())
        if not match or abs(float(match.group(1))) > 90 or abs(float(match.group(2))) > 180:
            return _invalid("incident", f"{location!r} is no valid position; write geo:52.52,13.40.")
    return IncidentNew(title=title, prio=prio, units=units, location=location)


def _unit_command(name: str, rest: str) -> Command | Invalid:
    parsed = _incident_and_rest(name, rest, text_required=False)
    if isinstance(parsed, Invalid):
        return parsed
    incident, unit = parsed
    if not unit or "," in unit:
        return _invalid(name, "Name exactly one unit (its name or call sign).")
    return (Assign if name == "assign" else Release)(incident, unit)


def _alert(rest: str) -> Command | Invalid:
    text, options = split_options(rest, ("ack",))
    # "a, b text": allow spaces after the commas of the target list
    text = re.sub(r",\s+", ",", text, count=0) if re.match(r"^\S+,\s", text) else text
    parts = text.split(None, 1)
    if not parts:
        return _invalid("alert", "Whom to alert is missing.")
    targets = tuple(t for t in parts[0].split(",") if t)
    if len(parts) < 2 or not parts[1].strip():
        return _invalid("alert", "The alert text is missing.")
    ack = None
    if "ack" in options:
        if not options["ack"].isdigit() or int(options["ack"]) < 1:
            return _invalid("alert", f"ack: must be a whole number of minutes, not {options['ack']!r}.")
        ack = int(options["ack"])
    return Alert(targets=targets, text=parts[1].strip(), ack=ack)


def _sitrep_or_close(name: str) -> Callable[[str], Command | Invalid]:
    def parse(rest: str) -> Command | Invalid:
        parsed = _incident_and_rest(name, rest, text_required=name == "sitrep")
        if isinstance(parsed, Invalid):
            return parsed
        return Sitrep(*parsed) if name == "sitrep" else Close(*parsed)

    return parse


def _log(rest: str) -> Command | Invalid:
    parsed = _incident_and_rest("log", rest, text_required=False)
    if isinstance(parsed, Invalid):
        return parsed
    return Log(parsed[0]) if not parsed[1] else _invalid("log", "!log takes only the incident number.")


def _handover(rest: str) -> Command | Invalid:
    if len(rest.split()) != 1:
        return _invalid("handover", "Name exactly one dispatcher.")
    return Handover(rest)


def _status(rest: str) -> Command | Invalid:
    return Status() if not rest else _invalid("status", "!status takes no arguments.")


def _officer_status(rest: str) -> Command | Invalid:
    if len(rest) != 1 or not rest.isdigit():
        return _invalid("s", f"The status is one digit 0-9, not {rest!r}.")
    return OfficerStatus(int(rest))


#: every command once: its usage (the help's line) and its parser, in the help's order
SPECS: tuple[Spec[Command | Invalid], ...] = (
    Spec(
        Usage("incident", "!incident new <title> [prio:1-3] [units:<a,b>] [loc:<address or geo:lat,lon>]"),
        _incident_new,
    ),
    Spec(Usage("assign", "!assign <incident> <unit>"), lambda rest: _unit_command("assign", rest)),
    Spec(Usage("release", "!release <incident> <unit>"), lambda rest: _unit_command("release", rest)),
    Spec(Usage("alert", "!alert <unit|role|@user|incident>[,...] <text> [ack:<minutes>]"), _alert),
    Spec(Usage("status", "!status"), _status),
    Spec(Usage("sitrep", "!sitrep <incident> <text>"), _sitrep_or_close("sitrep")),
    Spec(Usage("handover", "!handover <@dispatcher>"), _handover),
    Spec(Usage("close", "!close <incident> [text]"), _sitrep_or_close("close")),
    Spec(Usage("log", "!log <incident>"), _log),
    Spec(Usage("help", "!help"), lambda rest: Help()),
    Spec(Usage("s", "!s <0-9>"), _officer_status),
)
PARSER: Parser[Command | Invalid] = Parser(
    SPECS, lambda name: Invalid(f"Unknown command !{name}. Send !help for the list of commands."), LETTERS
)
#: how to write each command, by name
USAGE = {spec.name: spec.usage.syntax for spec in SPECS}


def parse_command(body: str) -> Command | Invalid | None:
    """The command in a message body, ``Invalid`` for a malformed one, None for ordinary text."""
    return PARSER.parse(strip_reply_fallback(body))


def handlers(table: Mapping[type, Callable[..., R]]) -> Handlers[R]:
    """The dispatch bot's table from command to handler; every control command needs one."""
    return Handlers(table, expected=CONTROL_COMMANDS)


def is_acknowledgement(body: str) -> bool:
    """A reply that acknowledges an alert: 'ack' or 'quittiert' (any case, trailing punctuation)."""
    word = strip_reply_fallback(body).strip().strip(".!✅ ").lower()
    return word in ("ack", "quittiert", "✅")


#: reactions that acknowledge an alert (compared without emoji variation selectors)
ACK_REACTIONS = frozenset({"✅", "✔️", "✔", "☑️", "👍"})
_ACK_KEYS = frozenset(key.replace("\ufe0f", "") for key in ACK_REACTIONS)


def is_ack_reaction(key: str) -> bool:
    """A reaction that acknowledges an alert: ✅, ✔, ☑ or 👍 (with or without U+FE0F)."""
    return key.replace("\ufe0f", "") in _ACK_KEYS


HELP = help_text(
    "Dispatch commands (control room, dispatchers and supervisors):",
    [usage for usage in PARSER.usages if usage.name not in ("s", "help")] + [PARSER.specs["help"].usage],
    [
        "Officers, in any room with the bot: !s <0-9> sets your radio status "
        "(0 and 5 alert the control room).",
        "Acknowledge an alert with a ✅ reaction or a reply 'ack' / 'quittiert'.",
    ],
    indent="  ",
)
