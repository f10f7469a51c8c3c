"""media.py: the verdict on an upload from its detected type, its size and
whether its head looks like ciphertext; the declared size against the largest
allowed size and the daily quota; the randomness test itself.

The last part feeds random buffers through the real libmagic: end-to-end
encrypted attachments are opaque ciphertext and must never be refused because
libmagic happens to read a signature into them.
"""

from __future__ import annotations

import gzip
import os
import random
import time
from pathlib import Path

import magic
import pytest
from synapse.api.errors import Codes

from synapse_police_policy.config import DEFAULT_ALLOWED_MEDIA, MediaConfig
from synapse_police_policy.decisions import Denial
from synapse_police_policy.filetype import sniff
from synapse_police_policy.media import (
    ALIASES,
    EMPTY_TYPES,
    OPAQUE,
    RANDOMNESS_SAMPLE,
    STRUCTURED_TYPES,
    allowed_list,
    canonical,
    check_declared_size,
    check_file,
    has_structured_signature,
    looks_random,
)
from tests import media_corpus

MiB = 1024**2
DEFAULT = MediaConfig()
#: a small policy with round numbers, for the branch tests
SMALL = MediaConfig(
    allowed={"image/png": 10 * MiB, "audio/mp4": 20 * MiB, "audio/mpeg": 5 * MiB},
    encrypted_max_size=100 * MiB,
    daily_upload_quota=1024 * MiB,
)


def assert_too_large(denial: Denial | None) -> Denial:
    assert denial is not None
    assert denial.rule == "media.too_large"
    assert denial.http_status == 413
    assert denial.errcode == Codes.TOO_LARGE == "M_TOO_LARGE"
    return denial


def assert_wrong_type(denial: Denial | None, detected: str, config: MediaConfig) -> Denial:
    assert denial is not None
    assert denial.rule == "media.type"
    assert denial.http_status == 403
    assert denial.errcode == Codes.FORBIDDEN
    assert f"Files of type {detected} (detected from the content) are not accepted" in denial.reason
    assert allowed_list(config) in denial.reason
    return denial


# --- allowed types and their limits --------------------------------------------


@pytest.mark.parametrize("random_looking", [False, True])
@pytest.mark.parametrize("size", [1, 10 * MiB - 1, 10 * MiB], ids=["one-byte", "below-limit", "at-limit"])
def test_allowed_type_within_its_limit(size: int, random_looking: bool) -> None:
    assert check_file(SMALL, "image/png", size, random_looking) is None


@pytest.mark.parametrize("random_looking", [False, True])
def test_allowed_type_over_its_limit(random_looking: bool) -> None:
    denial = assert_too_large(check_file(SMALL, "image/png", 10 * MiB + 1, random_looking))
    assert denial.reason == (
        "This image/png file of 10.0 MiB is larger than the 10.0 MiB allowed for image/png"
    )


def test_over_the_limit_names_the_type_and_both_sizes() -> None:
    denial = assert_too_large(check_file(SMALL, "image/png", 15 * MiB, False))
    assert "image/png file of 15.0 MiB" in denial.reason
    assert "the 10.0 MiB allowed for image/png" in denial.reason


@pytest.mark.parametrize("mime", sorted(DEFAULT_ALLOWED_MEDIA))
def test_every_default_type_at_and_over_its_default_limit(mime: str) -> None:
    limit = DEFAULT_ALLOWED_MEDIA[mime]
    assert check_file(DEFAULT, mime, limit, False) is None
    denial = assert_too_large(check_file(DEFAULT, mime, limit + 1, False))
    assert f"allowed for {mime}" in denial.reason


def test_alias_counts_as_its_canonical_type() -> None:
    assert canonical("audio/x-m4a") == "audio/mp4"
    assert check_file(SMALL, "audio/x-m4a", 20 * MiB, False) is None
    denial = assert_too_large(check_file(SMALL, "audio/x-m4a", 20 * MiB + 1, False))
    assert "This audio/mp4 file" in denial.reason
    assert "allowed for audio/mp4" in denial.reason


def test_alias_is_not_allowed_when_its_canonical_type_is_not() -> None:
    config = MediaConfig(allowed={"image/png": MiB})
    assert_wrong_type(check_file(config, "audio/x-m4a", 100, False), "audio/x-m4a", config)


