"""What the auditor bot answers: replies, the bundles it hands over, and how archived
messages and its health read in a chat (plain text and HTML, every value escaped)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import tzinfo

import attrs

from ..common.clock import moment
from .archive import ArchivedMessage, ArchiveStats, SearchHit


@attrs.frozen
class Delivery:
    """An approved export bundle for the bot to upload (encrypted) into ``room_id``."""

    request_id: str
    room_id: str
    recipient: str
    filename: str
    data: bytes = attrs.field(repr=False)
    #: the notice for the recipient that goes with the file
    notice: Reply
    #: who approved it, and the room they approved it in (told when it arrived or stopped)
    approver: str = ""
    approver_room: str | None = None
    message_count: int = 0


@attrs.frozen
class Reply:
    body: str
    formatted_body: str
    delivery: Delivery | None = None
    #: another room to tell (room ID, notice): the requester of a denied export
    notify: tuple[str, Reply] | None = None

    @classmethod
    def text(cls, body: str) -> Reply:
        return cls(body, "<pre>" + html.escape(body) + "</pre>" if "\n" in body else html.escape(body))

    def with_delivery(self, delivery: Delivery) -> Reply:
        return attrs.evolve(self, delivery=delivery)

    def content(self) -> dict[str, str]:
        return {
            "msgtype": "m.notice",
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.formatted_body,
        }


@attrs.frozen
class HealthStats:
    """What the bot knows about itself beyond the archive (for !health and the metrics)."""

    undecryptable_seen: int
    undecryptable_pending: int
    started_at_ms: int
    #: decrypted attachments are judged by the module's media rules
    media_rules: bool = False
    #: refused files' server copies are quarantined (an admin token is configured)
    quarantine: bool = False
    #: attachments found breaking the media rules since start
    violations_found: int = 0
    #: quarantine requests that failed since start
    quarantine_failures: int = 0
    #: set (ms) while archive writes fail: syncing is paused until they work again
    archive_failing_since: int | None = None
    #: the failing write's error class and message (never content)
    archive_failure: str | None = None
    #: events still undecryptable past ``undecryptable_after``, by room ID
    undecryptable_by_room: dict[str, int] = attrs.field(factory=dict)
    #: events logged and skipped as malformed since start
    malformed_events: int = 0


def when(ms: int, zone: tzinfo) -> str:
    """A time in the auditor's zone, to the minute."""
    return moment(ms / 1000, zone, seconds=False)


def describe(message: ArchivedMessage, zone: tzinfo, *, body: str | None = None, edited: bool = False) -> str:
    """One message as a line: time, sender, what Element shows (``body``), its files and marks."""
    text = (
        f"{when(message.origin_server_ts, zone)} {message.sender}: {message.body if body is None else body}"
    )
    if edited:
        text += " (edited)"
    if message.attachments:
        text += " [" + ", ".join(f"{a.name} ({a.mimetype}, {a.size} B)" for a in message.attachments) + "]"
    if message.redacted_at is not None:
        text += f" (redacted by {message.redacted_by} at {moment(message.redacted_at / 1000, zone)})"
    if message.violation:
        text += f" (policy violation: {message.violation})"
    return text


def _earlier(hit: SearchHit) -> str:
    return "" if getattr(hit, "current", True) else " (earlier version)"


def hit_line(hit: SearchHit, zone: tzinfo) -> str:
    m = hit.message
    redacted = " (redacted)" if m.redacted else ""
    return (
        f"- {when(m.origin_server_ts, zone)} {m.sender} in {m.room_id}{redacted}{_earlier(hit)}: "
        f"{hit.snippet} [{m.event_id}]"
    )


def hit_html(hit: SearchHit, zone: tzinfo) -> str:
    m = hit.message
    redacted = " <i>(redacted)</i>" if m.redacted else ""
    earlier = f" <i>{html.escape(_earlier(hit).strip())}</i>" if _earlier(hit) else ""
    return (
        f"{html.escape(when(m.origin_server_ts, zone))} <b>{html.escape(m.sender)}</b> in "
        f"<code>{html.escape(m.room_id)}</code>{redacted}{earlier}: {html.escape(hit.snippet)} "
        f"<code>{html.escape(m.event_id)}</code>"
    )


def page(head: str, hits: Sequence[SearchHit], tail: str, first: int, zone: tzinfo) -> Reply:
    """A page of search results."""
    body = "\n".join([head, *(hit_line(hit, zone) for hit in hits), tail])
    items = "".join(f"<li>{hit_html(hit, zone)}</li>" for hit in hits)
    formatted = f"<p>{html.escape(head)}</p><ol start='{first}'>{items}</ol><p>{html.escape(tail)}</p>"
    return Reply(body, formatted)


