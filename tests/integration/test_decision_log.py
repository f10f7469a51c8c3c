"""Every denial on a real Synapse leaves one JSON line in the decision log and
counts in police_policy_denials_total; neither holds tokens, passwords or
message content."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid

from devtools.homeserver import Homeserver

DECISION_LOGGER = "synapse_police_policy.decisions"


def decisions_for(hs: Homeserver, user_id: str, timeout: float = 10.0, decision: str = "deny") -> list[dict]:
    """Decision lines of one kind about ``user_id`` (the log is written
    asynchronously); "deny" by default, since the device sweep also logs what it
    removes (the device each registration creates, for one)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            json.loads(line[line.index("{") :])
            for line in hs.log_path.read_text().splitlines()
            if f" - {DECISION_LOGGER} - " in line
        ]
        found = [entry for entry in lines if entry["user"] == user_id and entry["decision"] == decision]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def denial_count(hs: Homeserver, rule: str) -> float:
    url = f"http://127.0.0.1:{hs.spec.metrics_port}/_synapse/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(
        r'^police_policy_denials_total\{rule="' + re.escape(rule) + r'",server_name="[^"]+"\} ([0-9.e+]+)$',
        re.M,
    )
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def test_denial_is_logged_once_with_context_and_counted(hs, make_user):
    user = make_user("officer")
    hs.enroll(user.localpart, "IPHONE-4711")
    login = hs.login(user.localpart, user.password, device_id="IPHONE-4711")
    token = login["access_token"]
    status, body = hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200
    room_id = body["room_id"]
    before = denial_count(hs, "rooms.join_rules")

    status, _ = hs.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/state/m.room.join_rules/",
        {"join_rule": "public"},
        token=token,
    )
    assert status == 403

    entries = decisions_for(hs, user.user_id)
    assert entries == [
        {
            "rule": "rooms.join_rules",
            "decision": "deny",
            "user": user.user_id,
            "device": "IPHONE-4711",
            "room": room_id,
            "reason": "Join rule 'public' is not allowed: rooms on this server are invite-only "
            "(allowed join rules: invite).",
        }
    ]
    assert denial_count(hs, "rooms.join_rules") == before + 1


def test_room_creation_denial_names_user_and_device(hs, make_user):
    user = make_user("dispatcher")
    hs.enroll(user.localpart, "LEITSTELLE-1")
    token = hs.login(user.localpart, user.password, device_id="LEITSTELLE-1")["access_token"]
    before = denial_count(hs, "rooms.public_room")
    status, _ = hs.request("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=token)
    assert status == 403
    [entry] = decisions_for(hs, user.user_id)
    assert entry["rule"] == "rooms.public_room"
    assert entry["device"] == "LEITSTELLE-1"
    assert entry["room"] is None
    assert denial_count(hs, "rooms.public_room") == before + 1


def test_no_secrets_or_content_in_the_log(hs, make_user):
    user = make_user("officer")
    token = user.token
    status, body = hs.request("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    room_id = body["room_id"]
    content = f"Zeuge wohnt in der Musterstrasse {uuid.uuid4().hex}"
    status, _ = hs.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
        {"msgtype": "m.text", "body": content},
        token=token,
    )
    assert status == 403
    assert decisions_for(hs, user.user_id), "the denial must be logged"
    log = hs.log_path.read_text()
    assert content not in log
    assert token not in log
    assert user.token not in log
    assert user.password not in log
