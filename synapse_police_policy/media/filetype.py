"""What a stored file is, from its bytes, with libmagic (python-magic), and
whether content libmagic cannot name is ciphertext (``media.randomness``).

Only the first 256 KiB and the last block are read for that, so memory does
not grow with the file; the structural checks of allowed types
(``filescan.py``) read further, in blocks. Callers run ``sniff`` in a thread,
off the reactor.
"""

from __future__ import annotations

import bz2
import io
import itertools
import os
import re
import zlib
from collections.abc import Callable

import magic
from PIL import Image

from ..config import MediaConfig
from . import filescan
from .rules import (
    EMPTY_TYPES,
    OPAQUE,
    TEXT_DECIDABLE_BYTES,
    Finding,
    Randomness,
    Sniffed,
    byte_counts,
    canonical,
    has_strong_signature,
    is_textual,
    randomness,
)

#: libmagic looks at most this far into a file for the formats we care about
#: (zip-based office files list their parts near the start).
HEAD_BYTES = 256 * 1024
#: the last block, read besides the head: where a zip archive's directory ends
TAIL_BYTES = filescan.TAIL_BYTES
#: what content of no known type that passes the randomness test is
RANDOM_BYTES = "uniformly random bytes, as encrypted or compressed data are"
_DEFAULT_RULES = MediaConfig()
#: what a short signature's stream must decode from to be believed
_DECODE_SAMPLE = 16 * 1024


def _gzip(head: bytes) -> None:
    zlib.decompressobj(wbits=31).decompress(head[:_DECODE_SAMPLE])


def _bzip2(head: bytes) -> None:
    bz2.BZ2Decompressor().decompress(head[:_DECODE_SAMPLE])


def _jpeg(head: bytes) -> None:
    with Image.open(io.BytesIO(head)) as image:
        image.size  # noqa: B018 - opening parsed the segments up to the frame header


#: Signatures of two or three bytes, which one ciphertext in 65,536 (gzip)
#: or 16 million (bzip2, JPEG) starts with by chance. In random-looking
#: content they are believed only when the stream really decodes.
_SHORT_SIGNATURES = {"application/gzip": _gzip, "application/x-bzip2": _bzip2, "image/jpeg": _jpeg}


def _decodes(mime: str, head: bytes) -> bool:
    try:
        _SHORT_SIGNATURES[mime](head)
    except Exception:
        return False
    return True


#: what ASCII text is made of: printable characters, tab, line feed, form feed, carriage return
_ASCII_TEXT = bytes([0x09, 0x0A, 0x0C, 0x0D, *range(0x20, 0x7F)])


def _ascii_text(sample: bytes) -> bool:
    """Whether ``sample`` is ASCII text; uniformly random bytes are with a
    chance of (100/256)**n: 3e-7 at 16 bytes, below 1e-9 from 23 bytes on."""
    return not sample.translate(None, _ASCII_TEXT)


def sniff(path: str, rules: MediaConfig = _DEFAULT_RULES) -> Sniffed:
    """What the file at ``path`` is; for a type ``rules`` allow, also what
    their options refuse in it (active content in a PDF, data after an image)."""
    with open(path, "rb", buffering=0) as file:
        return _sniff(filescan.Reader(file.fileno(), os.fstat(file.fileno()).st_size), rules)


def _once(compute: Callable[[], filescan.Archive | None]) -> Callable[[], filescan.Archive | None]:
    """``compute``, run at most once (its answer kept, None included)."""
    answer: list[filescan.Archive | None] = []

    def once() -> filescan.Archive | None:
        if not answer:
            answer.append(compute())
        return answer[0]

    return once


