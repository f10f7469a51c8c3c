"""One command pattern for every bot: a typed command per command, a table from command to
handler, and the help made from one list of usages.

A bot declares each command once, as a ``Spec``: its name, its usage line (which is also
its line of help) and the function that turns the text after the name into the typed
command, or into the bot's "invalid" value that says what is wrong. ``Parser`` finds the
spec of a message's command; ``Handlers`` maps each typed command to the one function that
carries it out, and says at construction which commands have none (a command added to the
parser but forgotten in the handlers fails at start, not when someone sends it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

T = TypeVar("T")
R = TypeVar("R")

#: any name: a bot that answers every '!' message (the auditor)
ANY_NAME = re.compile(r"\S*")
#: letters only: other '!' text is ordinary text (the dispatch bot)
LETTERS = re.compile(r"[A-Za-z]+")
#: a usage longer than this has its summary on a line of its own
LONG_USAGE = 48


@attrs.frozen
class Usage:
    """A command's one line of help: how to write it and, optionally, what it does."""

    name: str
    syntax: str
    summary: str = ""

    def line(self, indent: str = "", gap: str = "    ") -> str:
        """The help's line; a long usage gets its summary on the next line, indented."""
        if not self.summary:
            return f"{indent}{self.syntax}"
        if "\n" in self.syntax or len(self.syntax) > LONG_USAGE:
            return f"{indent}{self.syntax}\n{indent}{gap}{self.summary}"
        return f"{indent}{self.syntax}{gap}{self.summary}"


@attrs.frozen
class Spec(Generic[T]):
    """A command: its usage and the parser of the text after its name (pure, no I/O)."""

    usage: Usage
    parse: Callable[[str], T]

    @property
    def name(self) -> str:
        return self.usage.name


def split_command(text: str, name: re.Pattern[str] = ANY_NAME) -> tuple[str, str] | None:
    """``(name, rest)`` of a '!name rest' message (name in lower case), or None when the text is
    no command: it does not start with '!', or its name does not match ``name``."""
    text = text.strip()
    if not text.startswith("!"):
        return None
    parts = text[1:].split(None, 1)
    word = parts[0] if parts else ""
    if not name.fullmatch(word):
        return None
    return word.lower(), parts[1].strip() if len(parts) > 1 else ""


class Parser(Generic[T]):
    """The commands of one bot, by name; ``unknown`` answers a name no spec has."""

    def __init__(
        self,
        specs: Sequence[Spec[Any]],
        unknown: Callable[[str], T],
        name: re.Pattern[str] = ANY_NAME,
    ) -> None:
        self.specs: dict[str, Spec[Any]] = {}
        for spec in specs:
            if spec.name in self.specs:
                raise ValueError(f"command !{spec.name} declared twice")
            self.specs[spec.name] = spec
        self._unknown = unknown
        self._name = name

    def parse(self, text: str) -> T | None:
        """The typed command in ``text`` (or the invalid value); None for ordinary text."""
        split = split_command(text, self._name)
        if split is None:
            return None
        name, rest = split
        spec = self.specs.get(name)
        return self._unknown(name) if spec is None else spec.parse(rest)

    def usage(self, name: str) -> str:
        return self.specs[name].usage.syntax

    @property
    def usages(self) -> list[Usage]:
        return [spec.usage for spec in self.specs.values()]


def help_text(
    head: str, usages: Iterable[Usage], tail: Iterable[str] = (), indent: str = "", gap: str = "    "
) -> str:
    """The help message: a heading, one line per command, then notes."""
    return "\n".join([head, *(usage.line(indent, gap) for usage in usages), *tail])


class Handlers(Generic[R]):
    """A table from a command's type to the one function that carries it out."""

    def __init__(self, table: Mapping[type, Callable[..., R]], *, expected: Iterable[type] = ()) -> None:
        self.table = dict(table)
        missing = sorted(kind.__name__ for kind in expected if kind not in self.table)
        if missing:
            raise TypeError(f"commands without a handler: {', '.join(missing)}")

    def handler(self, command: object) -> Callable[..., R] | None:
        return self.table.get(type(command))

    def __call__(self, command: object, *context: Any) -> R:
        """Run the handler of ``command`` as ``handler(*context, command)``."""
        handler = self.handler(command)
        if handler is None:
            raise LookupError(f"no handler for {type(command).__name__}")
        return handler(*context, command)


__all__ = ["ANY_NAME", "LETTERS", "Handlers", "Parser", "Spec", "Usage", "help_text", "split_command"]
