"""What a stored file is, from its first bytes, with libmagic (python-magic).

Only the head is read, so memory does not grow with the file; callers run
``sniff`` in a thread, off the reactor.
"""

from __future__ import annotations

import bz2
import codecs
import io
import os
import zlib

import attrs
import magic
from PIL import Image

from .media import OPAQUE, RANDOMNESS_SAMPLE, has_structured_signature, looks_random

#: libmagic looks at most this far into a file for the formats we care about
#: (zip-based office files list their parts near the start).
HEAD_BYTES = 256 * 1024


@attrs.frozen
class Sniffed:
    mime: str
    size: int
    #: the head looks like ciphertext; only examined where the detected type
    #: leaves doubt (a weak or a short signature), False elsewhere
    random_looking: bool


def _gzip(head: bytes) -> None:
    zlib.decompressobj(wbits=31).decompress(head[:RANDOMNESS_SAMPLE])


def _bzip2(head: bytes) -> None:
    bz2.BZ2Decompressor().decompress(head[:RANDOMNESS_SAMPLE])


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


#: share of bytes >= 0x80 from which "text" in a legacy 8-bit charset is
#: taken for ciphertext (random bytes: one half; German Latin-1 text: a few %)
_HIGH_BYTES_SHARE = 0.3


def _binary_posing_as_text(sample: bytes) -> bool:
    """libmagic calls about one small ciphertext in eight "text" (every byte
    outside the control range reads as some 8-bit charset). Real text is ASCII
    or valid UTF-8, or has few high bytes; such a file stays text."""
    high = len(sample) - len(sample.translate(None, _HIGH_BYTES))
    if high < _HIGH_BYTES_SHARE * len(sample):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


_HIGH_BYTES = bytes(range(0x80, 0x100))


def sniff(path: str) -> Sniffed:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(HEAD_BYTES)
    mime = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    # The byte statistics matter only for a weak or short signature; skipping
    # them otherwise keeps the common cases (ciphertext, photos) cheap.
    weak = mime != OPAQUE and not has_structured_signature(mime)
    random_looking = (weak or mime in _SHORT_SIGNATURES) and looks_random(head[:RANDOMNESS_SAMPLE])
    if (random_looking and mime in _SHORT_SIGNATURES and not _decodes(mime, head)) or (
        mime == "text/plain" and _binary_posing_as_text(head[:RANDOMNESS_SAMPLE])
    ):
        mime = OPAQUE
    return Sniffed(mime=mime, size=size, random_looking=random_looking)
