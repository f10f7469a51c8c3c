"""Element Web's own room and chat creation on a real Synapse with the module:
what Element asks for that the policy refuses (guest access, a join rule
restricted to a space) is turned into the policy's value and logged, so the
room is created, encrypted, invite-only, closed to guests and not
world-readable; a public room is refused with a message naming the rule; the
service users are left out of the user directory but stay room members."""

from __future__ import annotations

import re
import secrets
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devtools.homeserver import Homeserver
from tests import element_requests as element
from tests.conftest import Account
from tests.integration.test_decision_log import decisions_for, denial_count
from tests.room_request_strategies import REQUESTS, WELL_FORMED_REQUESTS
from tests.waiting import wait_for

NAME = "element-rooms"
SERVER = f"{NAME}.test"
AUDITOR = f"@auditor:{SERVER}"
DISPATCH_BOT = f"@dispatch-bot:{SERVER}"
SYSTEM_USER = f"@policy:{SERVER}"
SERVICE_USERS = (SYSTEM_USER, AUDITOR, DISPATCH_BOT)


@pytest.fixture(scope="module")
def server(start_homeserver) -> Homeserver:
    """Synapse's own encryption default off (what remains is the module's
    doing), the auditor bot seated and the dispatch bot listed as hidden."""
    hs = start_homeserver(
        NAME,
        module_config={"auditor": {"user_id": AUDITOR}, "directory": {"hidden_users": [DISPATCH_BOT]}},
        extra={"encryption_enabled_by_default_for_room_type": "off"},
    )
    assert hs.server_name == SERVER
    hs.register_user("auditor", "auditor-pw", login=False)
    return hs


def account(hs: Homeserver, prefix: str, localpart: str | None = None) -> Account:
    localpart = localpart or f"{prefix}-{secrets.token_hex(4)}"
    password = f"pw-{secrets.token_hex(8)}"
    token, device_id = hs.register_enrolled_user(localpart, password)
    return Account(localpart, hs.user_id(localpart), password, token, device_id)


@pytest.fixture(scope="module")
def officer(server: Homeserver) -> Account:
    return account(server, "officer")


@pytest.fixture(scope="module")
def peer(server: Homeserver) -> Account:
    return account(server, "peer")


def create(hs: Homeserver, user: Account, body: dict[str, Any]) -> tuple[int, Any]:
    return hs.request("POST", "/_matrix/client/v3/createRoom", body, token=user.token)


def room_state(hs: Homeserver, user: Account, room_id: str) -> dict[tuple[str, str], dict]:
    status, events = hs.request("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state", token=user.token)
    assert status == 200, events
    return {(entry["type"], entry["state_key"]): entry["content"] for entry in events}


def assert_closed_and_encrypted(state: dict[tuple[str, str], dict], history: str = "shared") -> None:
    assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.room.join_rules", "")] == {"join_rule": "invite"}
    assert state[("m.room.guest_access", "")] == {"guest_access": "forbidden"}
    assert state[("m.room.history_visibility", "")] == {"history_visibility": history}


def rewrite_count(hs: Homeserver, rule: str) -> float:
    url = f"http://127.0.0.1:{hs.spec.metrics_port}/_synapse/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    pattern = (
        r'^police_policy_rewrites_total\{rule="' + re.escape(rule) + r'",server_name="[^"]+"\} ([0-9.e+]+)$'
    )
    match = re.search(pattern, text, flags=re.M)
    return float(match.group(1)) if match else 0.0


# --- what Element sends, made safe --------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "encryption_toggled_off"])
def test_new_room(server, officer, encrypted):
    status, body = create(
        server, officer, element.new_room("Einsatz 4711", encrypted=encrypted, topic="Lage")
    )
    assert status == 200, body
    state = room_state(server, officer, body["room_id"])
    assert_closed_and_encrypted(state)
    assert state[("m.room.name", "")] == {"name": "Einsatz 4711"}


