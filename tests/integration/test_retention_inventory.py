"""What the protocol keeps in clear, after the tiers: a canary planted in
every place of the inventory in docs/policy.md (room name and topic, display names,
avatar bytes, custom state, a to-device message for a device that never
syncs, a clear reaction, a clear upload), a device lifetime and an audit tier
of seconds; afterwards the database tables and the media store hold the
canary only where docs/policy.md says it stays, and ``retention status`` counts
exactly those items."""

from __future__ import annotations

import io
import re
import secrets
import string
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from PIL import Image, PngImagePlugin

from devtools.homeserver import Homeserver, audit_tier_settings
from synapse_police_policy.config import DEFAULT_CLEAR_STATE_TYPES
from synapse_police_policy.ops.bootstrap import connect_database
from tests.integration.test_media_types import upload
from tests.integration.test_retention_rooms import create, put_state, wait_for_system_user
from tests.waiting import wait_for

AUDIT = "8s"
#: letters only: search indexes split words at digits and hyphens
CANARY = "canary" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(12))
LABEL = re.compile(re.escape(CANARY) + r"-([a-z]+(?:-[a-z]+)*)")

#: Where each canary may stay, as the inventory in docs/policy.md says: the current
#: name, topic, display name, custom state and avatar (label -> tables, or
#: "media" for the media store). Everything else planted must be gone.
STAYS = {
    "name-cur": {
        "event_json",
        "room_stats_state",
        "event_search",
        "sliding_sync_joined_rooms",
        "sliding_sync_membership_snapshots",
    },
    "topic-cur": {"event_json", "room_stats_state", "event_search"},
    "dn-global": {"event_json", "room_memberships", "profiles", "user_directory", "user_directory_search"},
    "custom-cur": {"event_json"},
    "avatar-cur": {"media"},
}
#: SQLite keeps a full-text index in shadow tables of event_search and
#: user_directory_search; words are split at hyphens, so only whole labels count.
SEARCH_INDEX = re.compile(r"^(event_search|user_directory_search)(_\w+)?$")


@pytest.fixture(scope="module")
def inventory_hs(start_homeserver) -> Homeserver:
    return start_homeserver(
        "retention_inventory",
        module_config={
            "retention": {"device_lifetime": "4s", "audit_lifetime": AUDIT, "sweep_interval": "1s"},
            # custom state with content, as an operator may allow it
            "rooms": {"clear_state_types": sorted(DEFAULT_CLEAR_STATE_TYPES | {"com.example.note"})},
        },
        extra=audit_tier_settings(AUDIT, purge_interval="2s"),
    )


def png(label: str) -> bytes:
    """A PNG that carries the labelled canary in a text chunk (thumbnails do not)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"{CANARY}-{label}!")  # "!" ends the label before binary bytes
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def ok(answer: tuple[int, Any]) -> Any:
    status, body = answer
    assert status == 200, body
    return body


def found_in_database(hs: Homeserver) -> dict[str, set[str]]:
    """label -> the tables whose rows hold that canary (one pass over every table)."""
    homeserver = yaml.safe_load(hs.config_path.read_text())
    connection, qmark = connect_database(homeserver["database"])
    found: dict[str, set[str]] = {}
    try:
        cursor = connection.cursor()
        for table in sorted(_tables(connection, qmark)):
            if table.startswith("_temp_"):
                continue  # Synapse's background updates create and drop these
            try:
                cursor.execute(f'SELECT * FROM "{table}"')
                rows = cursor.fetchall()
            except Exception:
                if table in _tables(connection, qmark):
                    raise
                connection.rollback()  # dropped meanwhile (a background update)
                continue
            for row in rows:
                text = " ".join(_text(value) for value in row).lower()
                if CANARY not in text:
                    continue
                labels = set(LABEL.findall(text))
                if not labels and SEARCH_INDEX.match(table):
                    continue  # a word of an index entry: the labelled row is checked
                for label in labels or {"?"}:
                    found.setdefault(label, set()).add(_table(table))
    finally:
        connection.close()
    return found


def _tables(connection: Any, qmark: bool) -> set[str]:
    connection.rollback()
    cursor = connection.cursor()
    if qmark:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {row[0] for row in cursor.fetchall()}


def _text(value: Any) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _table(name: str) -> str:
    """Shadow tables of SQLite's full-text index count as their index."""
    match = SEARCH_INDEX.match(name)
    return match.group(1) if match else name


def found_in_media(hs: Homeserver) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (hs.spec.directory / "media_store").rglob("*"):
        if path.is_file():
            for label in LABEL.findall(path.read_bytes().decode("latin-1")):
                found.setdefault(label, set()).add("media")
    return found


def media_files(hs: Homeserver, media_id: str) -> list[Path]:
    """A local file and its thumbnails (the media store splits the ID into directories)."""
    part = f"/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}"
    root = hs.spec.directory / "media_store"
    return [path for path in root.rglob("*") if path.is_file() and part in path.as_posix()]


def status_counts(hs: Homeserver) -> dict[str, int]:
    """``police-policy retention status``: the count of each inventory line."""
    done = subprocess.run(
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
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("kept in clear"))
    counts = {}
    for line in lines[start + 1 :]:
        match = re.match(r"^  (.+?)\s{2,}(\d+)\s", line)
        assert match, line
        counts[match.group(1)] = int(match.group(2))
    return counts


