"""The dispatch bot's state on disk: what a restart needs is there after reopening, and
what people wrote or where they are is not on the disk in clear."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bots.common.crypto import new_key
from bots.dispatch.state import (
    AFTER_BOARD,
    AFTER_PIN,
    SCHEMA,
    Addressee,
    EarlyAck,
    State,
    StateError,
    WrongKeyError,
)

T0 = 1_800_000_000.0
KEY = new_key()


def test_everything_survives_a_reopen(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    state = State(path, KEY)
    number = state.new_incident("Einbruch", 1, "Markt 1", "!ctl", "@d:x", T0)
    state.set_incident_room(number, "!inc")
    assert state.assign(number, "alpha", T0) and not state.assign(number, "alpha", T0 + 1)
    state.assign(number, "bravo", T0 + 1)
    alert_id = state.new_alert(
        incident_id=number,
        control_room="!ctl",
        sender="@d:x",
        text="go",
        at=T0,
        period=30,
        addressees=[Addressee("@a:x", ("alpha",), "!inc"), Addressee("@b:x", ("alpha",), "!inc")],
    )
    outgoing = state.queue("!inc", {"body": "alert"}, alert_id)
    state.sent(outgoing, "$alert-event", alert_id)
    state.queue("!new-room", {"body": "card"})
    assert state.acknowledge(alert_id, "@a:x", T0 + 5, "✅")
    assert not state.acknowledge(alert_id, "@a:x", T0 + 6, "reply"), "counted once"
    assert not state.acknowledge(alert_id, "@zz:x", T0 + 6, "reply"), "not an addressee"
    state.set_status("@a:x", 3, T0 + 7)
    state.set_location("@b:x", "geo:1,2", T0 + 8)
    state.add_diary(number, T0, "@d:x", "command", "!incident new Einbruch")
    state.set_board("!ctl", "$board")
    state.set_room("unit:alpha", "!unit")
    state.put("sync_token", "s123")
    assert state.first_time("$e1") and not state.first_time("$e1")
    state.close()

    state = State(path, KEY)
    (incident,) = state.open_incidents()
    assert (incident.id, incident.room_id, incident.units) == (number, "!inc", ("alpha", "bravo"))
    assert state.incident_by_room("!inc") == incident
    assert state.alert_of_event("$alert-event") == alert_id
    (alert,) = state.open_alerts()
    assert alert.due_at == T0 + 30 and alert.rounds == 1
    assert [a.user_id for a in alert.acknowledged] == ["@a:x"] and alert.acknowledged[0].via == "✅"
    assert [a.user_id for a in alert.missing] == ["@b:x"]
    assert [o.room_id for o in state.outbox()] == ["!new-room"]
    assert state.statuses() == {"@a:x": (3, T0 + 7)}
    assert state.locations() == {"@b:x": ("geo:1,2", T0 + 8)}
    assert state.diary(number)[0].kind == "command"
    assert state.boards() == {"!ctl": "$board"} and state.board("!ctl") == "$board"
    assert state.room("unit:alpha") == "!unit" and state.get("sync_token") == "s123"
    assert not state.first_time("$e1")

    state.set_due(alert_id, T0 + 60, 2)
    assert state.alert(alert_id).rounds == 2
    assert state.release(number, "bravo") and not state.release(number, "bravo")
    state.close_incident(number, "@d:x", T0 + 100)
    assert state.open_incidents() == [] and state.open_alerts() == []
    assert not state.incident(number).open
    state.close()


def test_a_failed_creation_leaves_nothing(tmp_path: Path):
    state = State(tmp_path / "s.sqlite", KEY)
    number = state.new_incident("X", 2, None, "!ctl", "@d:x", T0)
    state.assign(number, "alpha", T0)
    state.add_diary(number, T0, "@d:x", "command", "x")
    state.drop_incident(number)
    assert state.incident(number) is None and state.diary(number) == []
    state.close()


CANARIES = (
    "Kanarienvogel-Titel",
    "Kanarienweg 7",
    "Kanarien-Alarmtext",
    "Kanarien-Lagebericht",
    "geo:52.5,13.4",
)


def fill_with_canaries(state: State) -> int:
    title, location, alert, sitrep, geo = CANARIES
    number = state.new_incident(title, 1, location, "!ctl", "@d:x", T0)
    alert_id = state.new_alert(
        incident_id=number,
        control_room="!ctl",
        sender="@d:x",
        text=alert,
        at=T0,
        period=30,
        addressees=[Addressee("@a:x", ("alpha",), "!inc")],
    )
    state.add_diary(number, T0, "@d:x", "sitrep", sitrep)
    state.set_location("@a:x", geo, T0)
    state.queue("!inc", {"body": f"Alert: {alert}"}, alert_id)
    return number


def on_disk(path: Path) -> bytes:
    """The database file with its WAL (where the last writes are until a checkpoint)."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def test_sensitive_text_is_not_on_disk_in_clear(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    state = State(path, KEY)
    number = fill_with_canaries(state)
    data = on_disk(path)
    for canary in CANARIES:
        assert canary.encode() not in data, canary
    assert b"@d:x" in data and b"!ctl" in data, "IDs stay in clear for the queries"
    state.close()

    state = State(path, KEY)
    incident = state.incident(number)
    assert incident is not None and (incident.title, incident.location) == CANARIES[:2]
    assert state.open_alerts()[0].text == CANARIES[2]
    assert state.diary(number)[0].text == CANARIES[3]
    assert state.locations() == {"@a:x": (CANARIES[4], T0)}
    assert state.outbox()[0].content == {"body": f"Alert: {CANARIES[2]}"}
    state.close()


