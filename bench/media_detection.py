"""Media content check: how often it refuses ciphertext, and how much of a
corpus of smuggled files it catches.

False refusals: ``BUFFERS`` buffers of AES-256-CTR ciphertext (a new random
key and counter block each: what an end-to-end encrypted attachment is to the
server), sizes log-uniform from 16 bytes to 1 MiB, each written to a memory
file and judged as the module judges an upload (``filetype.sniff`` with the
default rules, then ``media.check_file``). The target is none refused. With
none observed, the rate is below 3 / BUFFERS with 95% confidence (the rule of
three).

Detection: variants of ``tests/media_corpus.py``'s smuggled files (archives
and programs behind zero or random bytes of several lengths, the PNG
signature followed by markup, text in legacy 8-bit encodings at several
lengths, active PDFs in clear, escaped, compressed and behind random bytes,
images and videos with archives, markup, programs or random bytes after
their end), each judged as an upload; the target is all refused. Allowed
files and their harmless look-alikes are judged too (all accepted).

No homeserver: this is the check itself, in this process, the way
``check_media_file_for_spam`` runs it in its thread.
"""

from __future__ import annotations

import collections
import io
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from PIL import Image

from synapse_police_policy.config import MediaConfig
from synapse_police_policy.media.filetype import sniff
from synapse_police_policy.media.rules import OPAQUE, check_file
from tests import media_corpus as corpus

from .module_overhead import print_table

BUFFERS = 100_000
#: the smoke test's (``main(smoke=True)``): the same path in seconds, the rate means nothing
SMOKE_BUFFERS = 200
SMALLEST, LARGEST = 16, 1024**2
RULES = MediaConfig()


def ciphertext(size: int) -> bytes:
    """An encrypted attachment's bytes: AES-256-CTR with a random key and counter block."""
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return encryptor.update(bytes(size)) + encryptor.finalize()


