"""What the dispatch bot does with what people send: commands, statuses, acknowledgements.

``bot.py`` hands over each event once (replays and history are filtered
there); here it is checked (who may do what, where), carried out on the state
and answered through ``chat``. A command that cannot be carried out raises
``Reply`` before it changed anything, and its sender gets the reason. The
escalation of unacknowledged alerts and the board's refresh are here too: the
loops in ``bot.py`` only say when.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nio import RoomMessageText, RoomMessageUnknown

from . import board, commands, escalation
from .chat import Chat, message, rendered_notice, replacement
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
from .state import Addressee, AlertView, Incident, State

log = logging.getLogger(__name__)

#: answered alerts stay on the board this long (those of an open incident until it closes)
BOARD_KEEP_S = 3600.0


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
        self.supervisors = {unit.name: unit.supervisor for unit in config.units}
        #: set when an alert is new: the escalation loop looks at its deadline
        self.wake = asyncio.Event()
        #: set when what the board shows changed: the board loop edits it
        self.board_dirty = asyncio.Event()

    # -- events -----------------------------------------------------------------------------------

    async def text(self, room_id: str, event: RoomMessageText) -> None:
        """A new text message: an acknowledgement by reply, or a command where it may be given."""
        if await self._acknowledged_by_reply(event):
            return
        command = commands.parse_command(event.body)
        if command is None:
            return
        in_control = room_id in self.chat.control_rooms
        is_status = isinstance(command, OfficerStatus) or (
            isinstance(command, Invalid) and event.body.strip().lower().split(" ", 1)[0] == "!s"
        )
        if not in_control and not is_status:
            return
        if isinstance(command, Invalid):
            await self.chat.answer(room_id, event.event_id, command.message)
            return
        if isinstance(command, OfficerStatus):
            await self._officer_status(room_id, event, command.code)
            return
        if not self.directory.is_commander(event.sender):
            log.info("refused a command from %s (no dispatcher or supervisor)", event.sender)
            await self.chat.answer(
                room_id,
                event.event_id,
                "Refused: only dispatchers and supervisors may give dispatch commands. "
                "Officers set their status with !s <0-9>.",
            )
            return
        try:
            await self._command(room_id, event, command)
        except Reply as reply:
            await self.chat.answer(room_id, event.event_id, str(reply))
        except NotFound as error:
            await self.chat.answer(room_id, event.event_id, str(error))

    async def _acknowledged_by_reply(self, event: RoomMessageText) -> bool:
        """A reply 'ack' to an alert, or (Element's threads) one in the alert's thread."""
        relates = event.source.get("content", {}).get("m.relates_to") or {}
        replied_to = [(relates.get("m.in_reply_to") or {}).get("event_id")]
        if relates.get("rel_type") == "m.thread":
            replied_to.insert(0, relates.get("event_id"))
        if not any(replied_to) or not commands.is_acknowledgement(event.body):
            return False
        alert_id = next(
            (found for e in replied_to if e and (found := self.state.alert_of_event(e)) is not None), None
        )
        if alert_id is None:
            return False
        await self.acknowledge(alert_id, event.sender, event.server_timestamp / 1000, "reply")
        return True

    async def reaction(self, sender: str, reacts_to: str, at: float) -> None:
        """An acknowledging reaction (see ``commands.is_ack_reaction``) to an alert's message."""
        alert_id = self.state.alert_of_event(reacts_to)
        if alert_id is not None:
            await self.acknowledge(alert_id, sender, at, "✅")

    async def location(self, room_id: str, event: RoomMessageUnknown) -> None:
        """A shared position counts in an incident's room or from a member of a unit on an incident."""
        geo = event.source.get("content", {}).get("geo_uri")
        if not isinstance(geo, str) or not geo.startswith("geo:"):
            return
        on_incident = {unit for incident in self.state.open_incidents() for unit in incident.units}
        in_incident = self.state.incident_by_room(room_id) is not None
        if in_incident or any(unit.name in on_incident for unit in self.directory.units_of(event.sender)):
            self.state.set_location(event.sender, geo.split(";", 1)[0], event.server_timestamp / 1000)
            self.board_dirty.set()

    def may_invite(self, sender: str, room_id: str) -> bool:
        """The bot joins rooms of people in the directory, and its control rooms."""
        return sender in self.directory.users or room_id in self.chat.control_rooms

    # -- commands ---------------------------------------------------------------------------------

    async def _command(self, room_id: str, event: RoomMessageText, command: Any) -> None:
        log.info("command %s from %s in %s", type(command).__name__, event.sender, room_id)
        if isinstance(command, Help):
            await self.chat.answer(room_id, event.event_id, commands.HELP)
        elif isinstance(command, IncidentNew):
            await self._incident_new(room_id, event, command)
        elif isinstance(command, Assign | Release):
            await self._assign(room_id, event, command)
        elif isinstance(command, Alert):
            await self._alert(room_id, event, command)
        elif isinstance(command, Status):
            await self._post_board(room_id)
        elif isinstance(command, Sitrep):
            await self._sitrep(room_id, event, command)
        elif isinstance(command, Handover):
            await self._handover(room_id, event, command)
        elif isinstance(command, Close):
            await self._close(room_id, event, command)
        elif isinstance(command, Log):
            if self.state.incident(command.incident) is None:
                raise Reply(self._no_incident(command.incident))
            await self._post_diary(room_id, command.incident)

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

    async def _incident_new(self, room_id: str, event: RoomMessageText, command: IncidentNew) -> None:
        units = [self.directory.unit(name) for name in command.units]  # NotFound: nothing done yet
        now = event.server_timestamp / 1000
        number = self.state.new_incident(
            command.title, command.prio, command.location, room_id, event.sender, now
        )
        members = [m for unit in units for m in unit.members]
        invite = sorted(self.config.roles["dispatcher"]) + members
        try:
            incident_room = await self.chat.create_room(f"#{number} {command.title}", invite)
        except RuntimeError as error:
            self.state.drop_incident(number)
            log.warning("incident #%d: %s", number, error)
            raise Reply("The incident room could not be created; nothing was recorded. Try again.") from None
        self.state.set_incident_room(number, incident_room)
        self.state.add_diary(number, now, event.sender, "command", event.body)
        for unit in units:
            self.state.assign(number, unit.name, now)
            self.state.add_diary(
                number, now, event.sender, "assign", f"{unit.call_sign} ({unit.name}) assigned"
            )
        incident = self.state.incident(number)
        assert incident is not None
        card = self._card(incident, units, event.sender)
        await self.chat.post(incident_room, message(card, mentions=members, author=event.sender))
        await self.chat.post(
            room_id, message(card, notice=True, reply_to=event.event_id, author=event.sender)
        )
        self.board_dirty.set()

    async def _assign(self, room_id: str, event: RoomMessageText, command: Assign | Release) -> None:
        incident = self._open_incident(command.incident)
        unit = self.directory.unit(command.unit)
        now = event.server_timestamp / 1000
        if isinstance(command, Assign):
            if not self.state.assign(incident.id, unit.name, now):
                raise Reply(f"{unit.call_sign} ({unit.name}) is assigned to #{incident.id} already.")
            text = f"{unit.call_sign} ({unit.name}) assigned to #{incident.id}"
            if incident.room_id:
                room = self.chat.room(incident.room_id)
                await self.chat.invite(
                    incident.room_id, [m for m in unit.members if room is None or m not in room.users]
                )
        else:
            if not self.state.release(incident.id, unit.name):
                raise Reply(f"{unit.call_sign} ({unit.name}) is not assigned to #{incident.id}.")
            text = f"{unit.call_sign} ({unit.name}) released from #{incident.id}"
        self.state.add_diary(incident.id, now, event.sender, "command", event.body)
        self.state.add_diary(
            incident.id, now, event.sender, "assign" if isinstance(command, Assign) else "release", text
        )
        if incident.room_id:
            await self.chat.post(
                incident.room_id, message(text + ".", mentions=unit.members, author=event.sender)
            )
        await self.chat.answer(room_id, event.event_id, text + ".")
        self.board_dirty.set()

    async def _sitrep(self, room_id: str, event: RoomMessageText, command: Sitrep) -> None:
        sender, now = event.sender, event.server_timestamp / 1000
        incident = self._open_incident(command.incident)
        self.state.add_diary(incident.id, now, sender, "sitrep", command.text)
        if incident.room_id:
            await self.chat.post(
                incident.room_id,
                message(f"Situation report #{incident.id} by {{{sender}}}: {command.text}", author=sender),
            )
        await self.chat.answer(room_id, event.event_id, f"Situation report added to incident #{incident.id}.")

    async def _close(self, room_id: str, event: RoomMessageText, command: Close) -> None:
        sender, now = event.sender, event.server_timestamp / 1000
        incident = self._open_incident(command.incident)
        self.state.add_diary(incident.id, now, sender, "command", event.body)
        self.state.add_diary(incident.id, now, sender, "closed", command.text or "closed")
        self.state.close_incident(incident.id, sender, now)
        if incident.room_id:
            note = f"Incident #{incident.id} closed by {{{sender}}}" + (
                f": {command.text}" if command.text else "."
            )
            await self.chat.post(incident.room_id, message(note, notice=True, author=sender))
        await self._post_diary(room_id, incident.id)
        self.board_dirty.set()

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
                unit = None if target.startswith("@") else self._unit_or_none(target)
                if unit is None:
                    try:
                        user = self.directory.user(target)
                    except NotFound:
                        raise self.directory.unknown_target(target) from None
                    room, units = await self._room_for(user, room_id)
                    add(user, room, units)
                    continue
                unit_room = self.state.room(f"unit:{unit.name}")
                if unit_room is None:
                    raise Reply(f"The room of {unit.call_sign} is not ready yet; try again in a moment.")
                for member in unit.members:
                    add(member, unit_room, (unit.name,))
                if incident_id is None:
                    incident_id = next(
                        (i.id for i in self.state.open_incidents() if unit.name in i.units), None
                    )
        return found, incident_id

    def _unit_or_none(self, word: str) -> Unit | None:
        try:
            return self.directory.unit(word)
        except NotFound:
            return None

    async def _alert(self, room_id: str, event: RoomMessageText, command: Alert) -> None:
        addressees, incident_id = await self._addressees(room_id, command.targets)
        addressees.pop(event.sender, None)
        if not addressees:
            raise Reply("Nobody to alert: the targets name no one but you.")
        now = event.server_timestamp / 1000
        period = command.ack * self.config.ack_unit if command.ack else self.config.ack_deadline
        alert_id = self.state.new_alert(
            incident_id=incident_id,
            control_room=room_id,
            sender=event.sender,
            text=command.text,
            at=now,
            period=period,
            addressees=addressees.values(),
        )
        if incident_id is not None:
            self.state.add_diary(incident_id, now, event.sender, "command", event.body)
            self.state.add_diary(
                incident_id, now, event.sender, "alert", f"A{alert_id} to {len(addressees)}: {command.text}"
            )
        due = clock_zoned(now + period, self.config.timezone)
        for alert_room, users in _by_room(addressees.values()).items():
            names = " ".join("{" + user + "}" for user in users)
            text = (
                f"🔔 Alert A{alert_id} from {{{event.sender}}}: {command.text}\n"
                f"For: {names}\nAcknowledge with ✅ or reply 'ack' / 'quittiert' by {due}."
            )
            await self.chat.post(
                alert_room, message(text, mentions=users, author=event.sender), alert_id=alert_id
            )
        await self.chat.answer(
            room_id,
            event.event_id,
            f"Alert A{alert_id} sent to {len(addressees)} "
            f"({', '.join(sorted(localpart(u) for u in addressees))}); "
            f"acknowledgement due by {due}.",
        )
        self.wake.set()
        self.board_dirty.set()

    async def _handover(self, room_id: str, event: RoomMessageText, command: Handover) -> None:
        user = self.directory.user(command.user)
        if not self.config.has_role(user, "dispatcher"):
            raise Reply(
                f"{localpart(user)} is no dispatcher; hand over to one of: "
                + ", ".join(sorted(localpart(d) for d in self.config.roles["dispatcher"]))
                + "."
            )
        now = event.server_timestamp / 1000
        self.state.put(f"duty:{room_id}", user)
        room = self.chat.room(room_id)
        if room is not None and user not in room.users:
            await self.chat.invite(room_id, [user])
        lines = [f"Handover: {{{event.sender}}} hands the control room to {{{user}}}."]
        incidents = self.state.open_incidents()
        lines.append(f"Open incidents: {len(incidents)}")
        for incident in incidents:
            lines.append(
                f"  #{incident.id} prio {incident.prio} {incident.title} - "
                f"units {', '.join(incident.units) or 'none'}"
            )
            self.state.add_diary(incident.id, now, event.sender, "handover", f"handed over to {user}")
        alerts = [a for a in self.state.open_alerts() if a.missing]
        lines.append(f"Alerts waiting for acknowledgement: {len(alerts)}")
        for alert in alerts:
            missing = ", ".join(localpart(a.user_id) for a in alert.missing)
            lines.append(f"  A{alert.id} {alert.text} - missing {missing}")
        await self.chat.post(room_id, message("\n".join(lines), mentions=(user,), author=event.sender))

    # -- acknowledgements, status, escalation ---------------------------------------------------------

    async def acknowledge(self, alert_id: int, user_id: str, at: float, via: str) -> None:
        """Count an addressee's acknowledgement once; the last one closes the alert."""
        if not self.state.acknowledge(alert_id, user_id, at, via):
            return
        log.info("alert A%d acknowledged by %s (%s)", alert_id, user_id, via)
        alert = self.state.alert(alert_id)
        assert alert is not None
        if alert.incident_id is not None:
            self.state.add_diary(alert.incident_id, at, user_id, "ack", f"A{alert_id} acknowledged ({via})")
        if not alert.missing and not alert.closed:
            self.state.close_alert(alert_id)
            await self.chat.post(
                alert.control_room,
                message(f"✅ Alert A{alert_id}: all {len(alert.addressees)} acknowledged.", notice=True),
            )
        self.board_dirty.set()

    async def _officer_status(self, room_id: str, event: RoomMessageText, code: int) -> None:
        sender, now = event.sender, event.server_timestamp / 1000
        if not self.directory.is_officer(sender):
            await self.chat.answer(
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
        await self.chat.post(
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
                text = f"{mark} Status {code} ({meaning}) from {{{sender}}} - {self.directory.label(sender)}"
                await self.chat.post(control_room, message(text, mentions=notify, author=sender))
        self.board_dirty.set()

    async def escalate_due(self, now: float) -> float | None:
        """Repeat and escalate the alerts whose deadline passed; the next deadline (None: none)."""
        alerts = {a.id: a for a in self.state.open_alerts()}
        for step in escalation.due_steps(alerts.values(), now, self.config.max_alerts):
            await self._escalate(alerts[step.alert_id], step)
        return escalation.next_due(self.state.open_alerts())

    async def _escalate(self, alert: AlertView, step: escalation.Step) -> None:
        self.state.set_due(alert.id, step.next_due, step.rounds)
        if step.done:
            self.state.close_alert(alert.id)
            return
        missing = [a.user_id for a in step.missing]
        log.info("alert A%d: %d missing, round %d", alert.id, len(missing), step.rounds)
        if step.realert:
            for room_id, users in _by_room(step.missing).items():
                names = " ".join("{" + user + "}" for user in users)
                text = (
                    f"🔔 Reminder {step.rounds}/{self.config.max_alerts}, alert A{alert.id}: {alert.text}\n"
                    f"Not acknowledged yet: {names}. Acknowledge with ✅ or reply 'ack'."
                )
                await self.chat.post(room_id, message(text, mentions=users), alert_id=alert.id)
        told = escalation.supervisors_for(step.missing, self.supervisors)
        names = ", ".join("{" + user + "}" for user in missing)
        if step.final:
            text = (
                f"⛔ Alert A{alert.id} ({alert.text}): still not acknowledged after "
                f"{step.rounds} alerts by {names}."
            )
        else:
            text = f"⚠️ Escalation, alert A{alert.id} ({alert.text}): not acknowledged by {names}."
        for supervisor, users in sorted(told.items()):
            text += f"\nSupervisor {{{supervisor}}}: missing from your unit: " + ", ".join(
                localpart(u) for u in users
            )
        mentions = (*missing, *told, alert.sender)
        await self.chat.post(alert.control_room, message(text, mentions=mentions))
        if alert.incident_id is not None:
            self.state.add_diary(
                alert.incident_id,
                time.time(),
                self.config.user_id,
                "escalation",
                f"A{alert.id} round {step.rounds}: missing {', '.join(missing)}",
            )
        self.board_dirty.set()

    # -- board and diary ----------------------------------------------------------------------------

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

    async def _post_board(self, room_id: str) -> None:
        """`!status`: a new board message, the one edited from now on, pinned in place of
        the previous one (a board that scrolls away is not looked at)."""
        previous = self.state.boards().get(room_id)
        event_id = await self.chat.send_now(room_id, self._board_content())
        if event_id is not None:
            self.state.set_board(room_id, event_id)
            await self.chat.pin(room_id, event_id, previous)

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

    async def _post_diary(self, room_id: str, incident_id: int) -> None:
        """The diary as a readable message and as an encrypted JSON attachment."""
        incident = self.state.incident(incident_id)
        assert incident is not None
        entries = self.state.diary(incident_id)
        zone = self.config.timezone
        lines = [
            f"📓 Diary of incident #{incident.id}: {incident.title} "
            f"({'open' if incident.open else 'closed'}), times {zone.key}"
        ]
        lines += [f"{clock(e.at, zone)} {localpart(e.author)} [{e.kind}] {e.text}" for e in entries]
        await self.chat.post(room_id, message("\n".join(lines), notice=True))
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
        data = json.dumps(document, indent=2, ensure_ascii=False).encode()
        name = f"incident-{incident.id}-diary.json"
        if not await self.chat.post_encrypted_file(room_id, data, name, "application/json"):
            await self.chat.post(
                room_id, message("The diary file could not be uploaded; !log shows it again.", notice=True)
            )


def _by_room(addressees: Any) -> dict[str, list[str]]:
    """Addressees grouped by the room that reaches them (one message a room)."""
    by_room: dict[str, list[str]] = {}
    for addressee in addressees:
        by_room.setdefault(addressee.room_id, []).append(addressee.user_id)
    return by_room


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


__all__ = ["Handlers", "Reply"]