@pytest.mark.parametrize("encrypted", [True, False], ids=["peer_has_keys", "peer_without_keys"])
def test_start_chat_with_one_user(server, officer, peer, encrypted):
    status, body = create(server, officer, element.direct_chat(peer.user_id, encrypted=encrypted))
    assert status == 200, body
    room_id = body["room_id"]
    state = room_state(server, officer, room_id)
    assert_closed_and_encrypted(state)
    assert state[("m.room.member", peer.user_id)]["membership"] == "invite"
    assert state[("m.room.member", peer.user_id)].get("is_direct") is True
    status, answer = server.request("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, token=peer.token)
    assert status == 200, answer


def test_start_chat_with_several_users(server, officer, peer):
    third = account(server, "third")
    status, body = create(server, officer, element.group_chat([peer.user_id, third.user_id]))
    assert status == 200, body
    state = room_state(server, officer, body["room_id"])
    assert_closed_and_encrypted(state)
    assert {state[("m.room.member", u)]["membership"] for u in (peer.user_id, third.user_id)} == {"invite"}


@pytest.mark.parametrize(
    ("body", "member_event"),
    [
        (element.video_room("Lagebild"), "io.element.video.member"),
        (element.call_room("Funk"), "org.matrix.msc3401.call.member"),
    ],
    ids=["video_room", "element_call_room"],
)
def test_new_video_room(server, officer, body, member_event):
    status, answer = create(server, officer, body)
    assert status == 200, answer
    state = room_state(server, officer, answer["room_id"])
    assert_closed_and_encrypted(state)
    assert state[("m.room.create", "")]["type"] == body["creation_content"]["type"]
    levels = state[("m.room.power_levels", "")]
    assert levels["events"][member_event] == 0, "Element's power levels are kept"
    assert levels["users"][SYSTEM_USER] == levels["users"][AUDITOR] == 100, "and the service users seated"


def test_space_and_its_rooms(server, officer):
    """A private space, then the rooms Element creates in it (restricted to the
    space by default: the policy makes them invite-only), then Element adds
    them to the space."""
    status, body = create(server, officer, element.private_space("Dienststelle 7"))
    assert status == 200, body
    space_id = body["room_id"]
    space = room_state(server, officer, space_id)
    assert space[("m.room.create", "")]["type"] == "m.space"
    assert_closed_and_encrypted(space, history="invited")
    assert space[("m.room.power_levels", "")]["events_default"] == 100

    for request in (
        element.first_space_room("General", space_id, SERVER),
        element.room_in_space("Schicht B", space_id, SERVER),
    ):
        status, body = create(server, officer, request)
        assert status == 200, body
        room_id = body["room_id"]
        state = room_state(server, officer, room_id)
        assert_closed_and_encrypted(state)
        assert state[("m.space.parent", space_id)] == {"via": [SERVER], "canonical": True}
        # SpaceStore.addRoomToSpace
        status, answer = server.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(space_id)}/state/m.space.child/{quote(room_id)}",
            {"via": [SERVER], "suggested": True},
            token=officer.token,
        )
        assert status == 200, answer


def test_rewrites_are_logged_and_counted_not_denied(server):
    user = account(server, "dispatcher")
    guest_before = rewrite_count(server, "rooms.guest_access")
    join_before = rewrite_count(server, "rooms.join_rules")
    status, body = create(server, user, element.room_in_space("Schicht C", "!space:elsewhere.test", SERVER))
    assert status == 200, body
    entries = sorted(decisions_for(server, user.user_id, decision="rewrite"), key=lambda e: e["rule"])
    assert [e["rule"] for e in entries] == ["rooms.guest_access", "rooms.join_rules"]
    guest, join = entries
    assert guest == {
        "rule": "rooms.guest_access",
        "decision": "rewrite",
        "user": user.user_id,
        "device": user.device_id,
        "room": None,
        "reason": "Guest access 'can_join' is not allowed: rooms on this server are closed to guests. "
        "The room gets 'forbidden' instead.",
    }
    assert join["reason"].startswith("Join rule 'restricted' is not allowed")
    assert join["reason"].endswith("The room gets 'invite' instead.")
    assert decisions_for(server, user.user_id, timeout=0) == [], "a rewrite is not a denial"
    assert rewrite_count(server, "rooms.guest_access") == guest_before + 1
    assert rewrite_count(server, "rooms.join_rules") == join_before + 1


# --- what stays refused --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (element.public_room("Offen", "offen-room"), "Public rooms are not allowed"),
        (element.public_space("Alle", "alle-space"), "Public rooms are not allowed"),
        (element.knock_room("Anfragen", listed=True), "cannot be listed in the room directory"),
    ],
    ids=["public_room", "public_space", "listed_knock_room"],
)
def test_public_rooms_are_refused_naming_the_rule(server, officer, body, words):
    before = denial_count(server, "rooms.public_room")
    status, answer = create(server, officer, body)
    assert status == 403, answer
    assert answer["errcode"] == "M_FORBIDDEN"
    assert words in answer["error"]
    assert denial_count(server, "rooms.public_room") == before + 1
    if "room_alias_name" in body:
        alias = quote(f"#{body['room_alias_name']}:{SERVER}")
        status, _ = server.request("GET", f"/_matrix/client/v3/directory/room/{alias}", token=officer.token)
        assert status == 404, "no alias is left behind"


