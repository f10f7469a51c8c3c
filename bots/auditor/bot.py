"""The auditor bot's Matrix side: log in, sync, hand each sync response to the archiving
(``ingest.py``, with the media rules of ``enforcement.py``), answer commands."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nio import (
    Event,
    InviteMemberEvent,
    MatrixRoom,
    RoomMessageText,
    SyncResponse,
)

from ..common.invites import Invites
from ..common.media_api import MediaApi
from ..common.session import Session, StoreSyncTokens
from .archive import Archive, now_ms
from .chain_heads import export_head, head_notice
from .chat import CommandChat
from .config import Config
from .consultation_log import ChainBroken, ConsultationLog
from .enforcement import Enforcer
from .export import key_fingerprint, open_signing_key
from .ingest import Ingest
from .parser import parse_command
from .replies import HealthStats, archive_paused, archive_resumed
from .requests import ExportStore
from .runner import CommandRunner
from .shard import JoinedRooms

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("bots.auditor")

#: seconds to wait at shutdown for exports still being built or delivered
SHUTDOWN_GRACE_S = 30.0


class AuditorBot:
    def __init__(self, config: Config, *, reset_identity: bool = False) -> None:
        self.config = config
        # nio's warning about an event failing its schema quotes the failing part of the event,
        # content included; the ingest logs such events by ID and counts them
        logging.getLogger("nio.events.misc").setLevel(logging.ERROR)
        self.session = Session(
            config,
            device_name="auditor bot",
            log=log,
            main_key=config.archive_key,
            reset_identity=reset_identity,
        )
        self.client = self.session.client
        self.archive = open_archive(config)
        # search words and other parameters are sealed under a key derived from the archive key
        self.consultations = ConsultationLog(config.log_path, key=config.archive_key)
        # requests nobody approved within export_request_lifetime expire
        self.exports = ExportStore(config.exports_path, config.export_request_lifetime * 1000)
        self.signing_key = _signing_key(config)
        self.started_at = now_ms()
        self.media = MediaApi(self.client, config.admin_token)
        # a PostgreSQL archive may be shared by several auditor bots ("shards"): this one
        # enforces, retries and counts only what is of the rooms it is joined to
        self.joined = JoinedRooms(self.client, shared=config.archive_postgres is not None)
        self.enforcer = Enforcer(
            self.client, self.archive, config, self.media, self._send_notice, rooms=self.joined
        )
        self.ingest = Ingest(
            self.session,
            self.archive,
            config,
            self.enforcer,
            before=self._before_archiving,
            on_outage=self._tell_outage,
            rooms=self.joined,
        )
        self.invites = Invites(self.client, config.user_id, log=log)
        #: work started by callbacks that must not hold up syncing (exports)
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics: WSGIServer | None = None
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
        self.chat = CommandChat(
            self.client, self.commands, self.consultations, self.archive, self._spawn, self.started_at
        )

    def health(self) -> HealthStats:
        """The bot's own figures; read from the metrics thread too (the archive allows that)."""
        ingest = self.ingest
        try:
            undecryptable = ingest.undecryptable_by_room()
        except Exception as error:  # the archive is failing: that is reported beside
            log.warning("counting the undecryptable events failed: %s", type(error).__name__)
            undecryptable = {}
        return HealthStats(
            ingest.undecryptable_seen,
            len(ingest.held.ids),
            self.started_at,
            media_rules=self.config.media is not None,
            quarantine=self.config.admin_token is not None,
            violations_found=self.enforcer.violations_found,
            quarantine_failures=self.enforcer.quarantine_failures,
            archive_failing_since=ingest.failing_since,
            archive_failure=ingest.failure,
            undecryptable_by_room=undecryptable,
            malformed_events=ingest.malformed_events,
        )

    async def _send_notice(self, room_id: str, content: dict[str, Any], *, check: bool = False) -> None:
        """The enforcement's notices go out like the bot's answers (``send``)."""
        await self.send(room_id, content, check=check)

    # -- running ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self.session.stop()

    async def run(self) -> None:
        purge: asyncio.Task[None] | None = None
        heads: asyncio.Task[None] | None = None
        try:
            if not await self.session.until_stopped(self.session.login()):
                return  # stopped while the homeserver was still unreachable
            self._start_metrics()
            if self.config.media is not None and self.config.admin_token is None:
                log.warning(
                    "media rules on, but no admin_token_file: refused files are redacted, not quarantined"
                )
            self.client.add_event_callback(self._guarded(self.invites.on_invite), InviteMemberEvent)
            purge = asyncio.create_task(self._purge_regularly())
            heads = asyncio.create_task(self._export_heads_regularly())
            # the token lives where nio's store_sync_tokens kept it, but is saved only after a
            # whole response was archived: a kill mid-callback no longer loses those events
            await self.session.sync_forever(StoreSyncTokens(self.client), self._after_sync, self._on_ready)
        finally:
            for task in (purge, heads):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
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
        try:
            # after the first sync, which names the bot's rooms: only their held events are its own
            await self.ingest.start()
        except Exception as error:  # they are still tried again after every sync
            log.error("asking again for the keys of held events failed: %s", type(error).__name__)
        await self.chat.resume()  # approved exports a stop cut short

    async def _after_sync(self, response: SyncResponse) -> None:
        """Archive the whole response (its gaps back-filled, late keys tried), then enforce
        the media rules still due; the session saves the sync token only after this returned,
        and the archiving returns only when all of it is written."""
        await self.ingest.handle(response)
        await self.enforcer.enforce_due()

    def _guarded(self, handler: Any) -> Any:
        """A callback that fails is logged; nio's handling of the response goes on (an exception
        escaping a callback would lose the rest of it)."""

        async def guarded(room: MatrixRoom, event: Any) -> None:
            try:
                await handler(room, event)
            except Exception as error:
                event_id = getattr(event, "event_id", "?")
                log.error("handling %s in %s failed: %s", event_id, room.room_id, type(error).__name__)
                log.debug("the failed callback's error", exc_info=True)

        return guarded

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

    async def _export_heads_regularly(self) -> None:
        """Sign the consultation log's head into ``chain_heads_file`` (which the operator ships
        off the host) and, with ``dpo_room``, into the data-protection officer's room: what
        the archive's writer cannot rewrite afterwards (``police-audit verify-log --heads``)."""
        while True:
            if self.config.chain_heads_file is not None:
                try:
                    line = await asyncio.to_thread(self._export_head)
                except ChainBroken as broken:
                    log.error("consultation log chain broken, no head exported: %s", broken)
                except Exception:
                    log.exception("exporting the consultation log's head failed")
                else:
                    log.info("exported the consultation log's head to %s", self.config.chain_heads_file)
                    if self.config.dpo_room is not None:
                        notice = {"msgtype": "m.notice", "body": head_notice(line)}
                        try:
                            await self.send(self.config.dpo_room, notice, check=True)
                        except Exception:
                            log.exception("sending the log's head to the data-protection officer failed")
            await asyncio.sleep(self.config.chain_head_interval)

    def _export_head(self) -> str:
        """In a thread, on a connection of its own (the log's is bound to the loop's thread)."""
        assert self.config.chain_heads_file is not None
        with ConsultationLog(self.config.log_path, read_only=True) as consultations:
            return export_head(consultations, self.signing_key, self.config.chain_heads_file, now_ms())

    # -- callbacks --------------------------------------------------------------------------------

    async def _before_archiving(self, room_id: str, event: Event) -> None:
        """Each timeline event, in order, before it is archived: a command is answered here,
        so it finds what was said (and redacted) before it in the same sync archived."""
        room = self.client.rooms.get(room_id)
        if room is not None and isinstance(event, RoomMessageText):
            await self._on_message(room, event)

    async def _on_message(self, room: MatrixRoom, event: RoomMessageText) -> None:
        """Answer a command (auditors' commands stay out of the archive)."""
        if event.sender == self.config.user_id or parse_command(event.body) is None:
            return
        if await self._is_command_room(room, event.sender):
            if event.sender in self.config.auditors:
                # auditors' commands are in the consultation log, not the archive
                self.ingest.not_archived.add(event.event_id)
            await self._answer(room, event)

    async def _tell_outage(self, since: int, failing: bool) -> None:
        """Each auditor, in their room with the bot: archiving paused, or working again."""
        zone = self.config.timezone
        reply = (
            archive_paused(since, self.ingest.failure, zone)
            if failing
            else archive_resumed(since, now_ms(), zone)
        )
        rooms = await self.chat.private_rooms(self.config.auditors)
        log.info(
            "telling the auditors in %d rooms: archive writes %s", len(rooms), "fail" if failing else "work"
        )
        for room_id in rooms:
            await self.send(room_id, reply.content())

    # -- commands (``chat``: answering, delivering exports) -------------------------------------------

    async def _is_command_room(self, room: MatrixRoom, sender: str) -> bool:
        return await self.chat.is_command_room(room, sender)

    async def _answer(self, room: MatrixRoom, event: RoomMessageText) -> None:
        await self.chat.answer(room, event)

    async def send(
        self, room_id: str, content: dict[str, Any], *, check: bool = False, tx_id: str | None = None
    ) -> None:
        await self.chat.send(room_id, content, check=check, tx_id=tx_id)


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


def _signing_key(config: Config) -> Ed25519PrivateKey:
    """The export signing key: created at the first start, encrypted with its own key, and
    refused when it is not the pinned one (``signing_key_fingerprint``)."""
    key = open_signing_key(
        config.signing_key_file, config.signing_key_password, config.signing_key_fingerprint
    )
    log.info("export signing key fingerprint: %s", key_fingerprint(key.public_key()))
    if config.signing_key_password is None:
        log.warning("no signing_key_password_file or _env: the export signing key is stored unencrypted")
    if config.signing_key_fingerprint is None:
        log.warning("no signing_key_fingerprint: pin the fingerprint above so a swapped key file is refused")
    return key


__all__ = ["AuditorBot", "open_archive"]