class MemoryFile:
    """One memory file (as the auditor bot uses), rewritten for every buffer."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("bench-media", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def write(self, data: bytes) -> str:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self.path

    def close(self) -> None:
        os.close(self.fd)


def false_refusals(memory: MemoryFile, buffers: int = BUFFERS) -> None:
    rng = random.Random()
    refused: list[tuple[int, str, str]] = []
    detected: collections.Counter[str] = collections.Counter()
    judged = 0
    started = time.perf_counter()
    check_seconds: list[float] = []
    total_bytes = 0
    for index in range(buffers):
        size = int(math.exp(rng.uniform(math.log(SMALLEST), math.log(LARGEST + 1))))
        size = min(max(size, SMALLEST), LARGEST)
        path = memory.write(ciphertext(size))
        total_bytes += size
        before = time.perf_counter()
        sniffed = sniff(path, RULES)
        denial = check_file(RULES, sniffed)
        check_seconds.append(time.perf_counter() - before)
        judged += 1
        detected[sniffed.mime] += 1
        if denial is not None:
            refused.append((size, sniffed.mime, denial.rule))
        if (index + 1) % max(1, buffers // 5) == 0:
            print(f"  {index + 1:,} buffers, {len(refused)} refused", flush=True)
    elapsed = time.perf_counter() - started
    named = judged - detected[OPAQUE]
    bound = 3 / judged
    print(
        f"\nfalse refusals: {len(refused)} of {judged:,} ciphertext buffers "
        f"(rate {len(refused) / judged:.1e}; with none observed, below {bound:.0e} at 95% confidence); "
        f"target: none"
    )
    print(
        f"  sizes {SMALLEST} bytes to {LARGEST // 1024**2} MiB, log-uniform ({total_bytes / 1024**3:.1f} GiB "
        f"in all); libmagic named {named:,} of them after a chance signature "
        f"({', '.join(f'{mime} {count}' for mime, count in detected.most_common(6) if mime != OPAQUE)}); "
        f"check time median {statistics.median(check_seconds) * 1000:.2f} ms; {elapsed:.0f} s in all"
    )
    for size, mime, rule in refused[:20]:
        print(f"  REFUSED: {size} bytes, detected {mime}, {rule}")


# -- the corpus ------------------------------------------------------------------------------------


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    random.seed(seed)
    buffer = io.BytesIO()
    Image.effect_noise(size, 40 + seed % 40).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


#: what is put behind an allowed file
PAYLOADS: dict[str, Callable[[int], bytes]] = {
    "zip": lambda seed: corpus.zip_archive(),
    "stored random zip": lambda seed: corpus.random_zip_behind_random(seed)[64:],
    "html": lambda seed: corpus.html(),
    "shell script": lambda seed: corpus.shell_script(),
    "elf": lambda seed: corpus.elf(),
    "random 1 KiB": lambda seed: _random(1024, seed),
    "random 100 KiB": lambda seed: _random(100 * 1024, seed),
}
TEXTS = {
    "Russian CP1251": (corpus.RUSSIAN, "cp1251"),
    "Russian KOI8-R": (corpus.RUSSIAN, "koi8-r"),
    "Russian ISO-8859-5": (corpus.RUSSIAN, "iso-8859-5"),
    "Greek ISO-8859-7": (corpus.GREEK, "iso-8859-7"),
    "Greek CP1253": (corpus.GREEK, "cp1253"),
    "Arabic CP1256": (corpus.ARABIC, "cp1256"),
    "Arabic ISO-8859-6": (corpus.ARABIC, "iso-8859-6"),
    "Hebrew ISO-8859-8": ("דוח מצב: הכל שקט באזור, אין אירועים. הסיור ממשיך כרגיל עד הבוקר.\n", "iso-8859-8"),
    "Bulgarian CP1251": (
        "Оперативна информация: задържан е заподозрян, иззети са документи и телефон.\n",  # noqa: RUF001
        "cp1251",
    ),
}
PDF_KINDS = {
    "JavaScript OpenAction": corpus.pdf_javascript_open_action,
    "Launch on a page": corpus.pdf_launch_action,
    "escaped names": corpus.pdf_escaped_names,
    "embedded file": corpus.pdf_embedded_file,
    "JavaScript in an object stream": corpus.pdf_javascript_in_object_stream,
}
PREFIX_LENGTHS = (1, 7, 64, 500, 4096)
#: how the table groups the kinds (by the start of their name)
GROUPS = (
    ("PDF", "PDF with active content: clear, escaped, in an object stream, behind random bytes"),
    ("text", "text in legacy 8-bit encodings, 77 to 5,000 bytes"),
    ("PNG signature", "an image signature, then markup or a script"),
    ("JPEG signature", "an image signature, then markup or a script"),
    ("JPEG with", "JPEG, PNG, WebP, MP4 with data or an archive after the end"),
    ("PNG with", "JPEG, PNG, WebP, MP4 with data or an archive after the end"),
    ("WebP with", "JPEG, PNG, WebP, MP4 with data or an archive after the end"),
    ("MP4 with", "JPEG, PNG, WebP, MP4 with data or an archive after the end"),
    ("", "zip, RAR, 7-Zip, ELF, PE behind 1 to 4,096 zero or random bytes"),
)


def smuggled() -> Iterator[tuple[str, bytes]]:
    """(kind, bytes) of every file the check must refuse."""
    for length in PREFIX_LENGTHS:
        for seed in range(3):
            random_prefix = _random(length, seed)
            yield "zip behind zero bytes", bytes(length) + corpus.zip_archive()
            yield "zip behind random bytes", random_prefix + corpus.zip_archive()
            yield (
                "stored random zip behind random bytes",
                random_prefix + corpus.random_zip_behind_random(seed)[64:],
            )
            yield "ELF behind random bytes", random_prefix + corpus.elf()
            yield "PE behind random bytes", random_prefix + corpus.padded(corpus.pe(), 1024)
            yield "RAR behind random bytes", random_prefix + corpus.rar_behind_random()[100:]
            yield "7-Zip behind random bytes", random_prefix + corpus.seven_zip_behind_random()[100:]
    for markup in (corpus.html(), corpus.svg_with_script(), corpus.shell_script() * 3):
        yield "PNG signature and markup", b"\x89PNG\r\n\x1a\n" + markup
        yield "JPEG signature and markup", b"\xff\xd8\xff\xe0" + markup
    for name, (text, encoding) in TEXTS.items():
        encoded = (text * 100).encode(encoding)
        for length in (77, 100, 300, 1000, 5000):
            yield f"text, {name}", encoded[:length]
    for name, make in PDF_KINDS.items():
        yield f"PDF, {name}", make()
        for length in (16, 300, 1000):
            yield f"PDF behind random bytes, {name}", _random(length, length) + make()
    for seed in range(3):
        images = {
            "JPEG": _jpeg((320, 240), seed),
            "PNG": corpus.png(),
            "WebP": corpus.webp(),
            "MP4": corpus.mp4(),
        }
        for image_name, image in images.items():
            for payload_name, payload in PAYLOADS.items():
                yield f"{image_name} with {payload_name} after it", image + payload(seed)


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def allowed() -> Iterator[tuple[str, bytes]]:
    """(kind, bytes) of files the check must accept: the corpus, its harmless look-alikes,
    and photos as Pillow's encoders write them in their variants."""
    for mime, make in corpus.ALLOWED.items():
        yield mime, make()
    for name, (make, _mime) in corpus.ALLOWED_VARIANTS.items():
        yield name, make()
    for seed in range(5):
        yield "JPEG, 1600x1200", _jpeg((1600, 1200), seed)
    photo = Image.effect_noise((640, 480), 50).convert("RGB")
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    yield "JPEG, progressive", _encoded(photo, "JPEG", progressive=True, optimize=True)
    yield "JPEG, 4:4:4, quality 100", _encoded(photo, "JPEG", subsampling=0, quality=100)
    yield "JPEG, EXIF and ICC profile", _encoded(photo, "JPEG", exif=exif.tobytes(), icc_profile=bytes(3000))
    yield "JPEG, restart markers", _encoded(photo, "JPEG", restart_marker_blocks=1)
    yield "JPEG, greyscale", _encoded(photo.convert("L"), "JPEG")
    yield "JPEG, CMYK", _encoded(photo.convert("CMYK"), "JPEG")
    yield "PNG, palette", _encoded(photo.convert("P"), "PNG")
    yield "PNG, 16-bit", _encoded(photo.convert("I;16"), "PNG")
    yield "PNG, RGBA", _encoded(photo.convert("RGBA"), "PNG")
    yield "WebP, lossless", _encoded(photo, "WEBP", lossless=True)
    yield "WebP, animated", _encoded(photo, "WEBP", save_all=True, append_images=[photo.rotate(90)])
    yield "PDF, Pillow's", _encoded(photo, "PDF")


