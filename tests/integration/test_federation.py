"""Closed federation with three real homeservers on this machine: ours (with
the module), an allowed peer and a foreign server, each on its own loopback
address with a TLS federation listener. Every scenario runs twice: with
Synapse's federation_domain_whitelist set on our server, and without it, so
the module has to hold on its own. Our server has the peer as its key notary
in both (as check-config asks): it never asks the foreign server itself.

The last tests play a hostile foreign server at the edge: signed federation
requests of every kind (profile, devices, keys, directory, to-device and other
EDUs, state, events, media, joins), the same through the foreign server's own
client API, and our users' lookups towards it; the foreign server's access log
shows whether our server ever sent it anything."""

from __future__ import annotations

import itertools
import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from nio import RoomMessageText
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
)
from signedjson.sign import sign_json

from devtools.homeserver import Homeserver, send
from tests import e2ee, media_corpus
from tests.conftest import Account
from tests.integration.test_canary import server_bytes
from tests.integration.test_decision_log import DECISION_LOGGER, decisions_for
from tests.integration.test_media_types import upload
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def peer(start_homeserver) -> Homeserver:
    return start_homeserver("peer", with_module=False, federation_address="127.0.0.3")


@pytest.fixture(scope="module")
def foreign(start_homeserver) -> Homeserver:
    return start_homeserver("foreign", with_module=False, federation_address="127.0.0.4")


def notary(server: Homeserver) -> dict:
    """A ``trusted_key_servers`` entry for ``server``, pinned to its signing key."""
    with (server.spec.directory / "signing.key").open() as fh:
        keys = read_signing_keys(fh)
    return {
        "server_name": server.server_name,
        "verify_keys": {
            f"{key.alg}:{key.version}": encode_verify_key_base64(get_verify_key(key)) for key in keys
        },
    }


@pytest.fixture(scope="module", params=["with_whitelist", "module_alone"])
def ours(request, start_homeserver, peer) -> Homeserver:
    module_config = {"federation": {"allowed_servers": [peer.server_name]}}
    key_servers = {"trusted_key_servers": [notary(peer)]}
    if request.param == "with_whitelist":
        return start_homeserver(
            "ours_fed", module_config=module_config, federation_address="127.0.0.2", extra=key_servers
        )
    return start_homeserver(
        "ours_alone",
        module_config=module_config,
        federation_address="127.0.0.5",
        extra={**key_servers, "federation_domain_whitelist": None},
    )


def create_room(hs: Homeserver, user: Account, **request) -> str:
    status, body = hs.request("POST", "/_matrix/client/v3/createRoom", request, token=user.token)
    assert status == 200, body
    return body["room_id"]


def invite(hs: Homeserver, user: Account, room_id: str, invitee: str) -> tuple[int, dict]:
    return hs.request(
        "POST", f"/_matrix/client/v3/rooms/{room_id}/invite", {"user_id": invitee}, token=user.token
    )


def join(hs: Homeserver, user: Account, room_id: str, via: str | None = None) -> tuple[int, dict]:
    query = f"?server_name={urllib.parse.quote(via)}" if via else ""
    return hs.request("POST", f"/_matrix/client/v3/join/{room_id}{query}", {}, token=user.token)


def send_text(hs: Homeserver, user: Account, room_id: str, body: str) -> str:
    status, answer = hs.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
        {"msgtype": "m.text", "body": body},
        token=user.token,
    )
    assert status == 200, answer
    return answer["event_id"]


def members(hs: Homeserver, user: Account, room_id: str) -> dict[str, str]:
    status, body = hs.request("GET", f"/_matrix/client/v3/rooms/{room_id}/members", token=user.token)
    assert status == 200, body
    return {event["state_key"]: event["content"]["membership"] for event in body["chunk"]}


def invited_rooms(hs: Homeserver, user: Account) -> set[str]:
    status, body = hs.request("GET", "/_matrix/client/v3/sync?timeout=0", token=user.token)
    assert status == 200, body
    return set(body.get("rooms", {}).get("invite", {}))


