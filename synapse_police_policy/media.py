"""Media rules, as pure functions: what a file is allowed to be, judged by
the type libmagic detects in its bytes (``filetype.py``), never by the type
or name the uploader declared."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from synapse.api.errors import Codes

from .config import MediaConfig
from .decisions import Denial

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

#: Types libmagic recognises by a long, structured signature. Anything else it
#: reports for random-looking bytes is a chance match in ciphertext: libmagic
#: reads about 1.3% of random 8 KiB buffers as application/x-dosexec,
#: audio/mpeg, application/zlib and the like (measured, README).
STRUCTURED_TYPES = frozenset(
    {
        "image/jpeg",
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
        "audio/x-m4a",
        "audio/mp4",
        "audio/ogg",
        "application/ogg",
        "audio/flac",
        "audio/x-flac",
        "audio/x-wav",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-7z-compressed",
        "application/x-rar",
        "application/vnd.rar",
        "application/x-xz",
        "application/x-bzip2",
        "application/zstd",
        "application/x-tar",
        "application/x-lzip",
        "application/java-archive",
        "application/vnd.android.package-archive",
        "application/x-iso9660-image",
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-object",
        "application/x-mach-binary",
        "application/vnd.microsoft.portable-executable",
        "application/x-msi",
        "application/x-ole-storage",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
    }
)
_STRUCTURED_PREFIXES = ("text/", "application/vnd.openxmlformats", "application/vnd.oasis")
_STRUCTURED_WORDS = ("xml", "script", "executable", "html")
#: Bytes of the head used for the randomness test (64 per byte value on average).
RANDOMNESS_SAMPLE = 16 * 1024
#: chi-square of byte counts (255 degrees of freedom: mean 255, sd 22.6) above
#: which bytes are not random; ciphertext stays below with overwhelming odds
_CHI_SQUARE_LIMIT = 255 + 8 * 22.6
#: below this many bytes, count distinct byte values instead
_SMALL_SAMPLE = 1024
_DISTINCT_RATIO_LIMIT = 0.7


#: how a size refusal goes on the wire
TOO_LARGE: Mapping[str, object] = {"errcode": Codes.TOO_LARGE, "http_status": 413}


def canonical(mime: str) -> str:
    return ALIASES.get(mime, mime)


def has_structured_signature(mime: str) -> bool:
    return (
        mime in STRUCTURED_TYPES
        or mime.startswith(_STRUCTURED_PREFIXES)
        or any(word in mime for word in _STRUCTURED_WORDS)
    )


def looks_random(sample: bytes) -> bool:
    """Whether bytes look like ciphertext (uniform byte values)."""
    n = len(sample)
    if n == 0:
        return False
    counts = Counter(sample)
    if n < _SMALL_SAMPLE:
        expected_distinct = 256 * (1 - (255 / 256) ** n)
        return len(counts) >= _DISTINCT_RATIO_LIMIT * expected_distinct
    expected = n / 256
    chi_square = sum((counts.get(value, 0) - expected) ** 2 for value in range(256)) / expected
    return chi_square < _CHI_SQUARE_LIMIT


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size} bytes"


def allowed_list(config: MediaConfig) -> str:
    return ", ".join(f"{mime} (up to {_megabytes(size)})" for mime, size in sorted(config.allowed.items()))


def check_file(config: MediaConfig, detected: str, size: int, random_looking: bool) -> Denial | None:
    """The verdict on a stored file: its detected type, its size, and whether
    its head looks like ciphertext."""
    if size == 0 or detected in EMPTY_TYPES:
        return Denial(rule="media.empty", reason="Empty files are not accepted")
    if detected == OPAQUE or (random_looking and not has_structured_signature(detected)):
        if size > config.encrypted_max_size:
            return Denial(
                rule="media.too_large",
                reason=f"Encrypted or unrecognised content of {_megabytes(size)} is larger than "
                f"media.encrypted_max_size ({_megabytes(config.encrypted_max_size)})",
                **TOO_LARGE,
            )
        return None
    mime = canonical(detected)
    limit = config.allowed.get(mime)
    if limit is None:
        return Denial(
            rule="media.type",
            reason=f"Files of type {detected} (detected from the content) are not accepted; "
            f"allowed: {allowed_list(config)}, and end-to-end encrypted attachments",
        )
    if size > limit:
        return Denial(
            rule="media.too_large",
            reason=f"This {mime} file of {_megabytes(size)} is larger than the {_megabytes(limit)} "
            f"allowed for {mime}",
            **TOO_LARGE,
        )
    return None


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
