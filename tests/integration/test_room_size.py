"""The module's cost per message does not grow with the room.

A ``check_event_allowed`` module callback would make Synapse load every
current state event of the room for each event it creates
(``internals.guard_new_events``). Synapse's event cache counts the loads
(``synapse_util_caches_cache{name="*getEvent*"}``: lookups): a message in a
room with ``EXTRA_MEMBERS`` more members must look up about as many events as
one in a room of three.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from urllib.parse import quote

from devtools.homeserver import Homeserver
from tests.integration.test_retention_rooms import create, wait_for_system_user
from tests.integration.test_retention_sweep import send_encrypted_looking

EXTRA_MEMBERS = 60
MESSAGES = 10
EVENT_CACHE = re.compile(
    r'^synapse_util_caches_cache\{name="\*getEvent\*",server_name="[^"]+"\} ([0-9.e+]+)$', re.M
)


def event_lookups(hs: Homeserver) -> float:
    url = f"http://{hs.spec.bind_address}:{hs.spec.metrics_port}/_synapse/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        match = EVENT_CACHE.search(response.read().decode())
    assert match, "Synapse reports no *getEvent* cache metric"
    return float(match.group(1))


def lookups_per_message(hs: Homeserver, token: str, room_id: str) -> float:
    send_encrypted_looking(hs, token, room_id)  # caches of this room warm
    before = event_lookups(hs)
    for _ in range(MESSAGES):
        send_encrypted_looking(hs, token, room_id)
    return (event_lookups(hs) - before) / MESSAGES


def join_by_admin(hs: Homeserver, admin_token: str, room_id: str, count: int) -> None:
    """Members without devices: the admin API invites and joins them."""
    for _ in range(count):
        localpart = f"member-{uuid.uuid4().hex[:8]}"
        hs.register_user(localpart, f"pw-{uuid.uuid4().hex}", login=False)
        status, body = hs.request(
            "POST",
            f"/_synapse/admin/v1/join/{quote(room_id)}",
            {"user_id": hs.user_id(localpart)},
            token=admin_token,
        )
        assert status == 200, body


def test_a_message_costs_the_same_in_a_large_room(hs, make_user):
    admin = make_user("chief", admin=True)
    room_id = create(hs, admin.token)
    wait_for_system_user(hs, admin.token, room_id)
    small = lookups_per_message(hs, admin.token, room_id)

    join_by_admin(hs, admin.token, room_id, EXTRA_MEMBERS)
    status, body = hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members", token=admin.token
    )
    assert status == 200 and len(body["joined"]) >= EXTRA_MEMBERS + 2, body
    large = lookups_per_message(hs, admin.token, room_id)

    # With the room's state loaded per event, each message would look up every member.
    assert large - small < EXTRA_MEMBERS / 4, (small, large)
