"""Media rules, as pure functions: what a file is allowed to be, judged by
the type libmagic detects in its bytes (``filetype.py``), never by the type
or name the uploader declared; and the randomness test that tells end-to-end
encrypted attachments (ciphertext) from other content libmagic cannot name."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import TypedDict

import attrs
from PIL import Image

from ..config import MediaConfig
from ..decisions import Denial

OPAQUE = "application/octet-stream"
EMPTY_TYPES = frozenset({"application/x-empty", "inode/x-empty"})

#: libmagic's names for types the config spells the IANA way
ALIASES: Mapping[str, str] = {
    "audio/x-m4a": "audio/mp4",
    "audio/x-wav": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/x-hx-aac-adts": "audio/aac",
    "application/ogg": "audio/ogg",
    "video/x-m4v": "video/mp4",
    "image/x-ms-bmp": "image/bmp",
}

#: Types libmagic names only from a signature of four bytes or more (or a
#: longer structure: the ELF header, the PE header behind the DOS stub, "ustar"
#: at 257, an ISO 9660 volume descriptor), which random bytes match with a
#: chance of 2**-32 or less. libmagic names about 1.3% of random buffers after
#: shorter or looser signatures: application/x-dosexec, audio/mpeg, zlib, but
#: also application/postscript ("%!"), application/x-object ("8086
#: relocatable", one byte) or text/PGP (measured, docs/policy.md). In bytes that pass
#: the randomness test, only these types are believed (``filetype.py``).
STRONG_SIGNATURES = frozenset(
    {
        "image/png",
        "image/gif",
        "image/webp",
        "image/heic",
        "image/heif",
        "image/avif",
        "image/tiff",
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/3gpp",
        "video/x-m4v",
        "audio/x-m4a",
        "audio/mp4",
        "audio/ogg",
        "application/ogg",
        "audio/flac",
        "audio/x-flac",
        "audio/x-wav",
        "audio/vnd.wave",
        "application/pdf",
        "application/zip",
        "application/x-7z-compressed",
        "application/x-rar",
        "application/vnd.rar",
        "application/x-xz",
        "application/zstd",
        "application/x-tar",
        "application/x-lzip",
        "application/java-archive",
        "application/vnd.android.package-archive",
        "application/x-iso9660-image",
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-coredump",
        "application/x-mach-binary",
        "application/vnd.microsoft.portable-executable",
        "application/x-msi",
        "application/x-ole-storage",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
    }
)
#: zip-based office documents (libmagic reads their first member's name)
_STRONG_PREFIXES = ("application/vnd.openxmlformats", "application/vnd.oasis")
#: types of text: real text never passes the randomness test, once it can decide
_TEXT_PREFIXES = ("text/",)
_TEXT_WORDS = ("xml", "script", "html", "json")


def has_strong_signature(mime: str) -> bool:
    return mime in STRONG_SIGNATURES or mime.startswith(_STRONG_PREFIXES)


def is_textual(mime: str) -> bool:
    return mime.startswith(_TEXT_PREFIXES) or any(word in mime for word in _TEXT_WORDS)


# -- the randomness test ----------------------------------------------------------
#
# An end-to-end encrypted attachment is AES-CTR ciphertext: uniformly random
# bytes. Content libmagic cannot name is taken for one only when the bytes read
# (``filetype.py``: the first 256 KiB and the last block) pass three tests; each
# fails uniformly random bytes with a probability of FALSE_REFUSAL_P (the
# chi-square test, by its distribution) or at most that (the exact ones).

#: chance that uniformly random bytes fail one of the tests below (each test's own)
FALSE_REFUSAL_P = 1e-9
#: Pearson's chi-square of the 256 byte counts; for uniformly random bytes it
#: follows the chi-square distribution with 255 degrees of freedom, whose upper
#: 1e-9 quantile this is: scipy.stats.chi2.isf(1e-9, 255) = 414.5450396641992
#: (checked without scipy by tests/unit/test_randomness.py).
CHI_SQUARE_LIMIT = 414.545
#: The chi-square distribution describes the statistic only when every byte
#: value is expected often enough: with fewer bytes its real tail is heavier
#: (measured: at 256 bytes the 1e-5 quantile is passed five times as often), so
#: below this size the two exact tests below decide alone (16 per value here).
CHI_SQUARE_MIN_BYTES = 4096
#: byte values text in any 8-bit character set hardly uses: the C0 controls but
#: tab, line feed, form feed and carriage return; DEL; the C1 range 0x80-0x9F
TEXT_ABSENT_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), *range(0x7F, 0xA0)])
_TEXT_ABSENT_SHARE = len(TEXT_ABSENT_BYTES) / 256


def byte_counts(*parts: bytes) -> list[int]:
    """How often each byte value occurs in ``parts``. Pillow's histogram of the
    bytes as a greyscale image runs in C (about a nanosecond per byte), where
    ``collections.Counter`` costs a hundred times more."""
    counts: list[int] | None = None
    for part in parts:
        if part:
            histogram = Image.frombuffer("L", (len(part), 1), part, "raw", "L", 0, 1).histogram()
            counts = histogram if counts is None else list(map(operator.add, counts, histogram))
    return counts if counts is not None else [0] * 256


def _binomial_log_pmf(n: int, k: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


@functools.cache
def most_common_limit(n: int) -> int:
    """The count one byte value reaches in ``n`` uniformly random bytes with a
    probability of at most FALSE_REFUSAL_P: the binomial tail of one value,
    times 256 (a union bound over the values, so exact as an upper bound)."""
    tail = 0.0
    # counts above 256 have a probability far below 1e-300 for n < CHI_SQUARE_MIN_BYTES
    for k in range(min(n, 256), -1, -1):
        tail += math.exp(_binomial_log_pmf(n, k, 1 / 256))
        if tail > FALSE_REFUSAL_P / 256:
            return k + 1
    return 0


@functools.cache
def text_absent_floor(n: int) -> int:
    """The largest count of TEXT_ABSENT_BYTES that ``n`` uniformly random bytes
    stay at or below with a probability of at most FALSE_REFUSAL_P (binomial
    lower tail); -1 when even none is not rare enough (fewer than 77 bytes)."""
    head = 0.0
    for k in range(n + 1):
        head += math.exp(_binomial_log_pmf(n, k, _TEXT_ABSENT_SHARE))
        if head > FALSE_REFUSAL_P:
            return k - 1
    return n


#: from this many bytes on, text fails the randomness test (77)
TEXT_DECIDABLE_BYTES = next(n for n in range(1, CHI_SQUARE_MIN_BYTES) if text_absent_floor(n) >= 0)


@attrs.frozen
class Randomness:
    """The verdict of the randomness test on ``tested`` bytes."""

    tested: int
    #: why the bytes are not uniformly random, worded for a refusal; None: they may be
    failed: str | None = None

    @property
    def uniform(self) -> bool:
        return self.failed is None


def randomness(counts: Sequence[int]) -> Randomness:
    """Whether bytes with these byte-value counts may be ciphertext. From
    CHI_SQUARE_MIN_BYTES on, the chi-square test decides; below it, one byte
    value too frequent, or too few bytes that text never uses. Below 77 bytes
    8-bit text passes, below 5 bytes everything does: the tests cannot decide
    there, and such content is taken for ciphertext."""
    n = sum(counts)
    if n == 0:
        return Randomness(0, "no bytes")
    if n >= CHI_SQUARE_MIN_BYTES:
        # sum((count - n/256)**2) / (n/256), rearranged: one product per value
        chi_square = 256 * sum(map(operator.mul, counts, counts)) / n - n
        if chi_square > CHI_SQUARE_LIMIT:
            return Randomness(
                n,
                f"a byte-frequency chi-square of {chi_square:,.0f} over {n:,} bytes "
                f"(uniformly random bytes stay below {CHI_SQUARE_LIMIT:.1f})",
            )
        return Randomness(n)
    value = max(range(256), key=counts.__getitem__)
    limit = most_common_limit(n)
    if counts[value] >= limit:
        return Randomness(
            n,
            f"the byte 0x{value:02x} makes up {counts[value]:,} of {n:,} bytes "
            f"(in uniformly random bytes, fewer than {limit})",
        )
    absent = sum(counts[byte] for byte in TEXT_ABSENT_BYTES)
    floor = text_absent_floor(n)
    if absent <= floor:
        return Randomness(
            n,
            f"only {absent} of {n:,} bytes are control codes, as in text "
            f"(uniformly random bytes have more than {floor})",
        )
    return Randomness(n)


def looks_random(sample: bytes) -> bool:
    """Whether bytes look like ciphertext (uniform byte values)."""
    return randomness(byte_counts(sample)).uniform


# -- what the file was found to be ---------------------------------------------------


@attrs.frozen
class Finding:
    """Something in a file of an allowed type that refuses it whatever its size,
    by an option of ``media``: active content in a PDF, data after an image's end."""

    #: media.active_content or media.trailing_data
    rule: str
    #: what was found, worded for the uploader
    what: str