async def test_allowed_peer_e2ee_both_directions(make_user, ours, peer, tmp_path):
    alice, bob = make_user("alice", homeserver=ours), make_user("bob", homeserver=peer)
    alice_client = await e2ee.login(ours, alice.localpart, alice.password, tmp_path / "alice")
    bob_client = await e2ee.login(peer, bob.localpart, bob.password, tmp_path / "bob")
    try:
        for host, guest in ((alice_client, bob_client), (bob_client, alice_client)):
            encryption = {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
            room_id = await e2ee.create_room(host, initial_state=[encryption])
            await e2ee.invite_and_join(host, guest, room_id)
            for sender, receiver in ((host, guest), (guest, host)):
                text = f"Lagebild {uuid.uuid4().hex}"
                await e2ee.sync_until(
                    sender, lambda s=sender, r=receiver, room=room_id: r.user_id in s.rooms[room].users
                )
                event_id = await e2ee.send(sender, room_id, {"msgtype": "m.text", "body": text})
                [received] = await e2ee.receive(receiver, room_id, event_id, timeout=60)
                assert isinstance(received, RoomMessageText), received
                assert received.body == text
    finally:
        await alice_client.close()
        await bob_client.close()


def test_invites_to_foreign_users_are_refused(make_user, ours, foreign):
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    room_id = create_room(ours, alice)
    status, body = invite(ours, alice, room_id, carol.user_id)
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert foreign.server_name in body["error"]
    [entry] = [e for e in decisions_for(ours, alice.user_id) if e["rule"] == "federation.invite"]
    assert entry["room"] == room_id


def test_invites_from_foreign_users_never_arrive(make_user, ours, foreign):
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    room_id = create_room(foreign, carol)
    status, body = invite(foreign, carol, room_id, alice.user_id)
    assert status != 200, body
    assert room_id not in invited_rooms(ours, alice)


def test_foreign_users_cannot_join_our_rooms(make_user, ours, foreign):
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    room_id = create_room(ours, alice)
    status, body = join(foreign, carol, room_id, via=ours.server_name)
    assert status != 200, body
    assert carol.user_id not in members(ours, alice, room_id)


def test_our_users_cannot_join_foreign_rooms(make_user, ours, foreign):
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    room_id = create_room(foreign, carol, preset="public_chat")
    status, body = join(ours, alice, room_id, via=foreign.server_name)
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"


def test_our_users_cannot_knock_on_rooms_this_server_is_not_in(make_user, ours, peer):
    """Even on an allowed peer: the members cannot be checked before the knock
    (with our user's name) reaches them all."""
    alice, bob = make_user("alice", homeserver=ours), make_user("bob", homeserver=peer)
    room_id = create_room(
        peer,
        bob,
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    )
    query = f"?server_name={urllib.parse.quote(peer.server_name)}"
    status, body = ours.request("POST", f"/_matrix/client/v3/knock/{room_id}{query}", {}, token=alice.token)
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN"
    assert "Cannot knock on a room this server is not part of" in body["error"]
    assert any(
        e["rule"] == "federation.join" and e["room"] == room_id for e in decisions_for(ours, alice.user_id)
    )
    assert alice.user_id not in members(peer, bob, room_id), "the knock must not have been sent"


def test_remote_join_refusal_names_the_server(make_user, ours, foreign):
    """The module answers before Synapse's whitelist would: its message, passed
    on by the foreign server to its user, names the server."""
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    room_id = create_room(ours, alice)
    status, body = join(foreign, carol, room_id, via=ours.server_name)
    assert status == 403, body
    assert f"server '{foreign.server_name}' is not an allowed police homeserver" in body["error"], body
    assert any(entry["server"] == foreign.server_name for entry in federation_refusals(ours))


def test_our_users_cannot_join_a_peer_room_with_foreign_members(make_user, ours, peer, foreign):
    alice = make_user("alice", homeserver=ours)
    bob, carol = make_user("bob", homeserver=peer), make_user("carol", homeserver=foreign)
    room_id = create_room(peer, bob)
    assert invite(peer, bob, room_id, carol.user_id)[0] == 200
    assert join(foreign, carol, room_id, via=peer.server_name)[0] == 200
    assert invite(peer, bob, room_id, alice.user_id)[0] == 200
    wait_for(lambda: room_id in invited_rooms(ours, alice), what="alice's invite")

    join(ours, alice, room_id, via=peer.server_name)
    # The join is refused, or undone at once: alice does not stay in the room.
    wait_for(lambda: members(peer, bob, room_id).get(alice.user_id) != "join", what="alice not a member")
    assert any(e["rule"] == "federation.join" for e in decisions_for(ours, alice.user_id))


def test_a_foreign_member_who_joined_later_keeps_our_other_users_out(make_user, ours, peer, foreign):
    """Our server is in the peer's room; a foreign user joins after that (the
    module drops that join at the boundary but remembers it); another of our
    users is then refused."""
    first, second = make_user("first", homeserver=ours), make_user("second", homeserver=ours)
    bob, carol = make_user("bob", homeserver=peer), make_user("carol", homeserver=foreign)
    room_id = create_room(peer, bob)
    for user in (first, second):
        assert invite(peer, bob, room_id, user.user_id)[0] == 200
    wait_for(lambda: room_id in invited_rooms(ours, first), what="the first invite")
    assert join(ours, first, room_id, via=peer.server_name)[0] == 200
    assert invite(peer, bob, room_id, carol.user_id)[0] == 200
    assert join(foreign, carol, room_id, via=peer.server_name)[0] == 200
    wait_for(
        lambda: any(e["rule"] == "federation.event" for e in decisions_for(ours, carol.user_id, timeout=0)),
        what="carol's join to reach our server",
    )

    status, body = join(ours, second, room_id)
    assert status == 403, body
    assert foreign.server_name in body["error"]

    # Once the peer removes the foreign member, our users may join again.
    status, body = peer.request(
        "POST", f"/_matrix/client/v3/rooms/{room_id}/kick", {"user_id": carol.user_id}, token=bob.token
    )
    assert status == 200, body
    wait_for(lambda: join(ours, second, room_id)[0] == 200, what="second's join after the kick")


def test_foreign_messages_relayed_by_the_peer_never_reach_our_users(make_user, ours, peer, foreign, postgres):
    alice = make_user("alice", homeserver=ours)
    bob, carol = make_user("bob", homeserver=peer), make_user("carol", homeserver=foreign)
    room_id = create_room(peer, bob)
    assert invite(peer, bob, room_id, alice.user_id)[0] == 200
    wait_for(lambda: room_id in invited_rooms(ours, alice), what="alice's invite")
    status, body = join(ours, alice, room_id, via=peer.server_name)
    assert status == 200, body
    # Only now does a foreign user join the peer's room and talk.
    assert invite(peer, bob, room_id, carol.user_id)[0] == 200
    assert join(foreign, carol, room_id, via=peer.server_name)[0] == 200
    foreign_text = f"FOREIGN-{uuid.uuid4().hex}"
    foreign_ids = {send_text(foreign, carol, room_id, foreign_text) for _ in range(2)}
    wait_for(lambda: _peer_has(peer, bob, room_id, foreign_ids), what="the peer to receive carol's messages")
    marker = send_text(peer, bob, room_id, f"after {uuid.uuid4().hex}")

    # The room keeps working: bob's later message, which refers to carol's,
    # arrives, so the foreign events were seen and dropped at the boundary.
    seen: set[str] = set()
    since = None
    deadline = time.monotonic() + 60
    while marker not in seen:
        assert time.monotonic() < deadline, "bob's message after carol's never reached alice"
        query = f"?timeout=1000&since={since}" if since else "?timeout=0"
        status, body = ours.request("GET", f"/_matrix/client/v3/sync{query}", token=alice.token)
        assert status == 200
        since = body["next_batch"]
        room = body.get("rooms", {}).get("join", {}).get(room_id, {})
        seen |= {event["event_id"] for event in room.get("timeline", {}).get("events", [])}
        assert foreign_text not in str(body)
    assert not foreign_ids & seen
    dropped = [e["event"] for e in decisions_for(ours, carol.user_id) if e["rule"] == "federation.event"]
    assert foreign_ids <= set(dropped), "every foreign event is a logged denial"
    assert len(dropped) == len(set(dropped)), "each dropped event is logged once"
    database, _ = server_bytes(ours, postgres)
    assert foreign_text.encode() not in database, "foreign content must be dropped, not stored"


def _peer_has(peer: Homeserver, bob: Account, room_id: str, event_ids: set[str]) -> bool:
    return all(
        peer.request("GET", f"/_matrix/client/v3/rooms/{room_id}/event/{event_id}", token=bob.token)[0] == 200
        for event_id in event_ids
    )


def test_foreign_media_is_never_fetched(make_user, ours, foreign):
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    status, body = foreign.request(
        "POST", "/_matrix/media/v3/upload?filename=x.bin", {"not": "an image"}, token=carol.token
    )
    assert status == 200, body
    media_id = body["content_uri"].rsplit("/", 1)[1]
    for path in (
        f"/_matrix/client/v1/media/download/{foreign.server_name}/{media_id}",
        f"/_matrix/client/v1/media/thumbnail/{foreign.server_name}/{media_id}?width=32&height=32",
    ):
        status, body = ours.request("GET", path, token=alice.token)
        assert status == 403, body
        if ours.spec.extra.get("federation_domain_whitelist", "unset") is None:
            assert foreign.server_name in body["error"]
    requests_for_it = [
        line for line in foreign.log_path.read_text().splitlines() if media_id in line and "GET" in line
    ]
    assert requests_for_it == [], "our server must not have asked for the file"


# --- the edge: what a foreign server gets, and what our server sends it ----------

OFFICER_NAME = "KOK Meier, SEK Einsatzleitung"
REFUSED = "is not an allowed police homeserver"
_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE  # the federation listeners' certificates are self-signed


def federation_request(
    sender: Homeserver, target: Homeserver, method: str, path: str, body: dict | None = None
) -> tuple[int, Any]:
    """A federation request signed with ``sender``'s signing key, as its Synapse
    would sign it, sent straight to ``target``'s federation listener."""
    with (sender.spec.directory / "signing.key").open() as fh:
        [key] = read_signing_keys(fh)
    key_id = f"{key.alg}:{key.version}"
    signed: dict[str, Any] = {
        "method": method,
        "uri": path,
        "origin": sender.server_name,
        "destination": target.server_name,
    }
    if body is not None:
        signed["content"] = body
    signature = sign_json(signed, sender.server_name, key)["signatures"][sender.server_name][key_id]
    request = urllib.request.Request(
        f"https://{target.server_name}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": f'X-Matrix origin="{sender.server_name}",destination="{target.server_name}",'
            f'key="{key_id}",sig="{signature}"',
        },
    )
    return send(request, context=_TLS)


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def to_device_transaction(origin: Homeserver, sender: str, target: Account, marker: str, **edus: Any) -> dict:
    """A federation transaction carrying a verification request for ``target``'s
    device (``marker`` as its transaction ID), plus any further ``edus``."""
    now = int(time.time() * 1000)
    request = {"from_device": "EDGE", "methods": ["m.sas.v1"], "timestamp": now, "transaction_id": marker}
    to_device = {
        "sender": sender,
        "type": "m.key.verification.request",
        "message_id": marker,
        "messages": {target.user_id: {target.device_id: request}},
    }
    return {
        "origin": origin.server_name,
        "origin_server_ts": now,
        "pdus": [],
        "edus": [{"edu_type": "m.direct_to_device", "content": to_device}]
        + [{"edu_type": kind, "content": content} for kind, content in edus.items()],
    }


