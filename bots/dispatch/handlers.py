"""What the dispatch bot does with what people send: commands, statuses, acknowledgements.

``bot.py`` hands over each event (history is filtered there); here it is
checked (who may do what, where), carried out on the state and answered
through ``chat``. What one event changes, the mark that it was handled and the
messages it sends are written in one transaction, so a replayed event acts
once and a crash leaves all of it or nothing. A command is a job of recorded
steps (``State.receive``, ``advance``, ``finish``): where a step needs the
homeserver (a room made, members invited, a file uploaded), the steps before
it are recorded first and a restart resumes from the last one. A command that
cannot be carried out raises ``Reply`` before it changed anything, and its
sender gets the reason. The escalation of unacknowledged alerts and the
board's refresh are here too: the loops in ``bot.py`` only say when.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nio import RoomMessageText, RoomMessageUnknown

from . import board, commands, escalation, testhook
from .chat import Chat, RoomRefused, message, rendered_notice, replacement
from .clock import clock, clock_zoned
from .commands import (
    Alert,
    Assign,
    Close,
    Handover,
    Help,
    IncidentNew,
    Invalid,
    Log,
    OfficerStatus,
    Release,
    Sitrep,
    Status,
)
from .config import Config, Unit
from .directory import Directory, NotFound, localpart
from .state import AFTER_BOARD, AFTER_PIN, Addressee, AlertView, EarlyAck, Incident, Job, State

log = logging.getLogger(__name__)

#: answered alerts stay on the board this long (those of an open incident until it closes)
BOARD_KEEP_S = 3600.0
#: a job that failed this often in one run of the bot is given up (its sender is told)
MAX_JOB_ATTEMPTS = 5
#: a shared position is kept at most this long (the board shows less)
MAX_GEO = 1000
#: the job kind of a dispatch command
COMMAND = "command"


def incident_room_name(number: int) -> str:
    """An incident room's name: its number only. Room names are state, which no client
    encrypts: the title and place stay in the (encrypted, pinned) card."""
    return f"Einsatz {number}"


class Reply(Exception):
    """Stop a command and answer with this text (nothing was changed)."""


class Handlers:
    """Dispatch actions on the state, answered in the chat; ``wake`` and ``board_dirty`` tell the
    escalation and board loops that alerts or the board changed."""

    def __init__(self, config: Config, directory: Directory, state: State, chat: Chat) -> None:
        self.config = config
        self.directory = directory
        self.state = state
        self.chat = chat
        chat.on_alert_sent = self._early_acks
        self.supervisors = {unit.name: unit.supervisor for unit in config.units}
        #: set when an alert is new: the escalation loop looks at its deadline
        self.wake = asyncio.Event()
        #: set when what the board shows changed: the board loop edits it
        self.board_dirty = asyncio.Event()
        self._jobs = asyncio.Lock()
        self._job_failures: dict[str, int] = {}
        #: each control command's handler, called as ``handler(job, command)``; some are coroutines
        table: dict[type, Callable[..., Awaitable[None] | None]] = {
            Help: self._help,
            IncidentNew: self._incident_new,
            Assign: self._assign,
            Release: self._assign,
            Alert: self._alert,
            Status: self._status,
            Sitrep: self._sitrep,
            Handover: self._handover,
            Close: self._close,
            Log: self._log,
        }
        self._handlers = commands.handlers(table)

    # -- events -----------------------------------------------------------------------------------

    async def text(self, room_id: str, event: RoomMessageText) -> None:
        """A new text message: an acknowledgement by reply, or a command where it may be given."""
        if self._acknowledged_by_reply(event):
            await self.chat.flush()
            return
        command = commands.parse_command(event.body)
        if command is None:
            if commands.is_acknowledgement(event.body):
                self._ack_without_reply(room_id, event)
                await self.chat.flush()
            return
        in_control = room_id in self.chat.control_rooms
        is_status = isinstance(command, OfficerStatus) or (
            isinstance(command, Invalid) and event.body.strip().lower().split(" ", 1)[0] == "!s"
        )
        if not in_control and not is_status:
            return
        if isinstance(command, Invalid):
            self._answer_once(room_id, event.event_id, command.message)
        elif isinstance(command, OfficerStatus):
            self._officer_status(room_id, event, command.code)
        elif not self.directory.is_commander(event.sender):
            log.info("refused a command from %s (no dispatcher or supervisor)", event.sender)
            self._answer_once(
                room_id,
                event.event_id,
                "Refused: only dispatchers and supervisors may give dispatch commands. "
                "Officers set their status with !s <0-9>.",
            )
        else:
            data = {
                "room": room_id,
                "sender": event.sender,
                "body": event.body,
                "at": event.server_timestamp / 1000,
            }
            if self.state.receive(event.event_id, COMMAND, data, event.server_timestamp / 1000):
                testhook.reached("received")
                await self.run_jobs()
                return
        await self.chat.flush()

    def _answer_once(self, room_id: str, event_id: str, text: str) -> None:
        with self.state.atomic():
            if self.state.first_time(event_id):
                self.chat.answer(room_id, event_id, text)

    def _acknowledged_by_reply(self, event: RoomMessageText) -> bool:
        """A reply 'ack' to an alert, or (Element's threads) one in the alert's thread; one to a
        message not known yet is kept while an alert's event may still be on its way."""
        relates = event.source.get("content", {}).get("m.relates_to") or {}
        replied_to = [(relates.get("m.in_reply_to") or {}).get("event_id")]
        if relates.get("rel_type") == "m.thread":
            replied_to.insert(0, relates.get("event_id"))
        targets = [target for target in replied_to if isinstance(target, str) and target]
        if not targets or not commands.is_acknowledgement(event.body):
            return False
        return self._ack_event(event.event_id, event.sender, targets, event.server_timestamp / 1000, "reply")

    def _ack_event(self, event_id: str, sender: str, targets: list[str], at: float, via: str) -> bool:
        """``event_id`` acknowledges the first alert among ``targets``; True when it counted, was
        kept for later (an alert's event not recorded yet) or was handled before."""
        with self.state.atomic():
            alert_id = next(
                (found for t in targets if (found := self.state.alert_of_event(t)) is not None), None
            )
            if alert_id is None and not self.state.unconfirmed_alert_messages():
                return False
            if not self.state.first_time(event_id):
                return True
            if alert_id is not None:
                self._acknowledge(alert_id, sender, at, via)
            else:
                for target in targets:
                    self.state.early_ack(target, sender, at, via)
        return True

    def _ack_without_reply(self, room_id: str, event: RoomMessageText) -> None:
        """'ack' typed on its own: not counted (which alert?), but the officer is told how."""
        waiting = [
            alert.id
            for alert in self.state.open_alerts()
            if any(a.user_id == event.sender for a in alert.missing)
        ]
        if waiting:
            alerts = ", ".join(f"A{number}" for number in waiting)
            self._answer_once(
                room_id,
                event.event_id,
                f"Not counted: to acknowledge {alerts}, react to the alert's message with ✅ "
                "or reply to it (not as a new message) with 'ack' / 'quittiert'.",
            )

    async def reaction(self, event_id: str, sender: str, reacts_to: str, at: float) -> None:
        """An acknowledging reaction (see ``commands.is_ack_reaction``) to an alert's message."""
        if self._ack_event(event_id, sender, [reacts_to], at, "✅"):
            await self.chat.flush()

    async def location(self, room_id: str, event: RoomMessageUnknown) -> None:
        """A shared position counts in an incident's room or from a member of a unit on an incident."""
        geo = event.source.get("content", {}).get("geo_uri")
        if not isinstance(geo, str) or not geo.startswith("geo:"):
            return
        on_incident = {unit for incident in self.state.open_incidents() for unit in incident.units}
        in_incident = self.state.incident_by_room(room_id) is not None
        if in_incident or any(unit.name in on_incident for unit in self.directory.units_of(event.sender)):
            with self.state.atomic():
                if self.state.first_time(event.event_id):
                    where = geo.split(";", 1)[0][:MAX_GEO]
                    self.state.set_location(event.sender, where, event.server_timestamp / 1000)
            self.board_dirty.set()

    def may_invite(self, sender: str, room_id: str) -> bool:
        """The bot joins rooms of people in the directory, and its control rooms."""
        return sender in self.directory.users or room_id in self.chat.control_rooms

    # -- jobs -------------------------------------------------------------------------------------

    async def run_jobs(self) -> None:
        """Carry every unfinished command on from its last recorded step, oldest first; then
        send what they queued. One that keeps failing is given up and its sender told."""
        async with self._jobs:
            for job in self.state.jobs():
                try:
                    await self._run(job)
                except Exception:
                    failures = self._job_failures.get(job.event_id, 0) + 1
                    self._job_failures[job.event_id] = failures
                    log.exception(
                        "command %s stopped at step %r (attempt %d)", job.event_id, job.step, failures
                    )
                    if failures >= MAX_JOB_ATTEMPTS:
                        self._give_up(job)
        await self.chat.flush()

    def _give_up(self, job: Job) -> None:
        with self.state.atomic():
            self.chat.answer(
                job.data["room"],
                job.event_id,
                "This command could not be completed; !status shows what was done.",
            )
            self.state.finish(job)

    async def _run(self, job: Job) -> None:
        command = commands.parse_command(job.data["body"])
        log.info("command %s from %s, step %s", type(command).__name__, job.data["sender"], job.step)
        try:
            await self._command(job, command)
        except (Reply, NotFound) as reply:  # raised before anything was changed
            with self.state.atomic():
                self.chat.answer(job.data["room"], job.event_id, str(reply))
                self.state.finish(job)

    def _apply(self, job: Job, change: Callable[[], None], next_step: str | None = None, **data: Any) -> Job:
        """Run ``change`` (state and queued messages) and record the job's next step (None: it is
        finished) in one transaction."""
        with self.state.atomic():
            change()
            if next_step is None:
                self.state.finish(job)
            else:
                job = self.state.advance(job, next_step, **data)
        testhook.reached("applied")
        return job

    async def _command(self, job: Job, command: Any) -> None:
        if self._handlers.handler(command) is None:
            # not a command any more (a job of a later version): nothing to do
            self.state.finish(job)
            return
        done = self._handlers(command, job)
        if inspect.isawaitable(done):
            await done

    def _help(self, job: Job, command: Help) -> None:
        self._apply(job, lambda: self.chat.answer(job.data["room"], job.event_id, commands.HELP))

    def _status(self, job: Job, command: Status) -> None:
        self._apply(job, lambda: self.chat.queue(job.data["room"], self._board_content(), after=AFTER_BOARD))

    # -- commands ---------------------------------------------------------------------------------

    def _no_incident(self, number: int) -> str:
        open_ones = ", ".join(f"#{i.id}" for i in self.state.open_incidents()) or "none"
        return f"There is no incident #{number}. Open incidents: {open_ones}."

    def _open_incident(self, number: int) -> Incident:
        incident = self.state.incident(number)
        if incident is None:
            raise Reply(self._no_incident(number))
        if not incident.open:
            raise Reply(f"Incident #{number} is closed already; !log {number} shows its diary.")
        return incident

    def _card(self, incident: Incident, units: list[Unit], sender: str) -> str:
        lines = [
            f"🚨 Incident #{incident.id} (prio {incident.prio}): {incident.title}",
            f"Location: {incident.location or 'unknown'}",
            "Units: " + (", ".join(f"{u.call_sign} ({u.name})" for u in units) or "none yet"),
            f"Opened by {{{sender}}} at {clock_zoned(incident.created_at, self.config.timezone)}.",
        ]
        return "\n".join(lines)

    async def _incident_new(self, job: Job, command: IncidentNew) -> None:
        """Steps: the incident recorded (its number), its room made, the cards queued."""
        room_id, sender, at = job.data["room"], job.data["sender"], job.data["at"]
        if job.step == "received":
            units = [self.directory.unit(name) for name in command.units]  # NotFound: nothing done yet
            with self.state.atomic():
                number = self.state.new_incident(
                    command.title, command.prio, command.location, room_id, sender, at
                )
                self.state.add_diary(number, at, sender, "command", job.data["body"])
                for unit in units:
                    self.state.assign(number, unit.name, at)
                    self.state.add_diary(
                        number, at, sender, "assign", f"{unit.call_sign} ({unit.name}) assigned"
                    )
                job = self.state.advance(job, "recorded", incident=number)
            testhook.reached("recorded")
        number = int(job.data["incident"])
        incident = self.state.incident(number)
        assert incident is not None
        units = [self.directory.unit(name) for name in incident.units]
        members = [m for unit in units for m in unit.members]
        invite = sorted(self.config.roles["dispatcher"]) + members
        try:
            incident_room = await self.chat.ensure_room(
                f"incident:{number}", incident_room_name(number), invite
            )
        except RoomRefused as error:
            log.warning("incident #%d: %s", number, error)
            with self.state.atomic():
                self.state.drop_incident(number)
                self.chat.answer(
                    room_id,
                    job.event_id,
                    "The incident room could not be created; nothing was recorded. Try again.",
                )
                self.state.finish(job)
            return

        def cards() -> None:
            self.state.set_incident_room(number, incident_room)
            card = self._card(incident, units, sender)
            self.chat.queue(incident_room, message(card, mentions=members, author=sender), after=AFTER_PIN)
            self.chat.queue(room_id, message(card, notice=True, reply_to=job.event_id, author=sender))

        self._apply(job, cards)
        self.board_dirty.set()

    async def _assign(self, job: Job, command: Assign | Release) -> None:
        """Steps: the change with its messages, then the unit's members invited."""
        if job.step == "received":
            room_id, sender, at = job.data["room"], job.data["sender"], job.data["at"]
            incident = self._open_incident(command.incident)
            unit = self.directory.unit(command.unit)
            invite: list[str] = []
            if isinstance(command, Assign):
                text = f"{unit.call_sign} ({unit.name}) assigned to #{incident.id}"
                room = self.chat.room(incident.room_id) if incident.room_id else None
                if incident.room_id:
                    invite = [m for m in unit.members if room is None or m not in room.users]
            else:
                text = f"{unit.call_sign} ({unit.name}) released from #{incident.id}"

            def change() -> None:
                if isinstance(command, Assign) and not self.state.assign(incident.id, unit.name, at):
                    raise Reply(f"{unit.call_sign} ({unit.name}) is assigned to #{incident.id} already.")
                if isinstance(command, Release) and not self.state.release(incident.id, unit.name):
                    raise Reply(f"{unit.call_sign} ({unit.name}) is not assigned to #{incident.id}.")
                self.state.add_diary(incident.id, at, sender, "command", job.data["body"])
                kind = "assign" if isinstance(command, Assign) else "release"
                self.state.add_diary(incident.id, at, sender, kind, text)
                if incident.room_id:
                    self.chat.queue(
                        incident.room_id, message(text + ".", mentions=unit.members, author=sender)
                    )
                self.chat.answer(room_id, job.event_id, text + ".")

            job = self._apply(
                job, change, "invite" if invite else None, invite_room=incident.room_id, invite=invite
            )
            self.board_dirty.set()
        if job.step == "invite":
            await self.chat.invite(job.data["invite_room"], list(job.data["invite"]))
            self.state.finish(job)

    def _sitrep(self, job: Job, command: Sitrep) -> None:
        room_id, sender, at = job.data["room"], job.data["sender"], job.data["at"]
        incident = self._open_incident(command.incident)

        def change() -> None:
            self.state.add_diary(incident.id, at, sender, "sitrep", command.text)
            if incident.room_id:
                self.chat.queue(
                    incident.room_id,
                    message(
                        f"Situation report #{incident.id} by {{{sender}}}: {command.text}", author=sender
                    ),
                )
            self.chat.answer(room_id, job.event_id, f"Situation report added to incident #{incident.id}.")

        self._apply(job, change)

    async def _close(self, job: Job, command: Close) -> None:
        """Steps: closed with the note and the diary's text, then the diary file uploaded and posted."""
        room_id, sender, at = job.data["room"], job.data["sender"], job.data["at"]
        if job.step == "received":
            incident = self._open_incident(command.incident)

            def change() -> None:
                self.state.add_diary(incident.id, at, sender, "command", job.data["body"])
                self.state.add_diary(incident.id, at, sender, "closed", command.text or "closed")
                self.state.close_incident(incident.id, sender, at)
                if incident.room_id:
                    note = f"Incident #{incident.id} closed by {{{sender}}}" + (
                        f": {command.text}" if command.text else "."
                    )
                    self.chat.queue(incident.room_id, message(note, notice=True, author=sender))
                self._queue_diary_text(room_id, incident.id)

            job = self._apply(job, change, "diary-file")
            self.board_dirty.set()
        await self._diary_file(job, command.incident)

    async def _log(self, job: Job, command: Log) -> None:
        """Steps: the diary's text, then its file."""
        if job.step == "received":
            if self.state.incident(command.incident) is None:
                raise Reply(self._no_incident(command.incident))
            job = self._apply(
                job, lambda: self._queue_diary_text(job.data["room"], command.incident), "diary-file"
            )
        await self._diary_file(job, command.incident)

    async def _alert(self, job: Job, command: Alert) -> None:
        """Steps: the addressees' rooms made where needed (a replay finds them), then the alert
        with all its messages and the confirmation in one transaction."""
        room_id, sender, now = job.data["room"], job.data["sender"], job.data["at"]
        addressees, incident_id = await self._addressees(room_id, command.targets)
        addressees.pop(sender, None)
        if not addressees:
            raise Reply("Nobody to alert: the targets name no one but you.")
        period = command.ack * self.config.ack_unit if command.ack else self.config.ack_deadline
        due = clock_zoned(now + period, self.config.timezone)

        def change() -> None:
            alert_id = self.state.new_alert(
                incident_id=incident_id,
                control_room=room_id,
                sender=sender,
                text=command.text,
                at=now,
                period=period,
                addressees=addressees.values(),
            )
            if incident_id is not None:
                self.state.add_diary(incident_id, now, sender, "command", job.data["body"])
                self.state.add_diary(
                    incident_id, now, sender, "alert", f"A{alert_id} to {len(addressees)}: {command.text}"
                )
            for alert_room, users in _by_room(addressees.values()).items():
                names = " ".join("{" + user + "}" for user in users)
                text = (
                    f"🔔 Alert A{alert_id} from {{{sender}}}: {command.text}\n"
                    f"For: {names}\nAcknowledge with ✅ or reply 'ack' / 'quittiert' by {due}."
                )
                self.chat.queue(alert_room, message(text, mentions=users, author=sender), alert_id=alert_id)
            self.chat.answer(
                room_id,
                job.event_id,
                f"Alert A{alert_id} sent to {len(addressees)} "
                f"({', '.join(sorted(localpart(u) for u in addressees))}); "
                f"acknowledgement due by {due}.",
            )

        self._apply(job, change)
        self.wake.set()
        self.board_dirty.set()

    async def _handover(self, job: Job, command: Handover) -> None:
        """Steps: the duty, diary and summary, then the new dispatcher invited if not in the room."""
        room_id, sender, now = job.data["room"], job.data["sender"], job.data["at"]
        if job.step == "received":
            user = self.directory.user(command.user)
            if not self.config.has_role(user, "dispatcher"):
                raise Reply(
                    f"{localpart(user)} is no dispatcher; hand over to one of: "
                    + ", ".join(sorted(localpart(d) for d in self.config.roles["dispatcher"]))
                    + "."
                )
            room = self.chat.room(room_id)
            invite = room is not None and user not in room.users

            def change() -> None:
                self.state.put(f"duty:{room_id}", user)
                lines = [f"Handover: {{{sender}}} hands the control room to {{{user}}}."]
                incidents = self.state.open_incidents()
                lines.append(f"Open incidents: {len(incidents)}")
                for incident in incidents:
                    lines.append(
                        f"  #{incident.id} prio {incident.prio} {incident.title} - "
                        f"units {', '.join(incident.units) or 'none'}"
                    )
                    self.state.add_diary(incident.id, now, sender, "handover", f"handed over to {user}")
                alerts = [a for a in self.state.open_alerts() if a.missing]
                lines.append(f"Alerts waiting for acknowledgement: {len(alerts)}")
                for alert in alerts:
                    missing = ", ".join(localpart(a.user_id) for a in alert.missing)
                    lines.append(f"  A{alert.id} {alert.text} - missing {missing}")
                self.chat.queue(room_id, message("\n".join(lines), mentions=(user,), author=sender))

            job = self._apply(job, change, "invite" if invite else None, invite=[user])
        if job.step == "invite":
            await self.chat.invite(room_id, list(job.data["invite"]))
            self.state.finish(job)

    async def _room_for(self, user_id: str, control_room: str) -> tuple[str, tuple[str, ...]]:
        """Where an alert reaches a user (unit room, control room, else a direct room), via which units."""
        units = self.directory.units_of(user_id)
        if units:
            room_id = self.state.room(f"unit:{units[0].name}")
            if room_id is not None:
                return room_id, tuple(u.name for u in units)
        room = self.chat.room(control_room)
        if room is not None and user_id in room.users:
            return control_room, tuple(u.name for u in units)
        return await self.chat.direct_room(user_id), tuple(u.name for u in units)

    async def _addressees(
        self, room_id: str, targets: tuple[str, ...]
    ) -> tuple[dict[str, Addressee], int | None]:
        """Resolve `!alert` targets to addressees (user -> where and via which units) and the incident."""
        found: dict[str, Addressee] = {}
        incident_id: int | None = None

        def add(user: str, room: str, units: tuple[str, ...]) -> None:
            if user == self.config.user_id:
                return
            known = found.get(user)
            found[user] = Addressee(
                user,
                tuple(dict.fromkeys((*(known.units if known else ()), *units))),
                known.room_id if known else room,
            )

        for target in targets:
            number = commands.parse_incident(target)
            role = self.directory.role(target)
            if number is not None:
                incident = self._open_incident(number)
                incident_id = incident_id or incident.id
                if not incident.units:
                    raise Reply(f"Incident #{number} has no units to alert; !assign {number} <unit> first.")
                for name in incident.units:
                    unit = self.directory.unit(name)
                    for member in unit.members:
                        add(member, incident.room_id or room_id, (unit.name,))
            elif role is not None:
                for member in self.directory.role_members(role):
                    room, units = await self._room_for(member, room_id)
                    add(member, room, units)
            else:
                target_unit = None if target.startswith("@") else self._unit_or_none(target)
                if target_unit is None:
                    try:
                        user = self.directory.user(target)
                    except NotFound:
                        raise self.directory.unknown_target(target) from None
                    room, units = await self._room_for(user, room_id)
                    add(user, room, units)
                    continue
                unit_room = self.state.room(f"unit:{target_unit.name}")
                if unit_room is None:
                    raise Reply(
                        f"The room of {target_unit.call_sign} is not ready yet; try again in a moment."
                    )
                for member in target_unit.members:
                    add(member, unit_room, (target_unit.name,))
                if incident_id is None:
                    incident_id = next(
                        (i.id for i in self.state.open_incidents() if target_unit.name in i.units), None
                    )
        return found, incident_id

    def _unit_or_none(self, word: str) -> Unit | None:
        try:
            return self.directory.unit(word)
        except NotFound:
            return None

    # -- acknowledgements, status, escalation ---------------------------------------------------------

    def _acknowledge(self, alert_id: int, user_id: str, at: float, via: str) -> None:
        """Count an addressee's acknowledgement once; the last one closes the alert (call inside
        the transaction of the event that acknowledged)."""
        if not self.state.acknowledge(alert_id, user_id, at, via):
            return
        log.info("alert A%d acknowledged by %s (%s)", alert_id, user_id, via)
        alert = self.state.alert(alert_id)
        assert alert is not None
        if alert.incident_id is not None:
            self.state.add_diary(alert.incident_id, at, user_id, "ack", f"A{alert_id} acknowledged ({via})")
        if not alert.missing and not alert.closed:
            self.state.close_alert(alert_id)
            self.chat.queue(
                alert.control_room,
                message(f"✅ Alert A{alert_id}: all {len(alert.addressees)} acknowledged.", notice=True),
            )
        self.board_dirty.set()

    def _early_acks(self, alert_id: int, early: list[EarlyAck]) -> None:
        """Acknowledgements of an alert message given before its event was recorded count now."""
        for ack in early:
            self._acknowledge(alert_id, ack.user_id, ack.at, ack.via)

    def _officer_status(self, room_id: str, event: RoomMessageText, code: int) -> None:
        sender, now = event.sender, event.server_timestamp / 1000
        with self.state.atomic():
            if not self.state.first_time(event.event_id):
                return
            if not self.directory.is_officer(sender):
                self.chat.answer(
                    room_id, event.event_id, "Refused: only officers in the directory set a status."
                )
                return
            self.state.set_status(sender, code, now)
            meaning = commands.STATUS_CODES[code]
            units = {unit.name for unit in self.directory.units_of(sender)}
            for incident in self.state.open_incidents():
                if units & set(incident.units):
                    self.state.add_diary(incident.id, now, sender, "status", f"status {code} ({meaning})")
            log.info("status %d from %s", code, sender)
            self.chat.queue(
                room_id,
                {"m.relates_to": {"rel_type": "m.annotation", "event_id": event.event_id, "key": "✅"}},
                event_type="m.reaction",
            )
            if code in commands.URGENT_CODES:
                dispatchers = tuple(sorted(self.config.roles["dispatcher"]))
                for control_room in sorted(self.chat.control_rooms):
                    duty = self.state.get(f"duty:{control_room}")
                    notify = (duty,) if duty else dispatchers
                    mark = "🔴" if code == 0 else "🟠"
                    text = (
                        f"{mark} Status {code} ({meaning}) from {{{sender}}} - {self.directory.label(sender)}"
                    )
                    self.chat.queue(control_room, message(text, mentions=notify, author=sender))
        self.board_dirty.set()

    async def escalate_due(self, now: float) -> float | None:
        """Repeat and escalate the alerts whose deadline passed; the next deadline (None: none)."""
        alerts = {a.id: a for a in self.state.open_alerts()}
        for step in escalation.due_steps(alerts.values(), now, self.config.max_alerts):
            try:
                await self._escalate(alerts[step.alert_id], step)
            except Exception:  # the others are not held up; this one is tried again
                log.exception("escalating alert A%d failed", step.alert_id)
        await self.chat.flush()
        return escalation.next_due(self.state.open_alerts())

    async def _escalate(self, alert: AlertView, step: escalation.Step) -> None:
        """One round: the missing alerted again, the escalation in the control room, and a copy
        in a direct room for each addressee of it who has not joined the control room."""
        if step.done:
            with self.state.atomic():
                self.state.set_due(alert.id, step.next_due, step.rounds)
                self.state.close_alert(alert.id)
            return
        missing = [a.user_id for a in step.missing]
        told = escalation.supervisors_for(step.missing, self.supervisors)
        duty = self.state.get(f"duty:{alert.control_room}")
        addressed = escalation.addressed(told, alert.sender, duty, self.config.user_id)
        joined = self.chat.joined(alert.control_room)
        direct: dict[str, str] = {}
        for user in addressed:
            if user not in joined:
                try:
                    direct[user] = await self.chat.direct_room(user)
                except Exception as error:  # the control room still gets it; the copy is lost
                    log.warning("alert A%d: no direct room for an escalation: %r", alert.id, error)
        log.info("alert A%d: %d missing, round %d", alert.id, len(missing), step.rounds)
        text = escalation.escalation_text(alert, step, told, self.config.max_alerts)
        with self.state.atomic():
            self.state.set_due(alert.id, step.next_due, step.rounds)
            if step.realert:
                for room_id, users in _by_room(step.missing).items():
                    names = " ".join("{" + user + "}" for user in users)
                    reminder = (
                        f"🔔 Reminder {step.rounds}/{self.config.max_alerts}, "
                        f"alert A{alert.id}: {alert.text}\n"
                        f"Not acknowledged yet: {names}. Acknowledge with ✅ or reply 'ack'."
                    )
                    self.chat.queue(room_id, message(reminder, mentions=users), alert_id=alert.id)
            self.chat.queue(alert.control_room, message(text, mentions=(*missing, *addressed)))
            for user, room_id in sorted(direct.items()):
                self.chat.queue(room_id, message(text, mentions=(user,), named=(*missing, *addressed)))
            if alert.incident_id is not None:
                self.state.add_diary(
                    alert.incident_id,
                    time.time(),
                    self.config.user_id,
                    "escalation",
                    f"A{alert.id} round {step.rounds}: missing {', '.join(missing)}",
                )
        self.board_dirty.set()

    # -- board, diary, room names -------------------------------------------------------------------

    def _board_content(self) -> dict[str, Any]:
        data = board.BoardData(
            incidents=self.state.open_incidents(),
            units=self.config.units,
            statuses=self.state.statuses(),
            locations=self.state.locations(),
            alerts=self.state.board_alerts(time.time() - BOARD_KEEP_S),
            label=self.directory.label,
            zone=self.config.timezone,
        )
        return rendered_notice(*board.render(data, time.time()))

    async def pin_boards(self) -> None:
        """Pin each board at start: boards posted before pinning existed, or unpinned meanwhile."""
        for room_id, event_id in self.state.boards().items():
            await self.chat.pin(room_id, event_id)

    async def refresh_boards(self) -> None:
        """Edit every board message to what the state says now."""
        boards = self.state.boards()
        if not boards:
            return
        content = self._board_content()
        for room_id, board_event in boards.items():
            await self.chat.send_now(room_id, replacement(board_event, content))

    async def neutral_room_names(self) -> None:
        """Rooms the bot made carry neutral names: an incident's number, a unit's call sign.
        Rooms named by an earlier version (after the incident's title) are renamed."""
        wanted: dict[str, str] = {}
        for unit in self.config.units:
            room_id = self.state.room(f"unit:{unit.name}")
            if room_id is not None:
                wanted[room_id] = unit.call_sign
        for number, room_id in self.state.incident_rooms().items():
            wanted[room_id] = incident_room_name(number)
        for room_id in self.state.rooms_named("dm:").values():
            wanted[room_id] = "Dispatch"
        for room_id, name in wanted.items():
            try:
                await self.chat.rename(room_id, name)
            except Exception as error:
                log.warning("renaming %s failed: %r", room_id, error)

    def _queue_diary_text(self, room_id: str, incident_id: int) -> None:
        """The diary as a readable message."""
        incident = self.state.incident(incident_id)
        assert incident is not None
        zone = self.config.timezone
        lines = [
            f"📓 Diary of incident #{incident.id}: {incident.title} "
            f"({'open' if incident.open else 'closed'}), times {zone.key}"
        ]
        lines += [
            f"{clock(e.at, zone)} {localpart(e.author)} [{e.kind}] {e.text}"
            for e in self.state.diary(incident_id)
        ]
        self.chat.queue(room_id, message("\n".join(lines), notice=True))

    async def _diary_file(self, job: Job, incident_id: int) -> None:
        """The diary as an encrypted JSON attachment (an upload cut short is simply made again)."""
        room_id = job.data["room"]
        data = self._diary_document(incident_id)
        name = f"incident-{incident_id}-diary.json"
        file = await self.chat.upload_encrypted(data, name, "application/json")

        def post() -> None:
            if file is not None:
                self.chat.queue(room_id, file)
            else:
                self.chat.queue(
                    room_id,
                    message("The diary file could not be uploaded; !log shows it again.", notice=True),
                )

        self._apply(job, post)

    def _diary_document(self, incident_id: int) -> bytes:
        incident = self.state.incident(incident_id)
        assert incident is not None
        entries = self.state.diary(incident_id)
        document = {
            "incident": {
                "number": incident.id,
                "title": incident.title,
                "prio": incident.prio,
                "location": incident.location,
                "room_id": incident.room_id,
                "opened_by": incident.created_by,
                "opened_at": _iso(incident.created_at),
                "closed_at": _iso(incident.closed_at) if incident.closed_at else None,
                "units": list(incident.units),
            },
            "entries": [
                {"at": _iso(e.at), "author": e.author, "kind": e.kind, "text": e.text} for e in entries
            ],
        }
        return json.dumps(document, indent=2, ensure_ascii=False).encode()


def _by_room(addressees: Any) -> dict[str, list[str]]:
    """Addressees grouped by the room that reaches them (one message a room)."""
    by_room: dict[str, list[str]] = {}
    for addressee in addressees:
        by_room.setdefault(addressee.room_id, []).append(addressee.user_id)
    return by_room


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


__all__ = ["Handlers", "Reply", "incident_room_name"]