def shown(
    event_id: str,
    message: ArchivedMessage,
    versions: Sequence[ArchivedMessage],
    context: Sequence[tuple[ArchivedMessage, str, bool]],
    zone: tzinfo,
) -> Reply:
    """``!show``: the message as Element shows it (its current version, marked edited), its
    earlier versions oldest first, and its neighbours (each as displayed now)."""
    lines = [f"{event_id} in {message.room_id}:"]
    parts = []
    for item, body, edited in context:
        mark = item.event_id == message.event_id
        text = describe(item, zone, body=body, edited=edited)
        lines.append(f"{'>>' if mark else '  '} {text}")
        parts.append(f"<li><b>{html.escape(text)}</b></li>" if mark else f"<li>{html.escape(text)}</li>")
    formatted = f"<p>{html.escape(lines[0])}</p><ul>{''.join(parts)}</ul>"
    if len(versions) > 1:
        head = f"Versions of {message.event_id} (oldest first; the last is shown now):"
        rows = [
            f"{number}. {when(version.origin_server_ts, zone)} {version.body} [{version.event_id}]"
            for number, version in enumerate(versions, start=1)
        ]
        lines += [head, *rows]
        formatted += f"<p>{html.escape(head)}</p><ol>" + "".join(
            f"<li>{html.escape(r[3:])}</li>" for r in rows
        )
        formatted += "</ol>"
    return Reply("\n".join(lines), formatted)


def media_line(health: HealthStats) -> str:
    if not health.media_rules:
        return "media rules: off (no policy_file): attachments are archived, not checked"
    line = f"media rules: on, {health.violations_found} violating attachments since start; "
    if health.quarantine:
        failed = f", {health.quarantine_failures} failed" if health.quarantine_failures else ""
        return line + f"quarantine: on{failed}"
    return line + "quarantine: off (no admin_token_file: refused files are redacted, not quarantined)"


def archive_paused(since_ms: int, failure: str | None, zone: tzinfo) -> Reply:
    """Told to the auditors the moment archive writes start failing: commands wait as syncing
    does, so ``!health`` could not say it until the writes work again."""
    return Reply.text(
        f"Archiving is paused: writing to the archive fails since {when(since_ms, zone)} "
        f"({failure or 'unknown error'}). Nothing is lost: the bot holds the messages and "
        "retries; commands are answered again once the archive works. Tell the operator."
    )


def archive_resumed(since_ms: int, until_ms: int, zone: tzinfo) -> Reply:
    return Reply.text(
        f"Archiving works again: writes failed from {when(since_ms, zone)} to "
        f"{when(until_ms, zone)}; the messages of that time are being archived now."
    )


def health(stats: ArchiveStats, health: HealthStats, zone: tzinfo) -> Reply:
    """``!health``: what the archive holds and what went wrong, the worst first."""
    lines = []
    if health.archive_failing_since is not None:
        lines.append(
            f"ARCHIVE WRITES FAILING since {when(health.archive_failing_since, zone)}: "
            f"{health.archive_failure or 'unknown error'}; syncing is paused (nothing is lost, "
            "the bot retries and catches up once writes work again)"
        )
    oldest = when(stats.oldest_ts, zone) if stats.oldest_ts is not None else "-"
    waiting = stats.unenforced_violations
    unenforced = f" ({waiting} not yet enforced)" if waiting else ""
    lines += [
        f"archived messages: {stats.messages} "
        f"(redacted {stats.redacted}, policy violations {stats.violations}{unenforced}, "
        f"attachments {stats.attachments})",
        f"undecryptable messages: {health.undecryptable_pending} waiting for keys, "
        f"{health.undecryptable_seen} seen since start",
    ]
    if health.undecryptable_by_room:
        total = sum(health.undecryptable_by_room.values())
        rooms = ", ".join(f"{room} {count}" for room, count in sorted(health.undecryptable_by_room.items()))
        lines.append(f"still undecryptable after the waiting time: {total} ({rooms})")
    if health.malformed_events:
        lines.append(f"malformed events skipped since start: {health.malformed_events}")
    lines += [
        media_line(health),
        f"rooms: {stats.rooms}, oldest message: {oldest}",
        f"running since {when(health.started_at_ms, zone)}",
    ]
    return Reply.text("\n".join(lines))


__all__ = [
    "Delivery",
    "HealthStats",
    "Reply",
    "archive_paused",
    "archive_resumed",
    "describe",
    "health",
    "hit_html",
    "hit_line",
    "shown",
    "when",
]
