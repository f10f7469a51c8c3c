"""Real matrix-nio clients with end-to-end encryption for integration tests."""

from __future__ import annotations

import io
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    JoinResponse,
    LoginResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from devtools.homeserver import Homeserver


async def login(
    homeserver: Homeserver, localpart: str, password: str, store: Path, *, enroll: bool = True
) -> AsyncClient:
    """Log a user in with a new device (enrolled first, as the MDM would), upload
    its keys and do a first sync."""
    store.mkdir(parents=True, exist_ok=True)
    device_id = f"NIO-{uuid.uuid4().hex[:8].upper()}"
    if enroll:
        homeserver.enroll(localpart, device_id, label=f"nio test client of {localpart}")
    client = AsyncClient(
        homeserver.url,
        homeserver.user_id(localpart),
        device_id=device_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    response = await client.login(password, device_name=f"test device of {localpart}")
    assert isinstance(response, LoginResponse), response
    if client.should_upload_keys:
        await client.keys_upload()
    await client.sync(timeout=0, full_state=True)
    return client


async def sync_until(client: AsyncClient, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Sync incrementally (nio keeps next_batch) until ``done()`` holds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.user_id}: condition not met within {timeout}s of syncing")
        await client.sync(timeout=1000)
        if client.should_query_keys:
            await client.keys_query()


async def create_room(client: AsyncClient, **kwargs: Any) -> str:
    response = await client.room_create(**kwargs)
    assert isinstance(response, RoomCreateResponse), response
    await sync_until(client, lambda: response.room_id in client.rooms)
    return response.room_id


async def invite_and_join(inviter: AsyncClient, invitee: AsyncClient, room_id: str) -> None:
    invited = await inviter.room_invite(room_id, invitee.user_id)
    assert isinstance(invited, RoomInviteResponse), invited
    joined = await invitee.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    await sync_until(invitee, lambda: room_id in invitee.rooms)
    await sync_until(inviter, lambda: invitee.user_id in inviter.rooms[room_id].users)


async def send(
    client: AsyncClient, room_id: str, content: dict[str, Any], event_type: str = "m.room.message"
) -> str:
    """Send as Element does: encrypted when the room is, to unverified devices too."""
    if client.should_query_keys:
        await client.keys_query()
    response = await client.room_send(room_id, event_type, content, ignore_unverified_devices=True)
    assert isinstance(response, RoomSendResponse), response
    return response.event_id


async def receive(client: AsyncClient, room_id: str, *event_ids: str, timeout: float = 30.0) -> list[Event]:
    """Sync until every one of ``event_ids`` arrived in ``room_id``; returns them
    in that order, as nio decoded them."""
    found: dict[str, Event] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(event_ids):
        if time.monotonic() > deadline:
            missing = sorted(set(event_ids) - set(found))
            raise AssertionError(f"{client.user_id}: {missing} did not arrive within {timeout}s")
        response = await client.sync(timeout=1000)
        assert isinstance(response, SyncResponse), response
        room = response.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if event.event_id in event_ids:
                found[event.event_id] = event
    return [found[event_id] for event_id in event_ids]


async def upload_encrypted(client: AsyncClient, data: bytes, name: str) -> dict[str, Any]:
    """Encrypt and upload an attachment; returns the m.file content that carries its keys."""
    response, keys = await client.upload(
        io.BytesIO(data),
        content_type="application/octet-stream",
        filename=name,
        encrypt=True,
        filesize=len(data),
    )
    assert isinstance(response, UploadResponse), response
    assert keys is not None
    return {
        "msgtype": "m.file",
        "body": name,
        "file": {**keys, "url": response.content_uri, "mimetype": "text/plain"},
        "info": {"size": len(data), "mimetype": "text/plain"},
    }


def download(client: AsyncClient, mxc: str) -> bytes:
    """Fetch media through the authenticated endpoint (nio 0.26 only knows the
    legacy one, which Synapse refuses for new media)."""
    server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
    request = urllib.request.Request(
        f"{client.homeserver}/_matrix/client/v1/media/download/{server_name}/{media_id}",
        headers={"Authorization": f"Bearer {client.access_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def download_decrypted(client: AsyncClient, file_info: dict[str, Any]) -> bytes:
    ciphertext = download(client, file_info["url"])
    return decrypt_attachment(
        ciphertext, file_info["key"]["k"], file_info["hashes"]["sha256"], file_info["iv"]
    )
