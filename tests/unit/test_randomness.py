"""The randomness test that tells ciphertext from other content libmagic cannot
name (``media.randomness``): its thresholds are what their comments derive,
random buffers of any size from 16 bytes to 1 MiB are never refused, and text
in legacy 8-bit encodings never passes.

The 100,000-buffer measurement and the detection rate on the smuggled corpus
are in ``make bench`` (``bench/media_detection.py``)."""

from __future__ import annotations

import math
import os
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_police_policy.config import MediaConfig
from synapse_police_policy.media.filetype import sniff
from synapse_police_policy.media.rules import (
    CHI_SQUARE_LIMIT,
    CHI_SQUARE_MIN_BYTES,
    FALSE_REFUSAL_P,
    OPAQUE,
    TEXT_ABSENT_BYTES,
    TEXT_DECIDABLE_BYTES,
    byte_counts,
    check_file,
    looks_random,
    most_common_limit,
    randomness,
    text_absent_floor,
)

DEFAULT = MediaConfig()


def aes_ctr(size: int, seed: int) -> bytes:
    """What an end-to-end encrypted attachment is: AES-256-CTR ciphertext (of zeros, here)."""
    key = seed.to_bytes(32, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(size)) + encryptor.finalize()


# -- the thresholds are what their derivation says -------------------------------------------------


def chi_square_survival(x: float, degrees: int) -> float:
    """P(X > x) for the chi-square distribution: the regularized upper incomplete
    gamma Q(k/2, x/2), by its continued fraction (Numerical Recipes' gcf)."""
    a, z = degrees / 2, x / 2
    tiny = 1e-300
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h


def test_the_continued_fraction_matches_known_values() -> None:
    # chi-square with 2 degrees of freedom: P(X > x) = exp(-x/2)
    assert chi_square_survival(10.0, 2) == pytest.approx(math.exp(-5), rel=1e-12)
    # scipy.stats.chi2.sf(300, 255) = 0.027727522053904...
    assert chi_square_survival(300.0, 255) == pytest.approx(0.0277275220539, rel=1e-9)


def test_the_chi_square_limit_is_the_upper_quantile_of_false_refusal_p() -> None:
    assert chi_square_survival(CHI_SQUARE_LIMIT, 255) == pytest.approx(FALSE_REFUSAL_P, rel=1e-3)


def _binomial_tail(n: int, k: int, p: Fraction) -> Fraction:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return sum((math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)), Fraction(0))


@pytest.mark.parametrize("n", [5, 16, 64, 300, 1000])
def test_the_most_common_byte_limit_is_the_smallest_rare_enough_count(n: int) -> None:
    limit = most_common_limit(n)
    # union bound over the 256 values: exact arithmetic, no floating point
    assert 256 * _binomial_tail(n, limit, Fraction(1, 256)) <= FALSE_REFUSAL_P
    assert 256 * _binomial_tail(n, limit - 1, Fraction(1, 256)) > FALSE_REFUSAL_P


@pytest.mark.parametrize("n", [77, 100, 500, 1000])
def test_the_text_floor_is_the_largest_rare_enough_count(n: int) -> None:
    floor = text_absent_floor(n)
    share = Fraction(len(TEXT_ABSENT_BYTES), 256)

    def at_most(k: int) -> Fraction:
        return sum((math.comb(n, j) * share**j * (1 - share) ** (n - j) for j in range(k + 1)), Fraction(0))

    assert at_most(floor) <= FALSE_REFUSAL_P < at_most(floor + 1)


def test_text_is_decidable_from_77_bytes() -> None:
    assert len(TEXT_ABSENT_BYTES) == 61
    assert TEXT_DECIDABLE_BYTES == 77
    assert (195 / 256) ** 77 <= FALSE_REFUSAL_P < (195 / 256) ** 76
    assert text_absent_floor(76) == -1 and text_absent_floor(77) == 0


# -- what the tests say on chosen bytes ------------------------------------------------------------


@given(st.lists(st.binary(max_size=600), max_size=4))
def test_byte_counts_are_the_histogram(parts: list[bytes]) -> None:
    counts = Counter(b"".join(parts))
    assert byte_counts(*parts) == [counts.get(value, 0) for value in range(256)]


def test_a_perfectly_flat_histogram_passes_and_a_skewed_one_fails() -> None:
    assert looks_random(bytes(range(256)) * (CHI_SQUARE_MIN_BYTES // 256))
    skewed = randomness(byte_counts(bytes(range(256)) * 16 + bytes(1024)))
    assert skewed.failed is not None and "chi-square" in skewed.failed


def test_tiny_buffers_fail_only_on_a_repeated_byte() -> None:
    # below five bytes nothing can be decided, not even all zeros
    assert most_common_limit(4) == 5
    assert looks_random(bytes(4))
    # in 16 bytes, one value seven times is rare enough (about 4e-11 for random bytes)
    assert most_common_limit(16) == 7
    assert looks_random(bytes(6) + bytes(range(1, 11)))
    assert not looks_random(bytes(7) + bytes(range(1, 10)))


@given(
    st.text(alphabet="абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЭЮЯ .,:;!?-", min_size=77),
    st.sampled_from(["cp1251", "koi8-r", "iso-8859-5"]),
)
def test_russian_text_in_8_bit_encodings_never_passes(text: str, encoding: str) -> None:
    assert not looks_random(text.encode(encoding))


@given(st.text(alphabet="αβγδεζηθικλμνξοπρστυφχψωάέήίόύώΑΒΓΔΕΖΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ .,;", min_size=77))
def test_greek_text_in_iso_8859_7_never_passes(text: str) -> None:
    assert not looks_random(text.encode("iso-8859-7"))


# -- the property: ciphertext is never refused ------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=16, max_value=1024**2), seed=st.integers(min_value=0, max_value=2**64))
def test_random_buffers_of_any_size_are_never_refused(tmp_path: Path, size: int, seed: int) -> None:
    """Through the real libmagic, the randomness test and the default policy, as an upload
    (sizes drawn by hypothesis, 16 bytes to 1 MiB; about 2 s)."""
    path = tmp_path / "attachment"
    path.write_bytes(aes_ctr(size, seed))
    sniffed = sniff(str(path))
    assert sniffed.random_looking, sniffed
    assert check_file(DEFAULT, sniffed) is None, sniffed


def test_random_buffers_are_refused_as_decrypted_attachments(tmp_path: Path) -> None:
    """The same bytes, decrypted by the auditor bot: plaintext of no known type."""
    path = tmp_path / "attachment"
    path.write_bytes(os.urandom(4096))
    sniffed = sniff(str(path))
    assert sniffed.mime == OPAQUE
    denial = check_file(DEFAULT, sniffed, plaintext=True)
    assert denial is not None and denial.rule == "media.type"
