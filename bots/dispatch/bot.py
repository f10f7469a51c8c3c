"""The dispatch bot's Matrix side: log in, sync, turn events into dispatch actions.

Commands and acknowledgements are handled as the sync delivers them; the sync
token is saved (in the state database) only after a whole sync response was
handled, so a bot killed half-way sees the same events again and the
``handled`` table makes each count once. Messages go through a durable outbox:
one for a room the bot has only just created waits for that room to appear in
the sync. A timer loop sends repeated alerts and escalations at the stored
deadlines; a board loop edits the board (``m.replace``) at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import json
import logging
import time
from typing import Any

from nio import (
    AsyncClient,
    Event,
    InviteMemberEvent,
    JoinError,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    ReactionEvent,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomMessageUnknown,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)

from ..common.session import Session
from . import board, commands, escalation
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

log = logging.getLogger("bots.dispatch")

#: the board is edited at most this often (many acknowledgements at once make one edit)
BOARD_DEBOUNCE_S = 1.0
#: the board is edited this often even when nothing changed (the ages of statuses and positions)
BOARD_REFRESH_S = 300.0
#: answered alerts stay on the board this long (those of an open incident until it closes)
BOARD_KEEP_S = 3600.0
#: the escalation loop looks at least this often
ESCALATION_POLL_S = 5.0
#: an outbox message that failed this often is dropped (logged)
MAX_SEND_ATTEMPTS = 5
ACK_REACTIONS = frozenset({"✅", "✔️", "✔", "☑️", "👍"})
SYNC_TOKEN = "sync_token"
#: when the last sync response was handled (a back-fill goes back to it)
LAST_SYNC = "last_sync_at"
BACKFILL_PAGES = 20
BACKFILL_SLACK_S = 60.0
#: an undecryptable event is tried again for this long
PENDING_KEEP_S = 3600.0


class _Client(AsyncClient):
    """nio encrypts ``m.relates_to`` away; Element reads edits and replies from the wire content."""

    def encrypt(self, room_id: str, message_type: str, content: dict[Any, Any]) -> tuple[str, dict[str, Any]]:
        relates = content.get("m.relates_to")
        event_type, encrypted = super().encrypt(room_id, message_type, content)
        if relates is not None:
            encrypted = {**encrypted, "m.relates_to": relates}
        return event_type, encrypted


class _StateSyncTokens:
    """The sync token in the state database, beside the ``handled`` table that makes a replayed
    event count once; saving it also notes when (a later back-fill goes back to that time)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def load(self) -> str | None:
        return self.state.get(SYNC_TOKEN)

    def save(self, token: str) -> None:
        self.state.put(SYNC_TOKEN, token)
        self.state.put(LAST_SYNC, str(time.time()))


class Reply(Exception):
    """Stop a command and answer with this text (nothing was changed)."""


def pill(user_id: str, label: str | None = None) -> str:
    return (
        f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(label or localpart(user_id))}</a>'
    )


def message(
    text: str,
    *,
    mentions: tuple[str, ...] | list[str] = (),
    notice: bool = False,
    reply_to: str | None = None,
) -> dict[str, Any]:
    """Message content; mentioned users get pills and ``m.mentions`` (Element notifies them).

    ``text`` may contain ``{@user:server}`` placeholders, shown as pills in HTML."""
    plain, rich = text, html.escape(text).replace("\n", "<br>")
    for user_id in mentions:
        plain = plain.replace("{" + user_id + "}", localpart(user_id))
        rich = rich.replace(html.escape("{" + user_id + "}"), pill(user_id))
    content: dict[str, Any] = {
        "msgtype": "m.notice" if notice else "m.text",
        "body": plain,
        "format": "org.matrix.custom.html",
        "formatted_body": rich,
        "m.mentions": {"user_ids": sorted(set(mentions))},
    }
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


