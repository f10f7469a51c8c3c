"""Whatever a caller sends the module's admin API, a real Synapse answers it
without a 5xx; a 4xx changes nothing, and a GET never writes.

Every endpoint gets arbitrary query strings, JSON bodies (non-objects, huge,
negative, float and boolean numbers, unicode with bidirectional controls and
lone surrogates), raw bytes and path segments (percent-encoded text and
bytes). Each part of a request is mostly well-formed and sometimes wild, so
that the later checks of an endpoint get exercised too. The module's tables
and Synapse's devices are compared before and after each request."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_from_bytes

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.homeserver import Homeserver
from synapse_police_policy.devices.rules import MAX_TIME_MS, unsafe_character
from tests.admin_api import WrittenTables, raw_call

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: 2100-01-01T00:00Z: an expiry that stays in the future
FAR_FUTURE_MS = 4_102_444_800_000
ABSENT = object()


def pick(*options: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``options``, each as likely. (``st.one_of`` flattens nested
    ``one_of``s into one list of branches, which would weight them by size.)"""
    return st.sampled_from(options).flatmap(lambda chosen: chosen)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four."""
    return pick(usual, usual, usual, other)


def present(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An object in which each field is there half of the time."""
    return st.fixed_dictionaries({name: pick(value, st.just(ABSENT)) for name, value in fields.items()}).map(
        lambda drawn: {name: value for name, value in drawn.items() if value is not ABSENT}
    )


