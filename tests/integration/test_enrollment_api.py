"""The admin API and the ``police-policy devices`` CLI against a real Synapse:
who may call it, what a bad request gets, and the CSV import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from devtools.homeserver import REPO_ROOT
from tests.admin_api import call, device_path, enroll, enrollments, pending
from tests.integration.test_decision_log import decisions_for


@pytest.fixture
def admin(make_user):
    return make_user("admin", admin=True)


def police_policy(hs, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"POLICE_HOMESERVER_URL": hs.url, "POLICE_ADMIN_TOKEN": token, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "synapse_police_policy.ops.cli", "devices", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_callers_must_be_admins_on_enrolled_devices(hs, make_user, admin):
    path = device_path(admin.user_id, "X")
    status, body = call(hs, "PUT", path, None, {})
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = call(hs, "PUT", path, "not-a-token", {})
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    user = make_user("officer")
    status, body = call(hs, "PUT", path, user.token, {})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert "not a server admin" in body["error"]
    # An admin whose token belongs to a device nobody enrolled (here: the one
    # the registration created) is refused too.
    other_admin_token = hs.register_user("admin-unenrolled-" + admin.localpart, "pw-x", admin=True)
    status, body = call(hs, "GET", "devices", other_admin_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert "enrolled device" in body["error"]


def test_enroll_is_idempotent_and_listed(hs, make_user, admin):
    user = make_user("officer")
    first = enroll(hs, admin.token, user.user_id, "IPHONE-0815", label="asset 0815")
    assert first["created"] is True
    again = enroll(hs, admin.token, user.user_id, "IPHONE-0815", label="asset 0815 (new case)")
    assert again["created"] is False
    assert again["enrollment"]["enrolled_at"] == first["enrollment"]["enrolled_at"]
    record = enrollments(hs, admin.token, user.user_id)["IPHONE-0815"]
    assert record["label"] == "asset 0815 (new case)"
    assert (record["state"], record["enrolled_by"]) == ("enrolled", admin.user_id)
    [logged] = decisions_for(hs, user.user_id, decision="enroll")
    assert (logged["actor"], logged["device"]) == (admin.user_id, "IPHONE-0815")
    assert hs.try_login(user.localpart, user.password, "IPHONE-0815")[0] == 200


@pytest.mark.parametrize(
    ("user_part", "device_id", "body", "field"),
    [
        ("@nobody-here:{server}", "D1", {}, "user_id"),
        ("not-a-user-id", "D1", {}, "user_id"),
        ("@someone:other.example", "D1", {}, "user_id"),
        ("{user}", "D 1", {}, "device_id"),
        ("{user}", "D1", {"label": 42}, "label"),
        ("{user}", "D1", {"expires_at": "tomorrow"}, "expires_at"),
        ("{user}", "D1", {"expires_at": 1000}, "expires_at"),
        ("{user}", "D1", {"expires_at": 10**20}, "expires_at"),
        ("{user}", "D1", {"expires_at": 2**63}, "expires_at"),
        ("{user}", "D1", {"label": "asset\u202e1174"}, "label"),
        ("{user}", "D1", {"label": "\ud800"}, "label"),
        ("{user}", "D\u2066 1", {}, "device_id"),
        ("{user}", "D1", {"colour": "red"}, "colour"),
    ],
)
def test_bad_enroll_requests_name_the_field_and_write_nothing(
    hs, make_user, admin, user_part, device_id, body, field
):
    user = make_user("officer")
    user_id = user_part.format(server=hs.server_name, user=user.user_id)
    status, answer = call(hs, "PUT", device_path(user_id, device_id), admin.token, body)
    assert status == 400, answer
    assert answer["errcode"] == "M_INVALID_PARAM"
    assert answer["error"].startswith(field)
    assert enrollments(hs, admin.token, user.user_id).keys() == {user.device_id}


def test_body_that_is_not_json_is_refused(hs, make_user, admin):
    user = make_user("officer")
    status, answer = hs.request(
        "PUT", "/_synapse/client/police/v1/" + device_path(user.user_id, "D1"), None, token=admin.token
    )
    assert status == 400, answer
    assert answer["errcode"] == "M_NOT_JSON"


def test_revoking_what_is_not_enrolled_is_404(hs, make_user, admin):
    user = make_user("officer")
    status, answer = call(hs, "DELETE", device_path(user.user_id, "NEVER-ENROLLED"), admin.token)
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")


def test_unknown_endpoint_and_method(hs, admin):
    assert call(hs, "GET", "nothing-here", admin.token)[0] == 404
    assert call(hs, "POST", "devices", admin.token, {})[0] == 405


def test_csv_import_reports_bad_rows_and_can_be_rerun(hs, make_user, admin, tmp_path: Path):
    alice, bob = make_user("officer"), make_user("officer")
    csv_file = tmp_path / "mdm-export.csv"
    csv_file.write_text(
        "user_id,device_id,label\n"
        f"{alice.user_id},IPHONE-A1,asset A1\n"
        f"{bob.user_id},IPHONE-B1,asset B1\n"
        f"@ghost:{hs.server_name},IPHONE-G1,asset G1\n"
        f"{alice.user_id},,missing device\n"
        f"{bob.user_id},IPHONE B2,space in id\n"
        f"{bob.user_id},IPHONE-B3,\n"
    )
    result = police_policy(hs, admin.token, "import", str(csv_file))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"{csv_file}:4:" in out and "no user" in out
    assert f"{csv_file}:5:" in out
    assert f"{csv_file}:6:" in out and "whitespace" in out
    assert "3 enrolled (new), 0 already enrolled, 3 failed" in out
    assert set(enrollments(hs, admin.token, bob.user_id)) == {bob.device_id, "IPHONE-B1", "IPHONE-B3"}
    assert admin.token not in out + result.stderr

    rerun = police_policy(hs, admin.token, "import", str(csv_file))
    assert "0 enrolled (new), 3 already enrolled, 3 failed" in rerun.stdout
    assert hs.try_login(alice.localpart, alice.password, "IPHONE-A1")[0] == 200


def test_cli_enroll_list_revoke(hs, make_user, admin):
    user = make_user("officer")
    assert (
        police_policy(hs, admin.token, "enroll", user.user_id, "CLI-1", "--label", "via cli").returncode == 0
    )
    listed = police_policy(hs, admin.token, "list", "--user", user.user_id)
    assert "CLI-1" in listed.stdout and "via cli" in listed.stdout
    assert police_policy(hs, admin.token, "revoke", user.user_id, "CLI-1").returncode == 0
    assert enrollments(hs, admin.token, user.user_id)["CLI-1"]["state"] == "revoked"
    again = police_policy(hs, admin.token, "revoke", user.user_id, "CLI-1")
    assert again.returncode == 1
    assert "M_NOT_FOUND" in again.stderr


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=%C2%B2", "limit"),  # "²": str.isdigit() says yes, int() says no
        ("from=%C2%B2", "from"),
        ("limit=%D9%A1%D9%A2", "limit"),  # Arabic-Indic "12", which int() reads
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("from=-1", "from"),
        ("limit=+5", "limit"),
        ("limit=1&limit=2", "limit"),
        ("user=%40a%3Ab", "user"),  # the CLI's flag, not the API's parameter
        ("user_id=%00", "user_id"),
        ("state=enroled", "state"),
    ],
)
def test_bad_query_parameters_name_the_parameter(hs, admin, query, field):
    status, answer = call(hs, "GET", f"devices?{query}", admin.token)
    assert status == 400, answer
    assert answer["errcode"] == "M_INVALID_PARAM"
    assert answer["error"].startswith(f"{field}: "), answer


def test_limit_and_from_page_through_the_registry(hs, make_user, admin):
    user = make_user("officer")
    for device_id in ("P1", "P2", "P3"):
        enroll(hs, admin.token, user.user_id, device_id)
    path = f"devices?user_id={quote(user.user_id, safe='')}&limit=2"
    status, first = call(hs, "GET", path, admin.token)
    assert status == 200, first
    status, second = call(hs, "GET", f"{path}&from={first['next_from']}", admin.token)
    assert status == 200, second
    seen = [entry["device_id"] for entry in first["enrollments"] + second["enrollments"]]
    assert sorted(seen) == sorted(["P1", "P2", "P3", user.device_id])
    assert "next_from" not in second


def test_import_enrolls_the_good_entries_and_names_each_bad_one(hs, make_user, admin):
    user = make_user("officer")
    entries = [
        {"user_id": user.user_id, "device_id": "GOOD-1", "label": "asset 1"},
        {"user_id": user.user_id, "device_id": "BIG-EXPIRY", "expires_at": 10**20},
        {"user_id": user.user_id, "device_id": "BIDI", "label": "asset \u202e1"},
        {"user_id": f"@ghost:{hs.server_name}", "device_id": "GHOST"},
        "not an object",
        {"user_id": user.user_id, "device_id": "GOOD-2", "expires_at": 4_102_444_800_000},
    ]
    status, answer = call(hs, "POST", "devices/import", admin.token, {"devices": entries})
    assert status == 200, answer
    by_index = {result["index"]: result for result in answer["results"]}
    assert [by_index[i]["ok"] for i in range(6)] == [True, False, False, False, False, True]
    assert by_index[1]["field"] == "devices[1].expires_at"
    assert "9999-12-31" in by_index[1]["error"]
    assert by_index[2]["field"] == "devices[2].label"
    assert "U+202E" in by_index[2]["error"]
    assert by_index[3]["field"] == "devices[3].user_id"
    assert by_index[4]["field"] == "devices[4]"
    assert set(enrollments(hs, admin.token, user.user_id)) == {user.device_id, "GOOD-1", "GOOD-2"}


@pytest.mark.parametrize(
    "body",
    [
        {"devices": "GOOD-1"},
        {"devices": [{"user_id": "@x:y", "device_id": "D"}] * 1001},
        {"devices": [], "dry_run": True},
        [{"user_id": "@x:y", "device_id": "D"}],
    ],
)
def test_an_import_that_is_wrong_as_a_whole_writes_nothing(hs, make_user, admin, body):
    user = make_user("officer")
    if isinstance(body, dict) and isinstance(body["devices"], list):
        body = {**body, "devices": [{**entry, "user_id": user.user_id} for entry in body["devices"]]}
    status, answer = call(hs, "POST", "devices/import", admin.token, body)
    assert status == 400, answer
    assert enrollments(hs, admin.token, user.user_id).keys() == {user.device_id}


def test_request_ids_are_read_in_either_case_and_never_echoed_raw(hs, make_user, admin):
    user = make_user("officer")
    assert hs.try_login(user.localpart, user.password, "NEW-PHONE")[0] == 403
    [request] = [entry for entry in pending(hs, admin.token) if entry["user_id"] == user.user_id]
    status, answer = call(hs, "POST", "pending/%E2%80%AEK7Q2-M9XD/approve", admin.token, {})
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    assert (
        answer["error"]
        == "no login request '\\u202eK7Q2-M9XD': request IDs look like K7Q2-M9XD (see GET pending)"
    )
    status, answer = call(hs, "POST", f"pending/{request['request_id'].lower()}/reject", admin.token)
    assert status == 200, answer
    assert answer["pending"]["state"] == "rejected"


def test_cli_refuses_a_label_it_could_not_show(hs, make_user, admin):
    user = make_user("officer")
    result = police_policy(hs, admin.token, "enroll", user.user_id, "CLI-2", "--label", "asset\u202e4711")
    assert result.returncode == 2
    assert "U+202E" in result.stderr
    assert "CLI-2" not in enrollments(hs, admin.token, user.user_id)