def test_only_what_the_docs_list_stays_in_clear(inventory_hs, make_user):
    hs = inventory_hs
    alice, bob = make_user("alice", homeserver=hs), make_user("bob", homeserver=hs)
    absent = make_user("absent", homeserver=hs)  # enrolled, never syncs

    def profile(user, field: str, value: str) -> None:
        ok(
            hs.request(
                "PUT",
                f"/_matrix/client/v3/profile/{quote(user.user_id)}/{field}",
                {field: value},
                token=user.token,
            )
        )

    def avatar(label: str) -> str:
        body = ok(upload(hs, alice.token, png(label), "image/png", "avatar.png"))
        mxc = body["content_uri"]
        media_id = mxc.rsplit("/", 1)[1]
        ok(
            hs.request(
                "GET",
                f"/_matrix/client/v1/media/thumbnail/{hs.server_name}/{media_id}?width=32&height=32",
                token=alice.token,
            )
        )
        return mxc

    room_id = create(hs, alice.token, {"name": f"{CANARY}-name-old", "topic": f"{CANARY}-topic-old"})
    wait_for_system_user(hs, alice.token, room_id)
    ok(
        hs.request(
            "POST",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/invite",
            {"user_id": bob.user_id},
            token=alice.token,
        )
    )
    ok(hs.request("POST", f"/_matrix/client/v3/join/{quote(room_id)}", {}, token=bob.token))

    # Names, topics, custom state: an old value, then the current one.
    ok(put_state(hs, alice.token, room_id, "m.room.name", {"name": f"{CANARY}-name-cur"}))
    ok(put_state(hs, alice.token, room_id, "m.room.topic", {"topic": f"{CANARY}-topic-cur"}))
    ok(put_state(hs, alice.token, room_id, "com.example.note", {"text": f"{CANARY}-custom-old"}))
    ok(put_state(hs, alice.token, room_id, "com.example.note", {"text": f"{CANARY}-custom-cur"}))
    # Display names: a per-room one the global change replaces; one of a member who leaves.
    member = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/"
    ok(
        hs.request(
            "PUT",
            member + quote(alice.user_id),
            {"membership": "join", "displayname": f"{CANARY}-dn-room-old"},
            token=alice.token,
        )
    )
    profile(alice, "displayname", f"{CANARY}-dn-global")
    ok(
        hs.request(
            "PUT",
            member + quote(bob.user_id),
            {"membership": "join", "displayname": f"{CANARY}-dn-room-left"},
            token=bob.token,
        )
    )
    ok(hs.request("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/leave", {}, token=bob.token))
    # A clear reaction (content), a clear upload, a to-device message nobody fetches.
    topic_id = ok(put_state(hs, alice.token, room_id, "m.room.topic", {"topic": f"{CANARY}-topic-cur"}))[
        "event_id"
    ]
    ok(
        hs.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.reaction/{uuid.uuid4().hex}",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": topic_id, "key": f"{CANARY}-reaction"}},
            token=alice.token,
        )
    )
    ok(put_state(hs, alice.token, room_id, "m.room.pinned_events", {"pinned": [topic_id]}))
    # Media and to-device messages go at the device tier: planted last, seen at once.
    old_avatar, current_avatar = avatar("avatar-old"), avatar("avatar-cur")
    for mxc in (old_avatar, current_avatar):
        profile(alice, "avatar_url", mxc)
        ok(put_state(hs, alice.token, room_id, "m.room.avatar", {"url": mxc}))
    upload_id = ok(upload(hs, alice.token, png("upload"), "image/png", "photo.png"))["content_uri"]
    upload_id = upload_id.rsplit("/", 1)[1]
    ok(
        hs.request(
            "PUT",
            f"/_matrix/client/v3/sendToDevice/m.example.note/{uuid.uuid4().hex}",
            {"messages": {absent.user_id: {absent.device_id: {"text": f"{CANARY}-todevice"}}}},
            token=alice.token,
        )
    )
    assert {"avatar-old", "upload"} <= set(found_in_media(hs)), "the files were not stored"
    assert hs.query("SELECT COUNT(*) FROM device_inbox WHERE user_id = ?", (absent.user_id,)) == [(1,)]

    planted = {**found_in_database(hs), **found_in_media(hs)}
    for label in (
        "name-old",
        "topic-old",
        "custom-old",
        "dn-room-old",
        "dn-room-left",
        "reaction",
    ):
        assert label in planted, f"{label} was not stored, so its removal proves nothing"

    def what_stays() -> dict[str, set[str]]:
        return {**found_in_database(hs), **found_in_media(hs)}

    # (Synapse fills its user directory in the background, so wait for all of it)
    try:
        wait_for(lambda: what_stays() == STAYS, 240, "the canaries left are not the documented ones")
    except AssertionError:
        assert what_stays() == STAYS  # shows where
        raise

    old_media_id, current_media_id = (mxc.rsplit("/", 1)[1] for mxc in (old_avatar, current_avatar))
    assert media_files(hs, old_media_id) == media_files(hs, upload_id) == []
    kept = media_files(hs, current_media_id)
    assert {path.relative_to(hs.spec.directory / "media_store").parts[0] for path in kept} == {
        "local_content",
        "local_thumbnails",
    }, "the current avatar keeps its file and thumbnails"

    users = len({alice.user_id, bob.user_id, absent.user_id}) + 1  # and the system user
    assert status_counts(hs) == {
        "room names and topics": 2,
        "room avatars (state)": 1,
        "pinned-event lists": 1,
        "custom room state": 1,
        # alice's and the system user's; bob's leave carries none
        "display names in rooms": 2,
        "profiles (display name, avatar)": users,
        "avatar images (with thumbnails)": 1,
        "to-device messages waiting": 0,
        "redacted originals": 0,
        "room aliases": 0,
        "device names": users - 1,
    }