@pytest.mark.parametrize(
    ("event_type", "content", "words"),
    [
        ("m.room.guest_access", {"guest_access": "can_join"}, "Guest access 'can_join' is not allowed"),
        (
            "m.room.join_rules",
            {"join_rule": "restricted", "allow": []},
            "Join rule 'restricted' is not allowed",
        ),
        (
            "m.room.history_visibility",
            {"history_visibility": "world_readable"},
            "History visibility 'world_readable' is not allowed",
        ),
        ("m.room.encryption", {"algorithm": "m.olm.v1"}, "Encryption algorithm 'm.olm.v1' is not allowed"),
    ],
    ids=["guest_access", "join_rules", "history_visibility", "encryption"],
)
def test_changing_an_element_room_later_stays_refused(server, officer, event_type, content, words):
    status, body = create(server, officer, element.new_room("Later"))
    assert status == 200, body
    room_id = body["room_id"]
    status, answer = server.request(
        "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/", content, token=officer.token
    )
    assert status == 403, answer
    assert words in answer["error"]
    assert_closed_and_encrypted(room_state(server, officer, room_id))


# --- power levels in initial_state ------------------------------------------------


@pytest.mark.parametrize("room_version", [None, "10"], ids=["default_version", "room_version_10"])
def test_power_levels_in_initial_state_still_seat_the_service_users(server, officer, room_version):
    """initial_state wins over power_level_content_override in Synapse. From
    room version 12 on, creators are not listed in the power levels."""
    levels = {"users": {}, "events_default": 0, "invite": 0}
    request: dict[str, Any] = {
        "initial_state": [{"type": "m.room.power_levels", "state_key": "", "content": levels}]
    }
    if room_version:
        request["room_version"] = room_version
    status, body = create(server, officer, request)
    assert status == 200, body
    state = room_state(server, officer, body["room_id"])
    users = state[("m.room.power_levels", "")]["users"]
    creator = {officer.user_id: 100} if room_version == "10" else {}
    assert users == {**creator, SYSTEM_USER: 100, AUDITOR: 100}
    assert_closed_and_encrypted(state)


@pytest.mark.parametrize(
    "request_body",
    [
        {"initial_state": [{"type": "m.room.power_levels", "state_key": "", "content": {"redact": 150}}]},
        {"power_level_content_override": {"events_default": 150}},
    ],
    ids=["initial_state", "override"],
)
def test_power_levels_that_keep_redactions_from_the_service_users_are_refused(server, officer, request_body):
    status, body = create(server, officer, request_body)
    assert status == 403, body
    assert "must keep power level 100, and redacting must not need more" in body["error"]


# --- the service users left out of room names ------------------------------------------

FUNCTIONAL_MEMBERS = "io.element.functional_members"


def put_state(hs: Homeserver, user: Account, room_id: str, event_type: str, state_key: str, content: dict):
    path = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/{quote(state_key)}"
    return hs.request("PUT", path, content, token=user.token)


def test_every_new_room_lists_the_service_users_for_element(server, officer, peer):
    """Element leaves the listed members out of a room's name and direct-chat detection: a
    direct chat reads as the peer's name, not "Retention policy and 2 others"."""
    for request in (element.direct_chat(peer.user_id), element.new_room("Lage"), {}):
        status, body = create(server, officer, request)
        assert status == 200, body
        state = room_state(server, officer, body["room_id"])
        assert state[(FUNCTIONAL_MEMBERS, "")] == {"service_members": list(SERVICE_USERS)}


def test_a_creation_request_cannot_list_a_person(server):
    user = account(server, "hider")
    before = rewrite_count(server, "rooms.functional_members")
    listing = {"type": FUNCTIONAL_MEMBERS, "state_key": "", "content": {"service_members": [user.user_id]}}
    status, body = create(server, user, {**element.new_room("Versteck"), "initial_state": [listing]})
    assert status == 200, body
    state = room_state(server, user, body["room_id"])
    assert state[(FUNCTIONAL_MEMBERS, "")] == {"service_members": list(SERVICE_USERS)}
    (entry,) = decisions_for(server, user.user_id, decision="rewrite")
    assert entry["rule"] == "rooms.functional_members"
    assert f"not '{user.user_id}'" in entry["reason"]
    assert rewrite_count(server, "rooms.functional_members") == before + 1