def to_device_senders(hs: Homeserver, user: Account, until: str | None, timeout: float = 60) -> set[str]:
    """Senders of the to-device messages ``user``'s /sync hands out: until one
    carries the marker ``until`` (else one initial sync)."""
    senders: set[str] = set()
    since = None
    deadline = time.monotonic() + timeout
    while True:
        query = f"?timeout=1000&since={since}" if since else "?timeout=0"
        status, body = hs.request("GET", f"/_matrix/client/v3/sync{query}", token=user.token)
        assert status == 200, body
        since = body["next_batch"]
        events = body.get("to_device", {}).get("events", [])
        senders |= {event["sender"] for event in events}
        if until is None or any(event["content"].get("transaction_id") == until for event in events):
            return senders
        assert time.monotonic() < deadline, f"the to-device message {until} never reached {user.user_id}"


def set_display_name(hs: Homeserver, user: Account, name: str) -> None:
    status, body = hs.request(
        "PUT",
        f"/_matrix/client/v3/profile/{q(user.user_id)}/displayname",
        {"displayname": name},
        token=user.token,
    )
    assert status == 200, body


def federation_refusals(hs: Homeserver, rule: str = "federation.origin") -> list[dict]:
    """The decision log's lines of ``rule``, each with its time ("at")."""
    entries = []
    for line in hs.log_path.read_text().splitlines():
        if f" - {DECISION_LOGGER} - " in line:
            entry = json.loads(line[line.index("{") :])
            if entry.get("rule") == rule:
                entry["at"] = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                entries.append(entry)
    return entries


