"""The device tier on a real Synapse with lifetimes of seconds: expired
content is redacted on the clients, its media is gone from the server, and a
crash mid-sweep neither skips an event nor redacts one twice."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
import uuid
from urllib.parse import quote

import pytest
from nio import RedactionEvent

from devtools.homeserver import Homeserver
from tests import e2ee, media_corpus
from tests.integration.test_media_remote import download
from tests.integration.test_media_types import media_rows, stored_files, upload
from tests.integration.test_retention_rooms import create, wait_for_system_user
from tests.waiting import wait_for

DEVICE_S = 4


@pytest.fixture(scope="module")
def short_lived(start_homeserver) -> Homeserver:
    return start_homeserver(
        "retention",
        module_config={
            "retention": {"device_lifetime": f"{DEVICE_S}s", "audit_lifetime": "60s", "sweep_interval": "1s"}
        },
    )


def send_encrypted_looking(hs: Homeserver, token: str, room_id: str) -> str:
    """An m.room.encrypted event as a client would send it (the server cannot read it anyway)."""
    content = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": uuid.uuid4().hex * 4,
        "device_id": "X",
        "sender_key": "k",
        "session_id": "s",
    }
    status, body = hs.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.encrypted/{uuid.uuid4().hex}",
        content,
        token=token,
    )
    assert status == 200, body
    return body["event_id"]


def system_redactions(hs: Homeserver) -> dict[str, int]:
    """event ID -> number of redactions of it sent by the system user."""
    rows = hs.query(
        "SELECT r.redacts, COUNT(*) FROM redactions AS r JOIN events AS e ON e.event_id = r.event_id"
        " WHERE e.sender = ? GROUP BY r.redacts",
        (hs.user_id("policy"),),
    )
    return {row[0]: int(row[1]) for row in rows}


def metric(hs: Homeserver, name: str) -> float:
    url = f"http://127.0.0.1:{hs.spec.metrics_port}/_synapse/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_expired_content_leaves_the_clients_and_the_media_store(short_lived, make_user, tmp_path):
    hs = short_lived
    alice, bob = make_user("alice", homeserver=hs), make_user("bob", homeserver=hs)
    alice_client = await e2ee.login(hs, alice.localpart, alice.password, tmp_path / "alice")
    bob_client = await e2ee.login(hs, bob.localpart, bob.password, tmp_path / "bob")
    try:
        room_id = await e2ee.create_room(alice_client)
        wait_for_system_user(hs, alice.token, room_id)
        await e2ee.invite_and_join(alice_client, bob_client, room_id)
        files_before = stored_files(hs)
        text_id = await e2ee.send(alice_client, room_id, {"msgtype": "m.text", "body": "Zugriff 07:40"})
        photo = media_corpus.jpeg()
        file_id = await e2ee.send(
            alice_client, room_id, await e2ee.upload_encrypted(alice_client, photo, "p.jpg")
        )
        text, _ = await e2ee.receive(bob_client, room_id, text_id, file_id)
        assert text.body == "Zugriff 07:40"
        assert stored_files(hs) - files_before, "the attachment is stored"

        redacted: set[str] = set()

        def note(room, event):
            redacted.add(event.redacts)

        bob_client.add_event_callback(note, RedactionEvent)
        await e2ee.sync_until(bob_client, lambda: {text_id, file_id} <= redacted, timeout=30)

        # Past the room's max_lifetime Synapse no longer hands the events out at all.
        for event_id in (text_id, file_id):
            status, _ = hs.request(
                "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(event_id)}", token=bob.token
            )
            assert status == 404
        wait_for(lambda: media_rows(hs, alice.user_id) == 0, 15, "the attachment's row is still there")
        assert not (stored_files(hs) - files_before), "the attachment's file is still there"
        counts = system_redactions(hs)
        assert (counts[text_id], counts[file_id]) == (1, 1)

        # The operator's view says the same.
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "synapse_police_policy.cli",
                "retention",
                "status",
                "-c",
                str(hs.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert re.search(r"^expired, not yet swept +0$", status.stdout, re.M), status.stdout
        assert int(re.search(r"^events redacted \(total\) +(\d+)$", status.stdout, re.M).group(1)) >= 2
        assert re.search(r"^media past device tier +0$", status.stdout, re.M), status.stdout
    finally:
        await alice_client.close()
        await bob_client.close()


def test_sigkill_mid_sweep_neither_skips_nor_repeats(start_homeserver, make_user):
    hs = start_homeserver(
        "retention_crash",
        module_config={
            "retention": {"device_lifetime": "3s", "audit_lifetime": "60s", "sweep_interval": "2s"}
        },
    )
    alice = make_user("alice", homeserver=hs)
    room_id = create(hs, alice.token)
    wait_for_system_user(hs, alice.token, room_id)
    sent = [send_encrypted_looking(hs, alice.token, room_id) for _ in range(400)]

    wait_for(lambda: len(system_redactions(hs)) >= 20, 60, "the sweep did not start")
    assert len(system_redactions(hs)) < len(sent), "the sweep finished before the kill; send more events"
    assert hs.process is not None
    hs.process.kill()
    hs.process.wait()
    hs.start()

    wait_for(lambda: set(sent) <= set(system_redactions(hs)), 120, "not every expired event was redacted")
    counts = system_redactions(hs)
    assert {event_id: counts[event_id] for event_id in sent if counts[event_id] != 1} == {}


def test_audit_tier_purges_the_events_from_the_database(start_homeserver, make_user):
    """Synapse's own purge jobs, configured for the audit tier (as
    police-policy check-config demands), delete the events, redacted
    originals included."""
    audit = "12s"
    hs = start_homeserver(
        "retention_audit",
        module_config={
            "retention": {"device_lifetime": "3s", "audit_lifetime": audit, "sweep_interval": "1s"}
        },
        extra={
            "retention": {
                "enabled": True,
                "default_policy": {"max_lifetime": audit},
                "allowed_lifetime_min": audit,
                "allowed_lifetime_max": audit,
                "purge_jobs": [{"interval": "2s"}],
            },
            "redaction_retention_period": audit,
        },
    )
    alice = make_user("alice", homeserver=hs)
    room_id = create(hs, alice.token)
    wait_for_system_user(hs, alice.token, room_id)
    sent = [send_encrypted_looking(hs, alice.token, room_id) for _ in range(5)]
    wait_for(lambda: set(sent) <= set(system_redactions(hs)), 30, "the device tier did not redact")

    def remaining() -> int:
        marks = ", ".join("?" for _ in sent)
        return hs.query(f"SELECT COUNT(*) FROM event_json WHERE event_id IN ({marks})", tuple(sent))[0][0]

    assert remaining() == len(sent), "redacted originals stay until the audit tier"
    wait_for(lambda: remaining() == 0, 60, "the audit tier did not purge the events")
    marks = ", ".join("?" for _ in sent)
    assert hs.query(f"SELECT COUNT(*) FROM events WHERE event_id IN ({marks})", tuple(sent))[0][0] == 0
    assert metric(hs, "police_policy_retention_rooms_purged_total") >= 1


def test_copies_of_other_servers_media_go_at_the_audit_tier(start_homeserver, make_user):
    peer = start_homeserver("retention_peer", with_module=False, federation_address="127.0.0.8")
    ours = start_homeserver(
        "retention_ours",
        module_config={
            "federation": {"allowed_servers": [peer.server_name]},
            "retention": {"device_lifetime": "2s", "audit_lifetime": "6s", "sweep_interval": "1s"},
        },
        federation_address="127.0.0.9",
    )
    reader, sender = make_user("officer", homeserver=ours), make_user("officer", homeserver=peer)
    photo = media_corpus.jpeg()
    status, body = upload(peer, sender.token, photo, "image/jpeg", "photo.jpg")
    assert status == 200, body
    media_id = body["content_uri"].rsplit("/", 1)[1]
    assert download(ours, reader.token, body["content_uri"]) == (200, photo)

    def cached() -> int:
        return ours.query("SELECT COUNT(*) FROM remote_media_cache WHERE media_id = ?", (media_id,))[0][0]

    assert cached() == 1
    remote_files = ours.spec.directory / "media_store" / "remote_content"
    assert any(path.is_file() for path in remote_files.rglob("*"))
    wait_for(lambda: cached() == 0, 30, "the cached copy outlived the audit tier")
    assert not any(path.is_file() for path in remote_files.rglob("*"))
