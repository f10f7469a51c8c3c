"""Closed federation with three real homeservers on this machine: ours (with
the module), an allowed peer and a foreign server, each on its own loopback
address with a TLS federation listener. Every scenario runs twice: with
Synapse's federation_domain_whitelist set on our server (and the peer as its
key notary, as check-config asks), and without the whitelist, so the module
has to hold on its own."""

from __future__ import annotations

import time
import urllib.parse
import uuid

import pytest
from nio import RoomMessageText
from signedjson.key import encode_verify_key_base64, get_verify_key, read_signing_keys

from devtools.homeserver import Homeserver
from tests import e2ee
from tests.conftest import Account
from tests.integration.test_canary import server_bytes
from tests.integration.test_decision_log import decisions_for
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
    if request.param == "with_whitelist":
        return start_homeserver(
            "ours_fed",
            module_config=module_config,
            federation_address="127.0.0.2",
            extra={"trusted_key_servers": [notary(peer)]},
        )
    return start_homeserver(
        "ours_alone",
        module_config=module_config,
        federation_address="127.0.0.5",
        extra={"federation_domain_whitelist": None},
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
    """Where the module answers (whitelist unset), its message names the server."""
    alice, carol = make_user("alice", homeserver=ours), make_user("carol", homeserver=foreign)
    room_id = create_room(ours, alice)
    status, body = join(foreign, carol, room_id, via=ours.server_name)
    assert status != 200
    if ours.spec.extra.get("federation_domain_whitelist", "unset") is None:
        assert status == 403, body
        assert foreign.server_name in body["error"], body
        assert any(e["rule"] == "federation.join" for e in decisions_for(ours, carol.user_id))


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
