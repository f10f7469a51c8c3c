"""The auditor bot's Matrix side: log in, sync, archive what it decrypts, answer commands."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nio import (
    Event,
    InviteMemberEvent,
    JoinError,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    RedactionEvent,
    RoomEncryptedMedia,
    RoomMessageEmote,
    RoomMessageMedia,
    RoomMessageNotice,
    RoomMessagesError,
    RoomMessageText,
    RoomRedactResponse,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from ..common.session import Session, StoreSyncTokens
from .archive import (
    Archive,
    ArchivedMessage,
    Attachment,
    Enforcement,
    Message,
    PendingEnforcement,
    now_ms,
)
from .commands import CommandRunner, Delivery, ExportJob, ExportStore, HealthStats, Reply, parse_command
from .config import Config
from .consultation_log import ConsultationLog
from .export import generate_signing_key, key_fingerprint, load_signing_key
from .notices import media_notice

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .media_rules import Verdict

log = logging.getLogger("bots.auditor")

#: pages of /messages fetched to fill one gap
BACKFILL_PAGES = 50
#: seconds to wait at shutdown for exports still being built or delivered
SHUTDOWN_GRACE_S = 30.0
#: archived violations not yet enforced that are retried after one sync
ENFORCE_BATCH = 10
ARCHIVED_TYPES = (RoomMessageText, RoomMessageNotice, RoomMessageEmote, RoomEncryptedMedia, RoomMessageMedia)


class AuditorBot:
    def __init__(self, config: Config, *, reset_identity: bool = False) -> None:
        self.config = config
        self.session = Session(
            config,
            device_name="auditor bot",
            log=log,
            main_key=config.archive_key,
            reset_identity=reset_identity,
        )
        self.client = self.session.client
        self.archive = open_archive(config)
        self.consultations = ConsultationLog(config.log_path)
        self.exports = ExportStore(config.exports_path)
        self.signing_key = _signing_key(config.signing_key_file)
        self.started_at = now_ms()
        self.undecryptable_seen = 0
        self.violations_found = 0
        self.quarantine_failures = 0
        #: work started by callbacks that must not hold up syncing (exports)
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics: WSGIServer | None = None
        #: undecryptable events by event ID, retried after every sync
        self.pending: dict[str, tuple[str, MegolmEvent]] = {}
        self.commands = CommandRunner(
            self.archive,
            self.consultations,
            config.auditors,
            config.audit_lifetime_ms,
            self.health,
            exports=self.exports,
            signing_key=self.signing_key,
            zone=config.timezone,
        )

    def health(self) -> HealthStats:
        return HealthStats(
            self.undecryptable_seen,
            len(self.pending),
            self.started_at,
            media_rules=self.config.media is not None,
            quarantine=self.config.admin_token is not None,
            violations_found=self.violations_found,
            quarantine_failures=self.quarantine_failures,
        )

    # -- running ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self.session.stop()

    async def run(self) -> None:
        purge: asyncio.Task[None] | None = None
        try:
            if not await self.session.until_stopped(self.session.login()):
                return  # stopped while the homeserver was still unreachable
            self._start_metrics()
            if self.config.media is not None and self.config.admin_token is None:
                log.warning(
                    "media rules on, but no admin_token_file: refused files are redacted, not quarantined"
                )
            self.client.add_event_callback(self._on_invite, InviteMemberEvent)
            self.client.add_event_callback(self._on_message, ARCHIVED_TYPES)  # type: ignore[arg-type]
            self.client.add_event_callback(self._on_redaction, RedactionEvent)
            self.client.add_event_callback(self._on_undecryptable, MegolmEvent)
            purge = asyncio.create_task(self._purge_regularly())
            # the token lives where nio's store_sync_tokens kept it, but is saved only after a
            # whole response was archived: a kill mid-callback no longer loses those events
            await self.session.sync_forever(StoreSyncTokens(self.client), self._after_sync, self._on_ready)
        finally:
            if purge is not None:
                purge.cancel()
                await asyncio.gather(purge, return_exceptions=True)
            await self._finish_tasks()
            if self._metrics is not None:
                self._metrics.shutdown()
                self._metrics.server_close()
            await self.client.close()
            self.archive.close()
            self.consultations.close()
            self.exports.close()
            log.info("stopped")

    async def _on_ready(self) -> None:
        log.info("auditor bot ready: %d rooms, %d archived", len(self.client.rooms), self.archive.count())

    async def _after_sync(self, response: SyncResponse) -> None:
        """Fill the gaps of limited timelines and retry what could not be decrypted; the
        session saves the sync token only after this returned."""
        for room_id, room in response.rooms.join.items():
            if room.timeline.limited and room.timeline.prev_batch:
                await self._backfill(room_id, room.timeline.prev_batch, room.timeline.events)
        await self._retry_pending()
        await self._enforce_due()

    async def _backfill(self, room_id: str, prev_batch: str, seen: list[Event]) -> None:
        """Fetch the events a limited timeline left out, back to the first one archived already."""
        cutoff = now_ms() - self.config.audit_lifetime_ms
        token = prev_batch
        room = self.client.rooms.get(room_id)
        for _ in range(BACKFILL_PAGES):
            response = await self.client.room_messages(room_id, start=token, limit=100)
            if isinstance(response, RoomMessagesError):
                log.warning("back-filling %s failed: %s", room_id, response)
                return
            reached_known = False
            for event in response.chunk:
                if event.server_timestamp < cutoff:
                    reached_known = True
                    break
                if isinstance(event, ARCHIVED_TYPES) and self.archive.get(event.event_id) is not None:
                    reached_known = True
                    continue
                if room is not None:
                    await self._dispatch(room, event)
            if reached_known or not response.chunk or not response.end:
                return
            token = response.end

    async def _dispatch(self, room: MatrixRoom, event: Event) -> None:
        if isinstance(event, ARCHIVED_TYPES):
            await self._archive(room, event)
        elif isinstance(event, RedactionEvent):
            await self._on_redaction(room, event)
        elif isinstance(event, MegolmEvent):
            await self._on_undecryptable(room, event)

    def _start_metrics(self) -> None:
        if self.config.metrics_port is None:
            return
        from .metrics import BotCollector, serve_metrics

        self._metrics = serve_metrics(
            self.config.metrics_port,
            self.config.metrics_address,
            BotCollector(self.health, self.archive.stats),
        )

    def _spawn(self, work: Any) -> None:
        """Run ``work`` (a coroutine) beside the sync loop; kept until done so it is not lost."""
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_tasks(self) -> None:
        if not self._tasks:
            return
        log.info("waiting for %d unfinished tasks", len(self._tasks))
        _done, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _purge_regularly(self) -> None:
        while True:
            try:
                cutoff = now_ms() - self.config.audit_lifetime_ms
                deleted = await asyncio.to_thread(self.archive.purge_older_than, cutoff)
                log.log(
                    logging.INFO if deleted else logging.DEBUG,
                    "purged %d archived messages older than the audit lifetime",
                    deleted,
                )
            except Exception:
                log.exception("the archive purge failed")
            await asyncio.sleep(self.config.purge_interval)

    # -- callbacks --------------------------------------------------------------------------------

    async def _on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key != self.config.user_id or event.membership != "invite":
            return
        response = await self.client.join(room.room_id)
        if isinstance(response, JoinError):
            log.warning("joining %s failed: %s", room.room_id, response)
        else:
            log.info("joined %s (invited by %s)", room.room_id, event.sender)

    async def _on_message(self, room: MatrixRoom, event: Event) -> None:
        if event.sender == self.config.user_id:
            return
        is_command = isinstance(event, RoomMessageText) and parse_command(event.body) is not None
        if is_command and await self._is_command_room(room, event.sender):
            await self._answer(room, event)
            if event.sender in self.config.auditors:
                return  # auditors' commands are in the consultation log, not the archive
        await self._archive(room, event)

    async def _is_command_room(self, room: MatrixRoom, sender: str) -> bool:
        """Replies may go where only the sender's and the bot's devices can read them."""
        if self.client.should_query_keys:
            await self.client.keys_query()
        if not room.encrypted:
            return False
        for user_id in room.users:
            if user_id in (sender, self.config.user_id):
                continue
            if any(True for _ in self.client.device_store.active_user_devices(user_id)):
                return False
        return True

    async def _answer(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if self.archive.get(event.event_id) is not None or event.server_timestamp < self.started_at - 300_000:
            return  # a back-filled command, from before this start
        if not self.consultations.claim_command(event.event_id):
            return  # answered before (a sync replayed after a restart)
        try:
            # the log is bound to this thread
            step = self.commands.start(event.sender, event.body, room.room_id)
        except Exception:
            log.exception("a command from %s failed", event.sender)
            step = None
        if isinstance(step, ExportJob):
            # building may take long (a room's attachments): off the loop, and syncing goes on meanwhile
            self._spawn(self._export(room.room_id, step))
            return
        if step is not None:
            await self._reply(room.room_id, step)

    async def _export(self, room_id: str, job: ExportJob) -> None:
        try:
            built = await asyncio.to_thread(self.commands.build, job)
            reply = self.commands.finish_export(built)
        except Exception:
            log.exception("building export %s failed", job.request.request_id)
            self.commands.abandon(job)
            reply = Reply.text(f"Building export {job.request.request_id} failed; the request is still open.")
        await self._reply(room_id, reply)

    async def _reply(self, room_id: str, reply: Reply) -> None:
        await self.send(room_id, reply.content())
        if reply.notify is not None:
            notify_room, notice = reply.notify
            await self.send(notify_room, notice.content())
        if reply.delivery is not None:
            await self._deliver(room_id, reply.delivery)

    async def _deliver(self, approver_room: str, delivery: Delivery) -> None:
        """Upload the bundle encrypted and post it, with a notice, in the requester's command room."""
        try:
            response, keys = await self.client.upload(
                io.BytesIO(delivery.data),
                content_type="application/zip",
                filename=delivery.filename,
                encrypt=True,
                filesize=len(delivery.data),
            )
            if not isinstance(response, UploadResponse) or keys is None:
                raise RuntimeError(f"the upload failed: {response}")
            content = {
                "msgtype": "m.file",
                "body": delivery.filename,
                "filename": delivery.filename,
                "info": {"size": len(delivery.data), "mimetype": "application/zip"},
                "file": {**keys, "url": response.content_uri, "mimetype": "application/zip"},
            }
            await self.send(delivery.room_id, delivery.notice.content(), check=True)
            await self.send(delivery.room_id, content, check=True)
        except Exception:
            log.exception("delivering export %s to %s failed", delivery.request_id, delivery.room_id)
            self.commands.delivery_failed(delivery)
            await self.send(
                approver_room,
                {
                    "msgtype": "m.notice",
                    "body": f"Delivering export {delivery.request_id} to {delivery.recipient} failed; "
                    f"the request is open again: !approve {delivery.request_id} to retry.",
                },
            )
            return
        log.info("delivered export %s to %s", delivery.request_id, delivery.recipient)

    async def send(self, room_id: str, content: dict[str, Any], *, check: bool = False) -> None:
        if self.client.should_query_keys:
            await self.client.keys_query()
        response = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        log.info("answered in %s: %s", room_id, type(response).__name__)
        if check and not isinstance(response, RoomSendResponse):
            raise RuntimeError(f"sending to {room_id} failed: {response}")

    async def _archive(self, room: MatrixRoom, event: Event) -> None:
        if event.sender == self.config.user_id:
            return
        source = event.source
        content = source.get("content", {})
        attachments: tuple[Attachment, ...] = ()
        verdict: Verdict | None = None
        if isinstance(event, RoomEncryptedMedia | RoomMessageMedia):
            attachment = await self._attachment(event)
            attachments = (attachment,) if attachment else ()
            # plaintext uploads were judged by the module on upload; only ciphertext escaped it
            if attachment is not None and isinstance(event, RoomEncryptedMedia):
                verdict = await self._judge(event.event_id, attachment.data)
        violation = None
        enforcement = None
        if verdict is not None and not verdict.allowed:
            assert isinstance(event, RoomEncryptedMedia)
            violation = f"{verdict.rule}: {verdict.detected}"
            enforcement = Enforcement(media=_media_urls(event), reason=verdict.reason or "")
        message = Message(
            event_id=event.event_id,
            room_id=room.room_id,
            sender=event.sender,
            device_id=getattr(event, "device_id", None) or content.get("device_id"),
            origin_server_ts=event.server_timestamp,
            body=str(content.get("body", "")),
            event_type=source.get("type", "m.room.message"),
            msgtype=content.get("msgtype"),
            attachments=attachments,
            violation=violation,
            enforcement=enforcement,
        )
        try:
            added = self.archive.add(message)
        except Exception:
            log.exception("archiving %s failed", event.event_id)
            return
        if added:
            log.info("archived %s from %s in %s", event.event_id, event.sender, room.room_id)
        if added and verdict is not None and not verdict.allowed:
            # enforced at once; the archive records it, so a crash before it is done only delays it
            # (``_enforce_due``); the original stays in the archive as evidence
            self.violations_found += 1
            log.warning(
                "%s in %s breaks %s (detected %s, %d bytes): redacting",
                event.event_id,
                room.room_id,
                verdict.rule,
                verdict.detected,
                verdict.size,
            )
            pending = self.archive.enforcement(event.event_id)
            if pending is not None:
                await self._enforce(pending)

    # -- media rules ------------------------------------------------------------------------------

    async def _judge(self, event_id: str, data: bytes) -> Verdict | None:
        """The module's verdict on a decrypted attachment; None when no rules are configured."""
        if self.config.media is None:
            return None
        from .media_rules import check_attachment

        try:
            return await asyncio.to_thread(check_attachment, self.config.media, data)
        except Exception:
            log.exception("could not check the attachment of %s against the media rules", event_id)
            return None

    async def _enforce_due(self) -> None:
        """Enforce archived violations whose enforcement failed or was cut short (a crash
        between archiving and enforcing): after every sync, the first one after a start
        included, so events a restart replays (their redactions too) are archived first."""
        try:
            due = self.archive.unenforced(ENFORCE_BATCH)
        except Exception:
            log.exception("listing the violations still to enforce failed")
            return
        for pending in due:
            log.info(
                "enforcing the media rules on %s again (attempt %d)",
                pending.message.event_id,
                pending.attempts + 1,
            )
            await self._enforce(pending)

    async def _enforce(self, pending: PendingEnforcement) -> None:
        """Redact the refused attachment, quarantine its server copies, tell the sender why;
        record the outcome in the archive. Idempotent: a message the archive knows as
        redacted (by this bot before a crash, its sender or a moderator) is not redacted
        again and its sender gets no (second) notice; quarantining again is harmless. A
        failed redaction or quarantine leaves it due again after a back-off."""
        message = pending.message
        event_id = message.event_id
        notified = False
        enforced = False
        try:
            rule, _, detected = (message.violation or "").partition(": ")
            already = message.redacted
            redacted = already
            if not already:
                response = await self.client.room_redact(
                    message.room_id, event_id, reason=f"Media policy: {rule} ({detected})"
                )
                redacted = isinstance(response, RoomRedactResponse)
                if redacted:
                    # recorded now, not when the redaction comes back in a later sync: a stop
                    # before that sync must not leave the archive saying it was never removed
                    self.archive.mark_redacted(event_id, now_ms(), self.client.user_id)
                else:
                    log.error("redacting %s failed: %s", event_id, response)
            quarantined = await self._quarantine_all(event_id, pending.enforcement.media)
            quarantine = None if self.config.admin_token is None else quarantined
            if not already and not pending.notified:
                content = self._media_notice(message, rule, detected, redacted, quarantine)
                try:
                    await self.send(message.room_id, content, check=True)
                    notified = True
                except Exception as error:
                    log.error("telling the sender of %s failed: %r", event_id, error)
            enforced = redacted and quarantine is not False
        except Exception:
            log.exception("enforcing the media rules on %s failed", event_id)
        try:
            self.archive.record_enforcement(event_id, enforced=enforced, notified=notified)
        except Exception:
            log.exception("recording the enforcement of %s failed", event_id)
            return
        if not enforced:
            log.warning("the media rules on %s are not enforced yet; retrying later", event_id)

    def _media_notice(
        self, message: ArchivedMessage, rule: str, detected: str, redacted: bool, quarantined: bool | None
    ) -> dict[str, Any]:
        """The notice to the sender, with the rules as configured now (their name as the room shows it)."""
        attachment = message.attachments[0] if message.attachments else None
        room = self.client.rooms.get(message.room_id)
        limit = allowed = None
        if self.config.media is not None:
            from .media_rules import size_limit  # imports Synapse: only with media rules

            limit, allowed = size_limit(self.config.media, detected), tuple(self.config.media.allowed)
        return media_notice(
            message.sender,
            (room.user_name(message.sender) if room is not None else None) or message.sender,
            attachment.name if attachment is not None else "attachment",
            rule,
            detected,
            size=attachment.size if attachment is not None else None,
            limit=limit,
            allowed=allowed,
            redacted=redacted,
            quarantined=quarantined,
        )

    async def _quarantine_all(self, event_id: str, media: tuple[str, ...]) -> bool:
        """Quarantine the file and its thumbnail (both may carry the payload); True when all worked."""
        if self.config.admin_token is None:
            return False
        ok = True
        for mxc in media:
            try:
                await asyncio.to_thread(self._quarantine, mxc)
                log.info("quarantined the media of %s", event_id)
            except Exception as error:
                ok = False
                self.quarantine_failures += 1
                log.error("quarantining the media of %s failed: %r", event_id, error)
        return ok

    def _quarantine(self, mxc: str) -> None:
        """Synapse's admin API: the media can no longer be downloaded (kept for the operators)."""
        server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
        request = urllib.request.Request(
            f"{self.config.homeserver_url}/_synapse/admin/v1/media/quarantine/"
            f"{urllib.parse.quote(server_name, safe='')}/{urllib.parse.quote(media_id, safe='')}",
            data=b"{}",
            method="POST",
            headers={
                "Authorization": f"Bearer {self.config.admin_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    async def _attachment(self, event: RoomEncryptedMedia | RoomMessageMedia) -> Attachment | None:
        name = event.body or "attachment"
        try:
            data = await asyncio.to_thread(self._download, event.url)
            if isinstance(event, RoomEncryptedMedia):
                data = decrypt_attachment(data, event.key["k"], event.hashes["sha256"], event.iv)
        except Exception as error:
            log.warning("could not fetch the attachment of %s: %r", event.event_id, error)
            return None
        mimetype = getattr(event, "mimetype", None) or (
            event.source.get("content", {}).get("info", {}).get("mimetype") or "application/octet-stream"
        )
        return Attachment(name=name, mimetype=mimetype, data=data)

    def _download(self, mxc: str) -> bytes:
        server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
        request = urllib.request.Request(
            f"{self.config.homeserver_url}/_matrix/client/v1/media/download/{server_name}/{media_id}",
            headers={"Authorization": f"Bearer {self.client.access_token}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    async def _on_redaction(self, room: MatrixRoom, event: RedactionEvent) -> None:
        self.archive.mark_redacted(event.redacts, event.server_timestamp, event.sender)
        log.info("%s redacted %s", event.sender, event.redacts)

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        if event.event_id in self.pending or self.archive.get(event.event_id) is not None:
            return
        self.undecryptable_seen += 1
        self.pending[event.event_id] = (room.room_id, event)
        log.warning("cannot decrypt %s in %s (session %s)", event.event_id, room.room_id, event.session_id)
        with contextlib.suppress(LocalProtocolError):  # requested already for this session
            await self.client.request_room_key(event)

    async def _retry_pending(self) -> None:
        for event_id, (room_id, event) in list(self.pending.items()):
            try:
                decrypted = self.client.decrypt_event(event)
            except Exception:
                continue
            room = self.client.rooms.get(room_id)
            if room is None:
                continue
            del self.pending[event_id]
            if isinstance(decrypted, ARCHIVED_TYPES):
                await self._archive(room, decrypted)
            elif isinstance(decrypted, RedactionEvent):
                await self._on_redaction(room, decrypted)


def _media_urls(event: RoomEncryptedMedia) -> tuple[str, ...]:
    """The server's copies of an encrypted attachment: the file and its thumbnail."""
    info = event.source.get("content", {}).get("info") or {}
    thumbnail = (info.get("thumbnail_file") or {}).get("url") if isinstance(info, dict) else None
    return tuple(mxc for mxc in (event.url, thumbnail) if isinstance(mxc, str) and mxc.startswith("mxc://"))


def open_archive(config: Config, *, create: bool = True) -> Archive:
    """The archive the config names: SQLite at archive_path, or PostgreSQL."""
    if config.archive_postgres is not None:
        from .archive_pg import PostgresArchive  # psycopg2: only when configured

        assert config.attachments_dir is not None
        return PostgresArchive(
            config.archive_postgres, config.archive_key, files=config.attachments_dir, create=create
        )
    assert config.archive_path is not None
    return Archive(config.archive_path, config.archive_key, create=create)


def _signing_key(path: Path) -> Ed25519PrivateKey:
    """The export signing key; created (0600) at the first start."""
    if path.exists():
        key = load_signing_key(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = generate_signing_key(path)
        log.info("generated the export signing key %s", path)
    log.info("export signing key fingerprint: %s", key_fingerprint(key.public_key()))
    return key


__all__ = ["AuditorBot", "open_archive"]
