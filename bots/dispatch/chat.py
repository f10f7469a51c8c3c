"""How the dispatch bot talks: message content, its rooms, and sending through the outbox.

Every message goes through a durable outbox (``Chat.queue``, inside the
transaction of whatever caused it): it gets a transaction ID before the first
attempt and is sent when the client knows the room, so one for a room the bot
has only just created waits for that room to appear in the sync, and a restart
loses nothing. Every attempt, also after a restart on the same device, sends
the same transaction ID, and in an encrypted room the ciphertext of the first
attempt (kept in the outbox): the homeserver answers a repeat with the event it
made the first time, so a message is never posted twice. Only board edits are
sent directly (``send_now``): a lost edit is made good by the next one.

Rooms the bot makes (``ensure_room``) carry a token in their creation content,
recorded before the request: a creation cut short is found again among the
bot's rooms instead of made twice. Their names are neutral (a number, a call
sign): room names are state, which no client encrypts.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import io
import json
import logging
from collections.abc import Callable
from typing import Any

import attrs
from nio import (
    Api,
    AsyncClient,
    JoinedRoomsResponse,
    JoinError,
    MatrixRoom,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomResolveAliasResponse,
    RoomSendResponse,
    UploadResponse,
)

from . import testhook
from .config import Config
from .directory import localpart
from .state import AFTER_BOARD, AFTER_PIN, EarlyAck, Outgoing, State

log = logging.getLogger(__name__)

#: an outbox message the homeserver refused (4xx) this often is dropped (logged)
MAX_SEND_ATTEMPTS = 5
#: an encrypted upload is tried this often (a fresh key each time)
UPLOAD_ATTEMPTS = 3
PINNED_EVENTS = "m.room.pinned_events"
#: the key in a room's creation content that names the creation (``State.room_token``)
CREATION_TOKEN = "police_dispatch.creation"
#: content larger than this (JSON, ASCII-escaped) is cut: encrypted and with its HTML it would
#: pass Synapse's 64 KiB event limit
MAX_CONTENT_BYTES = 32_000
CUT = " … (cut)"


class RoomRefused(RuntimeError):
    """The homeserver refused to create a room (4xx): no room was made."""


@attrs.define
class Sending:
    """The outbox message being sent: its ciphertext from the first attempt, or where to keep
    the one made now (``_Client.encrypt`` in ``bot.py`` reads ``SENDING``)."""

    state: State
    outgoing_id: int
    ciphertext: dict[str, Any] | None

    def keep(self, encrypted: dict[str, Any]) -> None:
        self.state.keep_ciphertext(self.outgoing_id, encrypted)
        self.ciphertext = encrypted
        testhook.reached("encrypted")


#: set around each ``room_send`` of the outbox
SENDING: contextvars.ContextVar[Sending | None] = contextvars.ContextVar("sending", default=None)


def pill(user_id: str, label: str | None = None) -> str:
    """A user link Element shows as a pill (and notifies when listed in ``m.mentions``)."""
    return (
        f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(label or localpart(user_id))}</a>'
    )


def message(
    text: str,
    *,
    mentions: tuple[str, ...] | list[str] = (),
    notice: bool = False,
    reply_to: str | None = None,
    author: str | None = None,
    named: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Message content; mentioned users get pills and ``m.mentions`` (Element notifies them).

    ``text`` may contain ``{@user:server}`` placeholders, shown as pills in HTML. ``author``
    (who gave the command this message is the result of) is named in plain text and never
    mentioned: their own command must not raise their mention badge; so are the ``named``
    (those a copy for someone else names)."""
    mentioned = sorted({user for user in mentions if user != author})
    plain, rich = text, html.escape(text).replace("\n", "<br>")
    for user_id in {*named, *([author] if author else [])} - set(mentioned):
        plain = plain.replace("{" + user_id + "}", localpart(user_id))
        rich = rich.replace(html.escape("{" + user_id + "}"), html.escape(localpart(user_id)))
    for user_id in mentioned:
        plain = plain.replace("{" + user_id + "}", localpart(user_id))
        rich = rich.replace(html.escape("{" + user_id + "}"), pill(user_id))
    content: dict[str, Any] = {
        "msgtype": "m.notice" if notice else "m.text",
        "body": plain,
        "format": "org.matrix.custom.html",
        "formatted_body": rich,
        "m.mentions": {"user_ids": mentioned},
    }
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