class DispatchBot:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.directory = Directory(config)
        self.session = Session(config, device_name="dispatch bot", log=log, client_class=_Client)
        self.client = self.session.client
        self.state = State(config.state_path)
        self.tokens = _StateSyncTokens(self.state)
        self.control_rooms: set[str] = set()
        self.supervisors = {unit.name: unit.supervisor for unit in config.units}
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._board_dirty = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._send_failures: dict[int, int] = {}
        #: no saved sync token: the first sync's timeline is history, not new work
        self._skip_history = self.tokens.load() is None
        #: undecryptable events: event ID -> (room ID, event, first seen)
        self._pending: dict[str, tuple[str, MegolmEvent, float]] = {}

    # -- running ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self.session.stop()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await self.session.until_stopped(self.session.login()):
                return  # stopped while the homeserver was still unreachable
            self.client.add_event_callback(self._guard(self._on_invite), InviteMemberEvent)
            self.client.add_event_callback(self._guard(self._on_text), RoomMessageText)
            self.client.add_event_callback(self._guard(self._on_reaction), ReactionEvent)
            self.client.add_event_callback(self._guard(self._on_unknown_message), RoomMessageUnknown)
            self.client.add_event_callback(self._guard(self._on_undecryptable), MegolmEvent)
            await self._setup_control_rooms()
            tasks = [asyncio.create_task(self._escalation_loop()), asyncio.create_task(self._board_loop())]
            await self.session.sync_forever(self.tokens, self._after_sync, self._on_ready)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.close()
            self.state.close()
            log.info("stopped")

    def _in_first_sync(self) -> bool:
        """While the first sync is handled its timeline may be history (see ``_skip_history``)."""
        return not self.session.ready

    def _guard(self, handler: Any) -> Any:
        """A handler that fails is logged; the sync goes on (bad input never stops the bot)."""

        async def guarded(room: MatrixRoom, event: Any) -> None:
            try:
                await handler(room, event)
            except Exception:
                log.exception("handling %s in %s failed", getattr(event, "event_id", "?"), room.room_id)

        return guarded

    async def _on_ready(self) -> None:
        """The first sync is in: the unit rooms can be set up and the loops may start."""
        try:
            await self._ensure_unit_rooms()
        except Exception:
            log.exception("setting up the unit rooms failed")
        self._ready.set()
        self._wake.set()
        log.info(
            "dispatch bot ready: %d rooms, %d control rooms, %d open incidents",
            len(self.client.rooms),
            len(self.control_rooms),
            len(self.state.open_incidents()),
        )

    async def _after_sync(self, response: SyncResponse) -> None:
        """Back-fill gaps, retry late keys and send the outbox; the session saves the sync token
        (and the time of this sync) only after this returned."""
        if not (self._skip_history and self._in_first_sync()):
            for room_id, joined in response.rooms.join.items():
                if joined.timeline.limited and joined.timeline.prev_batch:
                    await self._backfill(room_id, joined.timeline.prev_batch)
        await self._retry_pending()
        await self.flush()

    async def _backfill(self, room_id: str, prev_batch: str) -> None:
        """A limited timeline left events out (many at once, or while the bot was down): fetch
        those since the previous sync and handle them oldest first (handled ones are skipped)."""
        since = float(self.state.get(LAST_SYNC) or 0) - BACKFILL_SLACK_S
        collected: list[Event] = []
        token = prev_batch
        for _ in range(BACKFILL_PAGES):
            response = await self.client.room_messages(room_id, start=token, limit=100)
            if not isinstance(response, RoomMessagesResponse):
                log.warning("back-filling %s failed: %s", room_id, getattr(response, "status_code", response))
                break
            recent = [event for event in response.chunk if event.server_timestamp / 1000 >= since]
            collected.extend(recent)
            if len(recent) < len(response.chunk) or not response.chunk or not response.end:
                break
            token = response.end
        room = self.client.rooms.get(room_id)
        log.info("back-filling %d events in %s", len(collected), room_id)
        for event in reversed(collected):
            if room is not None:
                await self._dispatch(room, event)

    async def _dispatch(self, room: MatrixRoom, event: Event) -> None:
        """An event that did not come through the sync callbacks (back-filled, decrypted late)."""
        handlers: list[tuple[type, Any]] = [
            (RoomMessageText, self._on_text),
            (ReactionEvent, self._on_reaction),
            (RoomMessageUnknown, self._on_unknown_message),
            (MegolmEvent, self._on_undecryptable),
        ]
        for kind, handler in handlers:
            if isinstance(event, kind):
                await self._guard(handler)(room, event)
                return

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        """Kept and tried again after each sync (the room key may come later); its sender's
        client is asked for the key."""
        if event.event_id in self._pending:
            return
        self._pending[event.event_id] = (room.room_id, event, time.time())
        log.info("cannot decrypt %s in %s yet", event.event_id, room.room_id)
        with contextlib.suppress(LocalProtocolError):  # requested already for this session
            await self.client.request_room_key(event)

    async def _retry_pending(self) -> None:
        for event_id, (room_id, event, since) in list(self._pending.items()):
            try:
                decrypted = self.client.decrypt_event(event)
            except Exception:
                if time.time() - since > PENDING_KEEP_S:
                    del self._pending[event_id]
                    log.warning("gave up decrypting %s in %s", event_id, room_id)
                continue
            del self._pending[event_id]
            room = self.client.rooms.get(room_id)
            if room is not None:
                await self._dispatch(room, decrypted)

    # -- rooms ------------------------------------------------------------------------------------

    async def _create_room(
        self, name: str, invite: list[str], *, alias: str | None = None, direct: bool = False
    ) -> str:
        response = await self.client.room_create(
            name=name,
            alias=alias,
            invite=[user for user in dict.fromkeys(invite) if user != self.config.user_id],
            is_direct=direct,
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        if not isinstance(response, RoomCreateResponse):
            raise RuntimeError(f"creating the room failed: {response}")
        log.info("created room %s", response.room_id)
        return response.room_id

    async def _setup_control_rooms(self) -> None:
        """Resolve the configured control rooms; an alias of this server that does not exist is created."""
        own_server = self.config.user_id.split(":", 1)[1]
        commanders = sorted(self.config.roles["dispatcher"] | self.config.roles["supervisor"])
        for entry in self.config.control_rooms:
            room_id = entry if entry.startswith("!") else self.state.room(f"control:{entry}")
            if room_id is None:
                resolved = await self.client.room_resolve_alias(entry)
                if isinstance(resolved, RoomResolveAliasResponse):
                    room_id = resolved.room_id
                elif entry.split(":", 1)[1] == own_server:
                    room_id = await self._create_room(
                        "Control room", commanders, alias=entry[1:].split(":", 1)[0]
                    )
                else:
                    log.warning("control room %s cannot be resolved; skipped", entry)
                    continue
                self.state.set_room(f"control:{entry}", room_id)
            response = await self.client.join(room_id)
            if isinstance(response, JoinError):
                log.warning("joining control room %s failed: %s", room_id, response.status_code)
            self.control_rooms.add(room_id)

    async def _ensure_unit_rooms(self) -> None:
        """Each unit has a room for its alerts; members missing from it are invited."""
        for unit in self.config.units:
            room_id = self.state.room(f"unit:{unit.name}")
            if room_id is None:
                room_id = await self._create_room(f"{unit.call_sign} ({unit.name})", list(unit.members))
                self.state.set_room(f"unit:{unit.name}", room_id)
                continue
            room = self.client.rooms.get(room_id)
            if room is not None:
                await self._invite(room_id, [m for m in unit.members if m not in room.users])

    async def _invite(self, room_id: str, users: list[str]) -> None:
        for user in users:
            response = await self.client.room_invite(room_id, user)
            log.info("invited %s to %s: %s", user, room_id, type(response).__name__)

    async def _direct_room(self, user_id: str) -> str:
        room_id = self.state.room(f"dm:{user_id}")
        if room_id is None:
            room_id = await self._create_room("Dispatch", [user_id], direct=True)
            self.state.set_room(f"dm:{user_id}", room_id)
        return room_id

    async def _room_for(self, user_id: str, control_room: str) -> tuple[str, tuple[str, ...]]:
        """Where an alert reaches a user (unit room, control room, else a direct room), via which units."""
        units = self.directory.units_of(user_id)
        if units:
            room_id = self.state.room(f"unit:{units[0].name}")
            if room_id is not None:
                return room_id, tuple(u.name for u in units)
        room = self.client.rooms.get(control_room)
        if room is not None and user_id in room.users:
            return control_room, tuple(u.name for u in units)
        return await self._direct_room(user_id), tuple(u.name for u in units)

    # -- sending ----------------------------------------------------------------------------------

    async def post(
        self,
        room_id: str,
        content: dict[str, Any],
        *,
        alert_id: int | None = None,
        event_type: str = "m.room.message",
    ) -> None:
        """Queue a message (durable) and send what can be sent."""
        self.state.queue(room_id, content, alert_id, event_type)
        await self.flush()

    async def flush(self) -> None:
        async with self._send_lock:
            for outgoing in self.state.outbox():
                if outgoing.room_id not in self.client.rooms:
                    continue  # created a moment ago: waits for the sync
                event_id = await self._send(outgoing.room_id, outgoing.content, outgoing.event_type)
                if event_id is None:
                    failures = self._send_failures.get(outgoing.id, 0) + 1
                    self._send_failures[outgoing.id] = failures
                    if failures < MAX_SEND_ATTEMPTS:
                        continue
                    log.error("dropping a message to %s after %d failed attempts", outgoing.room_id, failures)
                self.state.sent(outgoing.id, event_id, outgoing.alert_id)

    async def _send(
        self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message"
    ) -> str | None:
        try:
            if self.client.should_query_keys:
                await self.client.keys_query()
            response = await self.client.room_send(
                room_id, event_type, content, ignore_unverified_devices=True
            )
        except Exception as error:
            log.warning("sending to %s failed: %r", room_id, error)
            return None
        if not isinstance(response, RoomSendResponse):
            log.warning("sending to %s failed: %s", room_id, getattr(response, "status_code", response))
            return None
        return response.event_id

    async def answer(self, room_id: str, event_id: str, text: str, mentions: tuple[str, ...] = ()) -> None:
        await self.post(room_id, message(text, mentions=mentions, notice=True, reply_to=event_id))

    # -- events -----------------------------------------------------------------------------------

    def _is_new(self, event: Any) -> bool:
        if event.sender == self.config.user_id:
            return False
        if self._skip_history and self._in_first_sync():
            return False
        return self.state.first_time(event.event_id)

    async def _on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key != self.config.user_id or event.membership != "invite":
            return
        if event.sender not in self.directory.users and room.room_id not in self.control_rooms:
            log.info("ignoring an invite to %s from %s (not in the directory)", room.room_id, event.sender)
            return
        response = await self.client.join(room.room_id)
        if isinstance(response, JoinError):
            log.warning("joining %s failed: %s", room.room_id, response.status_code)

    async def _on_reaction(self, room: MatrixRoom, event: ReactionEvent) -> None:
        if event.key.replace("\ufe0f", "") not in {k.replace("\ufe0f", "") for k in ACK_REACTIONS}:
            return
        if not self._is_new(event):
            return
        alert_id = self.state.alert_of_event(event.reacts_to)
        if alert_id is not None:
            await self._acknowledge(alert_id, event.sender, event.server_timestamp / 1000, "✅")

    async def _on_unknown_message(self, room: MatrixRoom, event: RoomMessageUnknown) -> None:
        if event.msgtype != "m.location" or not self._is_new(event):
            return
        geo = event.source.get("content", {}).get("geo_uri")
        if not isinstance(geo, str) or not geo.startswith("geo:"):
            return
        on_incident = {unit for incident in self.state.open_incidents() for unit in incident.units}
        in_incident = self.state.incident_by_room(room.room_id) is not None
        if in_incident or any(unit.name in on_incident for unit in self.directory.units_of(event.sender)):
            self.state.set_location(event.sender, geo.split(";", 1)[0], event.server_timestamp / 1000)
            self._board_dirty.set()

    async def _on_text(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if not self._is_new(event):
            return
        relates = event.source.get("content", {}).get("m.relates_to") or {}
        # a reply, or (Element's threads) a message in the thread of the alert
        replied_to = [(relates.get("m.in_reply_to") or {}).get("event_id")]
        if relates.get("rel_type") == "m.thread":
            replied_to.insert(0, relates.get("event_id"))
        if any(replied_to) and commands.is_acknowledgement(event.body):
            alert_id = next(
                (found for e in replied_to if e and (found := self.state.alert_of_event(e)) is not None), None
            )
            if alert_id is not None:
                await self._acknowledge(alert_id, event.sender, event.server_timestamp / 1000, "reply")
                return
        command = commands.parse_command(event.body)
        if command is None:
            return
        in_control = room.room_id in self.control_rooms
        is_status = isinstance(command, OfficerStatus) or (
            isinstance(command, Invalid) and event.body.strip().lower().split(" ", 1)[0] == "!s"
        )
        if not in_control and not is_status:
            return
        if isinstance(command, Invalid):
            await self.answer(room.room_id, event.event_id, command.message)
            return
        if isinstance(command, OfficerStatus):
            await self._officer_status(room, event, command.code)
            return
        if not self.directory.is_commander(event.sender):
            log.info("refused a command from %s (no dispatcher or supervisor)", event.sender)
            await self.answer(
                room.room_id,
                event.event_id,
                "Refused: only dispatchers and supervisors may give dispatch commands. "
                "Officers set their status with !s <0-9>.",
            )
            return
        try:
            await self._command(room.room_id, event, command)
        except Reply as reply:
            await self.answer(room.room_id, event.event_id, str(reply))
        except NotFound as error:
            await self.answer(room.room_id, event.event_id, str(error))

    # -- commands ---------------------------------------------------------------------------------

    async def _command(self, room_id: str, event: RoomMessageText, command: Any) -> None:
        sender, now = event.sender, event.server_timestamp / 1000
        log.info("command %s from %s in %s", type(command).__name__, sender, room_id)
        if isinstance(command, Help):
            await self.answer(room_id, event.event_id, commands.HELP)
        elif isinstance(command, IncidentNew):
            await self._incident_new(room_id, event, command)
        elif isinstance(command, Assign | Release):
            await self._assign(room_id, event, command)
        elif isinstance(command, Alert):
            await self._alert(room_id, event, command)
        elif isinstance(command, Status):
            await self._post_board(room_id)
        elif isinstance(command, Sitrep):
            incident = self._open_incident(command.incident)
            self.state.add_diary(incident.id, now, sender, "sitrep", command.text)
            if incident.room_id:
                await self.post(
                    incident.room_id,
                    message(
                        f"Situation report #{incident.id} by {{{sender}}}: {command.text}", mentions=(sender,)
                    ),
                )
            await self.answer(room_id, event.event_id, f"Situation report added to incident #{incident.id}.")
        elif isinstance(command, Handover):
            await self._handover(room_id, event, command)
        elif isinstance(command, Close):
            incident = self._open_incident(command.incident)
            self.state.add_diary(incident.id, now, sender, "command", event.body)
            self.state.add_diary(incident.id, now, sender, "closed", command.text or "closed")
            self.state.close_incident(incident.id, sender, now)
            if incident.room_id:
                note = f"Incident #{incident.id} closed by {{{sender}}}" + (
                    f": {command.text}" if command.text else "."
                )
                await self.post(incident.room_id, message(note, mentions=(sender,), notice=True))
            await self._post_diary(room_id, incident.id)
            self._board_dirty.set()
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
            f"Opened by {{{sender}}} at {board.clock(incident.created_at)}.",
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
            incident_room = await self._create_room(f"#{number} {command.title}", invite)
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
        await self.post(incident_room, message(card, mentions=(event.sender, *members)))
        await self.post(
            room_id, message(card, mentions=(event.sender,), notice=True, reply_to=event.event_id)
        )
        self._board_dirty.set()

    async def _assign(self, room_id: str, event: RoomMessageText, command: Assign | Release) -> None:
        incident = self._open_incident(command.incident)
        unit = self.directory.unit(command.unit)
        now = event.server_timestamp / 1000
        if isinstance(command, Assign):
            if not self.state.assign(incident.id, unit.name, now):
                raise Reply(f"{unit.call_sign} ({unit.name}) is assigned to #{incident.id} already.")
            text = f"{unit.call_sign} ({unit.name}) assigned to #{incident.id}"
            if incident.room_id:
                room = self.client.rooms.get(incident.room_id)
                await self._invite(
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
            await self.post(incident.room_id, message(text + ".", mentions=unit.members))
        await self.answer(room_id, event.event_id, text + ".")
        self._board_dirty.set()

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
        by_room: dict[str, list[str]] = {}
        for user, addressee in addressees.items():
            by_room.setdefault(addressee.room_id, []).append(user)
        due = board.clock(now + period)
        for alert_room, users in by_room.items():
            names = " ".join("{" + user + "}" for user in users)
            text = (
                f"🔔 Alert A{alert_id} from {{{event.sender}}}: {command.text}\n"
                f"For: {names}\nAcknowledge with ✅ or reply 'ack' / 'quittiert' by {due}."
            )
            await self.post(alert_room, message(text, mentions=(event.sender, *users)), alert_id=alert_id)
        await self.answer(
            room_id,
            event.event_id,
            f"Alert A{alert_id} sent to {len(addressees)} "
            f"({', '.join(sorted(localpart(u) for u in addressees))}); "
            f"acknowledgement due by {due}.",
        )
        self._wake.set()
        self._board_dirty.set()

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
        room = self.client.rooms.get(room_id)
        if room is not None and user not in room.users:
            await self._invite(room_id, [user])
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
        await self.post(room_id, message("\n".join(lines), mentions=(event.sender, user)))

    # -- acknowledgements, status, escalation ---------------------------------------------------------

    async def _acknowledge(self, alert_id: int, user_id: str, at: float, via: str) -> None:
        if not self.state.acknowledge(alert_id, user_id, at, via):
            return
        log.info("alert A%d acknowledged by %s (%s)", alert_id, user_id, via)
        alert = self.state.alert(alert_id)
        assert alert is not None
        if alert.incident_id is not None:
            self.state.add_diary(alert.incident_id, at, user_id, "ack", f"A{alert_id} acknowledged ({via})")
        if not alert.missing and not alert.closed:
            self.state.close_alert(alert_id)
            await self.post(
                alert.control_room,
                message(f"✅ Alert A{alert_id}: all {len(alert.addressees)} acknowledged.", notice=True),
            )
        self._board_dirty.set()

    async def _officer_status(self, room: MatrixRoom, event: RoomMessageText, code: int) -> None:
        sender, now = event.sender, event.server_timestamp / 1000
        if not self.directory.is_officer(sender):
            await self.answer(
                room.room_id, event.event_id, "Refused: only officers in the directory set a status."
            )
            return
        self.state.set_status(sender, code, now)
        meaning = commands.STATUS_CODES[code]
        units = {unit.name for unit in self.directory.units_of(sender)}
        for incident in self.state.open_incidents():
            if units & set(incident.units):
                self.state.add_diary(incident.id, now, sender, "status", f"status {code} ({meaning})")
        log.info("status %d from %s", code, sender)
        await self.post(
            room.room_id,
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": event.event_id, "key": "✅"}},
            event_type="m.reaction",
        )
        if code in commands.URGENT_CODES:
            dispatchers = tuple(sorted(self.config.roles["dispatcher"]))
            for control_room in sorted(self.control_rooms):
                duty = self.state.get(f"duty:{control_room}")
                notify = (duty,) if duty else dispatchers
                mark = "🔴" if code == 0 else "🟠"
                text = f"{mark} Status {code} ({meaning}) from {{{sender}}} - {self.directory.label(sender)}"
                await self.post(control_room, message(text, mentions=(sender, *notify)))
        self._board_dirty.set()

    async def _escalation_loop(self) -> None:
        await self._ready.wait()
        while not self.session.stopping.is_set():
            self._wake.clear()
            try:
                now = time.time()
                alerts = {a.id: a for a in self.state.open_alerts()}
                for step in escalation.due_steps(alerts.values(), now, self.config.max_alerts):
                    await self._escalate(alerts[step.alert_id], step)
                upcoming = escalation.next_due(self.state.open_alerts())
            except Exception:
                log.exception("the escalation loop failed; retrying")
                upcoming = None
            wait = (
                ESCALATION_POLL_S
                if upcoming is None
                else min(max(upcoming - time.time(), 0.05), ESCALATION_POLL_S)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _escalate(self, alert: AlertView, step: escalation.Step) -> None:
        self.state.set_due(alert.id, step.next_due, step.rounds)
        if step.done:
            self.state.close_alert(alert.id)
            return
        missing = [a.user_id for a in step.missing]
        log.info("alert A%d: %d missing, round %d", alert.id, len(missing), step.rounds)
        if step.realert:
            by_room: dict[str, list[str]] = {}
            for addressee in step.missing:
                by_room.setdefault(addressee.room_id, []).append(addressee.user_id)
            for room_id, users in by_room.items():
                names = " ".join("{" + user + "}" for user in users)
                text = (
                    f"🔔 Reminder {step.rounds}/{self.config.max_alerts}, alert A{alert.id}: {alert.text}\n"
                    f"Not acknowledged yet: {names}. Acknowledge with ✅ or reply 'ack'."
                )
                await self.post(room_id, message(text, mentions=users), alert_id=alert.id)
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
        await self.post(alert.control_room, message(text, mentions=mentions))
        if alert.incident_id is not None:
            self.state.add_diary(
                alert.incident_id,
                time.time(),
                self.config.user_id,
                "escalation",
                f"A{alert.id} round {step.rounds}: missing {', '.join(missing)}",
            )
        self._board_dirty.set()

    # -- board and diary ----------------------------------------------------------------------------

    def _board_content(self) -> tuple[str, str]:
        data = board.BoardData(
            incidents=self.state.open_incidents(),
            units=self.config.units,
            statuses=self.state.statuses(),
            locations=self.state.locations(),
            alerts=self.state.board_alerts(time.time() - BOARD_KEEP_S),
            label=self.directory.label,
        )
        return board.render(data, time.time())

    async def _post_board(self, room_id: str) -> None:
        """`!status`: a new board message, the one edited from now on."""
        plain, rich = self._board_content()
        content = {
            "msgtype": "m.notice",
            "body": plain,
            "format": "org.matrix.custom.html",
            "formatted_body": rich,
        }
        async with self._send_lock:
            event_id = await self._send(room_id, content)
        if event_id is not None:
            self.state.set_board(room_id, event_id)

    async def _board_loop(self) -> None:
        while not self.session.stopping.is_set():
            with contextlib.suppress(TimeoutError):  # now and then anyway: the ages on it grow
                await asyncio.wait_for(self._board_dirty.wait(), BOARD_REFRESH_S)
            await asyncio.sleep(BOARD_DEBOUNCE_S)
            self._board_dirty.clear()
            try:
                boards = self.state.boards()
                if not boards:
                    continue
                plain, rich = self._board_content()
                for room_id, board_event in boards.items():
                    new = {
                        "msgtype": "m.notice",
                        "body": plain,
                        "format": "org.matrix.custom.html",
                        "formatted_body": rich,
                    }
                    content = {
                        **new,
                        "body": "* " + plain,
                        "m.new_content": new,
                        "m.relates_to": {"rel_type": "m.replace", "event_id": board_event},
                    }
                    async with self._send_lock:
                        await self._send(room_id, content)
            except Exception:
                log.exception("updating the board failed")

    async def _post_diary(self, room_id: str, incident_id: int) -> None:
        """The diary as a readable message and as an encrypted JSON attachment."""
        incident = self.state.incident(incident_id)
        assert incident is not None
        entries = self.state.diary(incident_id)
        lines = [
            f"📓 Diary of incident #{incident.id}: {incident.title} ({'open' if incident.open else 'closed'})"
        ]
        lines += [f"{board.clock(e.at)} {localpart(e.author)} [{e.kind}] {e.text}" for e in entries]
        await self.post(room_id, message("\n".join(lines), notice=True))
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
        for attempt in range(3):  # a fresh key each time: a ciphertext sniffed as some type may be refused
            response, keys = await self.client.upload(
                io.BytesIO(data),
                content_type="application/octet-stream",
                filename=name,
                encrypt=True,
                filesize=len(data),
            )
            if isinstance(response, UploadResponse) and keys is not None:
                break
            log.warning("uploading the diary of #%d failed (attempt %d)", incident.id, attempt + 1)
        else:
            await self.post(
                room_id, message("The diary file could not be uploaded; !log shows it again.", notice=True)
            )
            return
        content = {
            "msgtype": "m.file",
            "body": name,
            "filename": name,
            "info": {"size": len(data), "mimetype": "application/json"},
            "file": {**keys, "url": response.content_uri, "mimetype": "application/json"},
        }
        await self.post(room_id, content)


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


__all__ = ["DispatchBot", "message"]