def test_a_wrong_key_is_refused_with_a_clear_message(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    State(path, KEY).close()
    with pytest.raises(WrongKeyError, match=r"the state key does not match the state .*state\.sqlite"):
        State(path, new_key())
    State(path, KEY).close()  # the right key still opens it


def test_a_ciphertext_copied_to_another_row_is_refused(tmp_path: Path):
    state = State(tmp_path / "state.sqlite", KEY)
    first = state.new_incident("Erster", 1, None, "!ctl", "@d:x", T0)
    second = state.new_incident("Zweiter", 1, None, "!ctl", "@d:x", T0)
    state.db.execute(
        "UPDATE incidents SET title = (SELECT title FROM incidents WHERE id = ?) WHERE id = ?",
        (first, second),
    )
    with pytest.raises(StateError, match=f"incidents.title of {second} cannot be decrypted"):
        state.incident(second)
    state.close()


def test_a_state_written_in_clear_is_encrypted_when_first_opened(tmp_path: Path):
    """A state of the version before encryption: the same tables, text in clear."""
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    title, location, alert, sitrep, geo = CANARIES
    db.execute(
        "INSERT INTO incidents (title, prio, location, control_room, created_by, created_at)"
        " VALUES (?, 1, ?, '!ctl', '@d:x', ?)",
        (title, location, T0),
    )
    db.execute(
        "INSERT INTO alerts (incident_id, control_room, sender, text, created_at, period)"
        " VALUES (1, '!ctl', '@d:x', ?, ?, 30)",
        (alert, T0),
    )
    db.execute(
        "INSERT INTO diary (incident_id, at, author, kind, text) VALUES (1, ?, '@d:x', 'sitrep', ?)",
        (T0, sitrep),
    )
    db.execute("INSERT INTO locations (user_id, geo, at) VALUES ('@a:x', ?, ?)", (geo, T0))
    db.execute("INSERT INTO outbox (room_id, content) VALUES ('!inc', '{\"body\": \"x\"}')")
    db.commit()
    db.close()
    assert title.encode() in path.read_bytes()

    state = State(path, KEY)
    assert [(i.title, i.location) for i in state.open_incidents()] == [(title, location)]
    assert state.alert(1).text == alert and state.diary(1)[0].text == sitrep
    assert state.locations()["@a:x"][0] == geo and state.outbox()[0].content == {"body": "x"}
    state.close()
    data = on_disk(path)
    for canary in CANARIES:
        assert canary.encode() not in data, canary


def test_the_bot_does_not_start_with_a_wrong_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``python -m bots.dispatch`` says which key does not fit, and exits 1 (nothing is touched)."""
    import yaml

    from bots.dispatch.__main__ import main

    State(tmp_path / "state.sqlite", KEY).close()
    (tmp_path / "state.key").write_text(new_key().hex())
    config = {
        "homeserver_url": "http://127.0.0.1:9",
        "user_id": "@dispatch-bot:police.example",
        "password": "x",
        "device_id": "DISPATCH-BOT",
        "store_dir": "store",
        "state_path": "state.sqlite",
        "state_key_file": "state.key",
        "control_rooms": ["#leitstelle:police.example"],
        "roles": {"dispatcher": ["@anna:police.example"]},
        "units": [{"name": "streife1", "members": ["@otto:police.example"]}],
    }
    (tmp_path / "dispatch.yaml").write_text(yaml.safe_dump(config))
    assert main(["-c", str(tmp_path / "dispatch.yaml")]) == 1
    error = capsys.readouterr().err
    assert "cannot start the dispatch bot: the state key does not match the state" in error
    assert "state_key_file or state_key_env" in error


def test_a_message_keeps_its_transaction_id_and_first_ciphertext_across_a_reopen(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    state = State(path, KEY)
    first = state.queue("!inc", {"body": "Kanarien-Alarmtext"}, alert_id=None)
    second = state.queue("!inc", {"body": "card"}, after=AFTER_PIN)
    (one, two) = state.outbox()
    assert one.txn_id.startswith("dispatch-") and one.txn_id != two.txn_id and one.encrypted is None
    state.keep_ciphertext(first, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA"})
    state.close()

    state = State(path, KEY)
    (again, card) = state.outbox()
    assert card.txn_id == two.txn_id
    assert (again.txn_id, again.encrypted) == (
        one.txn_id,
        {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA"},
    )
    state.sent(first, "$alert", None)
    state.sent(second, "$card", None)
    (pending,) = state.outbox()  # the card is sent but still to be pinned
    assert (pending.id, pending.event_id, pending.after) == (second, "$card", AFTER_PIN)
    state.finished(second)
    assert state.outbox() == []
    assert b"AwgA" not in on_disk(path) and b"Kanarien-Alarmtext" not in on_disk(path)
    state.close()


def test_a_new_board_takes_the_place_of_the_previous_one_when_sent(tmp_path: Path):
    state = State(tmp_path / "state.sqlite", KEY)
    state.set_board("!ctl", "$old")
    outgoing = state.queue("!ctl", {"body": "board"}, after=AFTER_BOARD)
    state.sent(outgoing, "$new", None)
    assert state.board("!ctl") == "$new"
    (pending,) = state.outbox()
    assert (pending.event_id, pending.replaces) == ("$new", "$old")
    state.close()


def test_an_outbox_of_an_earlier_version_gets_its_transaction_ids(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL,"
        " content BLOB NOT NULL, alert_id INTEGER, event_type TEXT NOT NULL DEFAULT 'm.room.message')"
    )
    db.execute("INSERT INTO outbox (room_id, content) VALUES ('!inc', '{\"body\": \"x\"}')")
    db.commit()
    db.close()
    state = State(path, KEY)
    (outgoing,) = state.outbox()
    assert outgoing.content == {"body": "x"} and outgoing.txn_id.startswith("dispatch-")
    state.close()
    assert State(path, KEY).outbox()[0].txn_id == outgoing.txn_id


def test_an_acknowledgement_before_the_alert_event_is_known_counts_once_it_is(tmp_path: Path):
    state = State(tmp_path / "state.sqlite", KEY)
    assert not state.early_ack("$x", "@a:x", T0, "✅"), "nothing on its way: nothing kept"
    alert_id = state.new_alert(
        incident_id=None,
        control_room="!ctl",
        sender="@d:x",
        text="go",
        at=T0,
        period=30,
        addressees=[Addressee("@a:x", (), "!unit")],
    )
    outgoing = state.queue("!unit", {"body": "alert"}, alert_id)
    assert state.unconfirmed_alert_messages()
    assert state.early_ack("$alert", "@a:x", T0 + 3, "✅") and state.early_ack("$other", "@a:x", T0, "✅")
    assert state.sent(outgoing, "$alert", alert_id) == [EarlyAck("@a:x", T0 + 3, "✅")]
    assert state.alert_of_event("$alert") == alert_id
    assert state.db.execute("SELECT COUNT(*) FROM early_acks").fetchone() == (0,), "none on its way: dropped"
    state.close()


def test_a_job_resumes_from_its_last_step_and_its_text_is_sealed(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    state = State(path, KEY)
    data = {"room": "!ctl", "sender": "@d:x", "body": "!incident new Kanarienvogel-Titel", "at": T0}
    assert state.receive("$cmd", "command", data, T0)
    assert not state.receive("$cmd", "command", data, T0), "a replayed event is no new job"
    (job,) = state.jobs()
    state.advance(job, "recorded", incident=4)
    state.close()

    state = State(path, KEY)
    (job,) = state.jobs()
    assert (job.step, job.data["incident"], job.data["body"]) == ("recorded", 4, data["body"])
    assert b"Kanarienvogel-Titel" not in on_disk(path)
    state.finish(job)
    assert state.jobs() == [] and not state.first_time("$cmd")
    state.close()


def test_a_room_being_made_keeps_its_token_until_it_is_recorded(tmp_path: Path):
    state = State(tmp_path / "state.sqlite", KEY)
    token, earlier = state.room_token("incident:1")
    assert not earlier and state.room_token("incident:1") == (token, True)
    state.set_room("incident:1", "!inc")
    assert state.room_token("incident:1")[0] != token, "recorded: a later creation is a new one"
    state.drop_pending_room("incident:1")
    assert state.known_rooms() == {"!inc"} and state.rooms_named("incident:") == {"incident:1": "!inc"}
    state.close()


def test_a_transaction_writes_everything_or_nothing(tmp_path: Path):
    state = State(tmp_path / "state.sqlite", KEY)
    with pytest.raises(RuntimeError), state.atomic():
        assert state.first_time("$e")
        state.new_incident("X", 2, None, "!ctl", "@d:x", T0)  # joins the outer transaction
        state.queue("!ctl", {"body": "x"})
        raise RuntimeError("crash")
    assert state.first_time("$e") and state.open_incidents() == [] and state.outbox() == []
    state.close()