def rendered_notice(plain: str, rich: str) -> dict[str, Any]:
    """A notice already rendered as text and HTML (the board): nobody is notified, also not
    by the names on it (an empty ``m.mentions`` turns off the legacy name-matching rules)."""
    return {
        "msgtype": "m.notice",
        "body": plain,
        "format": "org.matrix.custom.html",
        "formatted_body": rich,
        "m.mentions": {},
    }


def pinned_with(pinned: list[Any], event_id: str, previous: str | None) -> list[str]:
    """``m.room.pinned_events`` with ``event_id`` pinned (last, as Element pins) in place of
    ``previous``; the pins of others stay, in their order."""
    kept = [pin for pin in pinned if isinstance(pin, str) and pin not in (event_id, previous)]
    return [*kept, event_id]


def replacement(event_id: str, new: dict[str, Any]) -> dict[str, Any]:
    """An edit (``m.replace``) of ``event_id`` to ``new``; older clients show the starred body."""
    return {
        **new,
        "body": "* " + new["body"],
        "m.new_content": new,
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }


def content_size(content: dict[str, Any]) -> int:
    """Bytes of ``content`` as JSON with non-ASCII escaped (how large it may become on the wire)."""
    return len(json.dumps(content))


def bounded(content: dict[str, Any], limit: int = MAX_CONTENT_BYTES) -> dict[str, Any]:
    """``content`` as it is, or, when larger than ``limit``, without its HTML and with its
    body cut (marked): a message too large for an event would never be sent at all."""
    if content_size(content) <= limit or not isinstance(content.get("body"), str):
        return content
    body = content["body"]
    lean = {key: value for key, value in content.items() if key not in ("format", "formatted_body")}
    low, high = 0, len(body)
    while low < high:  # the longest start of the body that fits
        middle = (low + high + 1) // 2
        if content_size({**lean, "body": body[:middle] + CUT}) <= limit:
            low = middle
        else:
            high = middle - 1
    return {**lean, "body": body[:low] + CUT}


#: called inside the transaction that records an alert message's event: (alert ID, the
#: acknowledgements given to that event before it was known)
AlertSent = Callable[[int, list[EarlyAck]], None]


