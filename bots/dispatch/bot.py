"""The dispatch bot's Matrix side: log in, sync, hand each event to its handler once.

Commands and acknowledgements are handled as the sync delivers them; the sync
token is saved (in the state database) only after a whole sync response was
handled, so a bot killed half-way sees the same events again and the
``handled`` table makes each count once. Commands cut short by a restart are
carried on from their last recorded step once the first sync is in, and
after every sync. A timer loop sends repeated alerts and escalations at the
stored deadlines; a board loop edits the board (``m.replace``) at most once a
second. What an event means is decided in ``handlers.py``; how messages reach
rooms (the durable outbox, the same transaction ID and ciphertext for every
attempt) in ``chat.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nio import (
    AsyncClient,
    Event,
    InviteMemberEvent,
    MatrixRoom,
    MegolmEvent,
    ReactionEvent,
    RoomMessageText,
    RoomMessageUnknown,
    SyncResponse,
)

from ..common.backfill import backfill
from ..common.decryption import LateDecryption, MemoryHeld
from ..common.invites import Invites
from ..common.session import Session
from . import commands
from .chat import SENDING, Chat, message
from .config import Config
from .directory import Directory
from .handlers import Handlers
from .state import State

log = logging.getLogger("bots.dispatch")

#: the board is edited at most this often (many acknowledgements at once make one edit)
BOARD_DEBOUNCE_S = 1.0
#: the board is edited this often even when nothing changed (the ages of statuses and positions)
BOARD_REFRESH_S = 300.0
#: the escalation loop looks at least this often
ESCALATION_POLL_S = 5.0
SYNC_TOKEN = "sync_token"
#: when the last sync response was handled (a back-fill goes back to it)
LAST_SYNC = "last_sync_at"
BACKFILL_PAGES = 20
BACKFILL_SLACK_S = 60.0
#: an undecryptable event is tried again for this long
PENDING_KEEP_S = 3600.0

#: an event callback: the room and the event nio delivered
Callback = Callable[[MatrixRoom, Any], Awaitable[None]]


class _Client(AsyncClient):
    """nio encrypts ``m.relates_to`` away; Element reads edits and replies from the wire content.

    nio encrypts again at every ``room_send``: for an outbox message the ciphertext of its
    first attempt is kept (``chat.SENDING``) and sent again at every retry, so a repeated
    transaction is the same request byte for byte."""

    def encrypt(self, room_id: str, message_type: str, content: dict[Any, Any]) -> tuple[str, dict[str, Any]]:
        sending = SENDING.get()
        if sending is not None and sending.ciphertext is not None:
            return "m.room.encrypted", sending.ciphertext
        relates = content.get("m.relates_to")
        event_type, encrypted = super().encrypt(room_id, message_type, content)
        if relates is not None:
            encrypted = {**encrypted, "m.relates_to": relates}
        if sending is not None:
            sending.keep(encrypted)
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


class DispatchBot:
    """The session, the event callbacks and the two timed loops around ``Handlers``."""

    def __init__(self, config: Config, *, reset_identity: bool = False) -> None:
        self.config = config
        self.session = Session(
            config,
            device_name="dispatch bot",
            log=log,
            main_key=config.state_key,
            reset_identity=reset_identity,
            client_class=_Client,
        )
        self.client = self.session.client
        self.state = State(config.state_path, config.state_key)
        self.tokens = _StateSyncTokens(self.state)
        self.chat = Chat(self.client, self.state, config)
        self.handlers = Handlers(config, Directory(config), self.state, self.chat)
        self._ready = asyncio.Event()
        #: no saved sync token: the first sync's timeline is history, not new work
        self._skip_history = self.tokens.load() is None
        #: undecryptable events, tried again after each sync for an hour
        self._held = MemoryHeld()
        self._late = LateDecryption(self.client, self._held, log=log, give_up_after=PENDING_KEEP_S)
        self._invites = Invites(
            self.client, config.user_id, log=log, may_join=self.handlers.may_invite, join=self.chat.join
        )

    # -- running ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self.session.stop()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await self.session.until_stopped(self.session.login()):
                return  # stopped while the homeserver was still unreachable
            self.client.add_event_callback(self._guard(self._invites.on_invite), InviteMemberEvent)
            for kind, callback in self._callbacks():
                self.client.add_event_callback(self._guard(callback), kind)
            await self.chat.setup_control_rooms()
            tasks = [asyncio.create_task(self._escalation_loop()), asyncio.create_task(self._board_loop())]
            await self.session.sync_forever(self.tokens, self._after_sync, self._on_ready)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.close()
            self.state.close()
            log.info("stopped")

    def _callbacks(self) -> list[tuple[type, Callback]]:
        """The timeline events handled, by type: from the sync, a back-fill or a late decryption."""
        return [
            (RoomMessageText, self._on_text),
            (ReactionEvent, self._on_reaction),
            (RoomMessageUnknown, self._on_unknown_message),
            (MegolmEvent, self._on_undecryptable),
        ]

    def _in_first_sync(self) -> bool:
        """While the first sync is handled its timeline may be history (see ``_skip_history``)."""
        return not self.session.ready

    def _guard(self, handler: Callback) -> Callback:
        """A handler that fails is logged; the sync goes on (bad input never stops the bot)."""

        async def guarded(room: MatrixRoom, event: Any) -> None:
            try:
                await handler(room, event)
            except Exception:
                log.exception("handling %s in %s failed", getattr(event, "event_id", "?"), room.room_id)

        return guarded

    async def _on_ready(self) -> None:
        """The first sync is in: the rooms can be set up (unit rooms made, commanders in the
        control rooms, neutral names), commands cut short carried on, and the loops may start."""
        for setup in (
            self.chat.ensure_unit_rooms,
            self.chat.ensure_control_members,
            self.handlers.neutral_room_names,
        ):
            try:
                await setup()
            except Exception:
                log.exception("setting up the rooms failed (%s)", setup.__name__)
        await self.handlers.pin_boards()
        await self.handlers.run_jobs()
        self._ready.set()
        self.handlers.wake.set()
        log.info(
            "dispatch bot ready: %d rooms, %d control rooms, %d open incidents",
            len(self.client.rooms),
            len(self.chat.control_rooms),
            len(self.state.open_incidents()),
        )

    async def _after_sync(self, response: SyncResponse) -> None:
        """Back-fill gaps, retry late keys and send the outbox; the session saves the sync token
        (and the time of this sync) only after this returned."""
        if not (self._skip_history and self._in_first_sync()):
            for room_id, joined in response.rooms.join.items():
                if joined.timeline.limited and joined.timeline.prev_batch:
                    await self._backfill(room_id, joined.timeline.prev_batch)
        await self._late.retry(self._dispatch)
        await self.handlers.run_jobs()

    async def _backfill(self, room_id: str, prev_batch: str) -> None:
        """A limited timeline left events out (many at once, or while the bot was down): fetch
        those since the previous sync and handle them oldest first (handled ones are skipped)."""
        since = float(self.state.get(LAST_SYNC) or 0) - BACKFILL_SLACK_S
        events = await backfill(
            self.client,
            room_id,
            prev_batch,
            keep=lambda event: event.server_timestamp / 1000 >= since,
            pages=BACKFILL_PAGES,
            log=log,
        )
        for event in events:
            await self._dispatch(room_id, event)

    async def _dispatch(self, room_id: str, event: Event) -> None:
        """An event that did not come through the sync callbacks (back-filled, decrypted late)."""
        room = self.client.rooms.get(room_id)
        if room is None:
            return
        for kind, handler in self._callbacks():
            if isinstance(event, kind):
                await self._guard(handler)(room, event)
                return

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        """Kept and tried again after each sync (the room key may come later); its sender's
        client is asked for the key."""
        if event.event_id not in self._held:
            await self._late.hold(room.room_id, event)

    # -- events -----------------------------------------------------------------------------------

    def _is_new(self, event: Any) -> bool:
        """Not the bot's own and not history on the first start (the handlers mark an event
        handled in the transaction of what it changes, and skip one handled before)."""
        if event.sender == self.config.user_id:
            return False
        return not (self._skip_history and self._in_first_sync())

    async def _on_reaction(self, room: MatrixRoom, event: ReactionEvent) -> None:
        if commands.is_ack_reaction(event.key) and self._is_new(event):
            await self.handlers.reaction(
                event.event_id, event.sender, event.reacts_to, event.server_timestamp / 1000
            )

    async def _on_unknown_message(self, room: MatrixRoom, event: RoomMessageUnknown) -> None:
        if event.msgtype == "m.location" and self._is_new(event):
            await self.handlers.location(room.room_id, event)

    async def _on_text(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if self._is_new(event):
            await self.handlers.text(room.room_id, event)

    # -- loops ------------------------------------------------------------------------------------

    async def _escalation_loop(self) -> None:
        """Escalate at the stored deadlines; a new alert wakes the loop at once."""
        await self._ready.wait()
        while not self.session.stopping.is_set():
            self.handlers.wake.clear()
            try:
                upcoming = await self.handlers.escalate_due(time.time())
            except Exception:
                log.exception("the escalation loop failed; retrying")
                upcoming = None
            wait = (
                ESCALATION_POLL_S
                if upcoming is None
                else min(max(upcoming - time.time(), 0.05), ESCALATION_POLL_S)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handlers.wake.wait(), wait)

    async def _board_loop(self) -> None:
        """Edit the boards after a change (debounced), and now and then anyway: the ages on it grow."""
        while not self.session.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handlers.board_dirty.wait(), BOARD_REFRESH_S)
            await asyncio.sleep(BOARD_DEBOUNCE_S)
            self.handlers.board_dirty.clear()
            try:
                await self.handlers.refresh_boards()
            except Exception:
                log.exception("updating the board failed")


__all__ = ["DispatchBot", "message"]
