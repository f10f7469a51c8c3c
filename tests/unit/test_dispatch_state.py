"""The dispatch bot's state on disk: what a restart needs is there after reopening."""

from __future__ import annotations

from pathlib import Path

from bots.dispatch.state import Addressee, State

T0 = 1_800_000_000.0


def test_everything_survives_a_reopen(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    state = State(path)
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

    state = State(path)
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
    state = State(tmp_path / "s.sqlite")
    number = state.new_incident("X", 2, None, "!ctl", "@d:x", T0)
    state.assign(number, "alpha", T0)
    state.add_diary(number, T0, "@d:x", "command", "x")
    state.drop_incident(number)
    assert state.incident(number) is None and state.diary(number) == []
    state.close()
