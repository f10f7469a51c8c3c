"""The blind search index: words as keyed hashes, so no clear text reaches the disk.

A message's words are normalised (``words``: Unicode NFC, split on anything
that is not a letter or digit, then NFKC and case-folded, so ``MÜLLERSTRASSE``,
``Müllerstraße`` and a decomposed ``Mu\\u0308llerstraße`` are one word) and
each distinct word becomes a token: the first ``TOKEN_BYTES`` bytes of
HMAC-SHA256 under the index key, in hex. The room and the sender become
tokens too (in their own domains, so no word can match them), which lets
SQLite's FTS5 apply those filters inside the index.

What the tokens give away, and what they cannot do:

* equal words have equal tokens in every message of the archive: whoever
  reads the file (without the key) sees which messages share a word and how
  often each token occurs, so frequency analysis can guess common words;
* only whole words match: no prefixes, no substrings, no fuzzy matching, no
  phrases (the index does not keep word positions); a query is the AND of
  its words.

64-bit tokens make an accidental collision between two different words of
the archive improbable (about n²/2⁶⁵ for n distinct words); a collision
would only add a false hit.
"""

from __future__ import annotations

import functools
import hmac
import re
import unicodedata
from collections.abc import Collection, Iterable

#: bytes of HMAC-SHA256 kept per token (hex in the index: twice as many characters)
TOKEN_BYTES = 8
#: distinct words whose token is remembered (the same words recur in every message)
TOKEN_CACHE = 65_536
#: characters of a search result's snippet
SNIPPET_CHARS = 120

_WORD = re.compile(r"[^\W_]+")
_SPACE = re.compile(r"\s+")


def fold(word: str) -> str:
    """The normalised form of one word (NFKC, case-folded)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", word).casefold())


def words(text: str) -> list[str]:
    """The normalised words of ``text``, in order, repeats included."""
    return [fold(word) for word in _WORD.findall(unicodedata.normalize("NFC", text))]


class BlindIndex:
    """Tokens under one index key, and FTS5 documents and queries made of them."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.word_token = functools.lru_cache(maxsize=TOKEN_CACHE)(self._word_token)
        # a message's words as written, its room and its sender recur too: remembering their
        # tokens saves the normalisation and the HMAC, most of the cost of indexing a message
        self._written_word_token = functools.lru_cache(maxsize=TOKEN_CACHE)(self._fold_and_token)
        self.room_token = functools.lru_cache(maxsize=TOKEN_CACHE)(self._room_token)
        self.sender_token = functools.lru_cache(maxsize=TOKEN_CACHE)(self._sender_token)

    def _token(self, domain: bytes, value: str) -> str:
        return hmac.digest(self._key, domain + b"\x00" + value.encode(), "sha256")[:TOKEN_BYTES].hex()

    def _word_token(self, word: str) -> str:
        return self._token(b"w", word)

    def _fold_and_token(self, written: str) -> str:
        return self.word_token(fold(written))

    def _room_token(self, room_id: str) -> str:
        return self._token(b"r", room_id)

    def _sender_token(self, sender: str) -> str:
        return self._token(b"s", sender)

    def document(self, text: str, room_id: str, sender: str) -> str:
        """What the FTS5 table stores for a message: its distinct word tokens, its room and sender."""
        written = _WORD.findall(unicodedata.normalize("NFC", text))  # as ``words``, before folding
        tokens = dict.fromkeys(self._written_word_token(word) for word in written)
        return " ".join([*tokens, self.room_token(room_id), self.sender_token(sender)])

    def query(self, query_words: Iterable[str], room_id: str | None, sender: str | None) -> str:
        """An FTS5 MATCH expression: all of the (normalised) words, in the room, by the sender."""
        tokens = [self.word_token(word) for word in query_words]
        if room_id is not None:
            tokens.append(self.room_token(room_id))
        if sender is not None:
            tokens.append(self.sender_token(sender))
        return " ".join(f'"{token}"' for token in tokens)


def snippet(text: str, query_words: Collection[str], width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``text`` around the first word in ``query_words``
    (normalised words), else its start; whitespace runs become one space, and
    ``…`` marks a cut."""
    flat = _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
    hits = (match.start() for match in _WORD.finditer(flat) if fold(match.group()) in query_words)
    hit = next(hits, 0) if query_words else 0
    start = 0
    if hit > width // 4:
        # a quarter of the width before the hit, from the start of a word
        start = hit - width // 4
        space = flat.find(" ", start, hit)
        start = space + 1 if space != -1 else start
    end = min(len(flat), start + width)
    if end < len(flat):
        space = flat.rfind(" ", start + width // 2, end)
        end = space if space != -1 else end
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")
