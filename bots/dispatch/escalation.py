"""Who is due for a repeated alert and an escalation at time ``now`` (pure).

An alert is sent once (round 1) with a deadline. At each deadline the
addressees who have not acknowledged are alerted again and the supervisors of
their units are told who is missing; after ``max_alerts`` rounds a last
escalation goes to the control room and the bot stops repeating. The times
come from the state on disk, so a restarted bot picks up where it stopped.
An escalation is posted in the alert's control room; whoever it addresses
(``addressed``) and has not joined that room gets a copy in a direct room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .directory import localpart
from .state import Addressee, AlertView


@attrs.frozen
class Step:
    alert_id: int
    #: addressees without an acknowledgement at ``now``
    missing: tuple[Addressee, ...]
    #: alert the missing again
    realert: bool
    #: no more rounds after this one: the control room is told
    final: bool
    rounds: int
    next_due: float | None

    @property
    def done(self) -> bool:
        """Everyone acknowledged: the alert can be closed."""
        return not self.missing


def due_steps(alerts: Iterable[AlertView], now: float, max_alerts: int) -> list[Step]:
    steps: list[Step] = []
    for alert in alerts:
        if alert.closed or alert.due_at is None or alert.due_at > now:
            continue
        missing = alert.missing
        if not missing:
            steps.append(Step(alert.id, (), False, False, alert.rounds, None))
        elif alert.rounds < max_alerts:
            steps.append(Step(alert.id, missing, True, False, alert.rounds + 1, now + alert.period))
        else:
            steps.append(Step(alert.id, missing, False, True, alert.rounds, None))
    return steps


def next_due(alerts: Iterable[AlertView]) -> float | None:
    """When the escalation loop must look next (None: nothing pending)."""
    times = [a.due_at for a in alerts if not a.closed and a.due_at is not None]
    return min(times) if times else None


def supervisors_for(
    missing: Iterable[Addressee], supervisors: Mapping[str, str | None]
) -> dict[str, list[str]]:
    """Supervisor -> the missing users of their units (``supervisors``: unit name -> supervisor)."""
    told: dict[str, list[str]] = {}
    for addressee in missing:
        for unit in addressee.units:
            supervisor = supervisors.get(unit)
            if supervisor and addressee.user_id not in told.setdefault(supervisor, []):
                told[supervisor].append(addressee.user_id)
    return told


def addressed(told: Mapping[str, list[str]], sender: str, duty: str | None, bot: str) -> list[str]:
    """Who an escalation is for: the supervisors told, whoever gave the alert and the dispatcher
    on duty in its control room (after a handover), each once; never the bot."""
    people = [*sorted(told), sender, *([duty] if duty else [])]
    return [user for user in dict.fromkeys(people) if user != bot]


def escalation_text(alert: AlertView, step: Step, told: Mapping[str, list[str]], max_alerts: int) -> str:
    """The escalation of ``step``: numbered by round (as the reminders are), or the last one."""
    names = ", ".join("{" + a.user_id + "}" for a in step.missing)
    if step.final:
        text = (
            f"⛔ Alert A{alert.id} ({alert.text}): still not acknowledged after "
            f"{step.rounds} alerts by {names}."
        )
    else:
        text = (
            f"⚠️ Escalation, alert A{alert.id}, round {step.rounds}/{max_alerts} ({alert.text}): "
            f"not acknowledged by {names}."
        )
    for supervisor, users in sorted(told.items()):
        text += f"\nSupervisor {{{supervisor}}}: missing from your unit: " + ", ".join(
            localpart(u) for u in users
        )
    return text
