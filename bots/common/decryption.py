"""Late decryption: events that came before their room keys, kept and tried again after each sync.

A room key may arrive after its messages (a slow sender, a key request answered
later). Each bot keeps such events in a ``HeldEvents`` store, asks the sender's
devices for the key, and tries them again after every sync. The bots differ in
how long and where: dispatch keeps them in memory and gives up after an hour
(an alert that old is no longer work); the auditor keeps them in its archive
across restarts and never gives up (they are counted as undecryptable after a
while, and archived whenever the key comes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
from nio import AsyncClient, Event, LocalProtocolError, MegolmEvent


@attrs.frozen
class Held:
    """An event waiting for its key, as a store returns it."""

    event_id: str
    room_id: str
    event: MegolmEvent
    #: when the bot first received it (s since the epoch)
    received_at: float


class HeldEvents(Protocol):
    """Where a bot keeps the events waiting for keys."""

    def hold(self, room_id: str, event: MegolmEvent, received_at: float) -> None: ...

    def held(self) -> list[Held]: ...

    def release(self, event_id: str) -> None: ...


class MemoryHeld:
    """Held events in memory (lost at a restart: for a bot whose old events are no longer work)."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}

    def hold(self, room_id: str, event: MegolmEvent, received_at: float) -> None:
        self._held.setdefault(event.event_id, Held(event.event_id, room_id, event, received_at))

    def held(self) -> list[Held]:
        return list(self._held.values())

    def release(self, event_id: str) -> None:
        self._held.pop(event_id, None)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._held


def event_json(event: MegolmEvent) -> str:
    """The encrypted event as received, to keep (its ciphertext, never plaintext)."""
    return json.dumps(event.source, sort_keys=True, separators=(",", ":"))


def parse_held(event_json: str, room_id: str) -> MegolmEvent | None:
    """A kept encrypted event again; None when it no longer parses as one."""
    try:
        event = Event.parse_event(json.loads(event_json))
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(event, MegolmEvent):
        return None
    event.room_id = room_id
    return event


class LateDecryption:
    """Holds events that cannot be decrypted yet and retries them; ``give_up_after`` (seconds)
    drops one that stayed undecryptable that long, None keeps it for good."""

    def __init__(
        self,
        client: AsyncClient,
        store: HeldEvents,
        *,
        log: logging.Logger,
        give_up_after: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.store = store
        self.log = log
        self.give_up_after = give_up_after
        self.clock = clock

    async def hold(self, room_id: str, event: MegolmEvent) -> None:
        """Keep ``event`` (idempotent) and ask its sender's devices for the room key."""
        self.store.hold(room_id, event, self.clock())
        self.log.info("cannot decrypt %s in %s yet (session %s)", event.event_id, room_id, event.session_id)
        await self.request_key(event)

    async def request_key(self, event: MegolmEvent) -> None:
        with contextlib.suppress(LocalProtocolError):  # requested already for this session
            await self.client.request_room_key(event)

    async def request_keys(self) -> None:
        """Ask for the keys of every held event again (after a restart: the requests of the
        previous run may have been lost with it)."""
        for held in self.store.held():
            await self.request_key(held.event)

    async def retry(
        self, handle: Callable[[str, Event], Awaitable[None]], held_events: list[Held] | None = None
    ) -> None:
        """Try each held event (``held_events``, else the store's) again; ``handle`` gets what
        decrypts (room ID, event), and the event is released only when ``handle`` returned (an
        exception keeps it held)."""
        for held in self.store.held() if held_events is None else held_events:
            try:
                decrypted = self.client.decrypt_event(held.event)
            except Exception:
                if self.give_up_after is not None and self.clock() - held.received_at > self.give_up_after:
                    self.store.release(held.event_id)
                    self.log.warning("gave up decrypting %s in %s", held.event_id, held.room_id)
                continue
            await handle(held.room_id, decrypted)
            self.store.release(held.event_id)


__all__ = ["Held", "HeldEvents", "LateDecryption", "MemoryHeld", "event_json", "parse_held"]
