"""Structure of stored files beyond their type: where an image ends and what
follows it, active content in a PDF, archives that extraction tools find in a
file that is not one. ``filetype.sniff`` calls these in its thread.

Memory stays flat whatever the file's size: the file is read in blocks. Every
walk is bounded (``MAX_STEPS``), so a crafted file cannot keep a thread busy
for long; a walk that reaches the bound is reported, not waved through.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator

import attrs

#: the last block of a file: where a zip archive's end record must be (22
#: bytes and a comment of up to 65,535 that unzip accepts after it)
TAIL_BYTES = 22 + 0xFFFF
#: the block the scans read at a time
BLOCK = 1024**2
#: the block ``Reader.at`` caches for walks that take a few bytes at a time
_CACHED = 64 * 1024
#: markers, chunks or blocks a walk follows at most (legitimate files have a
#: few thousand: a 30 MiB PNG in 8 KiB IDAT chunks has 3,840)
MAX_STEPS = 65_536
#: bytes an object stream of a PDF may inflate to, all streams together
MAX_INFLATED = 64 * 1024**2


class Reader:
    """Reads a file by position (``os.pread``), caching 64 KiB so walks that
    take a few bytes at a time cost one system call per block."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._start = 0
        self._block = b""

    def at(self, position: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``position`` (fewer at the end of the file)."""
        if position < 0 or position >= self.size or length <= 0:
            return b""
        end = min(position + length, self.size)
        if not (self._start <= position and end <= self._start + len(self._block)):
            self._start = position
            self._block = self.read(position, max(_CACHED, length))
        return self._block[position - self._start : end - self._start]

    def read(self, position: int, length: int) -> bytes:
        """``length`` bytes from ``position``, uncached (short reads completed)."""
        parts = []
        while length > 0 and position < self.size:
            data = os.pread(self.fd, min(length, self.size - position), position)
            if not data:
                break
            parts.append(data)
            position += len(data)
            length -= len(data)
        return b"".join(parts)

    def blocks(self, start: int, overlap: int) -> Iterator[tuple[int, bytes, bool]]:
        """``(position, block, last)`` from ``start`` to the end; each block
        repeats the previous one's final ``overlap`` bytes."""
        position = start
        while position < self.size:
            block = self.read(position, BLOCK + overlap)
            last = position + len(block) >= self.size
            yield position, block, last
            if last:
                return
            position += len(block) - overlap

    def search(self, pattern: re.Pattern[bytes], start: int) -> int | None:
        """Where ``pattern`` (of at most 2 bytes) first matches from ``start``."""
        for position, block, _last in self.blocks(start, 1):
            match = pattern.search(block)
            if match:
                return position + match.start()
        return None

    def find(self, needle: bytes, start: int) -> int | None:
        """Where ``needle`` first is from ``start``."""
        for position, block, _last in self.blocks(start, len(needle) - 1):
            found = block.find(needle)
            if found >= 0:
                return position + found
        return None

    def all_zero(self, start: int) -> bool:
        return all(block.count(0) == len(block) for _, block, _ in self.blocks(start, 0))


# -- archives in files that are not archives ------------------------------------------------


@attrs.frozen
class Archive:
    mime: str
    #: where it is, for the uploader
    where: str


_END_OF_CENTRAL_DIRECTORY = struct.Struct("<4s4H2LH")
#: Signatures unrar and 7-Zip look for behind other data (self-extracting
#: archives), with the version bytes after them: 7 or 8 bytes, which random
#: bytes hold with a chance below 1e-12 in the window searched
_BEHIND = (
    ("application/vnd.rar", b"Rar!\x1a\x07", (b"\x00", b"\x01\x00")),
    ("application/x-7z-compressed", b"7z\xbc\xaf\x27\x1c\x00", (b"\x02", b"\x03", b"\x04")),
)
#: how far in those signatures are looked for: each search costs about 0.6 ns
#: a byte, on every upload that may be ciphertext (unrar itself looks up to
#: 4 MB in; no window short of that closes the gap, a zip's end does not need one)
BEHIND_WINDOW = 64 * 1024


def hidden_archive(reader: Reader, head: bytes, tail: bytes) -> Archive | None:
    """An archive that extraction tools find in a file whose start is something
    else: a zip archive's directory at the end (unzip reads a zip from its end,
    so data before it does not matter), a RAR or 7-Zip signature in the first
    BEHIND_WINDOW bytes."""
    last = tail if len(tail) >= TAIL_BYTES else (head + tail)[-TAIL_BYTES:]
    start = _zip_start(reader, last)
    if start is not None:
        return Archive("application/zip", f"its directory ends the file; it starts at byte {start:,}")
    for mime, signature, versions in _BEHIND:
        position = head.find(signature, 1, BEHIND_WINDOW)
        while position >= 0:
            if head.startswith(versions, position + len(signature)):
                return Archive(mime, f"its signature is at byte {position:,}")
            position = head.find(signature, position + 1, BEHIND_WINDOW)
    return None


def _zip_start(reader: Reader, last: bytes) -> int | None:
    """Where the zip archive whose end record is in ``last`` (the file's last
    bytes) starts, if the central directory it points at is there, as unzip and
    Python's zipfile find it: an end record signature (4 bytes) and a central
    directory signature (4 more) where it says; random bytes do that with a
    chance of about 1e-14."""
    base = reader.size - len(last)
    position = len(last)
    for _ in range(16):
        position = last.rfind(b"PK\x05\x06", 0, position)
        if position < 0:
            return None
        if position + _END_OF_CENTRAL_DIRECTORY.size > len(last):
            continue
        fields = _END_OF_CENTRAL_DIRECTORY.unpack_from(last, position)
        entries, directory_size, directory_offset = fields[4], fields[5], fields[6]
        if 0xFFFFFFFF in (directory_size, directory_offset) or entries == 0xFFFF:
            # zip64: the real values are in a zip64 record, located just before
            if position >= 20 and last[position - 20 : position - 16] == b"PK\x06\x07":
                return 0
            continue
        directory = base + position - directory_size
        if entries and directory >= 0 and reader.read(directory, 4) == b"PK\x01\x02":
            return max(0, int(directory - directory_offset))
    return None


def pdf_behind(head: bytes) -> int | None:
    """Where a PDF header is in the first KiB (PDF readers look that far)."""
    match = _PDF_HEADER.search(head, 0, 1024 + 8)
    return match.start() if match else None


_PDF_HEADER = re.compile(rb"%PDF-[12]\.\d")


# -- the end of an image or a video --------------------------------------------------------


@attrs.frozen
class Trailing:
    #: worded for the uploader
    what: str
    #: where the data after the end starts; None: there is no end to speak of
    at: int | None


def trailing_data(reader: Reader, mime: str, head: bytes) -> Trailing | None:
    """What follows the end of an image (JPEG EOI, PNG IEND, GIF trailer, WebP's
    RIFF size) or of an ISO media file's last box (MP4, QuickTime, HEIC, M4A);
    None when nothing does but zero bytes (padding some cameras write, which
    carries nothing). A file whose structure does not end (truncated, or only
    a signature in front of something else) has no end to judge by: that is
    reported too."""
    walk = _END_WALKS.get(mime)
    if walk is None:
        return None
    end, name = walk(reader, head)
    if isinstance(end, str):
        return Trailing(what=end, at=None)
    if end is None:
        return Trailing(
            what=f"its structure does not end where the file does (no {name}): "
            f"truncated, or no {mime} at all",
            at=None,
        )
    if end >= reader.size or reader.all_zero(end):
        return None
    return Trailing(what=f"{reader.size - end:,} bytes follow the {name} at byte {end:,}", at=end)


_Walk = tuple[int | str | None, str]
_JPEG_END = "JPEG end marker (EOI)"


def _jpeg(reader: Reader, head: bytes) -> _Walk:
    """Images in a row (a multi-picture JPEG: Ultra HDR gain maps, MPO) end where the last does."""
    start, images = 0, 0
    while True:
        end = _jpeg_end(reader, start)
        images += 1
        if not isinstance(end, int) or images >= 16 or reader.at(end, 3) != b"\xff\xd8\xff":
            return end, _JPEG_END
        start = end


#: a marker in entropy-coded data: 0xFF not followed by 0x00 (a stuffed 0xFF),
#: a restart marker (0xD0-0xD7) or fill (0xFF)
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_end(reader: Reader, start: int) -> int | str | None:
    """Where the JPEG at ``start`` ends (after EOI); None: no EOI where its segments end."""
    position = start + 2
    for _ in range(MAX_STEPS):
        header = reader.at(position, 4)
        if len(header) < 2 or header[0] != 0xFF:
            return None
        marker = header[1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker == 0xD9:
            return position + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2
        elif len(header) < 4:
            return None
        else:
            position += 2 + int.from_bytes(header[2:4], "big")
            if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
                found = reader.search(_JPEG_MARKER, position)
                if found is None:
                    return None
                position = found
    return f"more than {MAX_STEPS:,} JPEG markers, more than the check follows"


_PNG_END = "PNG end chunk (IEND)"


def _png(reader: Reader, head: bytes) -> _Walk:
    position = 8
    for _ in range(MAX_STEPS):
        header = reader.at(position, 8)
        length = int.from_bytes(header[:4], "big")
        if len(header) < 8 or length > 0x7FFFFFFF:
            return None, _PNG_END
        position += 12 + length
        if header[4:] == b"IEND":
            return position, _PNG_END
    return f"more than {MAX_STEPS:,} PNG chunks, more than the check follows", _PNG_END


def _gif(reader: Reader, head: bytes) -> _Walk:
    name = "GIF trailer (0x3b)"
    screen = reader.at(0, 13)
    if len(screen) < 13:
        return None, name
    position = 13 + _colour_table(screen[10])
    steps = 0
    while steps < 16 * MAX_STEPS:
        introducer = reader.at(position, 1)
        if introducer == b";":
            return position + 1, name
        if introducer == b",":  # image: descriptor, local colour table, LZW code size, data
            descriptor = reader.at(position, 10)
            if len(descriptor) < 10:
                return None, name
            position += 11 + _colour_table(descriptor[9])
        elif introducer == b"!":  # extension: label, then sub-blocks
            position += 2
        else:
            return None, name
        while steps < 16 * MAX_STEPS:
            steps += 1
            length = reader.at(position, 1)
            if not length:
                return None, name
            position += 1 + length[0]
            if length[0] == 0:
                break
    return f"more than {16 * MAX_STEPS:,} GIF blocks, more than the check follows", name


def _colour_table(flags: int) -> int:
    """The size of a GIF colour table from the flags byte before it."""
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _webp(reader: Reader, head: bytes) -> _Walk:
    size = int.from_bytes(head[4:8], "little")
    end = 8 + size + (size & 1)
    return (end if end <= reader.size else None), "WebP RIFF chunk"


_BOXES_END = "end of the ISO media file's last box"
#: a box type: four printable ASCII characters
_BOX_TYPE = re.compile(rb"[\x20-\x7e]{4}")


def _boxes(reader: Reader, head: bytes) -> _Walk:
    """ISO base media files (MP4, QuickTime, HEIC, M4A) are a row of top-level
    boxes, each with its size; a box of size 0 runs to the end of the file."""
    position = 0
    for _ in range(MAX_STEPS):
        if position == reader.size:
            return position, _BOXES_END
        header = reader.read(position, 16)
        if len(header) < 8 or not _BOX_TYPE.fullmatch(header[4:8]):
            return position, _BOXES_END  # no box here: what follows is something else
        size = int.from_bytes(header[:4], "big")
        if size == 0:
            return reader.size, _BOXES_END
        if size == 1:
            size = int.from_bytes(header[8:16], "big") if len(header) == 16 else 0
        if size < 8 or position + size > reader.size:
            return None, _BOXES_END
        position += size
    return f"more than {MAX_STEPS:,} top-level boxes, more than the check follows", _BOXES_END


_END_WALKS = {
    "image/jpeg": _jpeg,
    "image/png": _png,
    "image/gif": _gif,
    "image/webp": _webp,
    **dict.fromkeys(
        (
            "video/mp4",
            "video/quicktime",
            "video/3gpp",
            "video/x-m4v",
            "audio/x-m4a",
            "audio/mp4",
            "image/heic",
            "image/heif",
            "image/avif",
        ),
        _boxes,
    ),
}


# -- active content in a PDF -------------------------------------------------------------------

#: PDF names of things that run or open something (as in Didier Stevens' pdfid):
#: JavaScript, actions run on opening or on events (/AA), launching programs,
#: embedded files and jumps into them, Flash, XML forms, forms sending data
ACTIVE_PDF_NAMES = (
    "JavaScript",
    "JS",
    "OpenAction",
    "AA",
    "Launch",
    "EmbeddedFile",
    "EmbeddedFiles",
    "GoToE",
    "RichMedia",
    "XFA",
    "SubmitForm",
    "ImportData",
)


def _name_pattern(name: str) -> bytes:
    """A PDF name as written, any character possibly escaped as #xx (``/J#61vaScript``)."""
    parts = []
    for char in name:
        digits = b"".join(
            b"[%c%c]" % (digit, bytes([digit]).upper()[0]) if chr(digit).isalpha() else bytes([digit])
            for digit in b"%02x" % ord(char)
        )
        parts.append(b"(?:%s|#%s)" % (re.escape(char.encode()), digits))
    return b"".join(parts)


_DELIMITER = rb"(?=[\x00\t\n\x0c\r ()<>\[\]{}/%])"
_ACTIVE = re.compile(
    rb"/(?:"
    + b"|".join(_name_pattern(name) for name in sorted(ACTIVE_PDF_NAMES, key=len, reverse=True))
    + rb")"
    + _DELIMITER
)
#: the same without escapes: five times as fast, for text without "#"
_ACTIVE_PLAIN = re.compile(
    rb"/(?:" + b"|".join(name.encode() for name in ACTIVE_PDF_NAMES) + rb")" + _DELIMITER
)
_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
#: a stream's data starts after the keyword and its end of line (the keyword
#: follows whitespace or the dictionary's ">>": checked apart, a look-behind
#: makes the search forty times slower)
_STREAM = re.compile(rb"stream(?:\r\n|\n|\r)")
_BEFORE_KEYWORD = frozenset(b"\x00\t\n\x0c\r >")
_OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm|/First\b")
_FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[^\s/\[<>]+)")
#: a stream dictionary longer than this is not read (no PDF writer makes one)
_DICTIONARY_MAX = 1024**2
#: what each block repeats of the one before: room for a name and what follows it
_OVERLAP = 4096


def _unescape(text: bytes) -> bytes:
    return _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), text)