def denial_count(hs: Homeserver, rule: str) -> float:
    """``police_policy_denials_total`` of ``rule`` on ``hs``'s metrics listener."""
    url = f"http://{hs.spec.bind_address}:{hs.spec.metrics_port}/_synapse/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^police_policy_denials_total\{{rule="{re.escape(rule)}",server_name="[^"]+"\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def served_to(hs: Homeserver, server_name: str) -> list[str]:
    """Lines of ``hs``'s access log for requests signed by ``server_name``
    (Synapse logs each request it serves, naming the authenticated requester)."""
    return [
        line
        for line in hs.log_path.read_text().splitlines()
        if " - synapse.access." in line and f"{{{server_name}}} Processed request" in line
    ]


def refused_transactions_with_edus(sender: Homeserver, destination: str, offset: int) -> int:
    """Transactions with EDUs that ``sender`` sent to ``destination`` and got a
    403 for, as its log (from byte ``offset``) tells."""
    text = sender.log_path.read_bytes()[offset:].decode("utf8", "replace")
    tx = rf"TX \[{re.escape(destination)}\] \{{(\d+)\}}"
    with_edus = set(re.findall(tx + r" Sending transaction \[\d+\], \(PDUs: \d+, EDUs: [1-9]", text))
    refused = set(re.findall(tx + " got 403 response", text))
    return len(with_edus & refused)


def officer_with_room(make_user, ours: Homeserver) -> tuple[Account, str, str, str]:
    """An officer whose name, device (with keys), control room address, room
    and event a foreign server would like to learn: (account, alias, room ID, event ID)."""
    alice = make_user("alice", homeserver=ours)
    set_display_name(ours, alice, OFFICER_NAME)
    signing_key = generate_signing_key(alice.device_id)
    device_keys = {
        "user_id": alice.user_id,
        "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{alice.device_id}": "A" * 43,
            f"ed25519:{alice.device_id}": encode_verify_key_base64(get_verify_key(signing_key)),
        },
    }
    status, body = ours.request(
        "POST",
        "/_matrix/client/v3/keys/upload",
        {"device_keys": sign_json(device_keys, alice.user_id, signing_key)},
        token=alice.token,
    )
    assert status == 200, body
    localpart = f"leitstelle-{uuid.uuid4().hex[:8]}"
    room_id = create_room(ours, alice, room_alias_name=localpart)
    status, body = ours.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/state/m.room.name/",
        {"name": "Leitstelle"},
        token=alice.token,
    )
    assert status == 200, body
    return alice, f"#{localpart}:{ours.server_name}", room_id, body["event_id"]


