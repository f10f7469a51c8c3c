"""Archiving what the sync delivers: every room event the bot can decrypt, none lost silently.

The bot hands each whole sync response here after nio decrypted what it could
(``handle``); the session saves the sync token only when this returned. So:

- a failed archive write (a full disk, a lost database) is retried with
  back-off until it works, and syncing waits meanwhile: the response is never
  skipped, and a bot stopped while it waits sees the same response again after
  the restart (``failing_since`` tells ``!health`` and the metrics);
- an event that cannot be archived as it is (malformed by its sender's client
  or server: a timestamp past 2⁴⁷, wrong types) is logged by event ID, never
  with content, counted, and skipped; an exception in one event never costs
  the rest of the response;
- an event whose room key has not arrived is held in the archive (sealed, as
  received) with a key request, tried again after every sync and after a
  restart, and archived when the key comes; held ones older than
  ``undecryptable_after`` are counted per room.

What is stored of an event is decided in ``content.py``; media checks and
their enforcement in ``enforcement.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, TypeVar

from nio import (
    AsyncClient,
    Event,
    MegolmEvent,
    RedactionEvent,
    SyncResponse,
    UnknownEncryptedEvent,
)

from ..common.backfill import backfill
from ..common.decryption import Held, LateDecryption, event_json, parse_held
from ..common.session import Session
from .archive import TS_LIMIT, Archive, Attachment, CorruptRecordError, Message, now_ms
from .config import Config
from .content import Described, Skip, describe, poll_answers
from .enforcement import Enforcer
from .shard import JoinedRooms, everywhere

log = logging.getLogger("bots.auditor.ingest")

T = TypeVar("T")

#: called with each timeline event before it is archived (the bot answers commands there)
BeforeArchiving = Callable[[str, Event], Awaitable[None]]
#: called with the outage's start (ms) when archive writes start failing (True) and when
#: they work again (False)
OnOutage = Callable[[int, bool], Awaitable[None]]

#: pages of /messages fetched to fill one gap
BACKFILL_PAGES = 50
#: the longest wait between two attempts of a failing archive write (seconds)
MAX_WRITE_BACKOFF_S = 60.0


class StoppedWhileFailing(Exception):
    """The bot was stopped while an archive write kept failing: the response is not done."""


class ArchiveHeld:
    """The held events of ``bots.common.decryption`` in the archive, so they outlive a restart.
    The IDs are known in memory too (for the count in ``!health`` without reading them all).

    Only the held events of ``rooms`` are this bot's to retry, release and count: on an
    archive several bots share, the others' are theirs (``shard``)."""

    def __init__(self, archive: Archive, rooms: Callable[[], Collection[str] | None] = everywhere) -> None:
        self.archive = archive
        self.rooms = rooms
        self.ids: set[str] = set()
        self.load()

    def load(self) -> None:
        """Know the held events of the bot's rooms: at the start, and again at the first sync,
        which tells a bot sharing the archive which rooms are its own."""
        self.ids = {held.event_id for held in self.archive.undecrypted(rooms=self.rooms())}

    def hold(self, room_id: str, event: MegolmEvent, received_at: float) -> None:
        self.archive.hold_undecrypted(event.event_id, room_id, event_json(event), int(received_at * 1000))
        self.ids.add(event.event_id)

    def held(self) -> list[Held]:
        kept = []
        for held in self.archive.undecrypted(rooms=self.rooms()):
            event = parse_held(held.event_json, held.room_id)
            if event is None:  # cannot happen for what ``hold`` stored; never retried for ever
                log.error("the held event %s no longer parses; released", held.event_id)
                self.release(held.event_id)
                continue
            kept.append(Held(held.event_id, held.room_id, event, held.received_at / 1000))
        return kept

    def release(self, event_id: str) -> None:
        """Forgotten once archived; a failure leaves it held (archiving it again is harmless)."""
        try:
            self.archive.release_undecrypted(event_id)
        except Exception as error:
            log.error("releasing the held event %s failed: %s", event_id, type(error).__name__)
            return
        self.ids.discard(event_id)


