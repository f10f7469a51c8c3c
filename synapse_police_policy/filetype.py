"""What a stored file is, from its first bytes, with libmagic (python-magic).

Only the head is read, so memory does not grow with the file; callers run
``sniff`` in a thread, off the reactor.
"""

from __future__ import annotations

import os

import attrs
import magic

from .media import RANDOMNESS_SAMPLE, looks_random

#: libmagic looks at most this far into a file for the formats we care about
#: (zip-based office files list their parts near the start).
HEAD_BYTES = 256 * 1024


@attrs.frozen
class Sniffed:
    mime: str
    size: int
    random_looking: bool


def sniff(path: str) -> Sniffed:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(HEAD_BYTES)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    return Sniffed(mime=mime, size=size, random_looking=looks_random(head[:RANDOMNESS_SAMPLE]))
