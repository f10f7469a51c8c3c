"""What ``filetype.sniff`` finds beyond a file's type (``filescan.py``): archives
behind other data, data after an image's end, active content in PDFs; the
smuggled corpus is refused on the server and as decrypted attachments, its
harmless look-alikes are not, and both options turn their checks off."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from synapse_police_policy.config import MediaConfig, parse_config
from synapse_police_policy.media import filescan
from synapse_police_policy.media.filescan import BLOCK, MAX_STEPS
from synapse_police_policy.media.filetype import sniff
from synapse_police_policy.media.rules import OPAQUE, Sniffed, check_file, looks_random
from tests import media_corpus

DEFAULT = MediaConfig()
NEITHER = MediaConfig(refuse_pdf_active_content=False, refuse_trailing_data=False)
WITH_GIF = MediaConfig(allowed={**DEFAULT.allowed, "image/gif": 30 * 1024**2})


def sniffed(tmp_path: Path, data: bytes, rules: MediaConfig = DEFAULT) -> Sniffed:
    path = tmp_path / "upload"
    path.write_bytes(data)
    return sniff(str(path), rules)


# -- the corpus ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(media_corpus.SMUGGLED))
def test_smuggled_files_are_refused_naming_what_was_found(tmp_path: Path, name: str) -> None:
    make, _declared, _file_name, rule = media_corpus.SMUGGLED[name]
    found = sniffed(tmp_path, make())
    assert not found.random_looking
    for plaintext in (False, True):
        denial = check_file(DEFAULT, found, plaintext=plaintext)
        assert denial is not None, (name, found)
        assert denial.rule == rule, denial
    if rule == "media.type" and found.mime == OPAQUE:
        assert found.detail is not None and "not uniformly random" in found.detail
    elif rule == "media.type":
        assert f"Files of type {found.mime} (detected from the content" in denial.reason


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("elf-behind-random", "application/x-executable at byte 16"),
        ("pe-behind-random", "application/vnd.microsoft.portable-executable at byte 24"),
        ("png-signature-html", "text/html at byte 8"),
    ],
)
def test_what_libmagic_finds_inside_is_named(tmp_path: Path, name: str, expected: str) -> None:
    found = sniffed(tmp_path, media_corpus.SMUGGLED[name][0]())
    assert found.detail is not None and found.detail.startswith(expected + "; its bytes are not uniformly")


@pytest.mark.parametrize(
    ("name", "mime", "where"),
    [
        ("zip-behind-zeros", "application/zip", "it starts at byte 64"),
        ("random-zip-behind-random", "application/zip", "it starts at byte 64"),
        ("rar-behind-random", "application/vnd.rar", "its signature is at byte 100"),
        ("7z-behind-random", "application/x-7z-compressed", "its signature is at byte 100"),
    ],
)
def test_an_archive_behind_other_data_is_an_archive(tmp_path: Path, name: str, mime: str, where: str) -> None:
    found = sniffed(tmp_path, media_corpus.SMUGGLED[name][0]())
    assert found.mime == mime
    assert found.detail is not None and where in found.detail


def test_a_random_looking_zip_behind_random_bytes_passes_the_randomness_test(tmp_path: Path) -> None:
    # only the zip's directory gives it away
    assert looks_random(media_corpus.random_zip_behind_random())


@pytest.mark.parametrize("name", sorted(media_corpus.ALLOWED_VARIANTS))
def test_harmless_look_alikes_are_accepted(tmp_path: Path, name: str) -> None:
    make, mime = media_corpus.ALLOWED_VARIANTS[name]
    found = sniffed(tmp_path, make())
    assert found.mime == mime and found.finding is None
    assert check_file(DEFAULT, found) is None
    assert check_file(DEFAULT, found, plaintext=True) is None


@pytest.mark.parametrize(
    "name",
    sorted(name for name, entry in media_corpus.SMUGGLED.items() if entry[3] != "media.type"),
)
def test_both_options_off_let_allowed_types_through(tmp_path: Path, name: str) -> None:
    found = sniffed(tmp_path, media_corpus.SMUGGLED[name][0](), NEITHER)
    assert found.finding is None
    assert check_file(NEITHER, found) is None


def test_each_option_governs_its_own_check(tmp_path: Path) -> None:
    pdf_off = MediaConfig(refuse_pdf_active_content=False)
    trailing_off = MediaConfig(refuse_trailing_data=False)
    active, appended = media_corpus.pdf_javascript_open_action(), media_corpus.jpeg_with_zip()
    assert sniffed(tmp_path, active, pdf_off).finding is None
    assert sniffed(tmp_path, appended, pdf_off).finding is not None
    assert sniffed(tmp_path, appended, trailing_off).finding is None
    assert sniffed(tmp_path, active, trailing_off).finding is not None


def test_a_type_that_is_not_allowed_is_not_scanned(tmp_path: Path) -> None:
    only_png = MediaConfig(allowed={"image/png": 1024**2})
    found = sniffed(tmp_path, media_corpus.jpeg_with_zip(), only_png)
    assert (found.mime, found.finding) == ("image/jpeg", None)
    denial = check_file(only_png, found)
    assert denial is not None and denial.rule == "media.type"


@pytest.mark.parametrize(
    ("key", "value"), [("refuse_pdf_active_content", False), ("refuse_trailing_data", False)]
)
def test_the_options_parse(key: str, value: bool) -> None:
    media = parse_config({"media": {key: value}}).media
    assert getattr(media, key) is value
    assert getattr(parse_config({}).media, key) is True


@pytest.mark.parametrize("key", ["refuse_pdf_active_content", "refuse_trailing_data"])
def test_a_wrong_option_value_names_the_key(key: str) -> None:
    from synapse_police_policy.config import ConfigError

    with pytest.raises(ConfigError) as error:
        parse_config({"media": {key: "yes"}})
    assert error.value.msg == f"media.{key}: expected true or false, got 'yes'"


# -- images: what follows the end --------------------------------------------------------------------


def _image(fmt: str, size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


def test_gif_with_data_after_its_trailer(tmp_path: Path) -> None:
    gif = media_corpus.gif()
    assert check_file(WITH_GIF, sniffed(tmp_path, gif, WITH_GIF)) is None
    assert check_file(WITH_GIF, sniffed(tmp_path, gif + bytes(100), WITH_GIF)) is None
    found = sniffed(tmp_path, gif + media_corpus.shell_script(), WITH_GIF)
    assert found.finding is not None
    assert found.finding.what == (
        f"43 bytes follow the GIF trailer (0x3b) at byte {len(gif):,}, read as text/x-shellscript"
    )


def test_an_animated_gif_is_walked_to_its_trailer(tmp_path: Path) -> None:
    frames = [Image.effect_noise((32, 32), 60 + i).convert("P") for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], comment=b"x" * 300)
    gif = buffer.getvalue()
    assert sniffed(tmp_path, gif, WITH_GIF).finding is None
    found = sniffed(tmp_path, gif + b"PK\x03\x04" + bytes(26), WITH_GIF)
    assert found.finding is not None and f"at byte {len(gif):,}" in found.finding.what


@pytest.mark.parametrize("block", [97, 1000, 2500])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_the_end_is_found_whatever_the_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, block: int
) -> None:
    """The walks read the file in blocks (1 MiB): with small blocks, markers, chunks and
    sub-blocks fall across block boundaries everywhere in these images."""
    options = {"quality": 95, "progressive": True} if fmt == "JPEG" else {}
    image = _image(fmt, (160, 120), **options)
    monkeypatch.setattr(filescan, "BLOCK", block)
    assert len(image) > 4 * block
    assert sniffed(tmp_path, image, WITH_GIF).finding is None
    found = sniffed(tmp_path, image + media_corpus.html(), WITH_GIF)
    assert found.finding is not None
    assert f"{len(media_corpus.html())} bytes follow the" in found.finding.what


@pytest.mark.parametrize(
    "data",
    [
        media_corpus.jpeg()[:-200],
        media_corpus.png()[:-100],
        media_corpus.mp4()[:-10],
        b"\xff\xd8\xff\xe0" + media_corpus.html(),  # a signature in front of something else
        media_corpus.webp()[:-10],
    ],
    ids=["jpeg", "png", "mp4", "jpeg-signature", "webp"],
)
def test_an_image_or_video_without_its_end_is_refused(tmp_path: Path, data: bytes) -> None:
    found = sniffed(tmp_path, data)
    assert found.finding is not None and "does not end where the file does" in found.finding.what
    assert check_file(NEITHER, sniffed(tmp_path, data, NEITHER)) is None


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (
            media_corpus.mp4() + media_corpus.elf(),
            "264 bytes follow the end of the ISO media file's last box",
        ),
        # "<!DOCTYPE" reads as a box larger than the file
        (media_corpus.mp4() + media_corpus.html(), "its structure does not end where the file does"),
        (media_corpus.heic() + b"\x00\x01\x02", "3 bytes follow the end of the ISO media"),
        (media_corpus.quicktime() + bytes(1000), None),
        (media_corpus.mp4()[:-264] + struct.pack(">I", 0) + b"mdat" + bytes(256), None),  # size 0: to the end
    ],
    ids=["mp4-elf", "mp4-html", "heic-bytes", "mov-zeros", "mdat-to-the-end"],
)
def test_what_follows_the_last_box_of_an_iso_media_file(
    tmp_path: Path, data: bytes, what: str | None
) -> None:
    found = sniffed(tmp_path, data)
    if what is None:
        assert found.finding is None, found
    else:
        assert found.finding is not None and found.finding.what.startswith(what), found


def test_a_png_of_too_many_chunks_is_refused_not_walked_forever(tmp_path: Path) -> None:
    png = media_corpus.png()
    ihdr_end = 8 + 25
    chunk = struct.pack(">I", 0) + b"teXt" + struct.pack(">I", zlib.crc32(b"teXt"))
    data = png[:ihdr_end] + chunk * (MAX_STEPS + 1) + png[ihdr_end:]
    found = sniffed(tmp_path, data)
    assert found.finding is not None and "more than 65,536 PNG chunks" in found.finding.what


def test_the_walks_do_not_read_a_large_file_at_once(tmp_path: Path) -> None:
    """A 50 MiB sparse "PNG": the chunk walk reads block by block (and stops at its bound)."""
    path = tmp_path / "sparse.png"
    path.write_bytes(media_corpus.png()[:33])
    subprocess.run(["truncate", "-s", str(50 * 1024**2), str(path)], check=True)
    tracemalloc.start()
    try:
        found = sniff(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.mime == "image/png"
    assert peak < 4 * 1024**2, f"peak {peak} bytes"


# -- PDFs ------------------------------------------------------------------------------------------


def _pdf(catalog: bytes) -> bytes:
    return b"%PDF-1.7\n1 0 obj\n" + catalog + b"\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


@pytest.mark.parametrize(
    ("catalog", "names"),
    [
        (b"<< /OpenAction 5 0 R >>", "/OpenAction"),  # an action object, maybe JavaScript
        (b"<< /OpenAction << /S /URI /URI (https://x.example) >> >>", "/OpenAction"),
        (b"<< /AcroForm << /XFA 5 0 R >> >>", "/XFA"),
        (b"<< /A << /S /SubmitForm /F (https://x.example) >> >>", "/SubmitForm"),
        (b"<< /Annots [<< /Subtype /RichMedia >>] >>", "/RichMedia"),
        (b"<</S/JavaScript/JS(x)>>", "/JS, /JavaScript"),  # no spaces between names
        (b"<< /S /J#61v#61Script /#4A#53 (x) >>", "/JS, /JavaScript"),
    ],
)
def test_active_pdf_names(tmp_path: Path, catalog: bytes, names: str) -> None:
    found = sniffed(tmp_path, _pdf(catalog))
    assert found.finding is not None
    assert found.finding.what == f"it holds active content ({names})"


@pytest.mark.parametrize(
    "catalog",
    [
        b"<< /OpenAction [3 0 R /FitH 800] >>",
        b"<< /OpenActionX 1 /JSON (x) /AAA 1 /Launcher 2 >>",  # other names that start alike
    ],
)
def test_harmless_pdf_names(tmp_path: Path, catalog: bytes) -> None:
    assert sniffed(tmp_path, _pdf(catalog)).finding is None


def _object_stream(
    objects: bytes, dictionary: bytes = b"/Filter /FlateDecode", data: bytes | None = None
) -> bytes:
    data = zlib.compress(objects) if data is None else data
    head = b"<< /Type /ObjStm /N 1 /First 4 " + dictionary + b" /Length %d >>\nstream\n" % len(data)
    return b"%PDF-1.7\n2 0 obj\n" + head + data + b"\nendstream\nendobj\n%%EOF\n"


@pytest.mark.parametrize(
    ("dictionary", "data"),
    [
        (b"/Filter /ASCIIHexDecode", b"3c3c2f4a532028782920e3e"),
        (b"/Filter [/FlateDecode /ASCII85Decode]", None),
        (b"/Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 5 >>", None),
        (b"/Filter /FlateDecode /Encrypt 9 0 R", b"\x8f\x11 encrypted bytes, no zlib stream"),
    ],
)
def test_an_object_stream_that_cannot_be_read_refuses_the_pdf(
    tmp_path: Path, dictionary: bytes, data: bytes | None
) -> None:
    found = sniffed(tmp_path, _object_stream(b"1 0 << /Type /Catalog >>", dictionary, data))
    assert found.finding is not None and "that the check cannot read" in found.finding.what


def test_a_readable_object_stream_without_active_content_is_fine(tmp_path: Path) -> None:
    assert sniffed(tmp_path, _object_stream(b"1 0 << /Type /Catalog /Pages 3 0 R >>")).finding is None


def test_active_names_across_a_block_boundary_are_found(tmp_path: Path) -> None:
    """The scan reads 1 MiB blocks that overlap: a name, or an object stream's dictionary,
    cut by a block boundary is still seen."""
    hidden = zlib.compress(b"1 0 << /OpenAction << /S /Launch /F (x) >> >>")
    for offset in (-30, -5, -1, 0, 3):
        filler = b"%" + bytes(BLOCK + offset - 12) + b"\n"  # a comment up to the boundary
        data = b"%PDF-1.7\n" + filler + b"1 0 obj << /S /JavaScript /JS (x) >> endobj\n%%EOF\n"
        found = sniffed(tmp_path, data)
        assert found.finding is not None and "/JavaScript" in found.finding.what, offset
        data = b"%PDF-1.7\n" + filler + _object_stream(b"", data=hidden)[9:]
        found = sniffed(tmp_path, data)
        assert found.finding is not None and "/Launch" in found.finding.what, offset


@pytest.mark.parametrize("block", [64, 333, 4096])
def test_the_pdf_corpus_whatever_the_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(filescan, "BLOCK", block)
    for name, (make, _declared, _file_name, rule) in media_corpus.SMUGGLED.items():
        if rule == "media.active_content":
            found = sniffed(tmp_path, make())
            assert found.finding is not None and found.finding.rule == rule, name
    assert sniffed(tmp_path, media_corpus.pdf_open_at_page()).finding is None


def test_names_in_stream_data_do_not_count_but_after_it_they_do(tmp_path: Path) -> None:
    # compressed images hold "/JS " by chance; the objects after the stream are read again
    data = b"\x00/JS \x00/AA(" * 100
    image = (
        b"2 0 obj << /Length %d /Filter /DCTDecode >>\nstream\n" % len(data) + data + b"\nendstream\nendobj\n"
    )
    catalog = b"1 0 obj << /Type /Catalog /Pages 3 0 R >> endobj\n"
    assert sniffed(tmp_path, b"%PDF-1.7\n" + catalog + image + b"%%EOF\n").finding is None
    active = b"4 0 obj << /S /Launch /F (x) >> endobj\n"
    found = sniffed(tmp_path, b"%PDF-1.7\n" + catalog + image + active + b"%%EOF\n").finding
    assert found is not None and found.what == "it holds active content (/Launch)"
    # a stream without "endstream" is read as objects
    found = sniffed(
        tmp_path, b"%PDF-1.7\n" + catalog + image.replace(b"endstream", b"x") + b"%%EOF\n"
    ).finding
    assert found is not None and "/JS" in found.what


@pytest.mark.parametrize(
    ("padding", "whitespace"),
    [(b"/Pad (" + b"x" * 8000 + b") ", b"\n"), (b"", b" " * 300 + b"\r\n"), (b"/Pad " * 200_000, b"\n")],
    ids=["long-dictionary", "much-whitespace", "dictionary-over-a-block"],
)
def test_an_object_stream_is_found_however_its_dictionary_is_padded(
    tmp_path: Path, padding: bytes, whitespace: bytes
) -> None:
    hidden = zlib.compress(b"1 0 << /OpenAction << /S /Launch /F (x) >> >>")
    head = b"2 0 obj\n<< " + padding + b"/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode >>" + whitespace
    data = b"%PDF-1.7\n" + head + b"stream\n" + hidden + b"\nendstream\nendobj\n%%EOF\n"
    found = sniffed(tmp_path, data).finding
    assert found is not None and "/Launch" in found.what


def test_a_stream_dictionary_of_over_a_mebibyte_is_not_read(tmp_path: Path) -> None:
    data = b"%PDF-1.7\n2 0 obj\n<< " + b"/Pad " * 220_000 + b">>\nstream\nx\nendstream\nendobj\n"
    found = sniffed(tmp_path, data).finding
    assert found is not None and "a dictionary of over 1 MiB" in found.what


def test_a_pdf_of_too_many_streams_is_refused_not_scanned_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filescan, "MAX_STEPS", 100)
    stream = b"<< /Length 1 >>\nstream\nx\nendstream\n"
    found = sniffed(tmp_path, b"%PDF-1.7\n" + stream * 401).finding
    assert found is not None and "more than 400 streams" in found.what
    assert sniffed(tmp_path, b"%PDF-1.7\n" + stream * 399).finding is None


def test_an_object_stream_that_inflates_past_the_budget_is_not_read_whole(tmp_path: Path) -> None:
    bomb = zlib.compress(bytes(65 * 1024**2), 9)  # 65 MiB of zeros in about 64 KiB
    found = sniffed(tmp_path, _object_stream(b"", data=bomb))
    assert found.finding is not None and "cannot read" in found.finding.what


# -- any bytes: the walks never fail ----------------------------------------------------------------

HEADS = [
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00\x90\x91h6",
    b"GIF89a\x10\x00\x10\x00\x80\x00\x00",
    b"RIFF\x40\x00\x00\x00WEBPVP8 ",
    b"%PDF-1.7\n",
    b"PK\x03\x04",
    b"",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from(HEADS), body=st.binary(max_size=3000), end=st.sampled_from([b"", b"PK\x05\x06"]))
def test_any_bytes_get_a_verdict(tmp_path: Path, head: bytes, body: bytes, end: bytes) -> None:
    data = head + body + end + bytes(18 if end else 0)
    found = sniffed(tmp_path, data, WITH_GIF)
    assert found.size == len(data)
    verdict = check_file(WITH_GIF, found)
    assert verdict is None or verdict.reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), entries=st.integers(0, 0xFFFF), size=st.integers(0, 2**32 - 1))
def test_a_zip_end_record_pointing_nowhere_is_no_archive(
    tmp_path: Path, seed: int, entries: int, size: int
) -> None:
    """Random bytes with an end-of-central-directory record whose directory is not where it says."""
    body = random.Random(seed).randbytes(4096)
    record = b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, entries, entries, size, 0, 0)
    found = sniffed(tmp_path, body.replace(b"PK\x01\x02", b"") + record)
    assert found.mime != "application/zip"
