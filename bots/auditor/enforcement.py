"""The media rules on what only the auditor can see: decrypted attachments and stickers.

The module judges plaintext uploads when they arrive; an encrypted file is
ciphertext to it, so the bot judges it after decryption with the same rules
(``media_rules``). A refused file is archived with its violation first (the
evidence), then redacted, its server copies quarantined (with an admin
token), and its sender told why. Each step's outcome is recorded in the
archive, so a crash or a failed request only delays enforcement
(``enforce_due`` after every sync).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from nio import AsyncClient, RoomRedactResponse
from nio.crypto.attachments import decrypt_attachment

from ..common.media_api import MediaApi
from .archive import Archive, ArchivedMessage, Attachment, Enforcement, PendingEnforcement, now_ms
from .config import Config
from .content import MediaRef
from .notices import media_notice
from .shard import everywhere

if TYPE_CHECKING:
    from .media_rules import Verdict

log = logging.getLogger("bots.auditor.enforcement")

#: archived violations not yet enforced that are retried after one sync
ENFORCE_BATCH = 10

#: sends a message content to a room; raises when ``check`` and the server refused it
Send = Callable[..., Awaitable[None]]


class Enforcer:
    """Fetches and judges media, and enforces the verdicts recorded in the archive."""

    def __init__(
        self,
        client: AsyncClient,
        archive: Archive,
        config: Config,
        media: MediaApi,
        send: Send,
        *,
        rooms: Callable[[], Collection[str] | None] = everywhere,
    ) -> None:
        self.client = client
        self.archive = archive
        #: the rooms whose violations are this bot's to enforce (``shard.JoinedRooms``)
        self.rooms = rooms
        self.config = config
        self.media = media
        self.send = send
        #: attachments found breaking the media rules since start
        self.violations_found = 0
        #: quarantine requests that failed since start
        self.quarantine_failures = 0

    # -- fetching and judging ---------------------------------------------------------------------

    async def attachment(self, event_id: str, ref: MediaRef, name: str) -> Attachment | None:
        """The decrypted file; None (logged) when it cannot be fetched or decrypted."""
        try:
            data = await self.media.download(ref.url)
            if ref.encrypted is not None:
                file = ref.encrypted
                data = decrypt_attachment(data, file["key"]["k"], file["hashes"]["sha256"], file["iv"])
        except Exception as error:
            log.warning("could not fetch the attachment of %s: %s", event_id, type(error).__name__)
            return None
        mimetype = ref.mimetype or (ref.encrypted or {}).get("mimetype") or "application/octet-stream"
        return Attachment(name=name or "attachment", mimetype=str(mimetype), data=data)

    async def judge(self, event_id: str, ref: MediaRef, data: bytes) -> tuple[str, Enforcement] | None:
        """The violation of an encrypted file (plaintext uploads were judged by the module on
        upload) and what enforcing it needs; None when allowed or no rules are configured."""
        if self.config.media is None or ref.encrypted is None:
            return None
        from .media_rules import check_attachment  # imports Synapse: only with media rules

        try:
            verdict: Verdict = await asyncio.to_thread(check_attachment, self.config.media, data)
        except Exception:
            log.exception("could not check the attachment of %s against the media rules", event_id)
            return None
        if verdict.allowed:
            return None
        log.warning(
            "%s breaks %s (detected %s, %d bytes)", event_id, verdict.rule, verdict.detected, verdict.size
        )
        media = tuple(mxc for mxc in (ref.url, ref.thumbnail) if mxc)
        return f"{verdict.rule}: {verdict.detected}", Enforcement(media=media, reason=verdict.reason or "")

    # -- enforcing --------------------------------------------------------------------------------

    async def enforce_new(self, event_id: str) -> None:
        """Enforce a violation just archived; the archive records it, so a crash before it is
        done only delays it (``enforce_due``); the original stays in the archive as evidence."""
        self.violations_found += 1
        pending = self.archive.enforcement(event_id, rooms=self.rooms())
        if pending is not None:
            await self.enforce(pending)

    async def enforce_due(self) -> None:
        """Enforce archived violations whose enforcement failed or was cut short (a crash
        between archiving and enforcing): after every sync, the first one after a start
        included, so events a restart replays (their redactions too) are archived first.
        Only those of the bot's rooms: other shards enforce theirs."""
        try:
            due = self.archive.unenforced(ENFORCE_BATCH, rooms=self.rooms())
        except Exception:
            log.exception("listing the violations still to enforce failed")
            return
        for pending in due:
            log.info(
                "enforcing the media rules on %s again (attempt %d)",
                pending.message.event_id,
                pending.attempts + 1,
            )
            await self.enforce(pending)

    async def enforce(self, pending: PendingEnforcement) -> None:
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
            quarantined = await self.quarantine_all(event_id, pending.enforcement.media)
            quarantine = None if self.config.admin_token is None else quarantined
            if not already and not pending.notified:
                content = self._notice(message, rule, detected, redacted, quarantine)
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

    async def quarantine_all(self, event_id: str, media: tuple[str, ...]) -> bool:
        """Quarantine the file and its thumbnail (both may carry the payload); True when all worked."""
        if self.config.admin_token is None:
            return False
        ok = True
        for mxc in media:
            try:
                await self.media.quarantine(mxc)
                log.info("quarantined the media of %s", event_id)
            except Exception as error:
                ok = False
                self.quarantine_failures += 1
                log.error("quarantining the media of %s failed: %r", event_id, error)
        return ok

    def _notice(
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


__all__ = ["ENFORCE_BATCH", "Enforcer"]
