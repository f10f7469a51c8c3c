"""What the sender of a refused attachment is told (pure).

Element turns bare text such as ``lageskript.sh`` or ``vnd.microsoft`` into internet
links and shows a raw user ID where a name was meant, so file names and types are code
(``<code>`` in HTML, backticks in the body) and the sender is a pill. The notice says
what was removed and why, in one or two sentences, and claims nothing the rules do not
say (no list of eleven types with sizes, no "encrypted attachments are allowed" right
after removing one).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

#: a file name longer than this is cut (the notice is no place for a novel)
MAX_NAME = 80


class _Text:
    """The notice built once, as body and as HTML, from plain text, code and pills."""

    def __init__(self) -> None:
        self.body: list[str] = []
        self.html: list[str] = []

    def text(self, text: str) -> _Text:
        self.body.append(text)
        self.html.append(html.escape(text))
        return self

    def code(self, text: str) -> _Text:
        self.body.append("`" + text.replace("`", "'") + "`")
        self.html.append(f"<code>{html.escape(text)}</code>")
        return self

    def pill(self, user_id: str, name: str) -> _Text:
        self.body.append(name)
        self.html.append(f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(name)}</a>')
        return self


def _file_name(name: str) -> str:
    name = re.sub(r"\s+", " ", name).strip() or "attachment"
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def _size(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size} bytes"


def _allowed(text: _Text, types: Iterable[str]) -> None:
    """`Allowed types: image (jpeg, png), application (pdf).`: grouped, without sizes."""
    groups: dict[str, list[str]] = {}
    for mime in sorted(types):
        major, _, minor = mime.partition("/")
        groups.setdefault(major, []).append(minor or major)
    if not groups:
        text.text(" No attachment types are allowed.")
        return
    text.text(" Allowed types: ")
    for index, (major, minors) in enumerate(groups.items()):
        text.text(("" if index == 0 else ", ") + f"{major} (")
        for position, minor in enumerate(minors):
            if position:
                text.text(", ")
            text.code(minor)
        text.text(")")
    text.text(".")


def media_notice(
    sender: str,
    sender_name: str,
    file_name: str,
    rule: str,
    detected: str,
    *,
    size: int | None = None,
    limit: int | None = None,
    allowed: Iterable[str] | None = None,
    redacted: bool,
    quarantined: bool | None,
) -> dict[str, Any]:
    """The notice (``m.notice`` content, the sender mentioned) for an attachment that broke
    ``rule`` with content detected as ``detected``. ``limit``: the size allowed for it
    (``media.too_large``); ``allowed``: the MIME types the rules allow (``media.type``; None:
    rules unknown); ``quarantined`` None: no admin token, so no quarantine was tried."""
    text = _Text().pill(sender, sender_name).text(": your attachment ").code(_file_name(file_name))
    text.text(
        " was removed." if redacted else " breaks the media rules; removing it failed and is tried again."
    )
    if rule == "media.type" and detected == "application/octet-stream":
        text.text(" Its content is of no known type, which is not allowed here.")
        if allowed is not None:
            _allowed(text, allowed)
    elif rule == "media.type":
        text.text(" Its content is ").code(detected).text(", a type not allowed here.")
        if allowed is not None:
            _allowed(text, allowed)
    elif rule == "media.active_content":
        text.text(" Its content (").code(detected).text(") holds active content ")
        text.text("(JavaScript, automatic actions or embedded files), which is not allowed here.")
    elif rule == "media.trailing_data":
        text.text(" Its content (").code(detected).text(") carries other data behind the ")
        text.text("file itself, which is not allowed here.")
    elif rule == "media.too_large" and size is not None and limit is not None:
        text.text(" Its content (").code(detected).text(f", {_size(size)}) is larger than the ")
        text.text(f"{_size(limit)} allowed.")
    elif rule == "media.too_large":
        text.text(" It is larger than allowed.")
    elif rule == "media.empty":
        text.text(" Empty files are not allowed.")
    else:
        text.text(" It breaks the media rule ").code(rule).text(".")
    if quarantined is None:
        text.text(" Its copy on the server was not quarantined (the auditor bot has no admin token).")
    elif not quarantined:
        text.text(" Quarantining its copy on the server failed and is tried again.")
    return {
        "msgtype": "m.notice",
        "body": "".join(text.body),
        "format": "org.matrix.custom.html",
        "formatted_body": "".join(text.html),
        "m.mentions": {"user_ids": [sender]},
    }


__all__ = ["MAX_NAME", "media_notice"]
