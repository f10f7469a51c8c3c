"""`police-policy devices ...` against a tiny real HTTP server that records what the CLI sends."""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_police_policy.api import ADMIN_PREFIX
from synapse_police_policy.devices.rules import unsafe_character
from synapse_police_policy.ops.cli import main
from synapse_police_policy.ops.devices import display_width, json_text, parse_expiry, printable

PREFIX = ADMIN_PREFIX
TOKEN = "syt_admin_s3cret"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    body: Any
    client_port: int


Answer = Callable[[Request], tuple[int, Any]]


@dataclass
class FakeAdminApi:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    answer: Answer = lambda request: (200, {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Synapse does

    def _handle(self) -> None:
        fake = cast(Any, self.server).fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        request = Request(
            self.command,
            url.path,
            parse_qs(url.query),
            self.headers.get("Authorization"),
            json.loads(raw) if raw else None,
            self.client_address[1],
        )
        fake.requests.append(request)
        status, body = fake.answer(request)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    block_on_close = False


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdminApi]:
    server = _Server(("127.0.0.1", 0), _Handler)
    fake = FakeAdminApi(url=f"http://127.0.0.1:{server.server_address[1]}")
    cast(Any, server).fake = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    monkeypatch.setenv("POLICE_HOMESERVER_URL", fake.url)
    monkeypatch.setenv("POLICE_ADMIN_TOKEN", TOKEN)
    yield fake
    server.shutdown()
    server.server_close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["devices", *argv])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, out, err


def enrollment(user_id: str, device_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "label": None,
        "enrolled_by": "@admin:police.example",
        "enrolled_at": 1_700_000_000_000,
        "expires_at": None,
        "state": "enrolled",
        "revoked_by": None,
        "revoked_at": None,
        **extra,
    }