@pytest.mark.parametrize(("alias", "iana"), sorted(ALIASES.items()))
def test_every_alias_maps_to_a_type_the_config_may_name(alias: str, iana: str) -> None:
    from synapse_police_policy.config import KNOWN_MEDIA_TYPES

    assert canonical(alias) == iana
    assert iana in KNOWN_MEDIA_TYPES
    config = MediaConfig(allowed={iana: MiB})
    assert check_file(config, alias, MiB, False) is None
    assert_too_large(check_file(config, alias, MiB + 1, False))


def test_canonical_leaves_other_types_alone() -> None:
    assert canonical("image/png") == "image/png"
    assert canonical("application/x-dosexec") == "application/x-dosexec"


# --- opaque content: encrypted attachments ---------------------------------------


@pytest.mark.parametrize("random_looking", [False, True])
@pytest.mark.parametrize("size", [1, 100 * MiB], ids=["one-byte", "at-limit"])
def test_octet_stream_within_encrypted_max_size(size: int, random_looking: bool) -> None:
    assert check_file(SMALL, OPAQUE, size, random_looking) is None


@pytest.mark.parametrize("random_looking", [False, True])
def test_octet_stream_over_encrypted_max_size(random_looking: bool) -> None:
    denial = assert_too_large(check_file(SMALL, OPAQUE, 100 * MiB + 1, random_looking))
    assert denial.reason == (
        "Encrypted or unrecognised content of 100.0 MiB is larger than media.encrypted_max_size (100.0 MiB)"
    )


def test_octet_stream_is_opaque_even_when_not_allowed_by_type() -> None:
    # the allowed list never names application/octet-stream: opaque content
    # is judged by encrypted_max_size alone
    assert OPAQUE not in DEFAULT.allowed
    assert check_file(DEFAULT, OPAQUE, 400 * MiB, False) is None


@pytest.mark.parametrize(
    "weak", ["application/x-dosexec", "audio/mpeg", "application/zlib", "audio/x-mp4a-latm", "video/mpeg"]
)
def test_random_looking_weak_detection_is_opaque(weak: str) -> None:
    assert not has_structured_signature(weak)
    assert check_file(DEFAULT, weak, 8192, True) is None
    assert check_file(DEFAULT, weak, DEFAULT.encrypted_max_size, True) is None
    assert_too_large(check_file(DEFAULT, weak, DEFAULT.encrypted_max_size + 1, True))


def test_encrypted_file_misread_as_audio_mpeg_is_judged_by_encrypted_max_size() -> None:
    # 300 MB is far over the 100 MiB audio/mpeg limit but within the 500 MiB
    # encrypted_max_size: ciphertext that libmagic reads as MPEG audio passes
    assert DEFAULT.allowed["audio/mpeg"] < 300 * MiB <= DEFAULT.encrypted_max_size
    assert check_file(DEFAULT, "audio/mpeg", 300 * MiB, True) is None


def test_weak_detection_that_is_not_random_looking_is_judged_by_type() -> None:
    # a real MP3 (its head is not uniform) keeps the audio limit
    denial = assert_too_large(check_file(DEFAULT, "audio/mpeg", 300 * MiB, False))
    assert "allowed for audio/mpeg" in denial.reason
    assert_wrong_type(
        check_file(DEFAULT, "application/x-dosexec", 8192, False), "application/x-dosexec", DEFAULT
    )


@pytest.mark.parametrize(
    "structured",
    [
        "application/zip",
        "application/x-executable",
        "application/vnd.microsoft.portable-executable",
        "application/x-7z-compressed",
        "text/html",
        "text/x-shellscript",
        "image/svg+xml",
        "application/javascript",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ],
)
def test_random_looking_but_structured_type_is_refused(structured: str) -> None:
    assert has_structured_signature(structured)
    assert_wrong_type(check_file(DEFAULT, structured, 8192, True), structured, DEFAULT)


def test_random_looking_allowed_structured_type_keeps_its_own_limit() -> None:
    # a compressed photo looks random but is still a PNG: 40 MiB is over 30 MiB
    denial = assert_too_large(check_file(DEFAULT, "image/png", 40 * MiB, True))
    assert "allowed for image/png" in denial.reason


