"""Who is due for a repeated alert and an escalation at time t (pure, plain data)."""

from __future__ import annotations

from bots.dispatch.escalation import addressed, due_steps, escalation_text, next_due, supervisors_for
from bots.dispatch.state import Addressee, AlertView

T0 = 1_800_000_000.0


def alert(rounds=1, due_at=T0 + 60, acked=(), closed=False, alert_id=1) -> AlertView:
    people = [
        Addressee("@a:x", ("alpha",), "!unit-a", T0 + 5 if "@a:x" in acked else None, "✅"),
        Addressee("@b:x", ("alpha",), "!unit-a", T0 + 6 if "@b:x" in acked else None, "reply"),
        Addressee("@c:x", ("bravo", "alpha"), "!unit-b", T0 + 7 if "@c:x" in acked else None, "✅"),
        Addressee("@d:x", (), "!dm", T0 + 8 if "@d:x" in acked else None, "✅"),
    ]
    return AlertView(
        alert_id, None, "!control", "@disp:x", "go", T0, 60.0, due_at, rounds, closed, tuple(people)
    )


def test_nothing_is_due_before_the_deadline():
    assert due_steps([alert()], T0 + 59.9, max_alerts=3) == []


def test_at_the_deadline_the_missing_are_alerted_again():
    (step,) = due_steps([alert(acked=("@a:x",))], T0 + 60, max_alerts=3)
    assert [a.user_id for a in step.missing] == ["@b:x", "@c:x", "@d:x"]
    assert step.realert and not step.final and not step.done
    assert (step.rounds, step.next_due) == (2, T0 + 120)


def test_after_the_last_round_the_control_room_is_told_once():
    (step,) = due_steps([alert(rounds=3, due_at=T0 + 180)], T0 + 181, max_alerts=3)
    assert step.final and not step.realert and step.next_due is None
    assert due_steps([alert(rounds=3, due_at=None)], T0 + 500, max_alerts=3) == []


def test_everyone_acknowledged_closes_the_alert():
    (step,) = due_steps([alert(acked=("@a:x", "@b:x", "@c:x", "@d:x"))], T0 + 61, max_alerts=3)
    assert step.done and step.next_due is None


def test_a_late_check_after_a_restart_is_still_one_round():
    # the bot was down past two deadlines: one round now, the next a full period later
    (step,) = due_steps([alert(due_at=T0 + 60)], T0 + 150, max_alerts=3)
    assert (step.rounds, step.next_due) == (2, T0 + 210)


def test_closed_alerts_never_escalate_and_next_due_is_the_earliest():
    alerts = [
        alert(closed=True, due_at=T0),
        alert(alert_id=2, due_at=T0 + 30),
        alert(alert_id=3, due_at=T0 + 10),
    ]
    assert [s.alert_id for s in due_steps(alerts, T0 + 100, 3)] == [2, 3]
    assert next_due(alerts) == T0 + 10
    assert next_due([alert(due_at=None)]) is None


def test_supervisors_hear_about_their_units_missing_members():
    missing = alert().missing
    told = supervisors_for(missing, {"alpha": "@sup-a:x", "bravo": "@sup-b:x"})
    assert told == {"@sup-a:x": ["@a:x", "@b:x", "@c:x"], "@sup-b:x": ["@c:x"]}
    assert supervisors_for(missing, {"alpha": None}) == {}


def test_an_escalation_addresses_the_supervisors_the_sender_and_the_dispatcher_on_duty_once():
    told = {"@sup-b:x": ["@c:x"], "@sup-a:x": ["@a:x"]}
    assert addressed(told, "@disp:x", "@duty:x", "@bot:x") == ["@sup-a:x", "@sup-b:x", "@disp:x", "@duty:x"]
    assert addressed({"@disp:x": ["@a:x"]}, "@disp:x", None, "@bot:x") == ["@disp:x"]
    assert addressed({}, "@bot:x", "@bot:x", "@bot:x") == []


def test_escalation_rounds_are_numbered_and_the_last_says_so():
    rounds = [
        escalation_text(a, step, {"@sup-a:x": ["@a:x"]}, 3)
        for a in (alert(), alert(rounds=2, due_at=T0 + 120), alert(rounds=3, due_at=T0 + 180))
        for step in due_steps([a], T0 + 200, max_alerts=3)
    ]
    assert rounds[0].startswith("⚠️ Escalation, alert A1, round 2/3 (go): not acknowledged by {@a:x}")
    assert rounds[1].startswith("⚠️ Escalation, alert A1, round 3/3 (go)")
    assert rounds[2].startswith("⛔ Alert A1 (go): still not acknowledged after 3 alerts")
    assert all("\nSupervisor {@sup-a:x}: missing from your unit: a" in text for text in rounds)
