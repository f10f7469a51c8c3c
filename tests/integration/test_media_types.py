"""Media judged by content on a real Synapse: the corpus of allowed files is
accepted, hostile files pretending to be media are refused, so are files
smuggled past a check by type alone, and a refusal leaves nothing in the
media store or the media table."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from devtools.homeserver import Homeserver
from tests import e2ee, media_corpus
from tests.integration.test_decision_log import decisions_for

KIB = 1024
PNG_LIMIT = 64 * KIB


@pytest.fixture(scope="module")
def media_hs(start_homeserver) -> Homeserver:
    """Small limits, so that sizes and the quota can be tested with small files."""
    allowed = {mime: "1M" for mime in media_corpus.ALLOWED}
    allowed["image/png"] = f"{PNG_LIMIT // KIB}K"
    return start_homeserver(
        "media",
        module_config={"media": {"allowed": allowed, "encrypted_max_size": "2M", "daily_upload_quota": "6M"}},
    )


def upload(hs: Homeserver, token: str, data: bytes, content_type: str, name: str) -> tuple[int, dict]:
    query = urllib.parse.urlencode({"filename": name})
    request = urllib.request.Request(f"{hs.url}/_matrix/media/v3/upload?{query}", data=data, method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stored_files(hs: Homeserver) -> set[Path]:
    root = hs.spec.directory / "media_store"
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def media_rows(hs: Homeserver, user_id: str) -> int:
    return hs.query("SELECT COUNT(*) FROM local_media_repository WHERE user_id = ?", (user_id,))[0][0]


def assert_refused_without_trace(hs, user, data, content_type, name, status, errcode) -> dict:
    files_before, rows_before = stored_files(hs), media_rows(hs, user.user_id)
    got, body = upload(hs, user.token, data, content_type, name)
    assert (got, body.get("errcode")) == (status, errcode), body
    assert stored_files(hs) == files_before, "a refused upload must leave no file"
    assert media_rows(hs, user.user_id) == rows_before, "a refused upload must leave no row"
    return body


@pytest.mark.parametrize("mime", sorted(media_corpus.ALLOWED))
def test_allowed_media_is_accepted_whatever_it_is_called(media_hs, make_user, mime):
    user = make_user("officer", homeserver=media_hs)
    data = media_corpus.ALLOWED[mime]()
    # Declared type and name are wrong on purpose: neither plays a part.
    status, body = upload(media_hs, user.token, data, "application/octet-stream", "file.bin")
    assert status == 200, body
    assert body["content_uri"].startswith("mxc://")


@pytest.mark.parametrize("name", sorted(media_corpus.HOSTILE))
def test_hostile_files_are_refused_by_content(media_hs, make_user, name):
    user = make_user("officer", homeserver=media_hs)
    make, content_type, file_name = media_corpus.HOSTILE[name]
    body = assert_refused_without_trace(media_hs, user, make(), content_type, file_name, 403, "M_FORBIDDEN")
    assert "detected from the content" in body["error"]
    assert "image/jpeg" in body["error"], "the message lists the allowed types"
    [logged] = [e for e in decisions_for(media_hs, user.user_id) if e["rule"] == "media.type"]
    assert logged["reason"] == body["error"]
    assert logged["media"].startswith(media_hs.server_name + "/")


#: what each refusal names: the detected type, or the option that refused it
_REASON = {
    "media.type": "detected from the content",
    "media.active_content": "media.refuse_pdf_active_content",
    "media.trailing_data": "media.refuse_trailing_data",
}


@pytest.mark.parametrize("name", sorted(media_corpus.SMUGGLED))
def test_smuggled_files_are_refused_without_trace(media_hs, make_user, name):
    """Archives and programs behind a few bytes, text in legacy encodings (all of which
    libmagic cannot name, so they would pass as ciphertext), active PDFs and images with
    something behind their end (allowed types by their head)."""
    user = make_user("officer", homeserver=media_hs)
    make, content_type, file_name, rule = media_corpus.SMUGGLED[name]
    body = assert_refused_without_trace(media_hs, user, make(), content_type, file_name, 403, "M_FORBIDDEN")
    assert _REASON[rule] in body["error"], body
    [logged] = [e for e in decisions_for(media_hs, user.user_id) if e["rule"] == rule]
    assert logged["reason"] == body["error"]


@pytest.mark.parametrize("name", sorted(media_corpus.ALLOWED_VARIANTS))
def test_harmless_look_alikes_are_accepted(media_hs, make_user, name):
    """A PDF that opens at a page, a JPEG padded with zeros, a multi-picture JPEG."""
    user = make_user("officer", homeserver=media_hs)
    make, mime = media_corpus.ALLOWED_VARIANTS[name]
    status, body = upload(media_hs, user.token, make(), mime, "file")
    assert status == 200, body


def test_empty_file_is_refused(media_hs, make_user):
    user = make_user("officer", homeserver=media_hs)
    body = assert_refused_without_trace(media_hs, user, b"", "image/jpeg", "empty.jpg", 403, "M_FORBIDDEN")
    assert "Empty" in body["error"]


def test_size_limit_of_a_type_to_the_byte(media_hs, make_user):
    user = make_user("officer", homeserver=media_hs)
    png = media_corpus.png()
    status, body = upload(media_hs, user.token, media_corpus.padded(png, PNG_LIMIT), "image/png", "a.png")
    assert status == 200, body
    body = assert_refused_without_trace(
        media_hs, user, media_corpus.padded(png, PNG_LIMIT + 1), "image/png", "b.png", 413, "M_TOO_LARGE"
    )
    assert "image/png" in body["error"]


def test_opaque_content_up_to_the_encrypted_limit(media_hs, make_user):
    user = make_user("officer", homeserver=media_hs)
    status, body = upload(media_hs, user.token, os.urandom(1024 * KIB), "application/octet-stream", "x")
    assert status == 200, body
    assert_refused_without_trace(
        media_hs, user, os.urandom(2 * 1024 * KIB + 1), "application/octet-stream", "y", 413, "M_TOO_LARGE"
    )


def test_unrecognised_content_that_is_not_random_is_refused(media_hs, make_user):
    """Half random, half zeros: libmagic names nothing, and it is no ciphertext."""
    user = make_user("officer", homeserver=media_hs)
    data = os.urandom(300 * KIB) + bytes(100 * KIB)
    body = assert_refused_without_trace(
        media_hs, user, data, "application/octet-stream", "x", 403, "M_FORBIDDEN"
    )
    assert "Files of no known type (detected from the content)" in body["error"]
    assert "chi-square" in body["error"]


def test_daily_quota_across_uploads(media_hs, make_user):
    user = make_user("officer", homeserver=media_hs)
    for _ in range(3):
        status, body = upload(
            media_hs, user.token, os.urandom(2 * 1024 * KIB), "application/octet-stream", "z"
        )
        assert status == 200, body
    body = assert_refused_without_trace(
        media_hs, user, os.urandom(1024), "application/octet-stream", "over", 413, "M_TOO_LARGE"
    )
    assert "quota" in body["error"]
    [entry] = [e for e in decisions_for(media_hs, user.user_id) if e["rule"] == "media.daily_quota"]
    assert entry["user"] == user.user_id
    # Another user's quota is their own.
    other = make_user("officer", homeserver=media_hs)
    assert upload(media_hs, other.token, os.urandom(1024), "application/octet-stream", "ok")[0] == 200


async def test_encrypted_attachment_travels_and_decrypts(media_hs, make_user, tmp_path):
    """The server sees only ciphertext, which is accepted as opaque content
    (the auditor bot checks attachments after decryption)."""
    alice, bob = make_user("alice", homeserver=media_hs), make_user("bob", homeserver=media_hs)
    alice_client = await e2ee.login(media_hs, alice.localpart, alice.password, tmp_path / "alice")
    bob_client = await e2ee.login(media_hs, bob.localpart, bob.password, tmp_path / "bob")
    try:
        room_id = await e2ee.create_room(alice_client)
        await e2ee.invite_and_join(alice_client, bob_client, room_id)
        photo = media_corpus.jpeg()
        content = await e2ee.upload_encrypted(alice_client, photo, "photo.jpg")
        event_id = await e2ee.send(alice_client, room_id, content)
        [event] = await e2ee.receive(bob_client, room_id, event_id)
        assert e2ee.download_decrypted(bob_client, event.source["content"]["file"]) == photo
    finally:
        await alice_client.close()
        await bob_client.close()
