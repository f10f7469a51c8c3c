"""Accepting invites: the bots join the rooms they are invited to, when the inviter may invite them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nio import AsyncClient, InviteMemberEvent, JoinError, MatrixRoom

#: (inviter, room ID) -> whether the bot joins
MayJoin = Callable[[str, str], bool]


def _anyone(_sender: str, _room_id: str) -> bool:
    return True


class Invites:
    """The invite callback of one bot: ``may_join`` decides, ``join`` joins (default: nio's join)."""

    def __init__(
        self,
        client: AsyncClient,
        user_id: str,
        *,
        log: logging.Logger,
        may_join: MayJoin = _anyone,
        join: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.user_id = user_id
        self.log = log
        self.may_join = may_join
        self.join = join or self._join

    async def on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key != self.user_id or event.membership != "invite":
            return
        if not self.may_join(event.sender, room.room_id):
            self.log.info("ignoring an invite to %s from %s", room.room_id, event.sender)
            return
        self.log.info("invited to %s by %s: joining", room.room_id, event.sender)
        await self.join(room.room_id)

    async def _join(self, room_id: str) -> None:
        response = await self.client.join(room_id)
        if isinstance(response, JoinError):
            self.log.warning("joining %s failed: %s", room_id, response)


__all__ = ["Invites", "MayJoin"]