class Ingest:
    """Turns sync responses, back-filled pages and late decryptions into archive rows."""

    def __init__(
        self,
        session: Session,
        archive: Archive,
        config: Config,
        enforcer: Enforcer,
        *,
        before: BeforeArchiving | None = None,
        on_outage: OnOutage | None = None,
        rooms: JoinedRooms | None = None,
    ) -> None:
        self.session = session
        #: sees each timeline event in order, after the events before it were archived (a
        #: command answered there finds the messages and redactions sent before it)
        self.before = before
        #: tells the auditors at once (commands wait as syncing does, ``!health`` too)
        self.on_outage = on_outage
        self.client: AsyncClient = session.client
        self.archive = archive
        self.config = config
        self.enforcer = enforcer
        #: the rooms whose held events are this bot's (all with an archive of its own)
        self.rooms = rooms if rooms is not None else JoinedRooms(self.client, shared=False)
        self.held = ArchiveHeld(archive, self.rooms)
        self.late = LateDecryption(self.client, self.held, log=log, give_up_after=None)
        #: events that could not be decrypted when they arrived, since start
        self.undecryptable_seen = 0
        #: events logged and skipped as malformed, since start
        self.malformed_events = 0
        #: since when archive writes fail (ms); None while they work
        self.failing_since: int | None = None
        #: the last write failure (error class and message; never content)
        self.failure: str | None = None
        #: event IDs of the current response that stay out of the archive (auditors' commands)
        self.not_archived: set[str] = set()

    @property
    def undecryptable_after_ms(self) -> int:
        return self.config.undecryptable_after * 1000

    def undecryptable_by_room(self) -> dict[str, int]:
        """Room ID -> held events older than ``undecryptable_after``, in the bot's rooms."""
        return self.archive.undecryptable_counts(now_ms() - self.undecryptable_after_ms, rooms=self.rooms())

    # -- a sync response --------------------------------------------------------------------------

    async def start(self) -> None:
        """After the first sync (the bot's rooms are known then): ask again for the keys of the
        events an earlier run held in them."""
        await self.late.request_keys()

    async def handle(self, response: SyncResponse) -> None:
        """Archive a whole response: the gaps of limited timelines first (they are older), then
        each timeline, then what decrypts now. Returns only when all of it is in the archive."""
        if self.rooms.observe(response):
            # the bot's rooms changed (the first response after a start names them all): the
            # held events of those are its own (with an archive of its own: all, from the start)
            await self._write(self.held.load)
        try:
            for room_id, joined in response.rooms.join.items():
                timeline = joined.timeline
                if timeline.limited and timeline.prev_batch:
                    for event in await self._backfill(room_id, timeline.prev_batch):
                        await self.event(room_id, event)
                for event in timeline.events:
                    await self._before(room_id, event)
                    await self.event(room_id, event)
            if self.held.ids:
                await self.late.retry(self.event, await self._write(self.held.held))
        finally:
            self.not_archived.clear()

    async def _before(self, room_id: str, event: Event) -> None:
        if self.before is None:
            return
        try:
            await self.before(room_id, event)
        except Exception as error:
            log.error("handling %s in %s failed: %s", _event_id(event), room_id, type(error).__name__)
            log.debug("the failed handling's error", exc_info=True)

    async def _backfill(self, room_id: str, prev_batch: str) -> list[Event]:
        cutoff = now_ms() - self.config.audit_lifetime_ms

        def keep(event: Event) -> bool:
            if event.server_timestamp < cutoff:
                return False
            return isinstance(event, RedactionEvent) or self.archive.get(event.event_id) is None

        try:
            return await backfill(self.client, room_id, prev_batch, keep=keep, pages=BACKFILL_PAGES, log=log)
        except Exception as error:  # the server's trouble: the timeline itself is still archived
            log.error("back-filling %s failed: %s", room_id, type(error).__name__)
            return []

    # -- one event --------------------------------------------------------------------------------

    async def event(self, room_id: str, event: Event) -> None:
        """Archive one event; whatever goes wrong with it alone is logged and counted, and the
        rest of the response goes on. Only a stop while writes fail ends the response early."""
        try:
            await self._event(room_id, event)
        except StoppedWhileFailing:
            raise
        except CorruptRecordError:
            # an archived row failing authentication (altered by someone with the files): the
            # verifiers report it; writing on is not retried for ever over it
            log.error("the archived record %s fails authentication; not updated", _event_id(event))
        except Exception as error:
            self.malformed_events += 1
            # the exception's text may quote the event: its class only, the traceback at debug
            log.warning(
                "skipped the malformed event %s in %s (%s)", _event_id(event), room_id, type(error).__name__
            )
            log.debug("the malformed event's error", exc_info=True)

    async def _event(self, room_id: str, event: Event) -> None:
        source = event.source if isinstance(event.source, Mapping) else {}
        event_id, sender, timestamp = (
            source.get("event_id"),
            source.get("sender"),
            source.get("origin_server_ts"),
        )
        if not (isinstance(event_id, str) and event_id and isinstance(sender, str) and sender):
            raise ValueError("no event ID or sender")
        if not (isinstance(timestamp, int) and 0 <= timestamp < TS_LIMIT):
            raise ValueError("origin_server_ts out of range")
        if isinstance(event, RedactionEvent):  # the bot's own (enforcement) too: recorded again, harmless
            await self._write(lambda: self.archive.mark_redacted(event.redacts, timestamp, sender))
            log.info("%s redacted %s", sender, event.redacts)
        elif sender == self.config.user_id or event_id in self.not_archived:
            return
        elif isinstance(event, MegolmEvent):
            await self._hold(room_id, event)
        elif isinstance(event, UnknownEncryptedEvent):
            raise ValueError("an unknown encryption algorithm")
        else:
            described = describe(
                source.get("type"),
                source.get("content"),
                state_key=source.get("state_key"),
                answers_of=self._poll_answers,
            )
            if isinstance(described, Skip):
                log.debug("not archiving %s: %s", event_id, described.reason)
                return
            await self._archive(room_id, event, event_id, sender, timestamp, described)

    async def _hold(self, room_id: str, event: MegolmEvent) -> None:
        if event.event_id in self.held.ids or await self._archived(event.event_id):
            return
        self.undecryptable_seen += 1
        received = now_ms() / 1000
        await self._write(lambda: self.held.hold(room_id, event, received))
        log.warning("cannot decrypt %s in %s yet (session %s)", event.event_id, room_id, event.session_id)
        await self.late.request_key(event)

    async def _archive(
        self, room_id: str, event: Event, event_id: str, sender: str, timestamp: int, described: Described
    ) -> None:
        content: Mapping[str, Any] = event.source.get("content") or {}
        attachments: tuple[Attachment, ...] = ()
        violation = enforcement = None
        if described.media is not None:
            if await self._archived(event_id):
                return  # archived before (a replayed response): not fetched again
            filename = content.get("filename")
            name = filename if isinstance(filename, str) else described.body
            attachment = await self.enforcer.attachment(event_id, described.media, name)
            if attachment is not None:
                attachments = (attachment,)
                found = await self.enforcer.judge(event_id, described.media, attachment.data)
                if found is not None:
                    violation, enforcement = found
        message = Message(
            event_id=event_id,
            room_id=room_id,
            sender=sender,
            device_id=self._device_id(event, sender, content),
            origin_server_ts=timestamp,
            body=described.body,
            event_type=described.event_type,
            msgtype=described.msgtype,
            attachments=attachments,
            violation=violation,
            enforcement=enforcement,
            content=described.content,
            relates_to=described.relates_to,
            rel_type=described.rel_type,
        )
        added = await self._write(lambda: self.archive.add(message))
        if not added:
            return
        log.info("archived %s from %s in %s", event_id, sender, room_id)
        if violation is not None:
            await self.enforcer.enforce_new(event_id)

    async def _archived(self, event_id: str) -> bool:
        return await self._write(lambda: self.archive.get(event_id)) is not None

    def _device_id(self, event: Event, sender: str, content: Mapping[str, Any]) -> str | None:
        """The sending device: the one whose key the Megolm session came from, else the
        (deprecated) ``device_id`` an encrypted event's wire content names."""
        sender_key = getattr(event, "sender_key", None)
        if sender_key:
            for device in self.client.device_store.active_user_devices(sender):
                if device.curve25519 == sender_key:
                    return str(device.id)
        device_id = getattr(event, "device_id", None) or content.get("device_id")
        return device_id if isinstance(device_id, str) else None

    def _poll_answers(self, start_id: str) -> dict[str, str] | None:
        start = self.archive.get(start_id)
        if start is None:
            return None
        return poll_answers(start.event_type, json.loads(start.content))

    # -- writing ----------------------------------------------------------------------------------

    async def _write(self, write: Callable[[], T]) -> T:
        """``write()`` until it works, with back-off; meanwhile the response (and syncing) waits
        and ``failing_since`` says so. Bad input (ValueError, TypeError) and an altered record
        are not retried: no attempt would go differently."""
        backoff = 1.0
        while True:
            try:
                result = write()
            except (ValueError, TypeError, CorruptRecordError):
                raise
            except Exception as error:
                began = self.failing_since is None
                if self.failing_since is None:
                    self.failing_since = now_ms()
                since = self.failing_since
                # the first line: PostgreSQL adds a HINT line, which a log line should not split
                self.failure = f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}"
                log.error(
                    "writing to the archive failed (%s); syncing paused, retrying in %.0fs",
                    self.failure,
                    backoff,
                )
                if began:
                    await self._tell(since, True)
                await self.session.sleep(backoff)
                if self.session.stopping.is_set():
                    raise StoppedWhileFailing from error
                backoff = min(backoff * 2, MAX_WRITE_BACKOFF_S)
                continue
            if self.failing_since is not None:
                since = self.failing_since
                log.warning(
                    "archive writes work again after %d s; syncing resumes", (now_ms() - since) // 1000
                )
                self.failing_since = self.failure = None
                await self._tell(since, False)
            return result

    async def _tell(self, since: int, failing: bool) -> None:
        if self.on_outage is None:
            return
        try:
            await self.on_outage(since, failing)
        except Exception as error:  # telling is a courtesy; the archiving must go on
            log.error("telling the auditors about the archive failed: %s", type(error).__name__)


def _event_id(event: Event) -> str:
    event_id = event.source.get("event_id") if isinstance(event.source, Mapping) else None
    return event_id if isinstance(event_id, str) else "(no event ID)"


__all__ = ["Ingest", "StoppedWhileFailing"]