#: the option of ``media`` behind each finding's rule
FINDING_OPTIONS: Mapping[str, str] = {
    "media.active_content": "media.refuse_pdf_active_content",
    "media.trailing_data": "media.refuse_trailing_data",
}


@attrs.frozen
class Sniffed:
    """What ``filetype.sniff`` found in a stored file."""

    mime: str
    size: int
    #: the content may be ciphertext: the bytes read pass the randomness test,
    #: and libmagic named no type or one random bytes match by chance (not one
    #: of STRONG_SIGNATURES, not a short signature whose stream decodes, not
    #: text while the test can tell text)
    random_looking: bool = False
    #: what the bytes show beyond their type, for a refusal: for content of no
    #: known type what it resembles and why it is no ciphertext; for an archive
    #: found behind other data, where
    detail: str | None = None
    #: in a file of an allowed type: what an option of ``media`` refuses
    finding: Finding | None = None


#: how a size refusal goes on the wire
class _TooLarge(TypedDict):
    errcode: str
    http_status: int


TOO_LARGE: _TooLarge = {"errcode": "M_TOO_LARGE", "http_status": 413}


def canonical(mime: str) -> str:
    return ALIASES.get(mime, mime)


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size} bytes"


def allowed_list(config: MediaConfig) -> str:
    return ", ".join(f"{mime} (up to {_megabytes(size)})" for mime, size in sorted(config.allowed.items()))