def _active_names(block: bytes, begin: int, stop: int, found: set[str]) -> None:
    """The active names in ``block`` that start in ``[begin, stop)``; an
    /OpenAction that is a destination (``[page /Fit]``: it only opens a page)
    is harmless."""
    end = min(len(block), stop + 64)
    pattern = _ACTIVE if block.find(b"#", begin, end) >= 0 else _ACTIVE_PLAIN
    for match in pattern.finditer(block, begin, end):
        if match.start() >= stop:
            break
        name = _unescape(match.group()).decode("latin-1")
        if name == "/OpenAction" and block[match.end() : match.end() + 64].lstrip().startswith(b"["):
            continue
        found.add(name)


def pdf_active_content(reader: Reader) -> str | None:
    """The active content of a PDF, worded for the uploader; None when none.
    Names count in the PDF's objects, not in stream data (compressed images
    hold ``/JS`` by chance: a 40 MiB scan about once in ten), but inside its
    object streams, inflated (PDF 1.5 keeps dictionaries compressed there); an
    object stream that cannot be read (encrypted, or compressed otherwise than
    with plain FlateDecode) counts too."""
    found: set[str] = set()
    unreadable: list[int] = []
    inflated = streams = 0
    position, block_start, block, limit = 0, 0, b"", 0
    #: where the objects after the last stream's data start, and the last "obj" seen since
    region, last_obj = 0, 0
    while position < reader.size:
        if not block_start <= position < block_start + limit:
            block_start = position
            block = reader.read(block_start, BLOCK + _OVERLAP)
            limit = len(block) if block_start + len(block) >= reader.size else len(block) - _OVERLAP
        offset = position - block_start
        match = _STREAM.search(block, offset)
        if match is None or match.start() >= limit:
            _active_names(block, offset, limit, found)
            seen = block.rfind(b"obj", offset, limit)
            last_obj = block_start + seen if seen >= 0 else last_obj
            position = block_start + limit
            continue
        keyword = match.start()
        _active_names(block, offset, keyword, found)
        position = block_start + match.end()
        if keyword > 0 and block[keyword - 1] not in _BEFORE_KEYWORD:
            continue  # "endstream", or the word in something else
        # the stream's dictionary: from the last "obj" (or the end of the last stream's data)
        seen = block.rfind(b"obj", offset, keyword)
        start = block_start + seen if seen >= 0 else max(region, last_obj)
        if block_start + keyword - start > _DICTIONARY_MAX:
            if block[max(0, keyword - 64) : keyword].rstrip().endswith(b">>"):
                unreadable.append(position)
            continue
        if start >= block_start:
            dictionary = block[start - block_start : keyword]
        else:
            dictionary = reader.read(start, block_start + keyword - start)
        if not dictionary.rstrip().endswith(b">>"):
            continue  # the word, not the keyword after a stream's dictionary
        streams += 1
        if streams > 4 * MAX_STEPS:
            return f"more than {4 * MAX_STEPS:,} streams, more than the check follows"
        if b"#" in dictionary:
            dictionary = _unescape(dictionary)
        if (b"ObjStm" in dictionary or b"First" in dictionary) and _OBJECT_STREAM.search(dictionary):
            size = _inflate_names(reader, dictionary, position, MAX_INFLATED - inflated, found)
            if size is None:
                unreadable.append(position)
            else:
                inflated += size
        # The data ends at "endstream" (a reader that trusts /Length stops there
        # too, or earlier: scanning a stream's data as objects only finds more);
        # without one, the data is scanned as objects.
        end = block.find(b"endstream", match.end())
        if end >= 0:
            position = block_start + end + len(b"endstream")
        else:
            after = reader.find(b"endstream", block_start + max(match.end(), len(block) - 8))
            position = after + len(b"endstream") if after is not None else position
        region = last_obj = position
    if not found and not unreadable:
        return None
    parts = []
    if found:
        parts.append(f"active content ({', '.join(sorted(found))})")
    if unreadable:
        parts.append(
            f"an object stream at byte {unreadable[0]:,} that the check cannot read "
            "(encrypted, not compressed with FlateDecode alone, or a dictionary of over 1 MiB)"
        )
    return "; ".join(parts)


