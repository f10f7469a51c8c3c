"""The bots' cross-signing keys and their sealed file, on plain data (the server's side is in
tests/integration/test_bot_identity.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.common.cross_signing import CrossSigningKeys, canonical, key_of, sign, verify
from bots.common.identity import FORMAT, IdentityError, IdentityFile, ServerIdentity

USER = "@dispatch-bot:polizei.example"
DEVICE = {
    "user_id": USER,
    "device_id": "DISPATCH-BOT",
    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
    "keys": {"ed25519:DISPATCH-BOT": "abc", "curve25519:DISPATCH-BOT": "def"},
    "signatures": {USER: {"ed25519:DISPATCH-BOT": "device's own signature"}},
    "unsigned": {"device_display_name": "dispatch bot"},
}


def test_canonical_json_leaves_out_signatures_and_unsigned_and_sorts_keys() -> None:
    assert canonical({"b": 1, "a": "ü", "signatures": {}, "unsigned": {}}) == '{"a":"ü","b":1}'.encode()


def test_a_signed_device_verifies_and_keeps_its_own_signature() -> None:
    keys = CrossSigningKeys.generate()
    signed = sign(DEVICE, USER, keys.self_signing)
    assert verify(signed, USER, keys.self_signing_public)
    assert signed["signatures"][USER]["ed25519:DISPATCH-BOT"] == "device's own signature"
    assert "signatures" in DEVICE and len(DEVICE["signatures"][USER]) == 1, "the original is not changed"


def test_the_upload_body_names_each_key_once_and_signs_the_subkeys_with_the_master_key() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)
    assert key_of(body["master_key"]) == keys.master_public
    assert key_of(body["self_signing_key"]) == keys.self_signing_public
    assert body["master_key"]["usage"] == ["master"]
    for name in ("self_signing_key", "user_signing_key"):
        assert verify(body[name], USER, keys.master_public), name
    assert keys.master_public != keys.self_signing_public


def test_sign_device_sends_only_the_new_signature_without_unsigned() -> None:
    keys = CrossSigningKeys.generate()
    signed = keys.sign_device(DEVICE, USER)
    assert "unsigned" not in signed
    assert list(signed["signatures"][USER]) == [f"ed25519:{keys.self_signing_public}"]
    assert verify(signed, USER, keys.self_signing_public)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["keys"].update({"ed25519:DISPATCH-BOT": "another key"}),
        lambda d: d.update({"user_id": "@mallory:polizei.example"}),
        lambda d: d.update({"algorithms": []}),
    ],
)
def test_a_changed_device_no_longer_verifies(change) -> None:
    keys = CrossSigningKeys.generate()
    signed = json.loads(json.dumps(sign(DEVICE, USER, keys.self_signing)))
    change(signed)
    assert not verify(signed, USER, keys.self_signing_public)


def test_a_signature_by_another_key_or_user_does_not_verify() -> None:
    keys, other = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    signed = sign(DEVICE, USER, keys.self_signing)
    assert not verify(signed, USER, other.self_signing_public)
    assert not verify(signed, "@other:polizei.example", keys.self_signing_public)
    assert not verify(signed, USER, keys.master_public)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.dictionaries(st.text(), inner) | st.lists(inner),
    )
)
def test_verify_answers_false_for_any_malformed_object(obj) -> None:
    keys = CrossSigningKeys.generate()
    candidate = {"signatures": {USER: {f"ed25519:{keys.self_signing_public}": obj}}, "x": obj}
    assert verify(candidate, USER, keys.self_signing_public) is False
    assert verify({"signatures": obj}, USER, keys.self_signing_public) is False
    assert key_of(obj) is None or isinstance(key_of(obj), str)


def test_seeds_round_trip_and_have_a_fixed_length() -> None:
    keys = CrossSigningKeys.generate()
    again = CrossSigningKeys.from_seeds(keys.seeds())
    assert (again.master_public, again.self_signing_public) == (keys.master_public, keys.self_signing_public)
    with pytest.raises(ValueError, match="96 bytes"):
        CrossSigningKeys.from_seeds(keys.seeds()[:-1])


# -- the sealed file --------------------------------------------------------------------------------


def _file(tmp_path: Path, key: bytes = b"k" * 32, user: str = USER) -> IdentityFile:
    return IdentityFile(tmp_path / "identity" / "cross-signing-identity.json", user, key)


def test_the_file_round_trips_is_private_and_holds_no_private_key_in_clear(tmp_path: Path) -> None:
    keys = CrossSigningKeys.generate()
    file = _file(tmp_path)
    assert file.load() is None
    file.save(keys)
    loaded = file.load()
    assert loaded is not None and loaded.seeds() == keys.seeds()
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    text = file.path.read_text()
    data = json.loads(text)
    assert data["format"] == FORMAT and data["master_key"] == keys.master_public
    for seed in (keys.seeds()[i : i + 32] for i in (0, 32, 64)):
        assert seed.hex() not in text and seed not in file.path.read_bytes()
    assert "seed" not in repr(file) and "k" * 32 not in repr(file)


def test_the_wrong_key_is_refused_with_what_to_do(tmp_path: Path) -> None:
    _file(tmp_path).save(CrossSigningKeys.generate())
    with pytest.raises(IdentityError, match="sealed with another key"):
        _file(tmp_path, key=b"x" * 32).load()


def test_another_accounts_file_is_refused(tmp_path: Path) -> None:
    _file(tmp_path).save(CrossSigningKeys.generate())
    with pytest.raises(IdentityError, match="not of @auditor-bot"):
        _file(tmp_path, user="@auditor-bot:polizei.example").load()


def test_keys_swapped_between_two_files_fail_authentication(tmp_path: Path) -> None:
    first, second = _file(tmp_path / "a"), _file(tmp_path / "b")
    first.save(CrossSigningKeys.generate())
    second.save(CrossSigningKeys.generate())
    one, two = json.loads(first.path.read_text()), json.loads(second.path.read_text())
    one["sealed"] = two["sealed"]
    first.path.write_text(json.dumps(one))
    with pytest.raises(IdentityError, match="damaged"):
        first.load()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(["format", "user_id", "master_key", "salt", "check", "sealed", None]),
    value=st.none() | st.integers() | st.text(max_size=40) | st.lists(st.integers(), max_size=3),
)
def test_any_damage_to_the_file_is_an_identity_error_never_a_crash(tmp_path: Path, field, value) -> None:
    file = _file(tmp_path)
    file.save(CrossSigningKeys.generate())
    data = json.loads(file.path.read_text())
    if field is None:
        file.path.write_text(json.dumps(value))
    else:
        data[field] = value
        file.path.write_text(json.dumps(data))
    with pytest.raises(IdentityError):
        file.load()


def test_a_file_that_is_not_json_is_an_identity_error(tmp_path: Path) -> None:
    file = _file(tmp_path)
    file.path.parent.mkdir()
    file.path.write_bytes(b"\xff\x00 not json")
    with pytest.raises(IdentityError, match="cannot read"):
        file.load()


# -- what the server says ---------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=3),
    max_leaves=20,
)


@given(
    body=_JSON
    | st.fixed_dictionaries(
        {},
        optional={
            name: _JSON
            | st.fixed_dictionaries({USER: _JSON | st.fixed_dictionaries({"DISPATCH-BOT": _JSON})})
            for name in ("master_keys", "self_signing_keys", "device_keys")
        },
    )
)
def test_any_keys_query_answer_reads_as_present_or_absent_never_a_crash(body) -> None:
    found = ServerIdentity.from_query(body, USER, "DISPATCH-BOT")
    assert found.master is None or isinstance(found.master, str)
    assert found.device_keys is None or isinstance(found.device_keys, dict)
    assert found.device_ed25519("DISPATCH-BOT") is None or isinstance(
        found.device_ed25519("DISPATCH-BOT"), str
    )


def test_a_keys_query_answer_is_read_as_the_spec_shapes_it() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)
    answer = {
        "master_keys": {USER: body["master_key"]},
        "self_signing_keys": {USER: body["self_signing_key"]},
        "device_keys": {USER: {"DISPATCH-BOT": DEVICE}},
    }
    found = ServerIdentity.from_query(answer, USER, "DISPATCH-BOT")
    assert (found.master, found.self_signing) == (keys.master_public, keys.self_signing_public)
    assert found.device_ed25519("DISPATCH-BOT") == "abc"
    assert ServerIdentity.from_query(answer, "@other:polizei.example", "DISPATCH-BOT") == ServerIdentity(
        None, None, None
    )
