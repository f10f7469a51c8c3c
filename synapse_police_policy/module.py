"""The Synapse module: registers callbacks and turns rule answers into
Synapse's return values. Rules live in their own files (``rooms.py``, ...)."""

from __future__ import annotations

from typing import Any, Literal

from synapse.api.errors import Codes, SynapseError
from synapse.events import EventBase
from synapse.module_api import NOT_SPAM, ModuleApi
from synapse.types import Requester

from . import rooms
from .config import PolicyConfig, parse_config
from .decisions import DecisionLog, Denial

SpamAnswer = Literal["NOT_SPAM"] | tuple[Codes, dict[str, str]]


class PolicePolicy:
    """Loaded through Synapse's ``modules:`` list (see README)."""

    def __init__(self, config: PolicyConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._decisions = DecisionLog(api.server_name)

        api.register_third_party_rules_callbacks(on_create_room=self.on_create_room)
        api.register_spam_checker_callbacks(
            check_event_for_spam=self.check_event_for_spam,
            user_may_publish_room=self.user_may_publish_room,
        )

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> PolicyConfig:
        return parse_config(raw)

    def _refuse(
        self, denial: Denial, *, user: str, device: str | None = None, room: str | None = None
    ) -> SpamAnswer:
        self._decisions.deny(denial, user=user, device=device, room=room)
        return (Codes(denial.errcode), denial.error_fields())

    async def on_create_room(self, requester: Requester, request: dict[str, Any], is_admin: bool) -> None:
        """Refuse creation requests that break the room policy, complete the rest.

        This runs for server admins too (the spam checker's user_may_create_room
        does not), so it is the one gate for room creation.
        """
        problem = rooms.malformed_initial_state(request)
        if problem is not None:
            raise SynapseError(400, problem, Codes.BAD_JSON)
        denial = rooms.check_room_creation(self._config.rooms, request)
        if denial is not None:
            self._decisions.deny(denial, user=requester.user.to_string(), device=requester.device_id)
            raise denial.as_error()
        request["initial_state"] = [
            *request.get("initial_state", []),
            *rooms.missing_initial_state(self._config.rooms, request),
        ]

    async def check_event_for_spam(self, event: EventBase) -> SpamAnswer:
        # Inbound federation PDUs come here too; the room rules govern what our
        # own users send (federation rules are the federation section's job).
        if not self._api.is_mine(event.sender):
            return NOT_SPAM
        state_key = event.get_state_key()
        denial = rooms.check_event(self._config.rooms, event.type, state_key, event.content)
        if denial is None:
            return NOT_SPAM
        return self._refuse(
            denial,
            user=event.sender,
            device=getattr(event.internal_metadata, "device_id", None),
            room=event.room_id,
        )

    async def user_may_publish_room(self, user_id: str, room_id: str) -> SpamAnswer:
        return self._refuse(rooms.check_directory_publication(), user=user_id, room=room_id)
