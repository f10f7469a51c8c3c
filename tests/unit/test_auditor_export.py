"""Export bundles: signing keys, building, verifying, HTML escaping, ``police-audit verify-export``."""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bots.auditor.cli import main
from bots.auditor.export import (
    ExportRequest,
    ExportUnreadable,
    SigningKeyError,
    build_export,
    generate_signing_key,
    key_fingerprint,
    load_signing_key,
    open_signing_key,
    public_key_pem,
    verify_export,
    write_export,
)

ATTACHMENT = "attachments/00002-1-.._.._evil.html"

REQUEST = ExportRequest(
    request_id="exp-0001",
    room_id="!einsatz:police.test",
    from_ms=1_772_668_800_000,
    to_ms=1_772_755_200_000,
    case_ref="AZ 4711/26",
    reason="Anforderung der Staatsanwaltschaft",
    requested_by="@requester:police.test",
    approved_by="@lead-auditor:police.test",
    created_at_ms=1_772_800_000_000,
)

MESSAGES = [
    {
        "event_id": "$b",
        "room_id": "!einsatz:police.test",
        "sender": "@b:police.test",
        "device_id": "DEVB",
        "origin_server_ts": 1_772_700_000_000,
        "body": "Foto vom Tatort",
        "attachments": [
            {"name": "../../evil.html", "mimetype": "text/html", "data": b"<script>alert(2)</script>"}
        ],
        "redacted_at": None,
    },
    {
        "event_id": "$a",
        "room_id": "!einsatz:police.test",
        "sender": '@a"><img src=x onerror=alert(3)>:police.test',
        "device_id": "DEVA",
        "origin_server_ts": 1_772_690_000_000,
        "body": "<script>alert(1)</script> & Grüße",
        "attachments": [],
        "redacted_at": 1_772_690_500_000,
    },
]


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return generate_signing_key(tmp_path / "signing.pem")