# --- empty files -------------------------------------------------------------------


@pytest.mark.parametrize("detected", [OPAQUE, "image/png", "text/plain", *sorted(EMPTY_TYPES)])
@pytest.mark.parametrize("random_looking", [False, True])
def test_size_zero_is_empty(detected: str, random_looking: bool) -> None:
    denial = check_file(SMALL, detected, 0, random_looking)
    assert denial == Denial(rule="media.empty", reason="Empty files are not accepted")
    assert denial.http_status == 403


@pytest.mark.parametrize("detected", sorted(EMPTY_TYPES))
def test_empty_detection_is_empty_whatever_the_size(detected: str) -> None:
    denial = check_file(SMALL, detected, 10, False)
    assert denial is not None
    assert denial.rule == "media.empty"


# --- forbidden types ----------------------------------------------------------------


@pytest.mark.parametrize(
    "detected",
    [
        "application/x-executable",
        "text/html",
        "text/plain",
        "image/svg+xml",
        "application/zip",
        "image/gif",  # a known media type, but not in this policy
    ],
)
def test_forbidden_type_names_the_detected_type_and_the_allowed_list(detected: str) -> None:
    denial = assert_wrong_type(check_file(SMALL, detected, 100, False), detected, SMALL)
    assert denial.reason == (
        f"Files of type {detected} (detected from the content) are not accepted; allowed: "
        "audio/mp4 (up to 20.0 MiB), audio/mpeg (up to 5.0 MiB), image/png (up to 10.0 MiB), "
        "and end-to-end encrypted attachments"
    )


def test_forbidden_reason_names_the_raw_detected_type_not_its_alias() -> None:
    config = MediaConfig(allowed={"image/png": MiB})
    denial = assert_wrong_type(check_file(config, "image/x-ms-bmp", 100, False), "image/x-ms-bmp", config)
    assert "image/bmp" not in denial.reason