def test_enroll_quotes_ids_and_sends_the_admin_token(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer = lambda request: (200, {"enrollment": enrollment("x", "y"), "created": True})

    code, out, _ = run_cli(
        capsys, "enroll", "@jane/doe:police.example", "PHONE-1/ä", "--label", "Streife 12", "--expires",
        "2099-01-31T00:00Z",
    )  # fmt: skip

    assert code == 0
    [request] = api.requests
    assert request.method == "PUT"
    assert request.path == f"{PREFIX}/devices/%40jane%2Fdoe%3Apolice.example/PHONE-1%2F%C3%A4"
    assert request.authorization == f"Bearer {TOKEN}"
    expires = int(datetime(2099, 1, 31, tzinfo=UTC).timestamp() * 1000)
    assert request.body == {"label": "Streife 12", "expires_at": expires}
    assert out.startswith("enrolled @jane/doe:police.example PHONE-1/ä")


def test_refusal_prints_errcode_and_error_and_exits_1(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer = lambda request: (404, {"errcode": "M_NOT_FOUND", "error": "Device is not enrolled"})

    code, out, err = run_cli(capsys, "revoke", "@jane:police.example", "PHONE1")

    assert code == 1
    assert [r.method for r in api.requests] == ["DELETE"]
    assert out == ""
    assert "M_NOT_FOUND: Device is not enrolled" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_flags_override_the_environment(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("POLICE_HOMESERVER_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("POLICE_ADMIN_TOKEN", "env-token")
    flags = ["--homeserver", api.url + "/", "--token", "flag-token"]
    argv = [*flags, "pending"] if where == "before" else ["pending", *flags]

    code, _, err = run_cli(capsys, *argv)

    assert code == 0, err
    [request] = api.requests
    assert request.path == f"{PREFIX}/pending"
    assert request.authorization == "Bearer flag-token"
    assert "flag-token" not in err


def test_missing_settings_name_flag_and_variable(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLICE_HOMESERVER_URL")
    monkeypatch.setenv("POLICE_ADMIN_TOKEN", "")

    code, out, err = run_cli(capsys, "list")

    assert code == 2
    assert out == ""
    for name in ("--homeserver", "POLICE_HOMESERVER_URL", "--token", "POLICE_ADMIN_TOKEN"):
        assert name in err
    assert api.requests == []


def test_token_with_a_newline_is_refused_without_echoing_it(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICE_ADMIN_TOKEN", "abc\ndef")

    code, _, err = run_cli(capsys, "list")

    assert code == 2
    assert "abc" not in err
    assert api.requests == []


def test_unreachable_server_names_the_url_and_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}"
        monkeypatch.setenv("POLICE_HOMESERVER_URL", url)
        monkeypatch.setenv("POLICE_ADMIN_TOKEN", TOKEN)

        code, out, err = run_cli(capsys, "approve", "K7Q2-M9XD")

    assert code == 2
    assert out == ""
    assert f"cannot reach {url}{PREFIX}/pending/K7Q2-M9XD/approve: Connection refused" in err
    assert "Traceback" not in err


def test_list_follows_next_from_over_one_connection(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = {
        None: {"enrollments": [enrollment("@a:police.example", "A1")], "next_from": "p2"},
        "p2": {"enrollments": [enrollment("@a:police.example", "A2", label="Wache Nord")]},
    }
    api.answer = lambda request: (200, pages[request.query.get("from", [None])[0]])

    code, out, _ = run_cli(capsys, "list", "--user", "@a:police.example", "--state", "enrolled")

    assert code == 0
    assert [r.query.get("from") for r in api.requests] == [None, ["p2"]]
    assert all(r.query["user_id"] == ["@a:police.example"] for r in api.requests)
    assert all(r.query["state"] == ["enrolled"] for r in api.requests)
    assert len({r.client_port for r in api.requests}) == 1
    header, first, second = out.splitlines()
    assert header.split()[:3] == ["USER", "DEVICE", "STATE"]
    assert first.split()[:3] == ["@a:police.example", "A1", "enrolled"]
    assert "Wache Nord" in second

    code, out, _ = run_cli(capsys, "list", "--json")
    assert [e["device_id"] for e in json.loads(out)] == ["A1", "A2"]


def test_approve_posts_an_empty_object_to_the_request_read_over_the_phone(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str]
) -> None:
    pending = {
        "request_id": "K7Q2-M9XD",
        "user_id": "@a:police.example",
        "state": "approved",
        "device_id": None,
    }
    api.answer = lambda request: (200, {"pending": pending})

    code, out, _ = run_cli(capsys, "approve", "k7q2-m9xd")

    assert code == 0
    [request] = api.requests
    assert (request.method, request.path, request.body) == ("POST", f"{PREFIX}/pending/K7Q2-M9XD/approve", {})
    assert out.startswith("approved: request K7Q2-M9XD from @a:police.example")


def answer_import(failing: set[str], existing: set[str]) -> Answer:
    def answer(request: Request) -> tuple[int, Any]:
        results = []
        for index, device in enumerate(request.body["devices"]):
            if device["device_id"] in failing:
                field = f"devices[{index}].user_id"
                error = {"errcode": "M_INVALID_PARAM", "field": field, "error": f"{field}: no user"}
                results.append({"index": index, "ok": False, **error})
            else:
                results.append({"index": index, "ok": True, "created": device["device_id"] not in existing})
        return 200, {"results": results}

    return answer


def test_import_batches_and_reports_failing_lines(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text(
        "user_id,device_id,label,note\n"  # line 1
        "@a:police.example,A1,,x\n"  # 2
        '@b:police.example,B1,"two\nlines",\n'  # 3-4: a label of two lines, never sent
        "@c:police.example,,,\n"  # 5: no device_id, never sent
        "\n"  # 6: blank, skipped
        "@d:police.example,D1,Wache\n"  # 7: refused by the server
        "@e:police.example,E1\n"  # 8: short row, empty label
        "@f:police.example,F1,Kfz 12\n",  # 9: already enrolled
        encoding="utf8",
    )
    api.answer = answer_import(failing={"D1"}, existing={"F1"})

    code, out, _ = run_cli(capsys, "import", str(csv_file), "--batch-size", "2")

    assert code == 1
    assert [r.path for r in api.requests] == [f"{PREFIX}/devices/import"] * 2
    assert [r.body["devices"] for r in api.requests] == [
        [
            {"user_id": "@a:police.example", "device_id": "A1"},
            {"user_id": "@d:police.example", "device_id": "D1", "label": "Wache"},
        ],
        [
            {"user_id": "@e:police.example", "device_id": "E1"},
            {"user_id": "@f:police.example", "device_id": "F1", "label": "Kfz 12"},
        ],
    ]
    lines = out.splitlines()
    assert lines[0].startswith(f"{csv_file}:3: @b:police.example B1: label: contains U+000A")
    # The server's "devices[1]." names the entry in the batch; the file line says which row.
    assert lines[1:] == [
        f'{csv_file}:5: @c:police.example "": device_id empty',
        f"{csv_file}:7: @d:police.example D1: M_INVALID_PARAM: user_id: no user",
        "2 enrolled (new), 1 already enrolled, 3 failed",
    ]


def test_import_without_failures_exits_0(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("\ufeffLabel,User_ID,Device_ID\nWache,@a:police.example,A1\n", encoding="utf8")
    api.answer = answer_import(failing=set(), existing={"A1"})

    code, out, _ = run_cli(capsys, "import", str(csv_file))

    assert code == 0
    assert out.splitlines() == ["0 enrolled (new), 1 already enrolled, 0 failed"]


def test_import_missing_column_sends_nothing(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("user_id,label\n@a:police.example,x\n", encoding="utf8")

    code, _, err = run_cli(capsys, "import", str(csv_file))

    assert code == 2
    assert f"{csv_file}:1: missing column(s) device_id" in err
    assert api.requests == []


def test_import_stops_when_a_batch_is_refused(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("user_id,device_id,label\n@a:p.example,A1,\n@b:p.example,B1,\n", encoding="utf8")
    api.answer = lambda request: (403, {"errcode": "M_FORBIDDEN", "error": "You are not a server admin"})

    code, out, err = run_cli(capsys, "import", str(csv_file), "--batch-size", "1")

    assert code == 1
    assert len(api.requests) == 1
    assert out.splitlines() == ["0 enrolled (new), 0 already enrolled, 0 failed"]
    assert f"stopped at {csv_file}:2" in err
    assert "M_FORBIDDEN: You are not a server admin" in err


@pytest.mark.parametrize("size", ["0", "1001", "many", "²", "١٢", "\uff15", " 5", "+5", "5_0", "9" * 40])
def test_batch_size_out_of_range_is_a_usage_error(api: FakeAdminApi, size: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["devices", "import", str(tmp_path / "x.csv"), "--batch-size", size])
    assert exit_info.value.code == 2
    assert api.requests == []


NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", ms(NOW + timedelta(days=30))),
        ("12h", ms(NOW + timedelta(hours=12))),
        ("2027-01-31T00:00Z", ms(datetime(2027, 1, 31, tzinfo=UTC))),
        ("2027-01-31T01:00+01:00", ms(datetime(2027, 1, 31, tzinfo=UTC))),
        ("2027-01-31", ms(datetime(2027, 1, 31, tzinfo=UTC))),
    ],
)
def test_parse_expiry(text: str, expected: int) -> None:
    assert parse_expiry(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["0d", "30 days", "yesterday", "2026-04-30T00:00Z"])
def test_parse_expiry_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_expiry(text, now=NOW)


@pytest.mark.parametrize(
    "text", ["99999999999999d", "\uff12\uff10\uff12\uff17-01-31", "10000-01-01", "9999-12-31T23:00-05:00"]
)
def test_parse_expiry_refuses_what_no_server_would_take(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_expiry(text, now=NOW)


# --- input that cannot be shown, and output that must not spoof the table ---------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["enroll", "@a:police.example", "PHONE\u202e1"], "U+202E"),
        (["enroll", "@a\u2066:police.example", "P1"], "U+2066"),
        (["enroll", "@a:police.example", "P1", "--label", "asset\u202e4711"], "bidirectional"),
        (["enroll", "@a:police.example", "P1", "--label", "x" * 257], "longer than 256"),
        (["enroll", "@a:police.example", "P1", "--expires", "99999999999999d"], "after the year 9999"),
        (["revoke", "@a:police.example", "P\u200b1"], "U+200B"),
        (["approve", "K7Q2/M9XD"], "such as K7Q2-M9XD"),
        (["reject", "\u202eK7Q2-M9XD"], "such as K7Q2-M9XD"),
        (["list", "--state", "bogus"], "invalid choice"),
        (["list", "--user", "@a:police.example\u2028"], "U+2028"),
    ],
)
def test_arguments_that_cannot_be_shown_are_usage_errors(
    api: FakeAdminApi, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["devices", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert words in err
    assert unsafe_character(err.replace("\n", "")) is None
    assert api.requests == []


SPOOFING = [
    enrollment(
        "@a:police.example",
        "A1\u202eDELKCOLB",
        label="Streife\n@boss:police.example  ADMIN  enrolled",
        enrolled_at=2**70,
        expires_at=True,
    ),
    enrollment(
        "@b:police.example",
        "B1",
        label="\x1b[2J\u2067evil\u2069" + "e\u0301" * 3 + "a\u0301\u0302\u0303\u0304",
    ),
    enrollment(
        "@c:police.example", "\u8b66\u5bdf", label="\u8b66\u5bdf" * 20, enrolled_at=-5, expires_at="soon"
    ),
]


def test_records_cannot_spoof_the_table(api: FakeAdminApi, capsys: pytest.CaptureFixture[str]) -> None:
    """Records written before labels were checked, or by a broken server, are
    shown escaped: one line each, columns where the header says."""
    api.answer = lambda request: (200, {"enrollments": SPOOFING})

    code, out, _ = run_cli(capsys, "list")

    assert code == 0
    header, *rows = out.splitlines()
    assert len(rows) == len(SPOOFING)
    assert unsafe_character(out.replace("\n", "")) is None
    assert "\x1b" not in out
    state_column = display_width(header[: header.index("STATE")])
    for row in rows:
        cells = row.split("  ")
        assert display_width("  ".join(cells[:2]).rstrip()) <= state_column, row
    assert "A1\\u202eDELKCOLB" in rows[0]
    assert "Streife\\x0a@boss" in rows[0]

    code, out, _ = run_cli(capsys, "list", "--json")
    assert json.loads(out) == SPOOFING
    assert unsafe_character(out.replace("\n", "")) is None


def test_server_errors_are_escaped(api: FakeAdminApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.answer = lambda request: (400, {"errcode": "M_INVALID_PARAM", "error": "label: \u202e\nforged line"})

    code, _, err = run_cli(capsys, "enroll", "@a:police.example", "P1")

    assert code == 1
    assert err.count("\n") == 1
    assert "\\u202e\\x0aforged line" in err


@given(st.text())
def test_printable_leaves_nothing_that_moves_text(text: str) -> None:
    shown = printable(text)
    assert all(char.isprintable() for char in shown)
    assert unsafe_character(shown) is None
    assert not re.search(r"(?:[\u0300-\u036f]){3}", shown)
    if all(" " <= char <= "~" for char in text):
        assert shown == text
    assert display_width(printable(text, width=12)) <= 12


@given(
    st.recursive(
        st.none() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_json_output_is_escaped_and_still_the_same_json(value: Any) -> None:
    text = json_text(value)
    assert json.loads(text) == value
    assert unsafe_character(text.replace("\n", "")) is None
