"""What an event shows: the archive's view of one decrypted room event.

The archive keeps the event's full content (so ``!show`` and exports can show
what Element showed) and indexes the text Element displays (``body``): the
new text of an edit, the rendered ``formatted_body`` of an HTML message, a
location's description, a poll's question and answers. Reading a stored
message back must not depend on this module, so the content is kept as
received (canonical JSON); only the searchable text is derived here.

Pure functions, no I/O: the input comes from other people's clients, so any
JSON yields a ``Described`` or a ``Skip`` with its reason, never an exception.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from html.parser import HTMLParser
from typing import Any

import attrs

#: event types that are never archived as messages (their effect is recorded otherwise)
REDACTION = "m.room.redaction"
ENCRYPTED = "m.room.encrypted"
HTML_FORMAT = "org.matrix.custom.html"
POLL_START = ("m.poll.start", "org.matrix.msc3381.poll.start")
POLL_RESPONSE = ("m.poll.response", "org.matrix.msc3381.poll.response")
POLL_END = ("m.poll.end", "org.matrix.msc3381.poll.end")
#: keys of extensible-event text (stable and MSC1767's unstable prefix)
TEXT_KEYS = ("m.text", "org.matrix.msc1767.text")
#: relations recorded; a plain reply is recorded as this pseudo relation
REPLY = "m.in_reply_to"
#: the searchable text of one event is cut here (a body larger than this is no message)
MAX_BODY = 65_536
#: nested content deeper than this is not read for text (a hostile client's recursion)
MAX_DEPTH = 20

#: start event ID -> that poll's answers (answer ID -> text), when the start is known
PollAnswers = Callable[[str], Mapping[str, str] | None]


@attrs.frozen
class MediaRef:
    """The server copy of a sticker's or attachment's file: plain ``url`` or an encrypted ``file``."""

    url: str
    #: the EncryptedFile object (key, iv, hashes) when the file is encrypted
    encrypted: Mapping[str, Any] | None = None
    mimetype: str | None = None
    #: the thumbnail's mxc URL (its server copy may carry the same payload)
    thumbnail: str | None = None


@attrs.frozen
class Described:
    """The archive fields of an event (``Message`` adds IDs, sender and time)."""

    event_type: str
    msgtype: str | None
    #: the text Element displays (what the blind index indexes)
    body: str
    #: the full content, canonical JSON
    content: str
    relates_to: str | None = None
    rel_type: str | None = None
    #: the media the event shows (an attachment or a sticker)
    media: MediaRef | None = None


@attrs.frozen
class Skip:
    """Not archived as a message, and why (for the log: never content)."""

    reason: str


def canonical_json(content: Mapping[str, Any]) -> str:
    """The content as stored: sorted keys, no spaces, Unicode kept; non-finite numbers as null."""
    return json.dumps(_finite(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def describe(
    event_type: object,
    content: object,
    *,
    state_key: object = None,
    answers_of: PollAnswers | None = None,
) -> Described | Skip:
    """The archive's view of an event of ``event_type`` with ``content`` (decrypted)."""
    if not isinstance(event_type, str) or not event_type:
        return Skip("the event has no type")
    if state_key is not None:
        return Skip("a state event")
    if event_type == REDACTION:
        return Skip("a redaction (recorded on the redacted message)")
    if event_type == ENCRYPTED:
        return Skip("still encrypted")
    if not isinstance(content, Mapping):
        return Skip("the content is not an object")
    if not content:
        return Skip("the content is empty (redacted)")
    try:
        stored = canonical_json(content)
    except (TypeError, ValueError, RecursionError):
        return Skip("the content is not JSON")
    relates_to, rel_type = _relation(content)
    msgtype = content.get("msgtype") if isinstance(content.get("msgtype"), str) else None
    if rel_type == "m.replace" and isinstance(content.get("m.new_content"), Mapping):
        shown: Mapping[str, Any] = content["m.new_content"]
        new_msgtype = shown.get("msgtype")
        msgtype = new_msgtype if isinstance(new_msgtype, str) else msgtype
        body = _message_text(shown, reply=False)
    elif event_type == "m.room.message":
        body = _message_text(content, reply=rel_type == REPLY or _has_reply(content))
    elif event_type in POLL_START:
        body = _poll_start_text(content)
    elif event_type in POLL_RESPONSE:
        body = _poll_response_text(content, relates_to, answers_of)
    elif event_type in POLL_END:
        body = _poll_end_text(content)
    elif event_type == "m.reaction":
        body = _str(_mapping(content.get("m.relates_to")).get("key"))
    else:
        body = _str(content.get("body")) or _extensible_text(content)
    return Described(
        event_type=event_type,
        msgtype=msgtype,
        body=_clean(body),
        content=stored,
        relates_to=relates_to,
        rel_type=rel_type,
        media=_media(event_type, content),
    )