def _inflate_names(reader: Reader, dictionary: bytes, start: int, budget: int, found: set[str]) -> int | None:
    """Inflate the object stream at ``start`` and add its active names to
    ``found``; its inflated size, or None when it cannot be read."""
    filters = _FILTER.search(dictionary)
    if filters is None:
        return 0  # not compressed: the plain scan saw it
    if b"/DecodeParms" in dictionary or b"/DP" in dictionary:
        return None  # a predictor scatters bytes through the names
    if re.findall(rb"/([^\s/\[\]<>]+)", filters.group(1)) not in ([b"FlateDecode"], [b"Fl"]):
        return None
    decompressor = zlib.decompressobj()
    carry = b""
    size = 0
    position = start
    try:
        while not decompressor.eof:
            data = decompressor.unconsumed_tail
            if not data:
                data = reader.read(position, 64 * 1024)
                if not data:
                    return None  # the stream runs past the end of the file
                position += len(data)
            out = decompressor.decompress(data, BLOCK)
            size += len(out)
            if size > budget:
                return None
            block = carry + out
            _active_names(block, 0, len(block) if decompressor.eof else len(block) - 64, found)
            carry = block[-64:]
    except zlib.error:
        return None
    return size


__all__ = [
    "ACTIVE_PDF_NAMES",
    "BEHIND_WINDOW",
    "TAIL_BYTES",
    "Archive",
    "Reader",
    "Trailing",
    "hidden_archive",
    "pdf_active_content",
    "pdf_behind",
    "trailing_data",
]
