"""How the dispatch bot talks: message content, its rooms, and sending through the outbox.

Every message goes through a durable outbox (``Chat.post``): it is queued in the
state first and sent when the client knows the room, so one for a room the bot
has only just created waits for that room to appear in the sync, and a restart
loses nothing. Only the board is sent directly (``send_now``): it is edited in
place, and a lost edit is made good by the next one.
"""

from __future__ import annotations

import asyncio
import html
import io
import logging
from typing import Any

from nio import (
    AsyncClient,
    JoinError,
    MatrixRoom,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomPutStateResponse,
    RoomResolveAliasResponse,
    RoomSendResponse,
    UploadResponse,
)

from .config import Config
from .directory import localpart
from .state import State

log = logging.getLogger(__name__)

#: an outbox message that failed this often is dropped (logged)
MAX_SEND_ATTEMPTS = 5
#: an encrypted upload is tried this often (a fresh key each time)
UPLOAD_ATTEMPTS = 3
PINNED_EVENTS = "m.room.pinned_events"


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
) -> dict[str, Any]:
    """Message content; mentioned users get pills and ``m.mentions`` (Element notifies them).

    ``text`` may contain ``{@user:server}`` placeholders, shown as pills in HTML. ``author``
    (who gave the command this message is the result of) is named in plain text and never
    mentioned: their own command must not raise their mention badge."""
    mentioned = sorted({user for user in mentions if user != author})
    plain, rich = text, html.escape(text).replace("\n", "<br>")
    if author is not None:
        plain = plain.replace("{" + author + "}", localpart(author))
        rich = rich.replace(html.escape("{" + author + "}"), html.escape(localpart(author)))
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


class Chat:
    """The bot's rooms and messages: how to reach people, not what to tell them."""

    def __init__(self, client: AsyncClient, state: State, config: Config) -> None:
        self.client = client
        self.state = state
        self.config = config
        #: the resolved control rooms (``setup_control_rooms``)
        self.control_rooms: set[str] = set()
        #: one send at a time: the outbox keeps its order, a board edit does not overtake it
        self._send_lock = asyncio.Lock()
        self._send_failures: dict[int, int] = {}
        #: rooms where pinning was refused (logged once each)
        self._pin_refused: set[str] = set()

    def room(self, room_id: str) -> MatrixRoom | None:
        """The room as the last sync left it (None: not joined, or not synced yet)."""
        return self.client.rooms.get(room_id)

    # -- rooms ------------------------------------------------------------------------------------

    async def create_room(
        self, name: str, invite: list[str], *, alias: str | None = None, direct: bool = False
    ) -> str:
        """A new end-to-end encrypted room; ``RuntimeError`` when the homeserver refused it."""
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

    async def setup_control_rooms(self) -> None:
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
                    room_id = await self.create_room(
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

    async def ensure_unit_rooms(self) -> None:
        """Each unit has a room for its alerts; members missing from it are invited."""
        for unit in self.config.units:
            room_id = self.state.room(f"unit:{unit.name}")
            if room_id is None:
                room_id = await self.create_room(f"{unit.call_sign} ({unit.name})", list(unit.members))
                self.state.set_room(f"unit:{unit.name}", room_id)
                continue
            room = self.room(room_id)
            if room is not None:
                await self.invite(room_id, [m for m in unit.members if m not in room.users])

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
        room_id = self.state.room(f"dm:{user_id}")
        if room_id is None:
            room_id = await self.create_room("Dispatch", [user_id], direct=True)
            self.state.set_room(f"dm:{user_id}", room_id)
        return room_id

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

    async def answer(self, room_id: str, event_id: str, text: str, mentions: tuple[str, ...] = ()) -> None:
        """A notice replying to ``event_id``."""
        await self.post(room_id, message(text, mentions=mentions, notice=True, reply_to=event_id))

    async def flush(self) -> None:
        """Send the outbox in order; a message for a room not synced yet waits, one that keeps
        failing is dropped after ``MAX_SEND_ATTEMPTS``; an alert's event is remembered."""
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

    async def send_now(self, room_id: str, content: dict[str, Any]) -> str | None:
        """Send past the outbox (the board); the event ID, or None when it failed (logged)."""
        async with self._send_lock:
            return await self._send(room_id, content)

    async def pin(self, room_id: str, event_id: str, previous: str | None = None) -> bool:
        """Pin ``event_id`` (the board) instead of ``previous``, keeping the pins of others.

        Sending ``m.room.pinned_events`` needs power: the bot has it in rooms it created (their
        creator), usually not in rooms it was invited to (state_default 50, the bot 0); there
        the refusal is logged once and the board stays unpinned. False when not pinned."""
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
            log.warning("pinning the board in %s failed: %r", room_id, error)
            return False
        if isinstance(response, RoomPutStateResponse):
            log.info("pinned the board %s in %s", event_id, room_id)
            self._pin_refused.discard(room_id)
            return True
        if room_id not in self._pin_refused:
            self._pin_refused.add(room_id)
            log.warning(
                "the board in %s is not pinned (%s): the bot needs the power level to send %s there",
                room_id,
                response.status_code,
                PINNED_EVENTS,
            )
        return False

    async def post_encrypted_file(self, room_id: str, data: bytes, name: str, mimetype: str) -> bool:
        """Upload ``data`` encrypted and post it as a file; False when every upload failed."""
        for attempt in range(
            UPLOAD_ATTEMPTS
        ):  # a fresh key each time: a ciphertext sniffed as some type may be refused
            response, keys = await self.client.upload(
                io.BytesIO(data),
                content_type="application/octet-stream",
                filename=name,
                encrypt=True,
                filesize=len(data),
            )
            if isinstance(response, UploadResponse) and keys is not None:
                break
            log.warning("uploading %s failed (attempt %d)", name, attempt + 1)
        else:
            return False
        content = {
            "msgtype": "m.file",
            "body": name,
            "filename": name,
            "info": {"size": len(data), "mimetype": mimetype},
            "file": {**keys, "url": response.content_uri, "mimetype": mimetype},
        }
        await self.post(room_id, content)
        return True

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


__all__ = ["Chat", "message", "pill", "pinned_with", "rendered_notice", "replacement"]