def _sniff(reader: filescan.Reader, rules: MediaConfig) -> Sniffed:
    size = reader.size
    head = reader.read(0, HEAD_BYTES)
    tail_start = max(len(head), size - TAIL_BYTES)
    tail = reader.read(tail_start, size - tail_start)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    if mime in EMPTY_TYPES:
        return Sniffed(mime=mime, size=size)
    # searched once, whether for content that would pass as ciphertext or for
    # trailing data in an allowed type (random bytes libmagic takes for audio/mpeg: both)
    hidden_archive = _once(lambda: filescan.hidden_archive(reader, head, tail))
    # The byte statistics matter only where the type leaves doubt; skipping
    # them for long signatures keeps photos and videos cheap.
    test: Randomness | None = None
    random_looking = False
    if not (has_strong_signature(mime) or (mime == "application/x-object" and head[:4] == b"\x7fELF")):
        test = randomness(byte_counts(head, tail))
        random_looking = test.uniform and _chance_match(mime, head, test)
    if random_looking and mime in _SHORT_SIGNATURES:
        mime = OPAQUE
    if mime == OPAQUE or random_looking:
        # what would pass as ciphertext: an archive behind other data is an archive
        archive = hidden_archive()
        if archive is not None:
            return Sniffed(mime=archive.mime, size=size, detail=archive.where)
        if filescan.pdf_behind(head) is not None:
            mime, random_looking = "application/pdf", False
    if mime == OPAQUE:
        assert test is not None
        detail = RANDOM_BYTES if random_looking else _unrecognised(head, test)
        return Sniffed(mime=mime, size=size, random_looking=random_looking, detail=detail)
    finding = None
    limit = rules.allowed.get(canonical(mime))
    if limit is not None and size <= limit:
        finding = _finding(reader, rules, mime, head, hidden_archive)
    return Sniffed(mime=mime, size=size, random_looking=random_looking, finding=finding)


def _chance_match(mime: str, head: bytes, test: Randomness) -> bool:
    """Whether libmagic's ``mime`` for random-looking bytes is a chance match
    of a weak signature, not what the bytes are."""
    if mime == OPAQUE:
        return True
    if mime in _SHORT_SIGNATURES:
        return not _decodes(mime, head)
    if is_textual(mime):
        # Real text fails the test from TEXT_DECIDABLE_BYTES on. Below, libmagic
        # reads about one random buffer in five as text (no control codes): only
        # ASCII text stays text there, text with other bytes passes as ciphertext.
        return test.tested >= TEXT_DECIDABLE_BYTES or not _ascii_text(head)
    return True


def _finding(
    reader: filescan.Reader,
    rules: MediaConfig,
    mime: str,
    head: bytes,
    hidden_archive: Callable[[], filescan.Archive | None],
) -> Finding | None:
    """What the options refuse in a file of an allowed type (``hidden_archive``:
    ``filescan.hidden_archive`` of the file, computed once)."""
    if rules.refuse_pdf_active_content and mime == "application/pdf":
        active = filescan.pdf_active_content(reader)
        if active is not None:
            return Finding(rule="media.active_content", what=f"it holds {active}")
    if rules.refuse_trailing_data:
        archive = hidden_archive()
        if archive is not None:
            return Finding(
                rule="media.trailing_data",
                what=f"an {archive.mime} archive is hidden in it ({archive.where})",
            )
        trailing = filescan.trailing_data(reader, mime, head)
        if trailing is not None:
            what = trailing.what
            if trailing.at is not None:
                found = magic.from_buffer(reader.read(trailing.at, 64 * 1024), mime=True)
                what += "" if found == OPAQUE else f", read as {found}"
            return Finding(rule="media.trailing_data", what=what)
    return None


#: where another file may start inside content of no known type, to name what was found
_EMBEDDED = re.compile(
    rb"\x7fELF|MZ|PK\x03\x04|%PDF-|\x89PNG|GIF8[79]a|\xff\xd8\xff|Rar!|7z\xbc\xaf|\x1f\x8b\x08|BZh"
    rb"|\xfd7zXZ|#!/|(?i:<\?xml|<!doctype|<html|<script|<svg|<body)"
)
#: signatures tried with libmagic, at most (each try costs about 0.5 ms)
_EMBEDDED_TRIES = 8


def _unrecognised(head: bytes, test: Randomness) -> str:
    """What content of no known type that is no ciphertext resembles, and why it is none."""
    parts = []
    for match in itertools.islice(_EMBEDDED.finditer(head), _EMBEDDED_TRIES):
        found = magic.from_buffer(head[match.start() :], mime=True)
        # a weak signature in other data (x-dosexec after "MZ") is no finding
        if has_strong_signature(found) or (is_textual(found) and found != "text/plain"):
            parts.append(f"{found} at byte {match.start():,}")
            break
    parts.append(f"its bytes are not uniformly random: {test.failed}")
    return "; ".join(parts)