def test_a_foreign_server_is_refused_at_the_edge(make_user, ours, peer, foreign):
    """Every kind of federation request, signed by the foreign server, gets the
    module's 403 before any handler runs; the same requests from the peer are
    answered (so the refusal is the policy, not a broken request)."""
    alice, alias, room_id, event_id = officer_with_room(make_user, ours)
    carol = make_user("carol", homeserver=foreign)
    bob = make_user("bob", homeserver=peer)
    status, body = upload(ours, alice.token, media_corpus.jpeg(), "image/jpeg", "lage.jpg")
    assert status == 200, body
    media_id = body["content_uri"].rsplit("/", 1)[1]
    v1 = "/_matrix/federation/v1"
    queries = {
        "profile": ("GET", f"{v1}/query/profile?user_id={q(alice.user_id)}", None),
        "directory": ("GET", f"{v1}/query/directory?room_alias={q(alias)}", None),
        "devices": ("GET", f"{v1}/user/devices/{q(alice.user_id)}", None),
        "media": ("GET", f"{v1}/media/download/{media_id}", None),
    }
    further = {
        "keys query": ("POST", f"{v1}/user/keys/query", {"device_keys": {alice.user_id: []}}),
        "keys claim": (
            "POST",
            f"{v1}/user/keys/claim",
            {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}},
        ),
        "state": ("GET", f"{v1}/state/{q(room_id)}?event_id={q(event_id)}", None),
        "state ids": ("GET", f"{v1}/state_ids/{q(room_id)}?event_id={q(event_id)}", None),
        "event": ("GET", f"{v1}/event/{q(event_id)}", None),
        "backfill": ("GET", f"{v1}/backfill/{q(room_id)}?v={q(event_id)}&limit=10", None),
        "make_join": ("GET", f"{v1}/make_join/{q(room_id)}/{q(carol.user_id)}?ver=10", None),
        "hierarchy": ("GET", f"{v1}/hierarchy/{q(room_id)}", None),
    }
    foreign_marker, peer_marker = f"foreign-{uuid.uuid4().hex}", f"peer-{uuid.uuid4().hex}"
    edus = {
        "m.typing": {"room_id": room_id, "user_id": carol.user_id, "typing": True},
        "m.presence": {"push": [{"user_id": carol.user_id, "presence": "online", "last_active_ago": 0}]},
        "m.receipt": {room_id: {"m.read": {carol.user_id: {"event_ids": [event_id], "data": {"ts": 1}}}}},
        "m.device_list_update": {
            "user_id": carol.user_id,
            "device_id": "EDGE",
            "stream_id": 1,
            "prev_id": [],
        },
    }
    sends = {
        "to-device and other EDUs": (
            "PUT",
            f"{v1}/send/{uuid.uuid4().hex}",
            to_device_transaction(foreign, carol.user_id, alice, foreign_marker, **edus),
        ),
    }
    counted_before = denial_count(ours, "federation.origin")

    for what, (method, path, body) in {**queries, **further, **sends}.items():
        status, answer = federation_request(foreign, ours, method, path, body)
        assert status == 403, (what, answer)
        assert answer["errcode"] == "M_FORBIDDEN", (what, answer)
        assert f"server '{foreign.server_name}' {REFUSED}" in answer["error"], (what, answer)
        assert OFFICER_NAME not in str(answer) and alice.device_id not in str(answer), what

    # The peer, asking the same, gets the answers: the checks above could fail.
    answers = {what: federation_request(peer, ours, *request) for what, request in queries.items()}
    assert {what: status for what, (status, _) in answers.items()} == dict.fromkeys(queries, 200), answers
    assert answers["profile"][1]["displayname"] == OFFICER_NAME
    assert answers["directory"][1]["room_id"] == room_id
    assert alice.device_id in {device["device_id"] for device in answers["devices"][1]["devices"]}
    status, answer = federation_request(
        peer,
        ours,
        "PUT",
        f"{v1}/send/{uuid.uuid4().hex}",
        to_device_transaction(peer, bob.user_id, alice, peer_marker),
    )
    assert status == 200, answer

    # The peer's message reached alice's /sync; the foreign one never did.
    assert carol.user_id not in to_device_senders(ours, alice, until=peer_marker)

    # Counted every time, logged once per server and minute.
    refused = len(queries) + len(further) + len(sends)
    assert denial_count(ours, "federation.origin") >= counted_before + refused
    logged = [entry["at"] for entry in federation_refusals(ours) if entry["server"] == foreign.server_name]
    assert logged, "the refusals are in the decision log"
    assert all(later - earlier >= 59 for earlier, later in itertools.pairwise(logged)), logged


