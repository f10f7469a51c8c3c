"""Media our server fetches from an allowed peer is judged like an upload:
what the bytes are decides, and a refused file is neither kept nor served."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from devtools.homeserver import Homeserver
from tests import media_corpus
from tests.integration.test_media_types import stored_files, upload


@pytest.fixture(scope="module")
def peer(start_homeserver) -> Homeserver:
    """An allowed police server without the module: it stores whatever is uploaded."""
    return start_homeserver("media_peer", with_module=False, federation_address="127.0.0.6")


@pytest.fixture(scope="module")
def ours(start_homeserver, peer) -> Homeserver:
    return start_homeserver(
        "media_ours",
        module_config={"federation": {"allowed_servers": [peer.server_name]}},
        federation_address="127.0.0.7",
    )


def download(hs: Homeserver, token: str, mxc: str) -> tuple[int, bytes]:
    server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
    request = urllib.request.Request(
        f"{hs.url}/_matrix/client/v1/media/download/{server_name}/{media_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def cached_remote_media(hs: Homeserver, media_id: str) -> int:
    return hs.query("SELECT COUNT(*) FROM remote_media_cache WHERE media_id = ?", (media_id,))[0][0]


def test_allowed_remote_photo_is_fetched(ours, peer, make_user):
    reader = make_user("officer", homeserver=ours)
    sender = make_user("officer", homeserver=peer)
    photo = media_corpus.jpeg()
    status, body = upload(peer, sender.token, photo, "image/jpeg", "photo.jpg")
    assert status == 200, body
    assert download(ours, reader.token, body["content_uri"]) == (200, photo)


REMOTE = {
    **{name: (*media_corpus.HOSTILE[name], b"detected from the content") for name in ("elf", "html", "zip")},
    "zip-behind-random": (*media_corpus.SMUGGLED["zip-behind-random"][:3], b"application/zip"),
    "jpeg-with-zip": (*media_corpus.SMUGGLED["jpeg-with-zip"][:3], b"media.refuse_trailing_data"),
}


@pytest.mark.parametrize("name", sorted(REMOTE))
def test_hostile_remote_file_is_neither_kept_nor_served(ours, peer, make_user, name):
    reader = make_user("officer", homeserver=ours)
    sender = make_user("officer", homeserver=peer)
    make, content_type, file_name, named = REMOTE[name]
    status, body = upload(peer, sender.token, make(), content_type, file_name)
    assert status == 200, body
    mxc = body["content_uri"]
    files_before = stored_files(ours)
    status, answer = download(ours, reader.token, mxc)
    assert status == 403, answer
    assert named in answer
    assert stored_files(ours) == files_before
    assert cached_remote_media(ours, mxc.rsplit("/", 1)[1]) == 0