@pytest.fixture
def bundle(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "export.zip"
    write_export(path, MESSAGES, REQUEST, key)
    return path


@pytest.fixture
def trusted_pem(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "auditor.pub.pem"
    path.write_text(public_key_pem(key))
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def rewrite(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    """Rewrite the zip with consistent CRCs after ``change`` edited its members in place."""
    files = members(path)
    change(files)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)


def flip_byte(files: dict[str, bytes], name: str) -> None:
    data = bytearray(files[name])
    data[len(data) // 2] ^= 0x01
    files[name] = bytes(data)


def test_signing_key_is_written_0600_and_loads_again(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "signing.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_pem(load_signing_key(path)) == public_key_pem(key)
    assert public_key_pem(key).startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(FileExistsError):
        generate_signing_key(path)


def test_load_signing_key_refuses_other_key_types(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        load_signing_key(path)


def test_round_trip_verifies(bundle: Path, key: Ed25519PrivateKey) -> None:
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    files = members(bundle)
    manifest = json.loads(files["manifest.json"])
    assert sorted(files) == sorted(
        ["manifest.json", "manifest.sig", "messages.json", "messages.html", ATTACHMENT]
    )
    assert [item["path"] for item in manifest["files"]] == ["messages.json", "messages.html", ATTACHMENT]
    assert manifest["files"][2]["size"] == len(b"<script>alert(2)</script>")
    assert manifest["request"]["approved_by"] == "@lead-auditor:police.test"
    assert manifest["signing_key"]["public_key_pem"] == public_key_pem(key)
    key.public_key().verify(files["manifest.sig"], files["manifest.json"])

    result = verify_export(bundle)
    assert (result.ok, result.problems, result.signature) == (True, [], "embedded")
    trusted = verify_export(bundle, public_key_pem(key))
    assert (trusted.ok, trusted.signature) == (True, "trusted")
    assert trusted.request == manifest["request"]


def test_messages_json_is_ordered_and_keeps_original_names(bundle: Path) -> None:
    messages = json.loads(members(bundle)["messages.json"])

    assert [message["event_id"] for message in messages] == ["$a", "$b"]
    assert messages[0]["redacted_at"] == 1_772_690_500_000
    (attachment,) = messages[1]["attachments"]
    assert attachment["name"] == "../../evil.html"
    assert attachment["path"] == ATTACHMENT
    assert "data" not in attachment


def test_html_escapes_hostile_bodies_and_names(bundle: Path) -> None:
    page = members(bundle)["messages.html"].decode("utf8")

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Grüße" in page
    assert "<img" not in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(3)&gt;" in page
    assert f"Attachment: ../../evil.html (text/html, 25 bytes) in <code>{ATTACHMENT}</code>" in page
    assert "<a " not in page
    assert "Content-Security-Policy" in page
    assert "Redacted at 2026-03-05" in page


@pytest.mark.parametrize("name", ["messages.json", "messages.html", ATTACHMENT])
def test_one_changed_byte_in_a_file_fails_naming_it(bundle: Path, key: Ed25519PrivateKey, name: str) -> None:
    rewrite(bundle, lambda files: flip_byte(files, name))

    result = verify_export(bundle, public_key_pem(key))
    assert not result.ok
    assert result.problems == [f"{name}: SHA-256 does not match the manifest (the content was changed)"]
    assert result.signature == "trusted"


def test_a_changed_manifest_fails_the_signature(bundle: Path, key: Ed25519PrivateKey) -> None:
    def change(files: dict[str, bytes]) -> None:
        files["manifest.json"] = files["manifest.json"].replace(b"AZ 4711/26", b"AZ 4712/26")

    rewrite(bundle, change)

    for trusted in (None, public_key_pem(key)):
        result = verify_export(bundle, trusted)
        assert not result.ok
        assert result.signature == "invalid"
        assert len(result.problems) == 1
        assert result.problems[0].startswith("manifest.sig: the signature does not match manifest.json")


def test_a_bundle_re_signed_with_another_key_fails_only_against_the_trusted_key(
    bundle: Path, key: Ed25519PrivateKey
) -> None:
    forger = Ed25519PrivateKey.generate()

    def resign(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["request"]["approved_by"] = "@nobody:police.test"
        manifest["signing_key"]["public_key_pem"] = public_key_pem(forger)
        files["manifest.json"] = json.dumps(manifest).encode()
        files["manifest.sig"] = forger.sign(files["manifest.json"])

    rewrite(bundle, resign)

    assert verify_export(bundle).signature == "embedded"
    result = verify_export(bundle, public_key_pem(key))
    assert not result.ok
    assert result.signature == "invalid"
    assert "not by the trusted key" in result.problems[0]


def test_an_extra_file_is_flagged(bundle: Path) -> None:
    rewrite(bundle, lambda files: files.update({"attachments/extra.txt": b"planted"}))

    result = verify_export(bundle)
    assert not result.ok
    assert result.problems == ["attachments/extra.txt: in the zip but not listed in the manifest"]


def test_a_missing_file_is_flagged(bundle: Path) -> None:
    rewrite(bundle, lambda files: files.pop(ATTACHMENT))

    result = verify_export(bundle)
    assert result.problems == [f"{ATTACHMENT}: listed in the manifest but missing from the zip"]


def test_build_export_without_messages(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    path.write_bytes(build_export([], REQUEST, key))

    assert verify_export(path).ok
    assert json.loads(members(path)["messages.json"]) == []


def test_verify_export_raises_for_files_that_are_no_zip(tmp_path: Path) -> None:
    path = tmp_path / "not.zip"
    path.write_text("hello")
    with pytest.raises(ExportUnreadable):
        verify_export(path)
    with pytest.raises(ExportUnreadable):
        verify_export(tmp_path / "missing.zip")


def test_cli_verify_export_exit_codes(
    bundle: Path, trusted_pem: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify-export", str(bundle), "--public-key", str(trusted_pem)]) == 0
    assert "signed by the trusted key" in capsys.readouterr().out
    # no trusted key (and no config pinning one): the check fails, it does not shrug
    assert main(["verify-export", str(bundle), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no trusted signing key" in capsys.readouterr().err

    rewrite(bundle, lambda files: flip_byte(files, "messages.json"))
    assert main(["verify-export", str(bundle), "--public-key", str(trusted_pem)]) == 1
    captured = capsys.readouterr()
    assert "messages.json: SHA-256 does not match" in captured.out
    assert "FAILED" in captured.err

    not_zip = tmp_path / "not.zip"
    not_zip.write_text("hello")
    assert main(["verify-export", str(not_zip)]) == 2
    assert main(["verify-export", str(tmp_path / "missing.zip")]) == 2
    assert main(["verify-export", str(bundle), "--public-key", str(tmp_path / "missing.pem")]) == 2
    assert main(["verify-export", str(bundle), "--public-key", str(not_zip)]) == 2
    assert "Traceback" not in capsys.readouterr().err


# -- the signing key kept apart, its fingerprint pinned (issue 19) -------------------------------

PASSWORD = bytes(range(100, 132))


def test_the_signing_key_is_encrypted_with_its_own_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    key = open_signing_key(path, PASSWORD)
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_pem(open_signing_key(path, PASSWORD)) == public_key_pem(key)
    with pytest.raises(SigningKeyError, match="encrypted; give its key"):
        load_signing_key(path)
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_signing_key(path, bytes(32))


def test_an_unencrypted_key_of_an_earlier_version_is_encrypted_in_place(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    key = generate_signing_key(path)
    assert b"ENCRYPTED" not in path.read_bytes()
    assert public_key_pem(load_signing_key(path, PASSWORD)) == public_key_pem(key)
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_swapped_key_file_is_refused_against_the_pin(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    pinned = key_fingerprint(open_signing_key(path, PASSWORD).public_key())
    assert open_signing_key(path, PASSWORD, pinned)
    path.unlink()
    generate_signing_key(path, PASSWORD)  # someone's own key in its place
    with pytest.raises(SigningKeyError, match="the key file was replaced"):
        open_signing_key(path, PASSWORD, pinned)
    path.unlink()
    with pytest.raises(SigningKeyError, match="restore the key"):
        open_signing_key(path, PASSWORD, pinned)


def test_verify_export_trusts_the_fingerprint_pinned_in_the_config(
    bundle: Path, key: Ed25519PrivateKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "auditor.yaml"
    config.write_text(f"signing_key_fingerprint: {key_fingerprint(key.public_key())}\n")
    assert main(["verify-export", str(bundle), "--config", str(config)]) == 0
    assert "pinned in" in capsys.readouterr().out
    assert main(["verify-export", str(bundle), "--fingerprint", key_fingerprint(key.public_key())]) == 0


def test_a_bundle_re_signed_with_another_key_fails_every_trust_source(
    bundle: Path,
    key: Ed25519PrivateKey,
    trusted_pem: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forger = Ed25519PrivateKey.generate()

    def resign(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["signing_key"]["public_key_pem"] = public_key_pem(forger)
        manifest["signing_key"]["fingerprint"] = key_fingerprint(forger.public_key())
        files["manifest.json"] = json.dumps(manifest).encode()
        files["manifest.sig"] = forger.sign(files["manifest.json"])

    rewrite(bundle, resign)
    assert verify_export(bundle).signature == "embedded"  # consistent in itself
    config = tmp_path / "auditor.yaml"
    config.write_text(f"signing_key_fingerprint: {key_fingerprint(key.public_key())}\n")
    assert main(["verify-export", str(bundle), "--public-key", str(trusted_pem)]) == 1
    assert main(["verify-export", str(bundle), "--config", str(config)]) == 1
    assert "not by the pinned key" in capsys.readouterr().out
    monkeypatch.setenv("POLICE_AUDIT_CONFIG", str(config))
    assert main(["verify-export", str(bundle)]) == 1