def test_the_foreign_servers_users_learn_nothing_through_their_server(make_user, ours, foreign):
    """The foreign server's own Synapse asks on its users' behalf (real signed
    requests): profile, keys (device IDs), the control room's address, and a
    verification request to the officer's phone."""
    alice, alias, _, _ = officer_with_room(make_user, ours)
    carol = make_user("carol", homeserver=foreign)

    status, body = foreign.request("GET", f"/_matrix/client/v3/profile/{q(alice.user_id)}", token=carol.token)
    assert status == 403, body
    assert OFFICER_NAME not in str(body)

    status, body = foreign.request(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {alice.user_id: []}}, token=carol.token
    )
    assert status == 200, body
    assert not body["device_keys"].get(alice.user_id), body
    assert ours.server_name in body["failures"], body
    assert alice.device_id not in str(body)

    status, body = foreign.request("GET", f"/_matrix/client/v3/directory/room/{q(alias)}", token=carol.token)
    assert status != 200, body
    assert "room_id" not in body, body

    # A 403 puts our server into the foreign server's backoff (ten minutes),
    # so its earlier attempts in this module would hold the message back: its
    # operator's "reset connection" sends what is queued at once.
    admin = make_user("admin", admin=True, homeserver=foreign)
    offset = len(foreign.log_path.read_bytes())
    request = {"from_device": "EDGE", "methods": ["m.sas.v1"], "timestamp": 1, "transaction_id": "edge"}
    status, body = foreign.request(
        "PUT",
        f"/_matrix/client/v3/sendToDevice/m.key.verification.request/{uuid.uuid4().hex}",
        {"messages": {alice.user_id: {alice.device_id: request}}},
        token=carol.token,
    )
    assert status == 200, body
    status, body = foreign.request(
        "POST",
        f"/_synapse/admin/v1/federation/destinations/{q(ours.server_name)}/reset_connection",
        {},
        token=admin.token,
    )
    assert status in (200, 400, 404), body  # 400, 404: not in backoff, nothing to reset
    wait_for(
        lambda: refused_transactions_with_edus(foreign, ours.server_name, offset) > 0,
        timeout=60,
        what="the foreign server's transaction with the message to be refused",
    )
    assert carol.user_id not in to_device_senders(ours, alice, until=None)