BIDI_AND_FORMAT = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u200b\ufeff"
LINE_BREAKS = "\n\r\t\x00\x1b\x85\u2028\u2029"
UNSAFE_TEXT = st.text(
    alphabet=pick(
        st.sampled_from(BIDI_AND_FORMAT + LINE_BREAKS + "ab12 -"), st.characters(categories=["Cs", "Co"])
    ),
    min_size=1,
    max_size=12,
)
TEXT = pick(
    st.text(max_size=30),
    UNSAFE_TEXT,
    st.sampled_from(["", " ", "asset 4711", "Funkwagen\u00a012 \u2013 Ärger", "x" * 257, "%", "..", "/"]),
)
EDGE_NUMBERS = st.sampled_from(
    [10**20, 2**63, 2**63 - 1, 2**64, -(2**63), MAX_TIME_MS, MAX_TIME_MS + 1, 0, -1, 2**53 + 1, 10**4000]
)
NUMBERS = pick(st.integers(), EDGE_NUMBERS, st.floats(), st.booleans())
JSON = st.recursive(
    st.none() | NUMBERS | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
#: numbers as a query parameter carries them, and what looks like one
NUMBER_TEXT = pick(
    st.integers(min_value=-5, max_value=2000).map(str),
    st.sampled_from(
        ["²", "¹⁰", "١٢", "\uff15", "+5", "-0", " 5", "5 ", "5\n", "1e3", "0x10", "1_0", "9" * 30, "", "0"]
    ),
    st.text(alphabet="0123456789", min_size=1, max_size=25),
)
STATES = st.sampled_from(["open", "approved", "enrolled", "revoked", "expired", "all", "ALL", ""])
PLAUSIBLE_DEVICE_ID = st.from_regex(r"[A-Z0-9-]{1,12}", fullmatch=True)
EXPIRY = pick(st.integers(min_value=FAR_FUTURE_MS, max_value=MAX_TIME_MS), EDGE_NUMBERS, JSON)
LABEL = mostly(st.text(max_size=30), pick(UNSAFE_TEXT, TEXT, JSON))


def _encoded(text: str) -> str:
    """Percent-encoded UTF-8; a lone surrogate becomes bytes that are not UTF-8."""
    return quote(text, safe="", errors="surrogatepass")


#: a path segment or query value nobody meant: text, unsafe text, bytes, broken escapes
WILD = pick(
    TEXT.filter(bool).map(_encoded),
    st.binary(min_size=1, max_size=20).map(lambda raw: quote_from_bytes(raw, safe="")),
    st.from_regex(r"[A-Za-z0-9%._~!$&'()*+,;=:@-]{1,16}", fullmatch=True),
    NUMBER_TEXT.filter(bool).map(_encoded),
)


@attrs.frozen
class World:
    hs: Homeserver
    admin_token: str
    #: users of the server; others (a ghost, a foreign user) are refused
    users: tuple[str, ...]
    strangers: tuple[str, ...]
    #: device IDs worth aiming at (never the admin's own device)
    device_ids: tuple[str, ...]
    request_ids: tuple[str, ...]
    tables: WrittenTables

    def user_id(self) -> st.SearchStrategy[str]:
        return mostly(st.sampled_from(self.users), pick(st.sampled_from(self.strangers), TEXT))

    def device_id(self) -> st.SearchStrategy[str]:
        return pick(PLAUSIBLE_DEVICE_ID, st.sampled_from(self.device_ids))


@pytest.fixture(scope="module")
def world(start_homeserver: Any) -> Iterator[World]:
    # No sweep during the run: it would change the tables between two snapshots.
    hs = start_homeserver("admin_input", module_config={"devices": {"sweep_interval": "1d"}})
    admin = f"admin-{uuid.uuid4().hex[:6]}"
    admin_token, _ = hs.register_enrolled_user(admin, "pw-admin", admin=True)
    officer, password = f"officer-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    _, officer_device = hs.register_enrolled_user(officer, password)
    for device_id in ("UNKNOWN-1", "UNKNOWN-2", "UNKNOWN-3", None):
        status, answer = hs.try_login(officer, password, device_id)
        assert status == 403, answer
    tables = WrittenTables(hs)
    request_ids = tuple(row[0] for row in tables.snapshot()["pending"])
    assert len(request_ids) == 4, request_ids
    yield World(
        hs=hs,
        admin_token=admin_token,
        users=(hs.user_id(officer), hs.user_id(admin)),
        strangers=(f"@ghost:{hs.server_name}", "@officer:other.example", hs.user_id(officer).upper()),
        device_ids=(officer_device, "UNKNOWN-1", "IPHONE-4711", "import"),
        request_ids=request_ids,
        tables=tables,
    )
    tables.close()


def user_segment(world: World) -> st.SearchStrategy[str]:
    return mostly(world.user_id().map(_encoded), WILD)


def device_segment(world: World) -> st.SearchStrategy[str]:
    return mostly(world.device_id().map(_encoded), WILD)


def request_segment(world: World) -> st.SearchStrategy[str]:
    known = st.sampled_from(world.request_ids)
    shaped = st.from_regex(r"[A-Z0-9]{4}-[A-Z0-9]{4}", fullmatch=True)
    return mostly(pick(known, known.map(str.lower), shaped), WILD)


def query(params: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """Mostly the endpoint's own parameters (each there half of the time) with
    odd values; sometimes unknown names, repeats, empty pairs, bytes that are
    not UTF-8 and a second access token."""
    own = present({name: mostly(value, TEXT) for name, value in params.items()}).map(
        lambda pairs: [f"{name}={_encoded(text)}" for name, text in pairs.items()]
    )
    name = pick(st.sampled_from([*params, "user", "Limit", ""]), st.text(max_size=8))
    value = pick(NUMBER_TEXT, TEXT, STATES)
    noisy = st.lists(
        pick(
            st.tuples(name, value).map(lambda pair: f"{_encoded(pair[0])}={_encoded(pair[1])}"),
            st.tuples(name, st.binary(max_size=8)).map(
                lambda pair: f"{_encoded(pair[0])}={quote_from_bytes(pair[1])}"
            ),
            st.sampled_from(
                ["&", "=", "limit", "limit=", "==", "%", "a=%zz", "limit=1&limit=2", "access_token=x"]
            ),
        ),
        min_size=1,
        max_size=4,
    )
    return mostly(own, noisy).map(lambda pairs: "?" + "&".join(pairs) if pairs else "")


def body(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes | None]:
    """Mostly a JSON body of ``values`` (lone surrogates as escapes); sometimes
    none, raw bytes, broken or deeply nested JSON."""
    odd = pick(
        st.none(),
        st.binary(max_size=40),
        st.sampled_from([b"", b"{", b"NaN", b'{"label": "\xff"}', b"[" * 5000 + b"]" * 5000]),
    )
    return mostly(values.map(lambda value: json.dumps(value).encode()), odd)


def enrollment_fields(world: World, *, entry: bool = False) -> st.SearchStrategy[Any]:
    """An enroll body or import entry: mostly the right fields with odd values,
    sometimes an unknown field or no object at all."""
    fields: dict[str, st.SearchStrategy[Any]] = {"label": LABEL, "expires_at": EXPIRY}
    if entry:
        fields["user_id"] = mostly(world.user_id(), JSON)
        fields["device_id"] = mostly(world.device_id(), pick(TEXT, JSON))
    odd = pick(present({**fields, "colour": JSON}), JSON)
    return mostly(present(fields), odd)


def send(
    world: World, method: str, path: str, data: bytes | None
) -> tuple[int, Any, dict[str, Any], dict[str, Any]]:
    """The request's status and answer, and the tables before and after it."""
    before = world.tables.snapshot()
    status, answer = raw_call(world.hs, method, path, world.admin_token, data)
    after = world.tables.snapshot()
    assert status < 500, (method, path, data, status, answer)
    if 400 <= status < 500:
        assert after == before, (method, path, data, status, answer)
        if method != "HEAD":
            assert isinstance(answer, dict) and isinstance(answer.get("errcode"), str), answer
            # A refusal says what was wrong without echoing characters that
            # would reorder or hide text on the operator's screen.
            assert isinstance(answer.get("error"), str) and answer["error"], answer
            assert unsafe_character(answer["error"]) is None, answer
    return status, answer, before, after


def changed_enrollments(before: dict[str, Any], after: dict[str, Any]) -> set[tuple[str, str]]:
    return {(row[0], row[1]) for row in set(after["enrollments"]) ^ set(before["enrollments"])}


@EXAMPLES
@given(data=st.data())
def test_enroll(world: World, data: st.DataObject) -> None:
    user, device = data.draw(user_segment(world)), data.draw(device_segment(world))
    path = f"devices/{user}/{device}{data.draw(query({}))}"
    status, answer, before, after = send(world, "PUT", path, data.draw(body(enrollment_fields(world))))
    if status == 200:
        record = answer["enrollment"]
        assert record["state"] == "enrolled"
        assert changed_enrollments(before, after) <= {(record["user_id"], record["device_id"])}


@EXAMPLES
@given(data=st.data())
def test_revoke(world: World, data: st.DataObject) -> None:
    user, device = data.draw(user_segment(world)), data.draw(device_segment(world))
    path = f"devices/{user}/{device}{data.draw(query({}))}"
    status, answer, before, after = send(world, "DELETE", path, data.draw(body(JSON)))
    if status == 200:
        record = answer["enrollment"]
        assert record["state"] == "revoked"
        assert changed_enrollments(before, after) == {(record["user_id"], record["device_id"])}


@EXAMPLES
@given(data=st.data())
def test_import(world: World, data: st.DataObject) -> None:
    entries = st.lists(enrollment_fields(world, entry=True), max_size=6)
    odd = pick(
        st.fixed_dictionaries({"devices": entries, "dry_run": JSON}),
        st.fixed_dictionaries({"devices": JSON}),
        st.just({"devices": [{"user_id": world.users[0], "device_id": "X"}] * 1001}),
        JSON,
    )
    raw = data.draw(body(mostly(st.fixed_dictionaries({"devices": entries}), odd)))
    status, answer, before, after = send(world, "POST", f"devices/import{data.draw(query({}))}", raw)
    if status != 200:
        return
    assert raw is not None
    sent = json.loads(raw)["devices"]
    results = answer["results"]
    assert [result["index"] for result in results] == list(range(len(sent)))
    accepted = {(sent[r["index"]]["user_id"], sent[r["index"]]["device_id"]) for r in results if r["ok"]}
    # Every accepted entry is enrolled and nothing else changed; a refused one
    # names its index and field.
    assert changed_enrollments(before, after) <= accepted
    assert accepted <= {(row[0], row[1]) for row in after["enrollments"] if row[6] == "enrolled"}
    for result in results:
        if not result["ok"]:
            assert result["field"].startswith(f"devices[{result['index']}]"), result
            assert result["error"].startswith(result["field"] + ": "), result
            assert unsafe_character(result["error"]) is None, result


@EXAMPLES
@given(data=st.data())
def test_list(world: World, data: st.DataObject) -> None:
    params = {"user_id": world.user_id(), "state": STATES, "limit": NUMBER_TEXT, "from": NUMBER_TEXT}
    status, answer, before, after = send(
        world, "GET", f"devices{data.draw(query(params))}", data.draw(body(JSON))
    )
    assert after == before
    if status == 200:
        assert isinstance(answer["enrollments"], list)


@EXAMPLES
@given(data=st.data())
def test_pending(world: World, data: st.DataObject) -> None:
    params = {"state": STATES, "limit": NUMBER_TEXT}
    status, answer, before, after = send(
        world, "GET", f"pending{data.draw(query(params))}", data.draw(body(JSON))
    )
    assert after == before
    if status == 200:
        assert isinstance(answer["pending"], list)


@EXAMPLES
@given(data=st.data())
def test_decide(world: World, data: st.DataObject) -> None:
    verb = data.draw(st.sampled_from(["approve", "reject"]))
    path = f"pending/{data.draw(request_segment(world))}/{verb}{data.draw(query({}))}"
    status, answer, _, _ = send(world, "POST", path, data.draw(body(mostly(st.just({}), JSON))))
    if status == 200:
        assert answer["pending"]["state"] == ("approved" if verb == "approve" else "rejected")


@EXAMPLES
@given(data=st.data())
def test_any_method_on_any_path(world: World, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    fixed = st.sampled_from(["devices", "pending", "import", "approve", "reject", "", ".."])
    segments = data.draw(st.lists(pick(fixed, user_segment(world), request_segment(world)), max_size=4))
    path = "/".join(segments) + data.draw(query({"limit": NUMBER_TEXT, "state": STATES}))
    send(world, method, path, data.draw(body(JSON)))
