"""The policy on a real worker setup: the layout of docker-compose.yml's
``workers`` profile, as plain processes (``devtools/workers.py``).

PostgreSQL (always: workers cannot share SQLite), Redis, the main process, a
generic worker, a background-tasks worker (``run_background_tasks_on``) and
nginx with the stack's routing (``config/nginx/workers.conf``). Clients talk
to nginx only. Each process logs to its own file, and the module's decision
log names what each process decided: a denial in the generic worker's log
and not in the main process's was made on the worker.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from devtools.homeserver import Homeserver, free_port
from devtools.postgres import PostgresCluster
from devtools.workers import WorkerDeployment, WorkerSpec
from synapse_police_policy.config import MEGOLM
from synapse_police_policy.decisions import DECISION_LOGGER
from tests import media_corpus
from tests.waiting import wait_for

GENERIC = "generic_worker1"
BACKGROUND = "background_worker"
#: the retention sweep runs every second and redacts content older than DEVICE_S
DEVICE_S = 3
#: the device sweep's interval; the first run comes one interval after start
DEVICE_SWEEP_S = 8


@pytest.fixture(scope="module")
def deployment(
    cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerDeployment]:
    setup = WorkerDeployment(
        tmp_path_factory.mktemp("workers"),
        server_name="workers.test",
        database=cluster.create_database(f"workers_{uuid.uuid4().hex[:6]}"),
        module_config={
            "retention": {"device_lifetime": f"{DEVICE_S}s", "audit_lifetime": "1h", "sweep_interval": "1s"},
            "devices": {"sweep_interval": f"{DEVICE_SWEEP_S}s"},
        },
        workers=[
            WorkerSpec(GENERIC, free_port()),
            WorkerSpec(BACKGROUND, free_port(), resources=["health"]),
        ],
        background_worker=BACKGROUND,
        # The stack's nginx routing; both generic workers of the compose file
        # are played by the one generic worker here.
        proxy={"synapse": "main", "generic-worker1": GENERIC, "generic-worker2": GENERIC},
    )
    setup.start()
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def main(deployment: WorkerDeployment) -> Homeserver:
    return deployment.main


Call = Callable[..., tuple[int, Any]]


@pytest.fixture(scope="module")
def proxy_url(deployment: WorkerDeployment) -> str:
    assert deployment.proxy is not None
    return deployment.proxy.url


@pytest.fixture(scope="module")
def via_proxy(main: Homeserver, proxy_url: str) -> Call:
    """An HTTP call through nginx with config/nginx/workers.conf, which sends
    worker-capable endpoints to the generic worker and the rest to main."""

    def call(method: str, path: str, body: Any = None, *, token: str | None = None) -> tuple[int, Any]:
        return main.request(method, path, body, token=token, base=proxy_url)

    return call


def login_body(localpart: str, password: str, device_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart},
        "password": password,
        "initial_device_display_name": "Element",
    }
    if device_id is not None:
        body["device_id"] = device_id
    return body


def enrolled_user(main: Homeserver, via_proxy: Call, prefix: str) -> tuple[str, str]:
    """A user registered without a device, its device enrolled in the
    database, logged in on the worker: (user ID, access token)."""
    localpart = f"{prefix}-{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    main.register_user(localpart, password, login=False)
    device_id = f"PHONE-{uuid.uuid4().hex[:6].upper()}"
    main.enroll(localpart, device_id)
    status, body = via_proxy("POST", "/_matrix/client/v3/login", login_body(localpart, password, device_id))
    assert status == 200, body
    assert body["device_id"] == device_id
    return main.user_id(localpart), body["access_token"]


def decisions(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [
        json.loads(line[line.index("{") :])
        for line in log.read_text().splitlines()
        if f" - {DECISION_LOGGER.name} - " in line
    ]


def decided_where(
    deployment: WorkerDeployment, user_id: str, decision: str, rule: str | None = None
) -> set[str]:
    """The processes whose decision log has a ``decision`` about ``user_id``."""
    return {
        name
        for name, log in deployment.log_paths().items()
        if any(
            entry.get("user") == user_id
            and entry.get("decision") == decision
            and (rule is None or entry.get("rule") == rule)
            for entry in decisions(log)
        )
    }


def encrypted(via_proxy: Call, token: str, room_id: str) -> tuple[int, Any]:
    content = {
        "algorithm": MEGOLM,
        "ciphertext": uuid.uuid4().hex * 4,
        "device_id": "X",
        "sender_key": "k",
        "session_id": "s",
    }
    return via_proxy(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.encrypted/{uuid.uuid4().hex}",
        content,
        token=token,
    )


def test_every_process_loads_the_module(deployment: WorkerDeployment, via_proxy: Call) -> None:
    for name, log in deployment.log_paths().items():
        assert "Loaded module <synapse_police_policy.module.PolicePolicy" in log.read_text(), name


def served_by(deployment: WorkerDeployment, marker: str) -> set[str]:
    """The processes whose access log has a request whose line contains ``marker``."""
    return {
        name
        for name, log in deployment.log_paths().items()
        if any("synapse.access.http" in line and marker in line for line in log.read_text().splitlines())
    }


def test_the_proxy_routes_as_documented(deployment: WorkerDeployment, via_proxy: Call) -> None:
    """Worker-capable endpoints reach the generic worker, the rest main."""
    marker = uuid.uuid4().hex
    status, _ = via_proxy("GET", f"/_matrix/client/versions?probe={marker}")
    assert status == 200
    status, _ = via_proxy("GET", f"/_matrix/client/v3/pushrules/?probe={marker}")
    assert status == 401  # not routed: main answers (unauthenticated)
    wait_for(lambda: len(served_by(deployment, marker)) == 2, 10, "the requests were not logged")
    assert served_by(deployment, f"/_matrix/client/versions?probe={marker}") == {GENERIC}
    assert served_by(deployment, f"/_matrix/client/v3/pushrules/?probe={marker}") == {"main"}


def test_login_gate_holds_on_the_worker(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    user_id, token = enrolled_user(main, via_proxy, "officer")
    status, body = via_proxy("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert status == 200 and body["user_id"] == user_id, body

    localpart = user_id[1:].split(":")[0]
    status, body = via_proxy("POST", "/_matrix/client/v3/login", login_body(localpart, "wrong", "X"))
    assert status == 403, body  # wrong password: Synapse's own refusal

    # The password of the enrolled user, on a device nobody enrolled.
    password = f"pw-{uuid.uuid4().hex}"
    other = f"officer-{uuid.uuid4().hex[:6]}"
    main.register_user(other, password, login=False)
    status, body = via_proxy("POST", "/_matrix/client/v3/login", login_body(other, password, "NOT-ENROLLED"))
    assert status == 403, body
    assert body["errcode"] == "M_FORBIDDEN" and "not enrolled" in body["error"], body
    # A stock client naming no device: refused too. Each refusal left a pending
    # request an operator could approve (the first one naming its device ID).
    status, body = via_proxy("POST", "/_matrix/client/v3/login", login_body(other, password, None))
    assert status == 403 and body["errcode"] == "M_RESOURCE_LIMIT_EXCEEDED", body
    pending = main.query(
        "SELECT device_id FROM police_policy_pending_logins WHERE user_id = ?", (main.user_id(other),)
    )
    assert sorted(row[0] or "" for row in pending) == ["", "NOT-ENROLLED"]

    where = lambda: decided_where(deployment, main.user_id(other), "deny", "devices.not_enrolled")  # noqa: E731
    wait_for(lambda: GENERIC in where(), 10, "the worker logged no devices.not_enrolled denial")
    assert where() == {GENERIC}


def test_rooms_created_on_the_worker_are_encrypted_and_closed(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    user_id, token = enrolled_user(main, via_proxy, "dispatcher")
    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {"name": "Einsatz 4711"}, token=token)
    assert status == 200, body
    room_id = quote(body["room_id"])
    status, encryption = via_proxy(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.encryption/", token=token
    )
    assert status == 200 and encryption["algorithm"] == MEGOLM, encryption
    status, join_rules = via_proxy(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.join_rules/", token=token
    )
    assert status == 200 and join_rules["join_rule"] == "invite", join_rules

    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=token)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    where = lambda: decided_where(deployment, user_id, "deny", "rooms.public_room")  # noqa: E731
    wait_for(lambda: GENERIC in where(), 10, "the worker logged no rooms.public_room denial")
    assert where() == {GENERIC}


def test_clear_text_is_refused_on_the_worker(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    user_id, token = enrolled_user(main, via_proxy, "officer")
    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200, body
    room_id = body["room_id"]
    status, body = via_proxy(
        "PUT",
        f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}",
        {"msgtype": "m.text", "body": "Lage am Hauptbahnhof"},
        token=token,
    )
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    status, body = encrypted(via_proxy, token, room_id)
    assert status == 200, body
    where = lambda: decided_where(deployment, user_id, "deny", "rooms.unencrypted_message")  # noqa: E731
    wait_for(lambda: GENERIC in where(), 10, "the worker logged no rooms.unencrypted_message denial")
    assert where() == {GENERIC}


def test_closed_federation_holds_on_the_worker(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    """Invites and knocks go through the generic worker (the stack's routing);
    the allowlist (empty here: no peers) refuses both before any federation."""
    user_id, token = enrolled_user(main, via_proxy, "officer")
    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200, body
    status, body = via_proxy(
        "POST",
        f"/_matrix/client/v3/rooms/{quote(body['room_id'])}/invite",
        {"user_id": "@someone:foreign.example"},
        token=token,
    )
    assert status == 403 and "foreign.example" in body["error"], body
    status, body = via_proxy(
        "POST", "/_matrix/client/v3/knock/!elsewhere:peer.example?server_name=peer.example", {}, token=token
    )
    assert status == 403 and "Cannot knock" in body["error"], body
    for rule in ("federation.invite", "federation.join"):
        where = lambda rule=rule: decided_where(deployment, user_id, "deny", rule)  # noqa: E731
        wait_for(lambda where=where: GENERIC in where(), 10, f"the worker logged no {rule} denial")
        assert where() == {GENERIC}


def test_a_device_that_skipped_the_login_gate_cannot_send_through_the_worker(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    """A device made by Synapse's registration API (the login gate never saw
    it) joining a room through the worker: refused by the worker's request gate. The
    device sweep may remove the device first (its token then gets 401); the
    registration is then repeated."""
    _, admin_token = enrolled_user(main, via_proxy, "lead")
    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {}, token=admin_token)
    assert status == 200, body
    room_id = quote(body["room_id"])
    for _ in range(3):
        localpart = f"bypass-{uuid.uuid4().hex[:6]}"
        token = main.register_user(localpart, f"pw-{uuid.uuid4().hex}", login=True)
        assert token
        status, body = via_proxy(
            "POST",
            f"/_matrix/client/v3/rooms/{room_id}/invite",
            {"user_id": main.user_id(localpart)},
            token=admin_token,
        )
        assert status == 200, body
        status, body = via_proxy("POST", f"/_matrix/client/v3/rooms/{room_id}/join", {}, token=token)
        if status != 401:  # not swept in between
            break
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    user_id = main.user_id(localpart)
    rule = "devices.request_from_unenrolled_device"
    where = lambda: decided_where(deployment, user_id, "deny", rule)  # noqa: E731
    wait_for(lambda: GENERIC in where(), 10, f"the worker logged no {rule} denial")
    assert where() == {GENERIC}

    # The device sweep removes the device, on the background worker only.
    wait_for(
        lambda: not main.query("SELECT device_id FROM devices WHERE user_id = ?", (user_id,)),
        DEVICE_SWEEP_S * 2 + 10,
        "the device sweep did not remove the device",
    )
    # The other processes learn of the deleted token over replication (cache
    # invalidation), a moment after the database row is gone.
    wait_for(
        lambda: via_proxy("GET", "/_matrix/client/v3/account/whoami", token=token)[0] == 401,
        10,
        "the swept device's token still works",
    )
    swept = lambda: decided_where(deployment, user_id, "remove_unenrolled_device")  # noqa: E731
    wait_for(lambda: BACKGROUND in swept(), 10, "the background worker logged no removal")
    assert swept() == {BACKGROUND}


def test_an_approved_login_on_the_worker_enrolls_its_device(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    """The stock-client flow: refused login on the worker, the operator
    approves through the admin API (main process), the next login on the
    worker succeeds and its new device is enrolled, and it survives the
    device sweep on the background worker."""
    admin_localpart = f"admin-{uuid.uuid4().hex[:6]}"
    admin_password = f"pw-{uuid.uuid4().hex}"
    main.register_user(admin_localpart, admin_password, admin=True, login=False)
    main.enroll(admin_localpart, "OPS-CONSOLE")
    status, body = via_proxy(
        "POST", "/_matrix/client/v3/login", login_body(admin_localpart, admin_password, "OPS-CONSOLE")
    )
    assert status == 200, body
    admin_token = body["access_token"]

    localpart = f"dispatcher-{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    main.register_user(localpart, password, login=False)
    status, body = via_proxy("POST", "/_matrix/client/v3/login", login_body(localpart, password, None))
    assert status == 403, body
    [(request_id,)] = main.query(
        "SELECT request_id FROM police_policy_pending_logins WHERE user_id = ?", (main.user_id(localpart),)
    )
    assert request_id in body["error"]
    # The link in the answer (made on the worker) shows the code through the proxy.
    status, page = via_proxy("GET", urlsplit(body["admin_contact"]).path)
    assert status == 200 and f'id="request-code">{request_id}<' in page, page
    status, body = via_proxy(
        "POST", f"/_synapse/client/police/v1/pending/{request_id}/approve", {}, token=admin_token
    )
    assert status == 200, body
    status, body = via_proxy("POST", "/_matrix/client/v3/login", login_body(localpart, password, None))
    assert status == 200, body
    device_id, token = body["device_id"], body["access_token"]
    enrolled = main.query(
        "SELECT state FROM police_policy_enrollments WHERE user_id = ? AND device_id = ?",
        (main.user_id(localpart), device_id),
    )
    assert enrolled == [("enrolled",)]
    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200, body
    time.sleep(DEVICE_SWEEP_S + 1)  # at least one device sweep
    status, body = via_proxy("GET", "/_matrix/client/v3/account/whoami", token=token)
    assert status == 200, body


def system_redactions(main: Homeserver, event_id: str) -> list[tuple[Any, ...]]:
    return main.query(
        "SELECT r.event_id FROM redactions AS r JOIN events AS e ON e.event_id = r.event_id"
        " WHERE r.redacts = ? AND e.sender = ?",
        (event_id, main.user_id("policy")),
    )


def test_retention_sweep_runs_once_on_the_background_worker(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call
) -> None:
    _, token = enrolled_user(main, via_proxy, "officer")
    status, body = via_proxy("POST", "/_matrix/client/v3/createRoom", {}, token=token)
    assert status == 200, body
    room_id = body["room_id"]
    # The generic worker that created the room seats the system user.
    system_user = main.user_id("policy")
    wait_for(
        lambda: bool(
            main.query(
                "SELECT 1 FROM local_current_membership"
                " WHERE room_id = ? AND user_id = ? AND membership = 'join'",
                (room_id, system_user),
            )
        ),
        15,
        "the system user was not seated in the room created on the worker",
    )
    status, body = encrypted(via_proxy, token, room_id)
    assert status == 200, body
    event_id = body["event_id"]
    wait_for(
        lambda: bool(system_redactions(main, event_id)), DEVICE_S + 15, "the sweep did not redact the event"
    )
    time.sleep(3)  # three more sweep intervals on every process that would run it
    assert len(system_redactions(main, event_id)) == 1

    logs = {name: path.read_text() for name, path in deployment.log_paths().items()}
    ran = {name for name, text in logs.items() if "Retention sweep: " in text}
    assert ran == {BACKGROUND}
    # Synapse declines the module's looping calls on the other processes.
    for name in ("main", GENERIC):
        assert "Not running looping call" in logs[name] and "RetentionSweep.run" in logs[name], name
        assert "DeviceEnrollment.sweep" in logs[name], name
    # One system user, created by the background worker.
    assert main.query("SELECT COUNT(*) FROM users WHERE name = ?", (system_user,))[0][0] == 1
    created = {name for name, text in logs.items() if "Created the retention system user" in text}
    assert created <= {BACKGROUND}


def upload(base: str, token: str, data: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}/_matrix/media/v3/upload?filename=upload",
        data=data,
        method="POST",
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_media_rules_hold_and_expired_media_is_deleted_by_the_background_worker(
    deployment: WorkerDeployment, main: Homeserver, via_proxy: Call, proxy_url: str
) -> None:
    """Media stays on the main process (the proxy routes /_matrix/media and
    /_matrix/client/v1/media there): a script is refused by content. An
    allowed photo is deleted after the device lifetime by the retention sweep,
    which runs on the background worker and reaches the shared media store."""
    _, token = enrolled_user(main, via_proxy, "officer")
    status, body = upload(proxy_url, token, media_corpus.shell_script(), "image/jpeg")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body

    status, body = upload(proxy_url, token, media_corpus.png(), "image/png")
    assert status == 200, body
    media_id = body["content_uri"].rsplit("/", 1)[1]
    assert main.query("SELECT 1 FROM local_media_repository WHERE media_id = ?", (media_id,))
    stored = [path for path in (main.spec.directory / "media_store").rglob("*") if path.is_file()]
    assert stored
    wait_for(
        lambda: not main.query("SELECT 1 FROM local_media_repository WHERE media_id = ?", (media_id,)),
        DEVICE_S + 15,
        "the retention sweep did not delete the expired upload",
    )
    logs = {name: path.read_text() for name, path in deployment.log_paths().items()}
    deleted = {
        name
        for name, text in logs.items()
        if re.search(r"Retention sweep: .* [1-9]\d* media files deleted", text)
    }
    assert deleted == {BACKGROUND}