def test_allowed_list_is_sorted_and_shows_bytes_below_a_mebibyte() -> None:
    config = MediaConfig(allowed={"video/mp4": 3 * MiB // 2, "image/jpeg": 1000, "audio/ogg": MiB})
    assert allowed_list(config) == (
        "audio/ogg (up to 1.0 MiB), image/jpeg (up to 1000 bytes), video/mp4 (up to 1.5 MiB)"
    )


def test_has_structured_signature() -> None:
    for mime in STRUCTURED_TYPES:
        assert has_structured_signature(mime)
    assert has_structured_signature("text/anything")
    assert has_structured_signature("application/vnd.oasis.opendocument.text")
    assert has_structured_signature("application/x-shellscript")
    assert has_structured_signature("application/xhtml+xml")
    for weak in (OPAQUE, "application/x-dosexec", "audio/mpeg", "application/x-compress", "video/mpeg"):
        assert not has_structured_signature(weak)


# --- declared size --------------------------------------------------------------------


def test_declared_size_up_to_the_largest_upload() -> None:
    assert SMALL.largest_upload == 100 * MiB
    assert check_declared_size(SMALL, 100 * MiB, 0) is None
    assert check_declared_size(SMALL, 1, 0) is None


def test_declared_size_over_the_largest_upload() -> None:
    denial = assert_too_large(check_declared_size(SMALL, 100 * MiB + 1, 0))
    assert denial.reason == (
        "An upload of 100.0 MiB is larger than any allowed file (the largest allowed is 100.0 MiB)"
    )


def test_declared_size_largest_is_a_type_limit_when_that_is_larger() -> None:
    config = MediaConfig(allowed={"video/mp4": 800 * MiB}, encrypted_max_size=100 * MiB)
    assert config.largest_upload == 800 * MiB
    assert check_declared_size(config, 800 * MiB, 0) is None
    assert_too_large(check_declared_size(config, 800 * MiB + 1, 0))


def test_declared_size_over_largest_is_reported_before_the_quota() -> None:
    denial = assert_too_large(check_declared_size(SMALL, 200 * MiB, SMALL.daily_upload_quota))
    assert "larger than any allowed file" in denial.reason


def test_quota_exactly_reached_is_allowed() -> None:
    assert check_declared_size(SMALL, 10 * MiB, SMALL.daily_upload_quota - 10 * MiB) is None


def test_quota_passed_by_one_byte() -> None:
    denial = check_declared_size(SMALL, 10 * MiB, SMALL.daily_upload_quota - 10 * MiB + 1)
    assert denial is not None
    assert denial.rule == "media.daily_quota"
    assert (denial.http_status, denial.errcode) == (413, Codes.TOO_LARGE)
    assert "Daily upload quota reached" in denial.reason
    assert "media.daily_upload_quota (1024.0 MiB)" in denial.reason
    assert "this upload of 10.0 MiB" in denial.reason


def test_quota_already_used_up() -> None:
    denial = check_declared_size(SMALL, 1, SMALL.daily_upload_quota)
    assert denial is not None
    assert denial.rule == "media.daily_quota"
    assert "1024.0 MiB uploaded in the last 24 hours" in denial.reason
    assert "this upload of 1 bytes" in denial.reason


# --- looks_random ---------------------------------------------------------------------

RANDOM_SIZES = [16, 17, 64, 100, 255, 256, 512, 1023, 1024, 1025, 4096, 8192, 16384, 65536]


@pytest.mark.parametrize("size", RANDOM_SIZES)
def test_random_bytes_look_random(size: int) -> None:
    misses = [sample for sample in (os.urandom(size) for _ in range(200)) if not looks_random(sample)]
    assert misses == []


def test_randomness_sample_is_what_sniff_passes() -> None:
    assert RANDOMNESS_SAMPLE == 16 * 1024
    assert looks_random(os.urandom(RANDOMNESS_SAMPLE))


@pytest.mark.parametrize(
    "sample",
    [
        b"",
        bytes(16),
        bytes(4096),
        bytes(RANDOMNESS_SAMPLE),
        b"\xff" * 2048,
        bytes(range(256)) * 4 + b"\x00" * 4096,  # every value, but not uniform
        media_corpus.text(),
        media_corpus.text() * 100,
        media_corpus.shell_script(),
        media_corpus.html(),
        media_corpus.elf(),
        media_corpus.pe(),
        media_corpus.pdf(),
    ],
    ids=[
        "empty",
        "zeros-16",
        "zeros-4k",
        "zeros-64k",
        "ff-2k",
        "skewed",
        "text",
        "text-long",
        "shell",
        "html",
        "elf",
        "pe",
        "pdf",
    ],
)
def test_structured_bytes_do_not_look_random(sample: bytes) -> None:
    assert not looks_random(sample)


def test_a_perfectly_flat_histogram_looks_random() -> None:
    # chi-square 0: as uniform as bytes can be
    assert looks_random(bytes(range(256)) * 16)


def test_short_text_with_many_distinct_characters_may_look_random_but_is_refused() -> None:
    # below 1 KiB only distinct byte values are counted, so 16 varied
    # characters pass the randomness test; text/ is structured all the same
    sample = b"Lagebericht: kei"
    assert looks_random(sample)
    detected = magic.from_buffer(sample, mime=True)
    assert detected.startswith("text/")
    assert_wrong_type(check_file(DEFAULT, detected, len(sample), True), detected, DEFAULT)


@pytest.mark.parametrize("name", sorted(media_corpus.HOSTILE))
def test_hostile_corpus_is_refused_whatever_its_randomness(name: str) -> None:
    data = media_corpus.HOSTILE[name][0]()
    detected = magic.from_buffer(data, mime=True)
    for random_looking in (looks_random(data), True, False):
        denial = check_file(DEFAULT, detected, len(data), random_looking)
        assert_wrong_type(denial, detected, DEFAULT)


@pytest.mark.parametrize("name", sorted(media_corpus.ALLOWED))
def test_allowed_corpus_is_judged_by_its_type_whatever_its_randomness(name: str) -> None:
    data = media_corpus.ALLOWED[name]()
    detected = magic.from_buffer(data, mime=True)
    assert canonical(detected) == name
    assert has_structured_signature(detected) or name == "audio/mpeg"
    random_looking = looks_random(data)
    assert check_file(DEFAULT, detected, len(data), random_looking) is None
    limit = DEFAULT.allowed[name]
    if has_structured_signature(detected) or not random_looking:
        # the per-type limit applies even if the (compressed) content looks random
        denial = assert_too_large(check_file(DEFAULT, detected, limit + 1, random_looking))
        assert f"allowed for {name}" in denial.reason


@pytest.mark.parametrize("name", ["image/png", "image/jpeg"])
def test_photos_are_judged_as_photos(name: str) -> None:
    data = media_corpus.ALLOWED[name]()
    detected = magic.from_buffer(data, mime=True)
    assert detected == name
    for random_looking in (looks_random(data), True):
        assert_too_large(check_file(DEFAULT, detected, 30 * MiB + 1, random_looking))


# --- the property: ciphertext is never refused by chance ----------------------------------

STATISTICAL_SAMPLES = 3000
STATISTICAL_SIZE = 8 * 1024


def test_random_buffers_through_libmagic_are_never_refused() -> None:
    """~3000 buffers like the head of an E2EE attachment, through the real
    libmagic, the randomness test and the default policy: none is refused.

    libmagic reads about 1% of them as something (x-dosexec, audio/mpeg,
    zlib, ...): those must be treated as opaque. The generator is seeded so
    the test is reproducible; the chance signatures that do get random data
    refused (2-byte gzip magic and others) are pinned down separately below.
    """
    rng = random.Random(20240611)
    config = MediaConfig()
    started = time.perf_counter()
    detected_as: dict[str, int] = {}
    refused: list[tuple[str, Denial]] = []
    for _ in range(STATISTICAL_SAMPLES):
        head = rng.randbytes(STATISTICAL_SIZE)
        detected = magic.from_buffer(head, mime=True)
        detected_as[detected] = detected_as.get(detected, 0) + 1
        random_looking = looks_random(head)
        assert random_looking, detected
        denial = check_file(config, detected, STATISTICAL_SIZE, random_looking)
        if denial is not None:
            refused.append((detected, denial))
        # a large attachment with the same head is judged the same way
        denial = check_file(config, detected, config.encrypted_max_size, random_looking)
        if denial is not None:
            refused.append((detected, denial))
    elapsed = time.perf_counter() - started

    assert refused == []
    # the property is only meaningful if libmagic did misread some buffers
    assert sum(count for mime, count in detected_as.items() if mime != OPAQUE) > 0, detected_as
    assert elapsed < 10, f"{elapsed:.1f}s"


#: random bytes that start with a short magic number libmagic trusts; p is the
#: chance that a ciphertext starts that way
CHANCE_SIGNATURES = [
    # p = 2**-16: one E2EE attachment in 65,536 is read as gzip and refused
    pytest.param(b"\x1f\x8b", 8192, id="gzip-2-bytes"),
    # p = 2**-24
    pytest.param(b"BZh", 8192, id="bzip2-3-bytes"),
    # p = 2**-24, and only matters above the JPEG limit (30 MiB)
    pytest.param(b"\xff\xd8\xff", 31 * 1024 * 1024, id="jpeg-3-bytes-large"),
    # Four bytes and more (zstd, xz, zip, ...): p <= 2**-32, accepted as a risk.
]


@pytest.mark.parametrize(("prefix", "size"), CHANCE_SIGNATURES)
def test_ciphertext_starting_with_a_short_magic_number_is_not_refused(
    prefix: bytes, size: int, tmp_path: Path
) -> None:
    """libmagic trusts the short signature; ``sniff`` believes it only when the
    stream decodes, so the ciphertext is judged as opaque content."""
    rng = random.Random(7)
    path = tmp_path / "attachment"
    path.write_bytes(prefix + rng.randbytes(size - len(prefix)))
    sniffed = sniff(str(path))
    assert sniffed.random_looking
    assert check_file(DEFAULT, sniffed.mime, sniffed.size, sniffed.random_looking) is None, sniffed.mime


def test_real_gzip_is_still_refused(tmp_path: Path) -> None:
    """Compressed data looks random too; a gzip stream that decodes is an archive."""
    path = tmp_path / "archive.gz"
    path.write_bytes(gzip.compress(random.Random(3).randbytes(100_000)))
    sniffed = sniff(str(path))
    assert (sniffed.mime, sniffed.random_looking) == ("application/gzip", True)
    denial = check_file(DEFAULT, sniffed.mime, sniffed.size, sniffed.random_looking)
    assert denial is not None and denial.rule == "media.type"
