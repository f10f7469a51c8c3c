"""A message sent into a room whose creator did not ask for encryption must
reach the other member, yet leave no plaintext on the server: not in the
database (SQLite file or PostgreSQL tables) and not in the media store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from nio import RoomEncryptedFile, RoomMessageText

from devtools.homeserver import Homeserver
from devtools.postgres import PostgresCluster
from tests import e2ee, media_corpus


def server_bytes(hs: Homeserver, postgres: PostgresCluster | None) -> tuple[bytes, bytes]:
    """Everything the server stored: (database contents, media store contents)."""
    if postgres is not None:
        database = postgres.dump(hs.spec.database["args"]["database"])
    else:
        database = b"".join(p.read_bytes() for p in sorted(hs.spec.directory.glob("homeserver.db*")))
    media_root = Path(hs.spec.directory / "media_store")
    media = b"".join(p.read_bytes() for p in sorted(media_root.rglob("*")) if p.is_file())
    return database, media


@pytest.fixture(params=["module", "module-only"], scope="module")
def server(request, hs, start_homeserver):
    """Our homeserver; and one where Synapse's own default encryption is off, so
    only the module stands between the canary and the database."""
    if request.param == "module":
        return hs
    return start_homeserver("no_default_e2ee", extra={"encryption_enabled_by_default_for_room_type": "off"})


async def test_canary_never_reaches_the_server_in_clear(server, make_user, postgres, tmp_path):
    hs = server
    alice, bob = make_user("alice", homeserver=hs), make_user("bob", homeserver=hs)
    canary = f"CANARY-{uuid.uuid4().hex}"
    canary_file = f"CANARY-FILE-{uuid.uuid4().hex}".encode()
    canary_plain = f"CANARY-PLAIN-{uuid.uuid4().hex}"
    control_topic = f"CONTROL-TOPIC-{uuid.uuid4().hex}"
    control_marker = f"CONTROL-MEDIA-{uuid.uuid4().hex}".encode()
    # a clear upload of an allowed type (a PDF) that carries the marker
    control_media = media_corpus.pdf() + b"% " + control_marker + b"\n"

    alice_client = await e2ee.login(hs, alice.localpart, alice.password, tmp_path / "alice")
    bob_client = await e2ee.login(hs, bob.localpart, bob.password, tmp_path / "bob")
    try:
        # The creator asks for nothing: no preset, no initial state, no encryption.
        room_id = await e2ee.create_room(alice_client)
        assert alice_client.rooms[room_id].encrypted, "the module must have made the room encrypted"
        await e2ee.invite_and_join(alice_client, bob_client, room_id)

        # Positive controls: what the server legitimately sees in clear is found by the search.
        status, _ = hs.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/",
            {"topic": control_topic},
            token=alice.token,
        )
        assert status == 200, _
        upload = await alice_client.upload(
            lambda *_: control_media, content_type="application/octet-stream", filesize=len(control_media)
        )
        assert upload[0].content_uri.startswith("mxc://")

        # The canary travels end-to-end encrypted, as text and as an attachment.
        text_id = await e2ee.send(alice_client, room_id, {"msgtype": "m.text", "body": canary})
        file_content = await e2ee.upload_encrypted(alice_client, canary_file, "canary.txt")
        file_id = await e2ee.send(alice_client, room_id, file_content)

        text, attachment = await e2ee.receive(bob_client, room_id, text_id, file_id)
        assert isinstance(text, RoomMessageText) and text.body == canary
        assert isinstance(attachment, RoomEncryptedFile)
        assert e2ee.download_decrypted(bob_client, attachment.source["content"]["file"]) == canary_file

        # A client that does not encrypt is refused before anything is stored.
        status, body = hs.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
            {"msgtype": "m.text", "body": canary_plain},
            token=alice.token,
        )
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    finally:
        await alice_client.close()
        await bob_client.close()

    database, media = server_bytes(hs, postgres)
    assert control_topic.encode() in database, "the database search must see clear-text state"
    assert control_marker in media, "the media search must see clear-text uploads"
    for secret in (canary.encode(), canary_file, canary_plain.encode()):
        assert secret not in database
        assert secret not in media
