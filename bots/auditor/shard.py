"""The rooms whose work is this bot's, when several auditor bots ("shards") share one archive.

The module seats exactly one auditor bot in each room. The shards archive into
one PostgreSQL database, so its violations to enforce and its events held for
their keys are of every shard's rooms; each bot takes on only those of the rooms
it is joined to (a redaction or key request elsewhere would fail, and another
shard's counts are not this bot's health). Searching reads the whole archive.

A SQLite archive is one bot's own: nothing is filtered (``None``), as before
shards. A PostgreSQL archive may be shared, so a bot on one always keeps to its
rooms (a lone bot differs only in rooms it has left). Before the first sync
the rooms are not known yet: nothing is this bot's then (an empty set), so
nothing of another shard is touched at a start; the first sync is a full-state
one and lists every joined room.
"""

from __future__ import annotations

from nio import AsyncClient, SyncResponse


class JoinedRooms:
    """The room filter a bot passes to the archive: the rooms it is joined to, or None.

    ``observe`` each sync response (after nio took it in); the filter is then a
    frozenset, so other threads (the metrics server) may read it at any time.
    nio never forgets a room it left, hence the leaves are tracked here.
    """

    def __init__(self, client: AsyncClient, *, shared: bool) -> None:
        self.client = client
        self.shared = shared
        self._left: set[str] = set()
        self._current: frozenset[str] | None = frozenset() if shared else None

    def observe(self, response: SyncResponse) -> bool:
        """Take in the rooms of a sync response; True when the bot's rooms changed (the first
        response after a start names them all)."""
        if not self.shared:
            return False
        self._left.update(response.rooms.leave)
        self._left.difference_update(response.rooms.join)
        before = self._current
        self._current = frozenset(room_id for room_id in self.client.rooms if room_id not in self._left)
        return self._current != before

    def __call__(self) -> frozenset[str] | None:
        """The rooms to keep to; None: every room (the archive is this bot's alone)."""
        return self._current


def everywhere() -> None:
    """The filter of a bot with an archive of its own: none."""
    return None


__all__ = ["JoinedRooms", "everywhere"]
