"""The Matrix side of the auditor's commands: where answers may go, answering, and
delivering approved export bundles.

Answers go only into rooms that nobody but the sender and the bot can read (their
devices are the only ones there). A bundle is delivered in recorded steps (see
``requests``): right before the upload the requester's room is checked again the
same way, and a room that others can read by now (the requester added someone
after asking) gets a notice instead of the bundle, and the request is stopped.
A delivery that failed or was cut short by a stop is made again, once: after a
minute, and at the bot's next start (``resume``). The notice and the file are
sent with transaction IDs of their own request, so a repeat the homeserver has
seen already is not posted twice.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from nio import AsyncClient, MatrixRoom, RoomMessageText, RoomSendResponse, UploadResponse

from . import testhook
from .archive import Archive, CorruptRecordError
from .consultation_log import ConsultationLog
from .replies import Delivery, Reply
from .runner import CommandRunner, ExportJob

log = logging.getLogger("bots.auditor")

#: a command sent this long before the bot started is history (back-filled), not answered
HISTORY_MS = 300_000
#: seconds before a failed delivery is tried again
RETRY_DELIVERY_S = 60.0
#: failed deliveries of one request tried again in one run of the bot (then: at the next start)
MAX_DELIVERY_ATTEMPTS = 5


class CommandChat:
    """Answers commands and delivers bundles for one bot; ``spawn`` runs work beside syncing."""

    def __init__(
        self,
        client: AsyncClient,
        runner: CommandRunner,
        consultations: ConsultationLog,
        archive: Archive,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        started_at: int,
    ) -> None:
        self.client = client
        self.runner = runner
        self.consultations = consultations
        self.archive = archive
        self.spawn = spawn
        self.started_at = started_at
        self._attempts: dict[str, int] = {}
        self._retries: set[asyncio.Task[None]] = set()

    @property
    def user_id(self) -> str:
        return self.client.user_id

    # -- who can read a room ----------------------------------------------------------------------

    async def readers_besides(self, room: MatrixRoom, allowed: Iterable[str]) -> list[str]:
        """The members other than ``allowed`` and the bot who have devices in ``room`` (so
        could read what is sent there), after the devices were brought up to date."""
        if self.client.should_query_keys:
            await self.client.keys_query()
        exempt = {*allowed, self.user_id}
        return sorted(
            user_id
            for user_id in room.users
            if user_id not in exempt
            and any(True for _ in self.client.device_store.active_user_devices(user_id))
        )

    async def is_command_room(self, room: MatrixRoom, sender: str) -> bool:
        """Replies may go where only the sender's and the bot's devices can read them."""
        if not room.encrypted:
            return False
        return not await self.readers_besides(room, (sender,))

    async def private_rooms(self, users: Iterable[str]) -> list[str]:
        """The rooms where one of ``users`` talks to the bot alone (nobody else's devices)."""
        wanted = set(users)
        found = []
        for room in list(self.client.rooms.values()):
            present = wanted.intersection(room.users)
            if len(present) == 1 and await self.is_command_room(room, present.pop()):
                found.append(room.room_id)
        return found

    async def _why_not_private(self, room_id: str, recipient: str) -> str | None:
        """Why the bundle must not go into ``room_id`` now; None when only the recipient's and
        the bot's devices are there."""
        room = self.client.rooms.get(room_id)
        if room is None:
            return "the bot is no longer in the room"
        if not room.encrypted:
            return "the room is not encrypted"
        others = await self.readers_besides(room, (recipient,))
        if others:
            return f"besides {recipient} and this bot, {', '.join(others)} can read the room"
        return None

    # -- answering --------------------------------------------------------------------------------

    async def answer(self, room: MatrixRoom, event: RoomMessageText) -> None:
        """Run the command in ``event`` once (claimed in the log) and answer it in ``room``."""
        if (
            self.archive.get(event.event_id) is not None
            or event.server_timestamp < self.started_at - HISTORY_MS
        ):
            return  # a back-filled command, from before this start
        if not self.consultations.claim_command(event.event_id):
            return  # answered before (a sync replayed after a restart)
        try:
            # the log is bound to this thread
            step = self.runner.start(event.sender, event.body, room.room_id)
        except CorruptRecordError as altered:
            # say so rather than fall silent: the auditor must not take a gap for "nothing found"
            log.error("a command from %s met an altered archive record: %s", event.sender, altered)
            step = Reply.text(
                f"The archive holds an altered record ({altered}); nothing of it is shown. "
                "Tell the operator: `police-audit verify-archive` lists every altered record."
            )
        except Exception:
            log.exception("a command from %s failed", event.sender)
            step = None
        if isinstance(step, ExportJob):
            # building may take long (a room's attachments): off the loop, and syncing goes on meanwhile
            self.spawn(self.export(room.room_id, step))
            return
        if step is not None:
            await self.reply(room.room_id, step)

    async def export(self, room_id: str | None, job: ExportJob) -> None:
        """Build an approved bundle (in a thread), record the approval, deliver the bundle."""
        request_id = job.request.request_id
        try:
            built = await asyncio.to_thread(self.runner.build, job)
            reply = self.runner.finish_export(built)
        except Exception:
            log.exception("building export %s failed", request_id)
            self.runner.abandon(job)
            if job.resumed:
                self._retry_later(request_id)
                return
            reply = Reply.text(f"Building export {request_id} failed; the request is still open.")
        if job.resumed:  # approved (and answered) before the bot stopped
            if reply.delivery is not None:
                await self.deliver(reply.delivery)
            return
        if room_id is not None:
            await self.reply(room_id, reply)
        elif reply.delivery is not None:
            await self.deliver(reply.delivery)

    async def reply(self, room_id: str, reply: Reply) -> None:
        await self.send(room_id, reply.content())
        if reply.notify is not None:
            notify_room, notice = reply.notify
            await self.send(notify_room, notice.content())
        if reply.delivery is not None:
            await self.deliver(reply.delivery)

    # -- delivering -------------------------------------------------------------------------------

    async def resume(self) -> None:
        """Deliver what was approved but not delivered (the bot stopped first); at the start,
        once the first sync told the rooms' members."""
        for job in self.runner.undelivered():
            log.info("export %s was approved but not delivered: delivering it now", job.request.request_id)
            self.spawn(self.export(job.approver_room, job))

    async def deliver(self, delivery: Delivery) -> None:
        """Check the requester's room again, upload the bundle encrypted and post it there with
        a notice; record it (the disclosure) and tell the approver."""
        try:
            why = await self._why_not_private(delivery.room_id, delivery.recipient)
            if why is not None:
                log.warning("export %s stopped: the delivery room is not private", delivery.request_id)
                notice, answer = self.runner.stopped(delivery, why)
                if delivery.room_id in self.client.rooms:
                    await self.send(delivery.room_id, notice.content())
                if delivery.approver_room:
                    await self.send(delivery.approver_room, answer.content())
                return
            response, keys = await self.client.upload(
                io.BytesIO(delivery.data),
                content_type="application/zip",
                filename=delivery.filename,
                encrypt=True,
                filesize=len(delivery.data),
            )
            if not isinstance(response, UploadResponse) or keys is None:
                raise RuntimeError(f"the upload failed: {type(response).__name__}")
            content = {
                "msgtype": "m.file",
                "body": delivery.filename,
                "filename": delivery.filename,
                "info": {"size": len(delivery.data), "mimetype": "application/zip"},
                "file": {**keys, "url": response.content_uri, "mimetype": "application/zip"},
            }
            tx = f"export-{delivery.request_id}"
            await self.send(delivery.room_id, delivery.notice.content(), check=True, tx_id=f"{tx}-notice")
            await self.send(delivery.room_id, content, check=True, tx_id=f"{tx}-file")
        except Exception:
            log.exception("delivering export %s failed", delivery.request_id)
            self.runner.delivery_failed(delivery)
            if delivery.approver_room:
                await self.send(
                    delivery.approver_room,
                    Reply.text(
                        f"Delivering export {delivery.request_id} to {delivery.recipient} failed; "
                        "the bot tries again (and at its next start). It stays approved."
                    ).content(),
                )
            self._retry_later(delivery.request_id)
            return
        testhook.reached("delivered")
        answer = self.runner.delivered(delivery)
        log.info("delivered export %s", delivery.request_id)
        if delivery.approver_room:
            await self.send(delivery.approver_room, answer.content())

    def _retry_later(self, request_id: str) -> None:
        attempts = self._attempts[request_id] = self._attempts.get(request_id, 0) + 1
        if attempts >= MAX_DELIVERY_ATTEMPTS:
            log.error(
                "export %s: delivery failed %d times; tried again at the next start", request_id, attempts
            )
            return

        async def later() -> None:
            await asyncio.sleep(RETRY_DELIVERY_S)
            await self.resume()

        # not one of the tasks a stopping bot waits for: the next start delivers it anyway
        task = asyncio.get_running_loop().create_task(later())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def send(
        self, room_id: str, content: dict[str, Any], *, check: bool = False, tx_id: str | None = None
    ) -> None:
        if self.client.should_query_keys:
            await self.client.keys_query()
        response = await self.client.room_send(
            room_id, "m.room.message", content, tx_id=tx_id, ignore_unverified_devices=True
        )
        log.info("answered in %s: %s", room_id, type(response).__name__)
        if check and not isinstance(response, RoomSendResponse):
            raise RuntimeError(f"sending to {room_id} failed: {type(response).__name__}")


__all__ = ["CommandChat"]