@pytest.mark.parametrize("state_key", ["", "hidden"], ids=["room_level", "another_state_key"])
def test_a_member_cannot_hide_themselves_or_a_colleague_later(server, officer, peer, state_key):
    """The room's creator has power 100, so only the policy stands between them and the event."""
    status, body = create(server, officer, element.direct_chat(peer.user_id))
    assert status == 200, body
    room_id = body["room_id"]
    before = denial_count(server, "rooms.functional_members")
    for hidden in ([officer.user_id], [*SERVICE_USERS, peer.user_id]):
        status, answer = put_state(
            server, officer, room_id, FUNCTIONAL_MEMBERS, state_key, {"service_members": hidden}
        )
        assert status == 403, answer
        assert answer["errcode"] == "M_FORBIDDEN"
        assert "may list only this server's service users" in answer["error"]
    assert denial_count(server, "rooms.functional_members") == before + 2
    state = room_state(server, officer, room_id)
    assert state[(FUNCTIONAL_MEMBERS, "")] == {"service_members": list(SERVICE_USERS)}
    assert (FUNCTIONAL_MEMBERS, "hidden") not in state
    # listing service users only stays possible (for a room made before the module listed them)
    status, answer = put_state(
        server, officer, room_id, FUNCTIONAL_MEMBERS, state_key, {"service_members": [SYSTEM_USER]}
    )
    assert status == 200, answer


# --- the user directory ------------------------------------------------------------


def search(hs: Homeserver, user: Account, term: str) -> list[str]:
    status, body = hs.request(
        "POST",
        "/_matrix/client/v3/user_directory/search",
        {"search_term": term, "limit": 50},
        token=user.token,
    )
    assert status == 200, body
    return [result["user_id"] for result in body["results"]]


def test_service_users_are_not_offered_as_chat_partners_but_stay_members(server):
    # On a new database Synapse first fills the directory in background updates;
    # joins while those run can be left out of it (seen on PostgreSQL).
    pending = (
        "SELECT update_name FROM background_updates WHERE update_name LIKE ?",
        ("populate_user_directory%",),
    )
    wait_for(
        lambda: not server.query(*pending),
        timeout=90,
        what="Synapse's initial user directory population",
    )
    alice = account(server, "alice")
    dispatch = account(server, "dispatch", localpart="dispatch-bot")
    status, body = create(server, alice, element.new_room("Leitstelle"))
    assert status == 200, body
    room_id = body["room_id"]
    colleague = account(server, "kollege")

    def invite_and_join(invitee: Account) -> None:
        status, answer = server.request(
            "POST",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/invite",
            {"user_id": invitee.user_id},
            token=alice.token,
        )
        assert status == 200, answer
        status, answer = server.request(
            "POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, token=invitee.token
        )
        assert status == 200, answer

    invite_and_join(dispatch)

    def members() -> set[str]:
        status, answer = server.request(
            "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members", token=alice.token
        )
        assert status == 200, answer
        return set(answer["joined"])

    wait_for(lambda: set(SERVICE_USERS) <= members(), what="the service users are room members")
    invite_and_join(colleague)

    def searchable_for_alice() -> set[str]:
        """What the directory would offer alice without the module: users in it
        who share a private room with her (search_all_users is off)."""
        rows = server.query(
            "SELECT s.other_user_id FROM users_who_share_private_rooms AS s"
            " JOIN user_directory AS d ON d.user_id = s.other_user_id"
            " WHERE s.user_id = ? AND s.room_id = ?",
            (alice.user_id, room_id),
        )
        return {row[0] for row in rows}

    # the directory (updated in the background) holds them for alice ...
    wait_for(
        lambda: {*SERVICE_USERS, colleague.user_id} <= searchable_for_alice(),
        what="the user directory has taken in the joins",
    )
    assert colleague.user_id in search(server, alice, "kollege"), "it finds colleagues"
    # ... but never offers them
    for term in ("policy", "auditor", "dispatch", "bot", "Retention", SERVER, "a"):
        found = search(server, alice, term)
        assert not set(found) & set(SERVICE_USERS), (term, found)
    # still members of the room, for everyone to see
    assert set(SERVICE_USERS) <= members()


# --- properties through the real server ---------------------------------------------


SERVER_REQUESTS = st.one_of(WELL_FORMED_REQUESTS, REQUESTS)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=SERVER_REQUESTS, as_element=st.booleans())
def test_any_creation_request_gives_a_safe_room_or_a_clear_4xx(server, officer, request, as_element):
    if as_element and isinstance(request.get("initial_state", []), list):
        # what Element always adds, on top of the generated request
        request = {**request, "initial_state": [element.GUEST_CAN_JOIN, *request.get("initial_state", [])]}
    status, body = create(server, officer, request)
    event(f"HTTP {status}")
    assert status < 500, (status, body)
    if status != 200:
        assert 400 <= status < 500, (status, body)
        assert isinstance(body, dict) and body.get("errcode") and body.get("error"), body
        return
    state = room_state(server, officer, body["room_id"])
    assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.room.join_rules", "")]["join_rule"] == "invite"
    # (an empty content is harmless: Synapse reads it as forbidden and shared)
    assert state[("m.room.guest_access", "")].get("guest_access") != "can_join"
    assert state[("m.room.history_visibility", "")].get("history_visibility") != "world_readable"
    assert state[("m.room.power_levels", "")]["users"].get(SYSTEM_USER) == 100