class Chat:
    """The bot's rooms and messages: how to reach people, not what to tell them."""

    def __init__(self, client: AsyncClient, state: State, config: Config) -> None:
        self.client = client
        self.state = state
        self.config = config
        #: the resolved control rooms (``setup_control_rooms``)
        self.control_rooms: set[str] = set()
        #: set by the handlers: early acknowledgements of an alert message count once it is known
        self.on_alert_sent: AlertSent | None = None
        #: one send at a time: the outbox keeps its order, a board edit does not overtake it
        self._send_lock = asyncio.Lock()
        #: one room creation at a time: two callers never make the same room twice
        self._room_lock = asyncio.Lock()
        self._send_failures: dict[int, int] = {}
        #: rooms where pinning was refused (logged once each)
        self._pin_refused: set[str] = set()

    def room(self, room_id: str) -> MatrixRoom | None:
        """The room as the last sync left it (None: not joined, or not synced yet)."""
        return self.client.rooms.get(room_id)

    def joined(self, room_id: str) -> set[str]:
        """Who has joined ``room_id`` as the last sync left it (the invited are not in yet)."""
        room = self.room(room_id)
        if room is None:
            return set()
        return set(room.users) - set(room.invited_users)

    def commanders(self) -> list[str]:
        """Everyone who commands the bot in a control room and may be addressed by an
        escalation there: dispatchers, supervisors and the units' supervisors."""
        roles = self.config.roles
        people = set(roles["dispatcher"]) | set(roles["supervisor"])
        people |= {unit.supervisor for unit in self.config.units if unit.supervisor}
        return sorted(people - {self.config.user_id})

    # -- rooms ------------------------------------------------------------------------------------

    async def create_room(
        self,
        name: str,
        invite: list[str],
        *,
        alias: str | None = None,
        direct: bool = False,
        token: str | None = None,
    ) -> str:
        """A new end-to-end encrypted room (``token`` in its creation content); ``RoomRefused``
        when the homeserver refused it, ``RuntimeError`` when it failed otherwise (a room may
        have been made: ``ensure_room`` looks for it by its token)."""
        method, path, data = Api.room_create(
            self.client.access_token,
            alias=alias,
            name=name,
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
        body = json.loads(data)
        if token is not None:
            body.setdefault("creation_content", {})[CREATION_TOKEN] = token
        headers = {"Authorization": f"Bearer {self.client.access_token}", "Content-Type": "application/json"}
        path = path.split("?", 1)[0]  # the token goes in the header, never in a URL a log may keep
        async with await self.client.send(method, path, json.dumps(body), headers) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {}
            status = response.status
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("room_id"), str):
            errcode = answer.get("errcode", "") if isinstance(answer, dict) else ""
            failure = RoomRefused if 400 <= status < 500 else RuntimeError
            raise failure(f"creating the room failed: HTTP {status} {errcode}")
        log.info("created room %s", answer["room_id"])
        return answer["room_id"]

    async def ensure_room(self, key: str, name: str, invite: list[str], *, direct: bool = False) -> str:
        """The bot's room ``key`` ('incident:4', 'unit:alpha', 'dm:@x:y'), made once: a creation
        that was cut short (a crash after the request) is found again by its token."""
        async with self._room_lock:
            room_id = self.state.room(key)
            if room_id is not None:
                return room_id
            token, earlier = self.state.room_token(key)
            found = await self._created_with(token) if earlier else None
            if found is None:
                try:
                    found = await self.create_room(name, invite, direct=direct, token=token)
                except RoomRefused:
                    self.state.drop_pending_room(key)
                    raise
                testhook.reached("room-created")
            else:
                log.info("found room %s made before a restart", found)
            self.state.set_room(key, found)
            return found

    async def _created_with(self, token: str) -> str | None:
        """The room the bot joined whose creation content carries ``token`` (None: none); only
        rooms the state does not know yet are looked at."""
        joined = await self.client.joined_rooms()
        if not isinstance(joined, JoinedRoomsResponse):
            raise RuntimeError(f"listing the bot's rooms failed: {joined.status_code}")
        known = self.state.known_rooms() | self.control_rooms
        for room_id in joined.rooms:
            if room_id in known:
                continue
            create = await self.client.room_get_state_event(room_id, "m.room.create")
            if isinstance(create, RoomGetStateEventResponse) and create.content.get(CREATION_TOKEN) == token:
                return room_id
        return None

    async def setup_control_rooms(self) -> None:
        """Resolve the configured control rooms; an alias of this server that does not exist is
        created, with every commander invited."""
        own_server = self.config.user_id.split(":", 1)[1]
        for entry in self.config.control_rooms:
            room_id = entry if entry.startswith("!") else self.state.room(f"control:{entry}")
            if room_id is None:
                resolved = await self.client.room_resolve_alias(entry)
                if isinstance(resolved, RoomResolveAliasResponse):
                    room_id = resolved.room_id
                elif entry.split(":", 1)[1] == own_server:
                    room_id = await self.create_room(
                        "Control room", self.commanders(), alias=entry[1:].split(":", 1)[0]
                    )
                else:
                    log.warning("control room %s cannot be resolved; skipped", entry)
                    continue
                self.state.set_room(f"control:{entry}", room_id)
            response = await self.client.join(room_id)
            if isinstance(response, JoinError):
                log.warning("joining control room %s failed: %s", room_id, response.status_code)
            self.control_rooms.add(room_id)

    async def ensure_control_members(self) -> None:
        """Every commander is in each control room (joined or invited): escalations are posted
        there (one who has not joined gets a copy in a direct room)."""
        commanders = self.commanders()
        for room_id in sorted(self.control_rooms):
            room = self.room(room_id)
            if room is not None:
                await self.invite(room_id, [user for user in commanders if user not in room.users])

    async def ensure_unit_rooms(self) -> None:
        """Each unit has a room for its alerts, named by its call sign; members missing from it
        are invited."""
        for unit in self.config.units:
            key = f"unit:{unit.name}"
            if self.state.room(key) is None:
                await self.ensure_room(key, unit.call_sign, list(unit.members))
                continue
            room = self.room(self.state.room(key) or "")
            if room is not None:
                await self.invite(room.room_id, [m for m in unit.members if m not in room.users])

    async def invite(self, room_id: str, users: list[str]) -> None:
        for user in users:
            response = await self.client.room_invite(room_id, user)
            log.info("invited %s to %s: %s", user, room_id, type(response).__name__)

    async def join(self, room_id: str) -> None:
        """Join a room the bot was invited to (a refusal is logged, not raised)."""
        response = await self.client.join(room_id)
        if isinstance(response, JoinError):
            log.warning("joining %s failed: %s", room_id, response.status_code)

    async def direct_room(self, user_id: str) -> str:
        """The bot's direct room with ``user_id``, made the first time it is needed."""
        return await self.ensure_room(f"dm:{user_id}", "Dispatch", [user_id], direct=True)

    async def rename(self, room_id: str, name: str) -> bool:
        """Give a room the bot made its neutral ``name``; the earlier name's event is redacted,
        so its text leaves the server's database with the redaction. True when renamed."""
        room = self.room(room_id)
        if room is None or room.name == name:
            return False
        state = await self.client.room_get_state(room_id)
        earlier = (
            [
                event["event_id"]
                for event in state.events
                if event.get("type") == "m.room.name" and event.get("state_key") == "" and "event_id" in event
            ]
            if isinstance(state, RoomGetStateResponse)
            else []
        )
        # the earlier name goes first: a crash in between leaves a room without a name, which
        # the next start names (the other way round, the earlier name would stay unredacted)
        for event_id in earlier:
            redacted = await self.client.room_redact(room_id, event_id)
            if not isinstance(redacted, RoomRedactResponse):
                log.warning("redacting the earlier name of %s failed: %s", room_id, redacted.status_code)
        response = await self.client.room_put_state(room_id, "m.room.name", {"name": name})
        if not isinstance(response, RoomPutStateResponse):
            log.warning("renaming %s failed: %s", room_id, getattr(response, "status_code", response))
            return False
        log.info("renamed %s to its neutral name", room_id)
        return True

    # -- sending ----------------------------------------------------------------------------------

    def queue(
        self,
        room_id: str,
        content: dict[str, Any],
        *,
        alert_id: int | None = None,
        event_type: str = "m.room.message",
        after: str | None = None,
    ) -> None:
        """Put a message in the outbox (call inside the transaction of what caused it; ``flush``
        sends it)."""
        self.state.queue(room_id, bounded(content), alert_id, event_type, after)

    def answer(self, room_id: str, event_id: str, text: str, mentions: tuple[str, ...] = ()) -> None:
        """Queue a notice replying to ``event_id``."""
        self.queue(room_id, message(text, mentions=mentions, notice=True, reply_to=event_id))

    async def flush(self) -> None:
        """Send the outbox in order; a message for a room not synced yet waits (and those after
        it in that room), one the homeserver keeps refusing is dropped after
        ``MAX_SEND_ATTEMPTS``; an alert's event is remembered, and what follows a send
        (pinning) is done."""
        async with self._send_lock:
            waiting: set[str] = set()
            for outgoing in self.state.outbox():
                if outgoing.event_id is not None:  # sent before a restart; what follows is left
                    await self._after(outgoing)
                    continue
                if outgoing.room_id in waiting or outgoing.room_id not in self.client.rooms:
                    waiting.add(outgoing.room_id)  # created a moment ago: waits for the sync
                    continue
                event_id, refused = await self._send(outgoing)
                if event_id is None:
                    if not refused:  # the homeserver is busy or away: the next flush tries again
                        waiting.add(outgoing.room_id)
                        continue
                    failures = self._send_failures.get(outgoing.id, 0) + 1
                    self._send_failures[outgoing.id] = failures
                    if failures < MAX_SEND_ATTEMPTS:
                        waiting.add(outgoing.room_id)
                        continue
                    log.error(
                        "dropping a message to %s after %d refused attempts", outgoing.room_id, failures
                    )
                else:
                    testhook.reached("sent")
                with self.state.atomic():
                    early = self.state.sent(outgoing.id, event_id, outgoing.alert_id)
                    if early and outgoing.alert_id is not None and self.on_alert_sent is not None:
                        self.on_alert_sent(outgoing.alert_id, early)
                if event_id is not None and outgoing.after is not None:
                    sent = next((o for o in self.state.outbox() if o.id == outgoing.id), None)
                    if sent is not None:
                        await self._after(sent)

    async def _after(self, outgoing: Outgoing) -> None:
        """What follows a send: the card and a new board are pinned (a refusal is logged)."""
        if outgoing.event_id is not None and outgoing.after in (AFTER_PIN, AFTER_BOARD):
            await self.pin(outgoing.room_id, outgoing.event_id, outgoing.replaces)
        self.state.finished(outgoing.id)

    async def send_now(self, room_id: str, content: dict[str, Any]) -> str | None:
        """Send past the outbox (board edits); the event ID, or None when it failed (logged)."""
        async with self._send_lock:
            try:
                if self.client.should_query_keys:
                    await self.client.keys_query()
                response = await self.client.room_send(
                    room_id, "m.room.message", content, ignore_unverified_devices=True
                )
            except Exception as error:
                log.warning("sending to %s failed: %r", room_id, error)
                return None
            if not isinstance(response, RoomSendResponse):
                log.warning("sending to %s failed: %s", room_id, getattr(response, "status_code", response))
                return None
            return response.event_id

    async def pin(self, room_id: str, event_id: str, previous: str | None = None) -> bool:
        """Pin ``event_id`` (the board, a card) instead of ``previous``, keeping the pins of others.

        Sending ``m.room.pinned_events`` needs power: the bot has it in rooms it created (their
        creator), usually not in rooms it was invited to (state_default 50, the bot 0); there
        the refusal is logged once and the message stays unpinned. False when not pinned."""
        try:
            current = await self.client.room_get_state_event(room_id, PINNED_EVENTS)
            if isinstance(current, RoomGetStateEventResponse):
                pinned = current.content.get("pinned")
                pinned = pinned if isinstance(pinned, list) else []
            elif current.status_code == "M_NOT_FOUND":
                pinned = []
            else:  # unknown pins must not be overwritten
                log.warning("reading the pinned events of %s failed: %s", room_id, current.status_code)
                return False
            wanted = pinned_with(pinned, event_id, previous)
            if wanted == pinned:
                return True
            response = await self.client.room_put_state(room_id, PINNED_EVENTS, {"pinned": wanted})
        except Exception as error:
            log.warning("pinning %s in %s failed: %r", event_id, room_id, error)
            return False
        if isinstance(response, RoomPutStateResponse):
            log.info("pinned %s in %s", event_id, room_id)
            self._pin_refused.discard(room_id)
            return True
        if room_id not in self._pin_refused:
            self._pin_refused.add(room_id)
            log.warning(
                "%s is not pinned in %s (%s): the bot needs the power level to send %s there",
                event_id,
                room_id,
                response.status_code,
                PINNED_EVENTS,
            )
        return False

    async def upload_encrypted(self, data: bytes, name: str, mimetype: str) -> dict[str, Any] | None:
        """Upload ``data`` encrypted; the ``m.file`` content that carries its keys, or None when
        every upload failed."""
        for attempt in range(UPLOAD_ATTEMPTS):  # a fresh key each time: a ciphertext sniffed as
            response, keys = await self.client.upload(  # some type may be refused
                io.BytesIO(data),
                content_type="application/octet-stream",
                filename=name,
                encrypt=True,
                filesize=len(data),
            )
            if isinstance(response, UploadResponse) and keys is not None:
                return {
                    "msgtype": "m.file",
                    "body": name,
                    "filename": name,
                    "info": {"size": len(data), "mimetype": mimetype},
                    "file": {**keys, "url": response.content_uri, "mimetype": mimetype},
                }
            log.warning("uploading %s failed (attempt %d)", name, attempt + 1)
        return None

    async def _send(self, outgoing: Outgoing) -> tuple[str | None, bool]:
        """One attempt with the message's transaction ID (and its ciphertext, once made): the
        event ID, else whether the homeserver refused it (4xx) rather than failed for now."""
        context = SENDING.set(Sending(self.state, outgoing.id, outgoing.encrypted))
        try:
            if self.client.should_query_keys:
                await self.client.keys_query()
            response = await self.client.room_send(
                outgoing.room_id,
                outgoing.event_type,
                outgoing.content,
                tx_id=outgoing.txn_id,
                ignore_unverified_devices=True,
            )
        except Exception as error:
            log.warning("sending to %s failed: %r", outgoing.room_id, error)
            return None, False
        finally:
            SENDING.reset(context)
        if isinstance(response, RoomSendResponse):
            return response.event_id, False
        transport = getattr(response, "transport_response", None)
        status = getattr(transport, "status", None)
        log.warning(
            "sending to %s failed: HTTP %s %s", outgoing.room_id, status, getattr(response, "status_code", "")
        )
        return None, isinstance(status, int) and 400 <= status < 500


__all__ = [
    "SENDING",
    "Chat",
    "RoomRefused",
    "bounded",
    "message",
    "pill",
    "pinned_with",
    "rendered_notice",
    "replacement",
]
