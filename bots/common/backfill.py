"""Fetching what a limited sync timeline left out (many events at once, or a bot that was down).

Both bots page back through ``/messages`` from the timeline's ``prev_batch``
until they reach what they handled before; each says what that is (``keep``):
the auditor stops at an archived event or the audit lifetime, dispatch at its
previous sync. Events come back oldest first, decrypted where the keys are
there (nio decrypts ``/messages`` answers; the rest are ``MegolmEvent``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nio import AsyncClient, Event, RoomMessagesResponse


async def backfill(
    client: AsyncClient,
    room_id: str,
    prev_batch: str,
    *,
    keep: Callable[[Event], bool],
    pages: int,
    log: logging.Logger,
) -> list[Event]:
    """The events before ``prev_batch`` that ``keep`` wants, oldest first; paging stops after
    the first page with an event ``keep`` refused (100 events a page, at most ``pages`` pages)."""
    collected: list[Event] = []
    token = prev_batch
    for _ in range(pages):
        response = await client.room_messages(room_id, start=token, limit=100)
        if not isinstance(response, RoomMessagesResponse):
            log.warning("back-filling %s failed: %s", room_id, getattr(response, "status_code", response))
            break
        wanted = [event for event in response.chunk if _keeps(keep, event)]
        collected.extend(wanted)
        if len(wanted) < len(response.chunk) or not response.chunk or not response.end:
            break
        token = response.end
    if collected:
        log.info("back-filling %d events in %s", len(collected), room_id)
    collected.reverse()
    return collected


def _keeps(keep: Callable[[Event], bool], event: Event) -> bool:
    """A malformed event (no usable timestamp) is kept: the bot's handler logs and counts it."""
    try:
        return keep(event)
    except Exception:
        return True


__all__ = ["backfill"]