def test_our_server_sends_nothing_to_a_foreign_server(make_user, ours, peer, foreign):
    """Our users' lookups of a foreign user are refused before anything is sent,
    and the foreign server's access log never shows a request of our server
    (over every test of this module so far: joins, invites, rooms shared with
    the foreign server through the peer, media). The peer is asked as usual."""
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    bob = make_user("bob", homeserver=peer)
    set_display_name(peer, bob, "PHK Schulz")
    counted_before = denial_count(ours, "federation.destination")

    status, body = ours.request("GET", f"/_matrix/client/v3/profile/{q(carol.user_id)}", token=alice.token)
    assert status == 403, body
    assert f"server '{foreign.server_name}' {REFUSED}" in body["error"], body
    for endpoint, request in (
        ("query", {"device_keys": {carol.user_id: []}}),
        ("claim", {"one_time_keys": {carol.user_id: {carol.device_id: "signed_curve25519"}}}),
    ):
        status, body = ours.request("POST", f"/_matrix/client/v3/keys/{endpoint}", request, token=alice.token)
        assert status == 200, body
        assert foreign.server_name in body["failures"], body
    status, body = ours.request(
        "GET",
        f"/_matrix/client/v3/directory/room/{q('#leitstelle:' + foreign.server_name)}",
        token=alice.token,
    )
    assert status != 200, body
    assert denial_count(ours, "federation.destination") >= counted_before + 4
    logged = federation_refusals(ours, "federation.destination")
    assert foreign.server_name in {entry["server"] for entry in logged}, (
        "the refusals are in the decision log"
    )

    message = {"from_device": "X", "methods": ["m.sas.v1"], "timestamp": 1, "transaction_id": "out"}
    counted_before = denial_count(ours, "federation.destination")
    status, body = ours.request(
        "PUT",
        f"/_matrix/client/v3/sendToDevice/m.key.verification.request/{uuid.uuid4().hex}",
        {"messages": {carol.user_id: {carol.device_id: message}}},
        token=alice.token,
    )
    assert status == 200, body
    if ours.spec.extra.get("federation_domain_whitelist", "unset") is None:
        # Without the whitelist Synapse queues it for the foreign server; the
        # module stops it at the federation client.
        wait_for(
            lambda: denial_count(ours, "federation.destination") > counted_before,
            what="our server's attempt to send the to-device message",
        )

    # The peer is asked (and its access log shows it, so the count below can fail).
    status, body = ours.request("GET", f"/_matrix/client/v3/profile/{q(bob.user_id)}", token=alice.token)
    assert status == 200, body
    assert body["displayname"] == "PHK Schulz"
    assert served_to(peer, ours.server_name), "the peer's access log shows our server's requests"
    assert served_to(foreign, ours.server_name) == []
