"""Running the auditor's commands: who may, what is logged, what is answered.

Only the configured auditors may use the commands; everyone else gets a refusal,
and the refusal is written to the consultation log. Every search, page and show is
written to the consultation log before the answer is sent.

An export is four-eyes and goes in recorded steps (``requests``): one auditor
requests it, another approves it (the approval is recorded and logged), the bot
delivers the signed bundle (encrypted) into the requester's command room, and only
then does the log record the disclosure with the bundle's hash. Before the delivery
the room is checked again: when others could read it, the delivery stops.

The runner does no Matrix I/O: it answers with ``Reply`` values (and ``Delivery``
values for the bot to upload), so its handlers are tested with a fake chat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, date, timedelta, tzinfo
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..common.clock import day_of, day_start, zone_name
from ..common.commands import Handlers
from . import replies, testhook
from .archive import Archive, ArchivedMessage, now_ms
from .consultation_log import Action, ConsultationLog
from .export import build_export
from .parser import (
    HELP,
    LOGGED_WHEN_INVALID,
    Approve,
    Deny,
    Export,
    Health,
    Help,
    Invalid,
    LogView,
    More,
    Search,
    Show,
    parse_command,
)
from .replies import Delivery, HealthStats, Reply, when
from .requests import ExportRequest, ExportStore, Status

#: hits per page of !search and !more
PAGE_SIZE = 10
#: entries !log shows (the newest)
LOG_ENTRIES = 20
#: archived messages fetched per query while collecting an export
_EXPORT_BATCH = 500


@attrs.frozen
class ExportJob:
    """An approved export whose bundle is still to be built (see ``CommandRunner.start``);
    ``resumed``: approved before (the bot stopped before delivering it)."""

    request: ExportRequest
    approver: str
    #: the approval's time
    now_ms: int
    #: the export's start, moved up to the oldest retained time
    from_ms: int
    #: the room the approval was given in
    approver_room: str | None = None
    resumed: bool = False


@attrs.frozen
class BuiltExport:
    job: ExportJob
    message_count: int
    bundle: bytes = attrs.field(repr=False)


@attrs.define
class _LastSearch:
    search: Search
    since_ms: int
    until_ms: int | None
    offset: int


def _day_ms(day: date, zone: tzinfo) -> int:
    """The first moment of ``day`` in ``zone`` (the auditor's days are local days)."""
    return int(day_start(day, zone) * 1000)


def _days(ms: int) -> str:
    days = ms / 86_400_000
    return f"{days:g} day{'s' if days != 1 else ''}" if days >= 1 else f"{ms / 3_600_000:g} hours"


class CommandRunner:
    """Runs parsed commands for one bot: the archive, the log and the auditors it knows."""

    def __init__(
        self,
        archive: Archive,
        log: ConsultationLog,
        auditors: frozenset[str],
        audit_lifetime_ms: int,
        health: Callable[[], HealthStats],
        clock: Callable[[], int] = now_ms,
        *,
        exports: ExportStore | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        zone: tzinfo = UTC,
    ) -> None:
        self.archive = archive
        self.log = log
        self.auditors = auditors
        self.audit_lifetime_ms = audit_lifetime_ms
        self.health = health
        self.clock = clock
        self.exports = exports
        self.signing_key = signing_key
        #: the zone of every time in the answers and of the days in !search and !export
        self.zone = zone
        self._last: dict[str, _LastSearch] = {}
        #: approved exports whose bundle is being built or delivered (request IDs)
        self._building: set[str] = set()
        #: each command's handler, called as ``handler(sender, room_id, command)``
        self.handlers: Handlers[Reply | ExportJob] = Handlers(
            {
                Invalid: self._invalid,
                Help: self._help,
                Search: self._search,
                More: self._more,
                Show: self._show,
                LogView: self._log_view,
                Health: self._health,
                Export: self._export,
                Approve: self._approve,
                Deny: self._deny,
            },
            expected=(Invalid, Help, Search, More, Show, LogView, Health, Export, Approve, Deny),
        )

    def handle(self, sender: str, text: str, room_id: str = "") -> Reply | None:
        """The answer to ``text`` from ``sender`` in ``room_id`` (the command room); None when
        it is no command. An approved export's reply carries the bundle in ``delivery``."""
        step = self.start(sender, text, room_id)
        if isinstance(step, ExportJob):
            return self.finish_export(self.build(step))
        return step

    def start(self, sender: str, text: str, room_id: str = "") -> Reply | ExportJob | None:
        """Like ``handle``, but an approved export comes back as an ``ExportJob``: ``build`` it
        (in a thread: it may read gigabytes), then ``finish_export`` it (on the caller's thread,
        which owns the log)."""
        command = parse_command(text)
        if command is None:
            return None
        if sender not in self.auditors:
            self.log.append(
                auditor=sender,
                action=Action.REFUSAL,
                reason="not an auditor",
                recipient=sender,
                query={"command": text[:500]},
            )
            return Reply.text("Refused: only auditors may use this bot. This attempt was logged.")
        if isinstance(command, Invalid) and command.command in LOGGED_WHEN_INVALID:
            self.log.append(
                auditor=sender,
                action=Action.REFUSAL,
                reason=command.message,
                recipient=sender,
                query={"command": text[:500]},
            )
        return self.handlers(command, sender, room_id)

    def _invalid(self, sender: str, room_id: str, command: Invalid) -> Reply:
        return Reply.text(command.message)

    def _help(self, sender: str, room_id: str, command: Help) -> Reply:
        return Reply.text(f"{HELP}\nDays and times are in {zone_name(self.zone)}.")

    # -- search -----------------------------------------------------------------------------------

    def _retained_since(self) -> int:
        return self.clock() - self.audit_lifetime_ms

    def _not_retained(self, auditor: str, until: date, ref: str, reason: str, query: dict[str, Any]) -> Reply:
        cutoff = self._retained_since()
        self.log.append(
            auditor=auditor,
            action=Action.REFUSAL,
            case_ref=ref,
            reason=reason,
            recipient=auditor,
            query={**query, "refused": "not retained"},
        )
        return Reply.text(
            f"Not retained: messages up to {until} are past the audit lifetime "
            f"(the archive keeps messages since {when(cutoff, self.zone)})."
        )

    def _search(self, auditor: str, room_id: str, search: Search) -> Reply:
        cutoff = self._retained_since()
        cutoff_day = day_of(cutoff / 1000, self.zone)
        until_ms = _day_ms(search.until + timedelta(days=1), self.zone) if search.until else None
        note = ""
        if search.until is not None and until_ms is not None and until_ms <= cutoff:
            return self._not_retained(
                auditor, search.until, search.ref, search.reason, self._parameters(search)
            )
        since_ms = cutoff
        if search.since is not None:
            if _day_ms(search.since, self.zone) < cutoff:
                note = f"Messages before {cutoff_day} are not retained.\n"
            since_ms = max(cutoff, _day_ms(search.since, self.zone))
        last = _LastSearch(search, since_ms, until_ms, 0)
        self._last[auditor] = last
        return self._page(auditor, last, note)

    def _more(self, auditor: str, room_id: str, command: More) -> Reply:
        last = self._last.get(auditor)
        if last is None:
            return Reply.text("No search to continue: send !search first.")
        last.offset += PAGE_SIZE
        return self._page(auditor, last, "")

    def _parameters(self, search: Search) -> dict[str, object]:
        return {
            "words": search.words,
            "room": search.room_id,
            "sender": search.sender,
            "from": search.since.isoformat() if search.since else None,
            "to": search.until.isoformat() if search.until else None,
        }

    def _page(self, auditor: str, last: _LastSearch, note: str) -> Reply:
        search = last.search
        try:
            hits = self.archive.search(
                search.words,
                room_id=search.room_id,
                sender=search.sender,
                since=last.since_ms,
                until=last.until_ms,
                limit=PAGE_SIZE + 1,
                offset=last.offset,
            )
        except ValueError as error:
            return Reply.text(f"!search: {error}")
        more = len(hits) > PAGE_SIZE
        hits = hits[:PAGE_SIZE]
        self.log.append(
            auditor=auditor,
            action=Action.SEARCH,
            case_ref=search.ref,
            reason=search.reason,
            recipient=auditor,
            query={**self._parameters(search), "offset": last.offset},
            result_count=len(hits),
        )
        if not hits:
            what = "No more results." if last.offset else "No messages found."
            return Reply.text(note + what)
        first = last.offset + 1
        head = f"{note}Results {first}-{last.offset + len(hits)} for {search.words!r} (ref {search.ref}):"
        tail = "Send !more for the next page." if more else "No more results."
        return replies.page(head, hits, tail, first, self.zone)

    # -- show -------------------------------------------------------------------------------------

    def _versions(self, message: ArchivedMessage) -> list[ArchivedMessage]:
        """The original and its edits, oldest first (an archive without versions: the message)."""
        versions = getattr(self.archive, "versions", None)
        found = versions(message.event_id) if versions is not None else []
        return found or [message]

    def _displayed(self, item: ArchivedMessage) -> tuple[ArchivedMessage, str, bool]:
        """A message as Element shows it now: the body of its newest edit, marked edited."""
        replaced_by = getattr(item, "replaced_by", None)
        if replaced_by is None:
            return item, item.body, False
        newest = self.archive.get(replaced_by)
        return item, newest.body if newest is not None else item.body, True

    def _show(self, auditor: str, room_id: str, show: Show) -> Reply:
        message = self.archive.get(show.event_id)
        if message is not None and message.origin_server_ts < self._retained_since():
            message = None
        versions: list[ArchivedMessage] = []
        if message is not None:
            versions = self._versions(message)
            # an edit's ID shows its original, as Element shows the message, not the edit event
            message = versions[0] if getattr(message, "edit_of", None) else message
        context = self.archive.context(message.event_id) if message else []
        # edits are not messages of their own in Element's timeline
        context = [item for item in context if not getattr(item, "edit_of", None)]
        self.log.append(
            auditor=auditor,
            action=Action.SHOW,
            case_ref=show.ref,
            reason=show.reason,
            recipient=auditor,
            query={
                "event_id": show.event_id,
                "context": [m.event_id for m in context],
                "versions": [m.event_id for m in versions] if len(versions) > 1 else [],
            },
            result_count=len(context),
        )
        if message is None:
            return Reply.text(f"{show.event_id} is not in the archive (or no longer retained).")
        displayed = [self._displayed(item) for item in context]
        return replies.shown(show.event_id, message, versions, displayed, self.zone)

    # -- exports ----------------------------------------------------------------------------------

    def _refuse(self, auditor: str, reason: str, **query: Any) -> None:
        self.log.append(auditor=auditor, action=Action.REFUSAL, reason=reason, recipient=auditor, query=query)

    def _export(self, auditor: str, room_id: str, export: Export) -> Reply:
        parameters = {
            "room": export.room_id,
            "from": export.since.isoformat(),
            "to": export.until.isoformat(),
        }
        if self.exports is None or self.signing_key is None or not room_id:
            self._refuse(auditor, "exports are not set up", **parameters)
            return Reply.text("Exports are not set up on this bot.")
        cutoff = self._retained_since()
        from_ms = _day_ms(export.since, self.zone)
        to_ms = _day_ms(export.until + timedelta(days=1), self.zone)
        if to_ms <= cutoff:
            return self._not_retained(auditor, export.until, export.ref, export.reason, parameters)
        note = ""
        if from_ms < cutoff:
            cutoff_day = day_of(cutoff / 1000, self.zone)
            note = f" Messages before {cutoff_day} are not retained and will not be in it."
        now = self.clock()
        request_id = self.exports.create(
            room_id=export.room_id,
            from_ms=from_ms,
            to_ms=to_ms,
            case_ref=export.ref,
            reason=export.reason,
            requested_by=auditor,
            command_room=room_id,
            created_at_ms=now,
        )
        self.log.append(
            auditor=auditor,
            action=Action.EXPORT_REQUEST,
            case_ref=export.ref,
            reason=export.reason,
            recipient=auditor,
            query={"request_id": request_id, **parameters},
        )
        expires = when(now + self.exports.lifetime_ms, self.zone)
        return Reply.text(
            f"Export request {request_id}: {export.room_id} from {export.since} to {export.until} "
            f"(ref {export.ref}).{note} Another auditor must approve it with !approve {request_id} "
            f"by {expires}; the signed bundle then comes into this chat."
        )

    def _open_request(self, auditor: str, request_id: str, command: str) -> ExportRequest | Reply:
        """The pending request, or the refusal (logged) when it is unknown, closed or expired."""
        request = self.exports.get(request_id) if self.exports is not None else None
        if request is None:
            self._refuse(auditor, "unknown export request", command=command, request_id=request_id)
            return Reply.text(f"There is no export request {request_id}.")
        now = self.clock()
        if request.status == Status.PENDING and request.expired(now) and self.exports is not None:
            self.exports.expire(request_id, now)
            request = self.exports.get(request_id) or request
        if request.status == Status.EXPIRED:
            self._refuse(auditor, "export request expired", command=command, request_id=request_id)
            assert request.expires_at_ms is not None and self.exports is not None
            return Reply.text(
                f"Export request {request_id} expired on {when(request.expires_at_ms, self.zone)} "
                f"(requests are valid for {_days(self.exports.lifetime_ms)}): nothing was exported. "
                "The requester may ask again with !export."
            )
        if request.status != Status.PENDING:
            self._refuse(auditor, f"export request {request.status}", command=command, request_id=request_id)
            by = f" by {request.closed_by}" if request.closed_by else ""
            still = (
                " Its bundle is still to be delivered; the bot does that."
                if request.status == Status.APPROVED
                else ""
            )
            return Reply.text(f"Export request {request_id} is closed: it was {request.status}{by}.{still}")
        return request

    def _approve(self, approver: str, room_id: str, approve: Approve) -> Reply | ExportJob:
        request = self._open_request(approver, approve.request_id, "approve")
        if isinstance(request, Reply):
            return request
        if request.requested_by == approver:
            self.log.append(
                auditor=approver,
                action=Action.REFUSAL,
                case_ref=request.case_ref,
                reason="four eyes: the requester cannot approve their own export",
                recipient=approver,
                query={"command": "approve", "request_id": request.request_id},
            )
            return Reply.text(
                f"Refused: you requested {request.request_id} yourself; another auditor must approve it. "
                "This attempt was logged."
            )
        if self.signing_key is None:
            self._refuse(approver, "exports are not set up", request_id=request.request_id)
            return Reply.text("Exports are not set up on this bot.")
        if request.request_id in self._building:
            return Reply.text(f"Export {request.request_id} is already approved and being built.")
        self._building.add(request.request_id)
        now = self.clock()
        return ExportJob(
            request=request,
            approver=approver,
            now_ms=now,
            from_ms=max(request.from_ms, now - self.audit_lifetime_ms),
            approver_room=room_id or None,
        )

    def undelivered(self) -> list[ExportJob]:
        """Approved exports whose bundle has not arrived (the bot stopped before it did): to
        build again, as of their approval, and deliver."""
        if self.exports is None or self.signing_key is None:
            return []
        jobs = []
        for request in self.exports.undelivered():
            if request.request_id in self._building:
                continue
            assert request.approved_by is not None and request.approved_at_ms is not None
            self._building.add(request.request_id)
            jobs.append(
                ExportJob(
                    request=request,
                    approver=request.approved_by,
                    now_ms=request.approved_at_ms,
                    from_ms=request.bundle_from_ms if request.bundle_from_ms is not None else request.from_ms,
                    approver_room=request.approved_in,
                    resumed=True,
                )
            )
        return jobs

    def build(self, job: ExportJob) -> BuiltExport:
        """The signed bundle of an approved export, with the messages archived up to the
        approval. Reads only the archive and the signing key (no log, no request store), so
        it may run in another thread."""
        request, approver = job.request, job.approver
        assert self.signing_key is not None
        messages = self._collect(request.room_id, job.from_ms, min(request.to_ms, job.now_ms + 1))
        bundle = build_export(
            messages,
            attrs.evolve(request, approved_by=approver),
            self.signing_key,
            zone=self.zone,
        )
        return BuiltExport(job=job, message_count=len(messages), bundle=bundle)

    def abandon(self, job: ExportJob) -> None:
        """Building or delivering ``job`` ended (failed, stopped or done): it may be taken up again."""
        self._building.discard(job.request.request_id)

    def finish_export(self, built: BuiltExport) -> Reply:
        """Record the approval (a step of its own, logged) and hand the bundle over for delivery;
        the disclosure is logged once it arrived (``delivered``). A resumed job was approved
        before: only its delivery is made."""
        job = built.job
        request, approver, now = job.request, job.approver, job.now_ms
        count = f"{built.message_count} message{'s' if built.message_count != 1 else ''}"
        if not job.resumed:
            if self.exports is None or not self.exports.approve(
                request.request_id, approver, now, room=job.approver_room or "", bundle_from_ms=job.from_ms
            ):
                self.abandon(job)
                return Reply.text(f"Export request {request.request_id} was closed meanwhile.")
            self._log_step(
                request,
                Action.EXPORT_APPROVE,
                approver,
                request.requested_by,
                {"from_ms": job.from_ms, "to_ms": request.to_ms, "requested_by": request.requested_by},
                result_count=built.message_count,
            )
            testhook.reached("approved")
        notice = Reply.text(
            f"Export {request.request_id} (ref {request.case_ref}) was approved by {approver}: "
            f"{count} from {request.room_id}. The signed bundle is the file {request.request_id}.zip "
            "(check it with: police-audit verify-export FILE)."
        )
        delivery = Delivery(
            request_id=request.request_id,
            room_id=request.command_room,
            recipient=request.requested_by,
            filename=f"{request.request_id}.zip",
            data=built.bundle,
            notice=notice,
            approver=approver,
            approver_room=job.approver_room,
            message_count=built.message_count,
        )
        return Reply.text(
            f"Approved {request.request_id}: {count} from {request.room_id} go to {request.requested_by}."
        ).with_delivery(delivery)

    def _log_step(
        self,
        request: ExportRequest,
        action: Action,
        auditor: str,
        recipient: str,
        details: dict[str, Any],
        *,
        reason: str | None = None,
        result_count: int = 0,
    ) -> None:
        """One step of an export request in the consultation log: its case, the request's
        reason unless the step has its own, the request and room, and the step's details."""
        self.log.append(
            auditor=auditor,
            action=action,
            case_ref=request.case_ref,
            reason=request.reason if reason is None else reason,
            recipient=recipient,
            query={"request_id": request.request_id, "room": request.room_id, **details},
            result_count=result_count,
        )

    def delivered(self, delivery: Delivery) -> Reply:
        """The bundle is in the requester's room: record it and log the disclosure (once);
        the answer is for the approver."""
        self._building.discard(delivery.request_id)
        digest = hashlib.sha256(delivery.data).hexdigest()
        now = self.clock()
        if self.exports is not None and self.exports.delivered(
            delivery.request_id, now, bundle_sha256=digest, message_count=delivery.message_count
        ):
            request = self.exports.get(delivery.request_id)
            assert request is not None
            self._log_step(
                request,
                Action.EXPORT_DELIVER,
                delivery.approver or delivery.recipient,
                delivery.recipient,
                {
                    "from_ms": request.bundle_from_ms,
                    "to_ms": request.to_ms,
                    "delivered_to": delivery.room_id,
                    "approved_at_ms": request.approved_at_ms,
                    "bundle_sha256": digest,
                },
                result_count=delivery.message_count,
            )
        return Reply.text(f"Export {delivery.request_id} was delivered to {delivery.recipient}.")

    def stopped(self, delivery: Delivery, why: str) -> tuple[Reply, Reply]:
        """The bundle must not go into the delivery room (``why``: others could read it, it is
        not encrypted): the request ends as stopped (logged). The notice for that room (nothing
        of the export in it), and the answer for the approver."""
        self._building.discard(delivery.request_id)
        if self.exports is not None and self.exports.stop(delivery.request_id, why):
            request = self.exports.get(delivery.request_id)
            assert request is not None
            self._log_step(
                request,
                Action.EXPORT_STOP,
                delivery.approver or delivery.recipient,
                delivery.recipient,
                {"delivery_room": delivery.room_id},
                reason=f"delivery stopped: {why}",
            )
        notice = Reply.text(
            f"Export {delivery.request_id} was NOT delivered: {why}. The request is stopped and nothing "
            "was exported. Request it again from a chat with the bot that only you can read."
        )
        answer = Reply.text(
            f"Export {delivery.request_id} was stopped, not delivered to {delivery.recipient}: {why}."
        )
        return notice, answer

    def delivery_failed(self, delivery: Delivery) -> None:
        """The bundle could not be handed over: it stays approved, and is delivered at the next
        attempt (``undelivered``)."""
        self._building.discard(delivery.request_id)

    def _collect(self, room_id: str, since: int, until: int) -> list[dict[str, Any]]:
        collected: list[dict[str, Any]] = []
        offset = 0
        while True:
            hits = self.archive.search(
                room_id=room_id, since=since, until=until, limit=_EXPORT_BATCH, offset=offset
            )
            for hit in hits:
                message = hit.message
                collected.append(
                    {
                        "event_id": message.event_id,
                        "room_id": message.room_id,
                        "sender": message.sender,
                        "device_id": message.device_id,
                        "origin_server_ts": message.origin_server_ts,
                        "body": message.body,
                        "redacted_at": message.redacted_at,
                        "policy_violation": message.violation,
                        "attachments": [
                            {
                                "name": attachment.name,
                                "mimetype": attachment.mimetype,
                                "data": self.archive.read_attachment(message.event_id, attachment.index),
                            }
                            for attachment in message.attachments
                        ],
                    }
                )
            if len(hits) < _EXPORT_BATCH:
                return collected
            offset += _EXPORT_BATCH

    def _deny(self, auditor: str, room_id: str, deny: Deny) -> Reply:
        request = self._open_request(auditor, deny.request_id, "deny")
        if isinstance(request, Reply):
            return request
        if self.exports is None or not self.exports.deny(request.request_id, auditor, self.clock()):
            return Reply.text(f"Export request {request.request_id} was closed meanwhile.")
        self._log_step(
            request,
            Action.EXPORT_DENY,
            auditor,
            request.requested_by,
            {"denial": deny.reason},
            reason=deny.reason or request.reason,
        )
        if auditor == request.requested_by:
            return Reply.text(f"Export request {request.request_id} is withdrawn; nothing was exported.")
        because = f": {deny.reason}" if deny.reason else ""
        notice = Reply.text(
            f"Your export request {request.request_id} (ref {request.case_ref}) "
            f"was denied by {auditor}{because}."
        )
        reply = Reply.text(f"Export request {request.request_id} is denied; nothing was exported.")
        return attrs.evolve(reply, notify=(request.command_room, notice))

    # -- log and health ---------------------------------------------------------------------------

    def _log_view(self, auditor: str, room_id: str, command: LogView) -> Reply:
        entries = self.log.entries(auditor)[-LOG_ENTRIES:]
        self.log.append(
            auditor=auditor,
            action=Action.LOG_VIEW,
            reason="own consultation-log entries",
            recipient=auditor,
            result_count=len(entries),
        )
        if not entries:
            return Reply.text("Your consultation log is empty.")
        lines = [f"Your last {len(entries)} consultation-log entries:"]
        for entry in entries:
            ref = f" ref {entry.case_ref}" if entry.case_ref else ""
            lines.append(
                f"#{entry.seq} {when(entry.time_ms, self.zone)} {entry.action}{ref} reason {entry.reason!r} "
                f"results {entry.result_count} {entry.query}"
            )
        return Reply.text("\n".join(lines))

    def _health(self, auditor: str, room_id: str, command: Health) -> Reply:
        return replies.health(self.archive.stats(), self.health(), self.zone)


__all__ = ["LOG_ENTRIES", "PAGE_SIZE", "BuiltExport", "CommandRunner", "ExportJob"]
