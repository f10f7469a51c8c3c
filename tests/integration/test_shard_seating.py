"""Several auditor bots (``auditor.user_ids``): the module seats exactly one of them in
each new room, the one ``seating.auditor_for`` names, or the one the creation request
invited; every listed bot is in the power levels and nobody removes or demotes it.

No bot process runs here: the module itself makes the seated bot join, as it does for
the retention system user, so what is asserted is the module's doing alone."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

from devtools.homeserver import Homeserver, SynapseError
from synapse_police_policy.rooms.seating import INVITED_AUDITOR, auditor_for
from tests.integration.test_retention_rooms import create, put_state, state, system_user, wait_for_system_user

SERVER = "sharded"
BOTS = ("auditor-1", "auditor-2")
#: rooms tried until each bot was chosen at least once (each is chosen with p = 1/2)
MAX_ROOMS = 24


@pytest.fixture(scope="module")
def sharded(start_homeserver) -> Homeserver:
    hs = start_homeserver(
        SERVER, module_config={"auditor": {"user_ids": [f"@{b}:{SERVER}.test" for b in BOTS]}}
    )
    for bot in BOTS:
        hs.register_user(bot, f"{bot}-pw", login=False)
    return hs


def bots(hs: Homeserver) -> list[str]:
    return [hs.user_id(bot) for bot in BOTS]


def membership(hs: Homeserver, token: str, room_id: str, user: str) -> str | None:
    status, member = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(user)}", token=token
    )
    return member.get("membership") if status == 200 else None


def seated_alone(hs: Homeserver, token: str, room_id: str, bot: str) -> None:
    """``bot`` joins, and once it has (the module seats it last), no other bot is in the room."""
    wait_for_system_user(hs, token, room_id, user=system_user(hs))
    wait_for_system_user(hs, token, room_id, user=bot)
    others = {user: membership(hs, token, room_id, user) for user in bots(hs) if user != bot}
    assert set(others.values()) == {None}, others


def test_each_room_gets_the_one_bot_the_rule_names(sharded, make_user):
    hs = sharded
    alice = make_user("alice", homeserver=hs)
    chosen = set()
    for _ in range(MAX_ROOMS):
        room_id = create(hs, alice.token)
        bot = auditor_for(room_id, bots(hs))
        seated_alone(hs, alice.token, room_id, bot)
        levels = state(hs, alice.token, room_id, "m.room.power_levels")
        assert all(levels["users"][user] == 100 for user in bots(hs)), levels
        functional = state(hs, alice.token, room_id, "io.element.functional_members")
        assert set(bots(hs)) <= set(functional["service_members"])
        assert INVITED_AUDITOR not in state(hs, alice.token, room_id, "m.room.create")
        chosen.add(bot)
        if chosen == set(bots(hs)):
            break
    assert chosen == set(bots(hs)), f"{MAX_ROOMS} rooms all went to {chosen}"


def test_a_direct_chat_with_one_bot_gets_no_other(sharded, make_user):
    """An auditor's direct chat with one shard: a second bot would be a second reader,
    and the chat would no longer be the auditor's command room."""
    hs = sharded
    revisor = make_user("revisor", homeserver=hs)
    for attempt in range(MAX_ROOMS):
        invited = bots(hs)[attempt % len(BOTS)]
        request = {"preset": "trusted_private_chat", "is_direct": True, "invite": [invited]}
        room_id = create(hs, revisor.token, request)
        seated_alone(hs, revisor.token, room_id, invited)
        created = state(hs, revisor.token, room_id, "m.room.create")
        assert created[INVITED_AUDITOR] == invited
        if auditor_for(room_id, bots(hs)) != invited:
            return  # the rule named the other bot, and the invited one was seated instead
    pytest.fail(f"in {MAX_ROOMS} direct chats the rule always named the invited bot")


def test_a_client_cannot_name_the_rooms_bot(sharded, make_user):
    hs = sharded
    alice = make_user("alice", homeserver=hs)
    for claimed in [*bots(hs), "@nobody:sharded.test", {"x": 1}]:
        room_id = create(hs, alice.token, {"creation_content": {INVITED_AUDITOR: claimed}})
        assert INVITED_AUDITOR not in state(hs, alice.token, room_id, "m.room.create")
        seated_alone(hs, alice.token, room_id, auditor_for(room_id, bots(hs)))


def test_no_bot_is_kicked_banned_or_demoted(sharded, make_user):
    """The seated bot and the one only listed in the power levels alike."""
    hs = sharded
    alice = make_user("alice", homeserver=hs)
    room_id = create(hs, alice.token)
    seated_alone(hs, alice.token, room_id, auditor_for(room_id, bots(hs)))
    levels = state(hs, alice.token, room_id, "m.room.power_levels")
    for bot in bots(hs):
        demoted = {**levels, "users": {**levels["users"], bot: 0}}
        status, body = put_state(hs, alice.token, room_id, "m.room.power_levels", demoted)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (bot, body)
        for action in ("kick", "ban"):
            status, body = hs.request(
                "POST",
                f"/_matrix/client/v3/rooms/{quote(room_id)}/{action}",
                {"user_id": bot},
                token=alice.token,
            )
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), (bot, action, body)


def test_a_bot_of_another_server_stops_synapse(start_homeserver):
    with pytest.raises(SynapseError, match="exited") as caught:
        start_homeserver(
            "foreignshard",
            module_config={
                "auditor": {"user_ids": ["@auditor-1:foreignshard.test", "@auditor-2:elsewhere.example"]}
            },
        )
    stdout_log = re.search(r"see (\S+stdout\.log)", str(caught.value)).group(1)
    assert "auditor.user_ids[1]: expected a user of this server" in Path(stdout_log).read_text()