def check_file(config: MediaConfig, sniffed: Sniffed, *, plaintext: bool = False) -> Denial | None:
    """The verdict on a stored file from what ``filetype.sniff`` found in it.
    ``plaintext``: the bytes are known not to be ciphertext (the auditor bot's
    decrypted attachments), so content of no known type is refused too."""
    detected, size = sniffed.mime, sniffed.size
    if size == 0 or detected in EMPTY_TYPES:
        return Denial(rule="media.empty", reason="Empty files are not accepted")
    if not plaintext and sniffed.random_looking and not has_strong_signature(detected):
        if size > config.encrypted_max_size:
            return Denial(
                rule="media.too_large",
                reason=f"Encrypted content of {_megabytes(size)} is larger than "
                f"media.encrypted_max_size ({_megabytes(config.encrypted_max_size)})",
                **TOO_LARGE,
            )
        return None
    if detected == OPAQUE:
        return Denial(rule="media.type", reason=_unrecognised(config, sniffed, plaintext))
    mime = canonical(detected)
    limit = config.allowed.get(mime)
    if limit is None:
        found = f": {sniffed.detail}" if sniffed.detail else ""
        return Denial(
            rule="media.type",
            reason=f"Files of type {detected} (detected from the content{found}) are not accepted; "
            f"allowed: {allowed_list(config)}, and end-to-end encrypted attachments",
        )
    if size > limit:
        return Denial(
            rule="media.too_large",
            reason=f"This {mime} file of {_megabytes(size)} is larger than the {_megabytes(limit)} "
            f"allowed for {mime}",
            **TOO_LARGE,
        )
    if sniffed.finding is not None:
        finding = sniffed.finding
        return Denial(
            rule=finding.rule,
            reason=f"This {mime} file is refused by {FINDING_OPTIONS[finding.rule]}: {finding.what}",
        )
    return None


def _unrecognised(config: MediaConfig, sniffed: Sniffed, plaintext: bool) -> str:
    found = sniffed.detail or "no detail"
    if plaintext:
        return (
            f"Files of no known type (detected from the content: {found}) are not accepted in a "
            f"decrypted attachment; allowed: {allowed_list(config)}"
        )
    return (
        f"Files of no known type (detected from the content) are accepted only as end-to-end encrypted "
        f"attachments, whose bytes are uniformly random, and this is not one: {found}; "
        f"allowed: {allowed_list(config)}, and end-to-end encrypted attachments"
    )


def check_declared_size(config: MediaConfig, size: int, uploaded_today: int) -> Denial | None:
    """Before the body is stored: the declared length against the largest
    allowed size and the user's daily quota."""
    if size > config.largest_upload:
        return Denial(
            rule="media.too_large",
            reason=f"An upload of {_megabytes(size)} is larger than any allowed file "
            f"(the largest allowed is {_megabytes(config.largest_upload)})",
            **TOO_LARGE,
        )
    if uploaded_today + size > config.daily_upload_quota:
        return Denial(
            rule="media.daily_quota",
            reason=f"Daily upload quota reached: {_megabytes(uploaded_today)} uploaded in the last 24 hours, "
            f"this upload of {_megabytes(size)} would pass media.daily_upload_quota "
            f"({_megabytes(config.daily_upload_quota)})",
            **TOO_LARGE,
        )
    return None
