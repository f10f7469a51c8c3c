"""filetype.sniff: the type libmagic reads in a stored file's head, the file's
size, and whether the content may be ciphertext; only the head and the last
block are read for that. (What the options find in allowed types, and the
smuggled corpus: test_filescan.py.)"""

from __future__ import annotations

import random
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from synapse_police_policy.config import MediaConfig
from synapse_police_policy.media.filetype import HEAD_BYTES, RANDOM_BYTES, TAIL_BYTES, Sniffed, sniff
from synapse_police_policy.media.rules import OPAQUE, canonical, check_file
from tests import media_corpus

DEFAULT = MediaConfig()


def written(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name.replace("/", "_")
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("mime", sorted(media_corpus.ALLOWED))
def test_allowed_corpus_detects_as_its_type(tmp_path: Path, mime: str) -> None:
    data = media_corpus.ALLOWED[mime]()
    sniffed = sniff(written(tmp_path, mime, data))
    assert canonical(sniffed.mime) == mime, sniffed
    assert sniffed.size == len(data)
    assert check_file(DEFAULT, sniffed) is None


@pytest.mark.parametrize("mime", sorted(media_corpus.ALLOWED))
def test_allowed_corpus_padded_past_the_head_keeps_its_type(tmp_path: Path, mime: str) -> None:
    data = media_corpus.padded(media_corpus.ALLOWED[mime](), HEAD_BYTES + 4096)
    sniffed = sniff(written(tmp_path, mime, data))
    assert canonical(sniffed.mime) == mime, sniffed
    assert sniffed.size == HEAD_BYTES + 4096


@pytest.mark.parametrize("name", sorted(media_corpus.HOSTILE))
def test_hostile_corpus_is_refused(tmp_path: Path, name: str) -> None:
    make, _declared, filename = media_corpus.HOSTILE[name]
    data = make()
    # the file name (and so its extension) plays no part
    sniffed = sniff(written(tmp_path, filename, data))
    assert sniffed.mime != OPAQUE
    assert sniffed.size == len(data)
    denial = check_file(DEFAULT, sniffed)
    assert denial is not None, sniffed
    assert denial.rule == "media.type"
    assert f"Files of type {sniffed.mime}" in denial.reason


def test_empty_file(tmp_path: Path) -> None:
    sniffed = sniff(written(tmp_path, "empty", b""))
    assert sniffed == Sniffed(mime="application/x-empty", size=0, random_looking=False)
    denial = check_file(DEFAULT, sniffed)
    assert denial is not None
    assert denial.rule == "media.empty"


def test_random_file_is_opaque(tmp_path: Path) -> None:
    # seeded: libmagic misreads about 1% of random heads (see test_media_rules)
    data = random.Random(3).randbytes(100_000)
    sniffed = sniff(written(tmp_path, "attachment", data))
    assert sniffed == Sniffed(mime=OPAQUE, size=len(data), random_looking=True, detail=RANDOM_BYTES)
    assert check_file(DEFAULT, sniffed) is None
    # the auditor bot's decrypted bytes are plaintext: random bytes are refused there
    denial = check_file(DEFAULT, sniffed, plaintext=True)
    assert denial is not None and RANDOM_BYTES in denial.reason


#: an MPEG audio frame header: a weak signature, so the statistics decide
MP3_FRAME = b"\xff\xfb\x90\x64"


def test_randomness_is_judged_on_the_head_and_the_last_block(tmp_path: Path) -> None:
    rng = random.Random(5)
    middle = bytes(2 * HEAD_BYTES)  # never read
    # random head and last block, zeros between: ciphertext-like
    data = MP3_FRAME + rng.randbytes(HEAD_BYTES) + middle + rng.randbytes(TAIL_BYTES)
    sniffed = sniff(written(tmp_path, "a", data))
    assert (sniffed.mime, sniffed.random_looking) == ("audio/mpeg", True)
    # zeros in the last block: not
    data = MP3_FRAME + rng.randbytes(HEAD_BYTES) + middle + bytes(TAIL_BYTES)
    sniffed = sniff(written(tmp_path, "b", data))
    assert (sniffed.mime, sniffed.random_looking) == ("audio/mpeg", False)
    # zeros late in the head: not
    data = MP3_FRAME + rng.randbytes(HEAD_BYTES // 2) + bytes(HEAD_BYTES) + rng.randbytes(TAIL_BYTES)
    sniffed = sniff(written(tmp_path, "c", data))
    assert (sniffed.mime, sniffed.random_looking) == ("audio/mpeg", False)


def test_unrecognised_content_that_is_not_random_is_refused(tmp_path: Path) -> None:
    # one zero block after a random head: not what ciphertext looks like
    data = random.Random(8).randbytes(HEAD_BYTES) + bytes(TAIL_BYTES)
    sniffed = sniff(written(tmp_path, "half", data))
    assert (sniffed.mime, sniffed.random_looking) == (OPAQUE, False)
    assert sniffed.detail is not None and "chi-square" in sniffed.detail
    denial = check_file(DEFAULT, sniffed)
    assert denial is not None and denial.rule == "media.type"
    assert "this is not one: its bytes are not uniformly random: a byte-frequency chi-square" in denial.reason


def test_hostile_payload_after_the_head_is_not_seen(tmp_path: Path) -> None:
    # documents the design: only the head is read, what follows is not judged
    data = media_corpus.padded(media_corpus.png(), HEAD_BYTES) + media_corpus.elf()
    sniffed = sniff(written(tmp_path, "png-then-elf", data))
    assert sniffed.mime == "image/png"


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sniff(str(tmp_path / "missing"))


SPARSE_SIZE = 50 * 1024**2


def _sparse(tmp_path: Path, head: bytes = b"") -> str:
    path = tmp_path / "sparse"
    path.write_bytes(head)
    subprocess.run(["truncate", "-s", str(SPARSE_SIZE), str(path)], check=True)
    assert path.stat().st_size == SPARSE_SIZE
    return str(path)


@pytest.mark.parametrize(
    "head",
    [b"", media_corpus.mp4()],
    ids=["zeros", "mp4-header"],
)
def test_sniff_reads_only_the_head(tmp_path: Path, head: bytes) -> None:
    path = _sparse(tmp_path, head)
    tracemalloc.start()
    try:
        sniffed = sniff(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sniffed.size == SPARSE_SIZE
    assert peak < 4 * 1024**2, f"peak {peak} bytes: the whole file was read"
    if head:
        assert sniffed.mime == "video/mp4"
        assert check_file(DEFAULT, sniffed) is None
    else:
        assert not sniffed.random_looking


def test_tracemalloc_would_see_a_full_read(tmp_path: Path) -> None:
    # the check above is meaningful: reading the sparse file whole shows up
    path = _sparse(tmp_path)
    tracemalloc.start()
    try:
        with open(path, "rb") as file:
            data = file.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == SPARSE_SIZE
    assert peak >= SPARSE_SIZE


def test_small_ciphertext_is_not_taken_for_text(tmp_path: Path) -> None:
    """libmagic reads about one small random buffer in five as text/plain;
    from 16 bytes on, none of these is refused."""
    rng = random.Random(11)
    path = tmp_path / "attachment"
    refused = []
    for size in range(16, 160):
        for _ in range(10):
            path.write_bytes(rng.randbytes(size))
            sniffed = sniff(str(path))
            if check_file(DEFAULT, sniffed) is not None:
                refused.append((size, sniffed.mime))
    assert refused == []


@pytest.mark.parametrize(
    "text",
    [
        "Lagebericht: keine besonderen Vorkommnisse, Ärger in der Straße.\n".encode("latin-1"),
        "Отчёт о ситуации: всё спокойно, происшествий нет.\n".encode(),  # noqa: RUF001
        b"plain ascii report\n",
    ],
    ids=["latin-1", "utf-8-cyrillic", "ascii"],
)
def test_real_text_stays_text(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(text * 3)
    sniffed = sniff(str(path))
    assert sniffed.mime.startswith("text/")
    denial = check_file(DEFAULT, sniffed)
    assert denial is not None and denial.rule == "media.type"