def detection(memory: MemoryFile) -> None:
    by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    missed: list[tuple[str, str]] = []
    for kind, data in smuggled():
        sniffed = sniff(memory.write(data), RULES)
        refused = check_file(RULES, sniffed) is not None
        by_kind[kind][0] += refused
        by_kind[kind][1] += 1
        if not refused:
            missed.append((kind, sniffed.mime))
    caught = sum(refused for refused, _total in by_kind.values())
    total = sum(total for _refused, total in by_kind.values())
    accepted = wrongly = 0
    for kind, data in allowed():
        denial = check_file(RULES, sniff(memory.write(data), RULES))
        if denial is None:
            accepted += 1
        else:
            wrongly += 1
            print(f"  ALLOWED FILE REFUSED: {kind}: {denial.reason}")
    lines: list[tuple[str, ...]] = [("kind", "refused", "of")]
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for kind, (refused, count) in by_kind.items():
        group = next(group for prefix, group in GROUPS if kind.startswith(prefix))
        groups[group][0] += refused
        groups[group][1] += count
    lines += [(group, str(refused), str(count)) for group, (refused, count) in groups.items()]
    print(f"\ndetection: {caught} of {total} smuggled files refused ({caught / total:.1%}); target: all")
    print_table(lines)
    for kind, mime in missed[:20]:
        print(f"  MISSED: {kind} (detected {mime})")
    print(f"allowed files accepted: {accepted} of {accepted + wrongly}; target: all")


def main(smoke: bool = False) -> None:
    """The corpus is small, so the smoke test (``smoke``) judges all of it, and
    ``SMOKE_BUFFERS`` ciphertext buffers instead of ``BUFFERS``."""
    memory = MemoryFile()
    try:
        detection(memory)
        false_refusals(memory, SMOKE_BUFFERS if smoke else BUFFERS)
    finally:
        memory.close()
