"""The device tier on a real Synapse with lifetimes of seconds: expired
content is redacted on the clients, its media is gone from the server, and a
crash mid-sweep neither skips an event nor redacts one twice."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from nio import RedactionEvent
from signedjson.key import read_signing_keys
from signedjson.sign import sign_json
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict

from devtools.homeserver import Homeserver, audit_tier_settings
from synapse_police_policy.ops.retention_status import retention_status as status_of
from tests import e2ee, media_corpus
from tests.integration.test_media_remote import download
from tests.integration.test_media_types import media_rows, stored_files, upload
from tests.integration.test_retention_rooms import create, system_user, wait_for_system_user
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


def metric(hs: Homeserver, name: str, **labels: str) -> float:
    """A sample of the metrics listener, by name and labels (0 when absent)."""
    url = f"http://{hs.spec.bind_address}:{hs.spec.metrics_port}/_synapse/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return 0.0


def retention_status(hs: Homeserver) -> dict[str, str]:
    """``police-policy retention status`` (in this process; the first test runs
    the command itself): the value of each line by its label."""
    lines = status_of(yaml.safe_load(hs.config_path.read_text())).lines()
    return {line[:25].strip(): line[25:].strip() for line in lines}


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
                "synapse_police_policy.ops.cli",
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
        extra=audit_tier_settings(audit, purge_interval="2s"),
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


# --- with an allowed peer server (no module) ---------------------------------------

FEDERATED_DEVICE_S = 4


@pytest.fixture(scope="module")
def peer(start_homeserver) -> Homeserver:
    return start_homeserver("retention_peer", with_module=False, federation_address="127.0.0.8")


@pytest.fixture(scope="module")
def ours(start_homeserver, peer) -> Homeserver:
    return start_homeserver(
        "retention_ours",
        module_config={
            "federation": {"allowed_servers": [peer.server_name]},
            "retention": {
                "device_lifetime": f"{FEDERATED_DEVICE_S}s",
                "audit_lifetime": "10s",
                "sweep_interval": "1s",
            },
        },
        federation_address="127.0.0.9",
    )


def test_copies_of_other_servers_media_go_at_the_audit_tier(ours, peer, make_user):
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


def shared_room(ours: Homeserver, peer: Homeserver, alice, bob) -> str:
    """A room of ours that ``bob`` of the peer server joined (power 0)."""
    room_id = create(ours, alice.token)
    wait_for_system_user(ours, alice.token, room_id)
    status, body = ours.request(
        "POST",
        f"/_matrix/client/v3/rooms/{quote(room_id)}/invite",
        {"user_id": bob.user_id},
        token=alice.token,
    )
    assert status == 200, body

    def joined() -> bool:
        status, _ = peer.request(
            "POST",
            f"/_matrix/client/v3/join/{quote(room_id)}?server_name={quote(ours.server_name)}",
            {},
            token=bob.token,
        )
        return status == 200

    wait_for(joined, 30, "the peer's user could not join (the invite did not arrive)")
    wait_for(
        lambda: bool(
            ours.query(
                "SELECT 1 FROM local_current_membership AS m JOIN current_state_events AS c"
                " ON c.room_id = m.room_id WHERE c.room_id = ? AND c.type = 'm.room.member'"
                " AND c.state_key = ? AND c.membership = 'join'",
                (room_id, bob.user_id),
            )
        ),
        30,
        "our server did not see the peer user's join",
    )
    return room_id


def federation_put(sender: Homeserver, target: Homeserver, path: str, body: dict) -> tuple[int, Any]:
    """A federation request signed with ``sender``'s key, as its Synapse would sign it."""
    with (sender.spec.directory / "signing.key").open() as fh:
        [key] = read_signing_keys(fh)
    key_id = f"{key.alg}:{key.version}"
    signed = {
        "method": "PUT",
        "uri": path,
        "origin": sender.server_name,
        "destination": target.server_name,
        "content": body,
    }
    signature = sign_json(signed, sender.server_name, key)["signatures"][sender.server_name][key_id]
    request = urllib.request.Request(
        f"https://{target.server_name}{path}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={
            "Content-Type": "application/json",
            "Authorization": f'X-Matrix origin="{sender.server_name}",destination="{target.server_name}",'
            f'key="{key_id}",sig="{signature}"',
        },
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the federation listeners' certificates are self-signed
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def forged_redaction(ours: Homeserver, peer: Homeserver, sender: str, room_id: str, target: str) -> dict:
    """A redaction PDU by ``sender`` (a user of ``peer``), signed with the peer's
    key, built on our server's view of the room: what a peer server that does
    not check power (or a hostile one) sends. A peer's own client API refuses
    a powerless user's redaction of someone else's event."""
    [(version_id,)] = ours.query("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,))
    version = KNOWN_ROOM_VERSIONS[version_id]
    state = dict(
        ((kind, key), event_id)
        for kind, key, event_id in ours.query(
            "SELECT type, state_key, event_id FROM current_state_events WHERE room_id = ?", (room_id,)
        )
    )
    auth = [state[("m.room.power_levels", "")], state[("m.room.member", sender)]]
    if not version.msc4291_room_ids_as_hashes:
        auth.append(state[("m.room.create", "")])
    prev = [
        row[0]
        for row in ours.query("SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room_id,))
    ]
    [(depth,)] = ours.query("SELECT MAX(depth) FROM events WHERE room_id = ?", (room_id,))
    pdu = {
        "type": "m.room.redaction",
        "room_id": room_id,
        "sender": sender,
        "content": {"redacts": target},
        "redacts": target,
        "origin_server_ts": int(time.time() * 1000),
        "depth": int(depth) + 1,
        "prev_events": prev,
        "auth_events": auth,
    }
    if version.updated_redaction_rules:
        del pdu["redacts"]  # room version 11 on: in the content only
    with (peer.spec.directory / "signing.key").open() as fh:
        [key] = read_signing_keys(fh)
    add_hashes_and_signatures(version, pdu, peer.server_name, key)
    return pdu


def event_id_of(ours: Homeserver, room_id: str, pdu: dict) -> str:
    [(version_id,)] = ours.query("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,))
    return make_event_from_dict(pdu, KNOWN_ROOM_VERSIONS[version_id]).event_id


def stream_ordering(hs: Homeserver, event_id: str) -> int:
    [(position,)] = hs.query("SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,))
    return int(position)


def test_a_redaction_without_power_does_not_stop_the_sweep(ours, peer, make_user):
    alice, bob = make_user("alice", homeserver=ours), make_user("bob", homeserver=peer)
    room_id = shared_room(ours, peer, alice, bob)
    message = send_encrypted_looking(ours, alice.token, room_id)
    [(sent_at,)] = ours.query("SELECT origin_server_ts FROM events WHERE event_id = ?", (message,))

    pdu = forged_redaction(ours, peer, bob.user_id, room_id, message)
    forged = event_id_of(ours, room_id, pdu)
    status, body = federation_put(
        peer,
        ours,
        f"/_matrix/federation/v1/send/{uuid.uuid4().hex}",
        {"origin": peer.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": [pdu]},
    )
    assert status == 200 and body["pdus"] == {forged: {}}, body

    # Stored, yet not applied: bob may not redact alice's events.
    def stored() -> list:
        return ours.query("SELECT redacts, recheck FROM redactions WHERE event_id = ?", (forged,))

    wait_for(lambda: bool(stored()), 30, "the forged redaction was not stored")
    assert stored() == [(message, True)]
    status, event = ours.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/event/{quote(message)}", token=alice.token
    )
    if time.time() * 1000 < sent_at + FEDERATED_DEVICE_S * 1000 - 500:
        # Still within the device lifetime: Synapse hands the event out, unredacted. (On a
        # loaded machine the lifetime may be over by now, and Synapse hands out nothing.)
        assert status == 200 and "ciphertext" in event["content"], (status, event)

    wait_for(lambda: message in system_redactions(ours), 60, "the sweep passed over the event")
    [(by_system,)] = ours.query(
        "SELECT r.event_id FROM redactions AS r JOIN events AS e ON e.event_id = r.event_id"
        " WHERE r.redacts = ? AND e.sender = ?",
        (message, system_user(ours)),
    )
    assert stream_ordering(ours, forged) < stream_ordering(ours, by_system), "the forged redaction came first"
    assert retention_status(ours)["redactions to retry"].startswith("0")


def set_power(hs: Homeserver, token: str, room_id: str, changes: dict[str, int]) -> None:
    status, levels = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels/", token=token
    )
    assert status == 200, levels
    levels["users"] = {**levels.get("users", {}), **changes}
    status, body = hs.request(
        "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels/", levels, token=token
    )
    assert status == 200, body


def power_of(hs: Homeserver, token: str, room_id: str, user_id: str) -> int:
    status, levels = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels/", token=token
    )
    assert status == 200, levels
    return levels["users"].get(user_id, levels.get("users_default", 0))


def retention_decisions(hs: Homeserver, event_id: str) -> list[dict]:
    lines = [
        json.loads(line[line.index("{") :])
        for line in hs.log_path.read_text().splitlines()
        if " - synapse_police_policy.decisions - " in line
    ]
    return [
        entry for entry in lines if entry.get("rule") == "retention.sweep" and entry.get("event") == event_id
    ]


def test_a_failed_redaction_is_retried_until_it_takes_effect(ours, peer, make_user):
    """A peer server's user with more power than the system user (granted by
    the room's creator) takes the system user's power away over federation:
    Synapse refuses its redactions, the sweep retries with back-off, shows the
    event in `retention status` and the metric, logs it once, and redacts it
    once the power is back."""
    alice, bob = make_user("alice", homeserver=ours), make_user("bob", homeserver=peer)
    room_id = shared_room(ours, peer, alice, bob)
    set_power(ours, alice.token, room_id, {bob.user_id: 150})
    wait_for(
        lambda: power_of(peer, bob.token, room_id, bob.user_id) == 150,
        30,
        "the peer did not see the new levels",
    )
    set_power(peer, bob.token, room_id, {system_user(ours): 0})
    wait_for(
        lambda: power_of(ours, alice.token, room_id, system_user(ours)) == 0,
        30,
        "our server did not take the demotion",
    )
    failed_before = metric(ours, "police_policy_retention_failures_total", kind="forbidden")

    message = send_encrypted_looking(ours, alice.token, room_id)

    def retry_row() -> tuple[str, int, str] | None:
        rows = ours.query(
            "SELECT kind, attempts, error FROM police_policy_retention_retries WHERE event_id = ?", (message,)
        )
        return rows[0] if rows else None

    wait_for(
        lambda: (retry_row() or ("", 0, ""))[1] >= 2, 60, "the sweep did not try and retry the redaction"
    )
    assert message not in system_redactions(ours)
    kind, attempts, error = retry_row()
    assert kind == "forbidden"
    assert (
        metric(ours, "police_policy_retention_failures_total", kind="forbidden") >= failed_before + attempts
    )
    assert "permission" in error
    # (the room's superseded invites wait for the same reason)
    status = retention_status(ours)["redactions to retry"]
    assert re.fullmatch(r"(\d+) \(forbidden \1\); oldest \d+s past the device lifetime", status), status
    assert metric(ours, "police_policy_retention_retries", kind="forbidden") >= 1
    [failed] = retention_decisions(ours, message)
    assert (failed["decision"], failed["kind"], failed["room"]) == ("redaction_failed", "forbidden", room_id)
    assert failed["user"] == system_user(ours) and failed["attempts"] == 1

    set_power(peer, bob.token, room_id, {system_user(ours): 100})
    wait_for(lambda: message in system_redactions(ours), 60, "the retried redaction never took effect")
    assert ours.query(
        "SELECT COUNT(*) FROM police_policy_retention_retries WHERE event_id = ?", (message,)
    ) == [(0,)]
    wait_for(lambda: len(retention_decisions(ours, message)) == 2, 10, "the recovery was not logged")
    decisions = retention_decisions(ours, message)
    assert [entry["decision"] for entry in decisions] == ["redaction_failed", "redacted_after_retry"]
    assert decisions[1]["attempts"] >= 3
    wait_for(
        lambda: retention_status(ours)["redactions to retry"] == "0",
        30,
        "other retries of the room did not end",
    )