# -- relations ------------------------------------------------------------------------------------


def _relation(content: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The related event and the kind of relation: m.relates_to, else a plain reply."""
    relates = _mapping(content.get("m.relates_to"))
    event_id = relates.get("event_id")
    rel_type = relates.get("rel_type")
    if isinstance(event_id, str) and event_id and isinstance(rel_type, str) and rel_type:
        return event_id, rel_type
    reply = _mapping(relates.get("m.in_reply_to")).get("event_id")
    if isinstance(reply, str) and reply:
        return reply, REPLY
    return None, None


def _has_reply(content: Mapping[str, Any]) -> bool:
    reply = _mapping(_mapping(content.get("m.relates_to")).get("m.in_reply_to")).get("event_id")
    return isinstance(reply, str) and bool(reply)


# -- messages -------------------------------------------------------------------------------------


def _message_text(content: Mapping[str, Any], *, reply: bool) -> str:
    """What Element shows of an m.room.message content: the HTML's text when formatted (the
    plain body's words too: a client may put text only there), a location's description."""
    body = _str(content.get("body"))
    if reply:
        body = _strip_reply_fallback(body)
    parts = [body]
    formatted = content.get("formatted_body")
    if content.get("format") == HTML_FORMAT and isinstance(formatted, str):
        text = html_text(formatted)
        parts = [text] if _words(body) <= _words(text) else [text, body]
    if content.get("msgtype") == "m.location":
        location = _mapping(content.get("m.location")) or _mapping(content.get("org.matrix.msc3488.location"))
        parts += [
            _str(location.get("description")),
            _str(content.get("geo_uri")) or _str(location.get("uri")),
        ]
    filename = content.get("filename")
    if isinstance(filename, str) and filename not in parts:
        parts.append(filename)
    if not any(parts):
        parts.append(_extensible_text(content))
    return "\n".join(part for part in parts if part)


def _strip_reply_fallback(body: str) -> str:
    """A reply's plain body starts with the quoted original ("> <@a:b> ...") and an empty line."""
    lines = body.split("\n")
    quoted = 0
    while quoted < len(lines) and lines[quoted].startswith(">"):
        quoted += 1
    if quoted and quoted < len(lines) and lines[quoted] == "":
        return "\n".join(lines[quoted + 1 :])
    return body


class _TextOfHtml(HTMLParser):
    """The visible text of Matrix's HTML subset: the reply fallback (<mx-reply>) left out,
    block elements and <br> as line breaks, an image's alt text kept."""

    BLOCKS = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}
    )
    HIDDEN = frozenset({"mx-reply", "script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "img" and not self.hidden:
            alt = dict(attrs).get("alt")
            if alt:
                self.parts.append(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The text a client renders from ``html`` (tags dropped, entities decoded)."""
    parser = _TextOfHtml()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # the stdlib parser is lenient; this is the last line against odd input
        return html
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


# -- polls ----------------------------------------------------------------------------------------


def _poll(content: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    for key in keys:
        found = _mapping(content.get(key))
        if found:
            return found
    return {}


def poll_answers(event_type: str, content: Mapping[str, Any]) -> dict[str, str]:
    """A poll start's answers: answer ID -> text (stable m.poll and MSC3381 unstable)."""
    if event_type not in POLL_START:
        return {}
    poll = _poll(content, "m.poll", "org.matrix.msc3381.poll.start")
    answers: dict[str, str] = {}
    for answer in _list(poll.get("answers")):
        answer = _mapping(answer)
        answer_id = answer.get("m.id", answer.get("id"))
        if isinstance(answer_id, str):
            answers[answer_id] = _extensible_text(answer)
    return answers


def _poll_start_text(content: Mapping[str, Any]) -> str:
    poll = _poll(content, "m.poll", "org.matrix.msc3381.poll.start")
    question = _extensible_text(_mapping(poll.get("question")))
    answers = [_extensible_text(_mapping(answer)) for answer in _list(poll.get("answers"))]
    parts = [question, *answers]
    if not any(parts):
        parts = [_extensible_text(content)]
    return "\n".join(part for part in parts if part)


def _poll_response_text(content: Mapping[str, Any], start: str | None, lookup: PollAnswers | None) -> str:
    selections = content.get("m.selections")
    if selections is None:
        selections = _mapping(content.get("org.matrix.msc3381.poll.response")).get("answers")
    chosen = [answer for answer in _list(selections) if isinstance(answer, str)]
    known: Mapping[str, str] = {}
    if start is not None and lookup is not None:
        try:
            known = lookup(start) or {}
        except Exception:  # an unreadable start: the IDs still say what was chosen
            known = {}
    return "\n".join(known.get(answer) or answer for answer in chosen)


def _poll_end_text(content: Mapping[str, Any]) -> str:
    parts = [_extensible_text(content)]
    results = _mapping(content.get("m.poll.results"))
    parts += [f"{answer}: {count}" for answer, count in results.items() if isinstance(count, int)]
    return "\n".join(part for part in parts if part)


# -- media ----------------------------------------------------------------------------------------


def _media(event_type: str, content: Mapping[str, Any]) -> MediaRef | None:
    """A sticker's or attachment's file, plain or encrypted; None for other events."""
    if event_type != "m.sticker" and content.get("msgtype") not in (
        "m.image",
        "m.file",
        "m.audio",
        "m.video",
    ):
        return None
    info = _mapping(content.get("info"))
    mimetype = info.get("mimetype") if isinstance(info.get("mimetype"), str) else None
    thumbnail = _mapping(info.get("thumbnail_file")).get("url") or info.get("thumbnail_url")
    thumbnail = thumbnail if isinstance(thumbnail, str) and thumbnail.startswith("mxc://") else None
    file = _mapping(content.get("file"))
    url = file.get("url") if file else content.get("url")
    if not isinstance(url, str) or not url.startswith("mxc://"):
        return None
    return MediaRef(url=url, encrypted=file or None, mimetype=mimetype, thumbnail=thumbnail)


# -- helpers --------------------------------------------------------------------------------------


def _extensible_text(content: Mapping[str, Any]) -> str:
    """Text in an extensible-events form: m.text as a list of representations (plain first)
    or MSC1767's string; ``body`` as the last resort."""
    for key in TEXT_KEYS:
        value = content.get(key)
        if isinstance(value, str):
            return value
        representations = [_mapping(item) for item in _list(value)]
        plain = [r for r in representations if r.get("mimetype") in (None, "text/plain")]
        for representation in plain or representations:
            text = representation.get("body")
            if isinstance(text, str):
                return html_text(text) if representation.get("mimetype") == "text/html" else text
    return _str(content.get("body"))


def _words(text: str) -> set[str]:
    return {word.casefold() for word in text.split()}


def _clean(text: str) -> str:
    """At most ``MAX_BODY`` characters (the full content is kept besides)."""
    return text[:MAX_BODY]


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Iterable[Any]:
    return value if isinstance(value, list) else ()


def _finite(value: Any, depth: int = 0) -> Any:
    """JSON allows no NaN or infinity; Python's parser accepts them: kept as null."""
    if depth > MAX_DEPTH * 10:
        raise ValueError("nested too deep")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _finite(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item, depth + 1) for item in value]
    return value


__all__ = [
    "Described",
    "MediaRef",
    "Skip",
    "canonical_json",
    "describe",
    "html_text",
    "poll_answers",
]
