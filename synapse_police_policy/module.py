"""The Synapse module: registers callbacks and turns rule answers into
Synapse's return values. Rules live in their own files (``rooms/rules.py``, ``devices/rules.py``, ...)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, Literal

from synapse.api.errors import Codes, SynapseError
from synapse.config._base import ConfigError
from synapse.events import EventBase
from synapse.media._base import FileInfo
from synapse.media.media_storage import ReadableFileWrapper
from synapse.module_api import NOT_SPAM, ModuleApi
from synapse.types import Requester, UserProfile

from .api import ADMIN_PREFIX, LOGIN_PAGE_PREFIX
from .config import ConfigError as PolicyConfigError
from .config import PolicyConfig, parse_config
from .decisions import DecisionLog, Denial
from .devices import login_page
from .devices.admin_api import PoliceAdminResource
from .devices.glue import DeviceEnrollment
from .devices.store import EnrollmentStore
from .federation import rules as federation
from .federation.store import ForeignMembers
from .internals import (
    count_history_purges,
    creators_have_unlimited_power,
    current_requester,
    guard_client_requests,
    guard_device_keys,
    guard_federation_destinations,
    guard_federation_origins,
    guard_new_events,
    guard_remote_knocks,
    guard_remote_media,
)
from .media import rules as media
from .media.filetype import sniff
from .media.usage import MediaUsage
from .retention import rules as retention
from .retention.store import RetentionStore
from .retention.sweep import RetentionSweep
from .rooms import rules as rooms
from .rooms import seating
from .schema import Tables

logger = logging.getLogger(__name__)

MEMBER = "m.room.member"
CREATE = "m.room.create"
#: how long a new room is waited for before the system user is invited (checks x interval)
ENLIST_CHECKS = 120
ENLIST_CHECK_INTERVAL_S = 0.25
#: how long a remote join is watched for (checks x interval)
REMOTE_JOIN_CHECKS = 240
REMOTE_JOIN_CHECK_INTERVAL_S = 0.5
#: foreign event IDs remembered to log each denial once
RECENTLY_DENIED_MAX = 10_000
#: rooms remembered to have power levels (each costs a state lookup once per process)
FINISHED_ROOMS_MAX = 50_000

SpamAnswer = Literal["NOT_SPAM"] | tuple[Codes, dict[str, str]]


class PolicePolicy:
    """Loaded through Synapse's ``modules:`` list (see docs/policy.md, "Loading the module")."""

    def __init__(self, config: PolicyConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._decisions = DecisionLog(api.server_name)
        self._allowed_servers = federation.allowed_set(api.server_name, config.federation.allowed_servers)
        tables = Tables(api)
        self._foreign_members = ForeignMembers(tables)
        self._devices = DeviceEnrollment(config.devices, api, EnrollmentStore(tables), self._decisions)
        self._media_usage = MediaUsage(api)
        self._sweep = RetentionSweep(config.retention, api, RetentionStore(api, tables), self._decisions)
        #: the auditor bots; one of them is seated in each new room (``seating.auditor_for``)
        self._auditors = config.auditor.bots
        key = "user_id" if config.auditor.user_id is not None else "user_ids"
        for index, bot in enumerate(self._auditors):
            if not api.is_mine(bot):
                where = key if key == "user_id" else f"{key}[{index}]"
                raise ConfigError(
                    f"auditor.{where}: expected a user of this server ({api.server_name}), got {bot!r}",
                    path=("auditor", where),
                )
        #: users the policy gives power 100 in every room, that nobody removes
        self._seated = [self._sweep.system_user, *self._auditors]
        #: service users: never offered in user-directory searches ("Start chat"), and
        #: listed in every new room's io.element.functional_members (left out of its name)
        self._service_users = (*self._seated, *sorted(config.directory.hidden_users - set(self._seated)))
        self._hidden_from_directory = frozenset(self._service_users)
        self._recently_denied: OrderedDict[str, None] = OrderedDict()
        #: rooms seen with power levels (``_check_room_finished``), oldest forgotten first
        self._finished_rooms: OrderedDict[str, None] = OrderedDict()

        # Not a check_event_allowed callback: with one, Synapse loads the room's
        # whole state for every event (internals.guard_new_events).
        api.register_third_party_rules_callbacks(on_create_room=self.on_create_room)
        guard_new_events(api, self.check_new_event)
        api.register_spam_checker_callbacks(
            check_event_for_spam=self.check_event_for_spam,
            should_drop_federated_event=self.should_drop_federated_event,
            user_may_publish_room=self.user_may_publish_room,
            user_may_invite=self.user_may_invite,
            federated_user_may_invite=self.federated_user_may_invite,
            user_may_join_room=self.user_may_join_room,
            check_login_for_spam=self.check_login_for_spam,
            check_media_file_for_spam=self.check_media_file_for_spam,
            check_username_for_spam=self.check_username_for_spam,
        )
        api.register_media_repository_callbacks(
            is_user_allowed_to_upload_media_of_size=self.is_user_allowed_to_upload_media_of_size
        )
        api.register_account_validity_callbacks(on_user_login=self.on_user_login)
        api.register_web_resource(ADMIN_PREFIX, PoliceAdminResource(api, self._devices))
        api.register_web_resource(
            LOGIN_PAGE_PREFIX, login_page.LoginPageResource(self._devices, config.devices.approval_window)
        )
        guard_remote_media(api, self.refuse_remote_media)
        guard_remote_knocks(api, self.refuse_remote_knock)
        guard_federation_origins(api, self.refuse_federation_origin)
        guard_federation_destinations(api, self.refuse_federation_destination)
        guard_device_keys(api, self._devices.check_device_keys)
        if config.devices.enrollment_required:
            guard_client_requests(api, self._devices.check_request)
        count_history_purges(api, self._sweep.count_purge)
        api.run_as_background_process("police_policy_migrate", tables.ensure)
        if api.should_run_background_tasks():
            api.run_as_background_process("police_policy_system_user", self._sweep.ensure_system_user)
        api.looping_background_call(
            self._sweep.run, config.retention.sweep_interval * 1000, desc="police_policy_retention_sweep"
        )
        if config.devices.enrollment_required:
            api.looping_background_call(
                self._devices.sweep, config.devices.sweep_interval * 1000, desc="police_policy_device_sweep"
            )

    @staticmethod
    def parse_config(raw: dict[str, Any]) -> PolicyConfig:
        """Synapse reports its own ``ConfigError`` with the key path (``config.py`` raises
        one that needs no Synapse, for the bots)."""
        try:
            return parse_config(raw)
        except PolicyConfigError as error:
            raise ConfigError(error.msg, path=error.path) from None

    def _refuse(
        self, denial: Denial, *, user: str | None, device: str | None = None, room: str | None = None
    ) -> SpamAnswer:
        self._decisions.deny(denial, user=user, device=device, room=room)
        return (Codes(denial.errcode), denial.error_fields())

    async def on_create_room(self, requester: Requester, request: dict[str, Any], is_admin: bool) -> None:
        """Make a creation request safe, or refuse it when that cannot be done.

        Settings the room rules would refuse get the policy's value (guest
        access, history visibility, join rule, encryption: ``rooms.secure_initial_state``),
        each change logged as a rewrite; a public room and state in clear text
        are refused; power levels get the service users merged in
        (``rooms.seat_service_users``) or are refused. This runs for server
        admins too (the spam checker's user_may_create_room does not), so it is
        the one gate for room creation.
        """
        user, device = requester.user.to_string(), requester.device_id
        problem = rooms.malformed_request(request)
        if problem is not None:
            raise SynapseError(400, problem, Codes.BAD_JSON)
        denial = rooms.check_room_creation(self._config.rooms, request)
        retention_policy = self._config.retention
        for entry in request.get("initial_state", []):
            if denial is None and entry["type"] == retention.RETENTION:
                denial = retention.check_retention_change(retention_policy, entry["content"])
        initial_state, rewrites = rooms.secure_initial_state(self._config.rooms, request)
        initial_state, listed = rooms.with_functional_members(initial_state, self._service_users)
        rewrites += listed
        creator_listed = not creators_have_unlimited_power(self._api, request.get("room_version"))
        initial_state, override, power_denial = rooms.seat_service_users(
            request, initial_state, user, self._seated, creator_listed
        )
        denial = denial or power_denial
        if denial is not None:
            self._decisions.deny(denial, user=user, device=device)
            raise denial.as_error()
        request["initial_state"] = [
            *(e for e in initial_state if e["type"] != retention.RETENTION),
            retention.retention_state(retention_policy),
        ]
        request["power_level_content_override"] = override
        request["creation_content"] = seating.note_invited_auditor(
            request.get("creation_content") or {}, request.get("invite"), self._auditors
        )
        for rewrite in rewrites:
            self._decisions.rewrite(rewrite.rule, rewrite.reason, user=user, device=device)

    async def check_event_for_spam(self, event: EventBase) -> SpamAnswer:
        if not self._api.is_mine(event.sender):
            # Inbound PDUs, also those pulled from a peer (backfill, missing
            # events): a foreign sender's event is pruned and soft-failed, so it
            # never reaches clients; the room rules govern our own users only.
            denial = federation.check_remote_sender(self._allowed_servers, event.sender)
            if denial is None:
                if event.type == MEMBER:
                    await self._forget_removed_foreign_member(event)
                return NOT_SPAM
            await self._deny_foreign_event(event, denial)
            return (Codes(denial.errcode), denial.error_fields())
        denial = rooms.check_event(
            self._config.rooms, event.type, event.get_state_key(), event.content, self._service_users
        )
        if denial is None:
            denial = await self._check_room_finished(event)
        if denial is None:
            denial = await self._check_retention_state(event)
        if denial is None:
            return NOT_SPAM
        return self._refuse(
            denial,
            user=event.sender,
            device=getattr(event.internal_metadata, "device_id", None),
            room=event.room_id,
        )

    async def _check_room_finished(self, event: EventBase) -> Denial | None:
        """``rooms.check_room_finished``; Synapse runs this spam check on no event
        of a creation, so a room without power levels here is one whose
        creation failed. A room once seen with them keeps them (remembered)."""
        if event.type in (CREATE, MEMBER) or event.room_id in self._finished_rooms:
            return None
        state = await self._api.get_room_state(event.room_id, [(rooms.POWER_LEVELS, "")])
        has_power_levels = (rooms.POWER_LEVELS, "") in state
        if has_power_levels:
            self._finished_rooms[event.room_id] = None
            if len(self._finished_rooms) > FINISHED_ROOMS_MAX:
                self._finished_rooms.popitem(last=False)
        return rooms.check_room_finished(event.type, has_power_levels)

    async def _check_retention_state(self, event: EventBase) -> Denial | None:
        """Nobody changes a room's retention or takes the system user's power."""
        if event.get_state_key() != "":
            return None
        if event.type == retention.RETENTION:
            return retention.check_retention_change(self._config.retention, event.content)
        if event.type == seating.POWER_LEVELS:
            current = await self._api.get_room_state(event.room_id, [(seating.POWER_LEVELS, "")])
            levels = current.get((seating.POWER_LEVELS, ""))
            for user in self._seated:
                # Only where the policy seated the user: it holds its power there.
                if levels is not None and seating.check_power_levels(levels.content, user) is None:
                    denial = seating.check_power_levels(event.content, user)
                    if denial is not None:
                        return denial
        return None

    async def should_drop_federated_event(self, event: EventBase) -> bool:
        """Events of foreign senders in a transaction are dropped before storage."""
        denial = federation.check_remote_sender(self._allowed_servers, event.sender)
        if denial is None:
            return False
        await self._deny_foreign_event(event, denial)
        return True

    async def _deny_foreign_event(self, event: EventBase, denial: Denial) -> None:
        """Log and remember a foreign event once, although Synapse asks about a
        PDU of a transaction twice (spam check, then the drop check)."""
        if event.event_id in self._recently_denied:
            return
        self._recently_denied[event.event_id] = None
        if len(self._recently_denied) > RECENTLY_DENIED_MAX:
            self._recently_denied.popitem(last=False)
        await self._remember_foreign_membership(event)
        self._decisions.deny(denial, user=event.sender, room=event.room_id, event=event.event_id)

    async def _forget_removed_foreign_member(self, event: EventBase) -> None:
        """An allowed server kicked or banned a foreign member we remembered."""
        target = event.state_key or ""
        if event.membership in ("leave", "ban") and federation.server_of(target) not in self._allowed_servers:
            await self._foreign_members.set_foreign_member(
                event.room_id, target, event.membership, event.origin_server_ts
            )

    async def _remember_foreign_membership(self, event: EventBase) -> None:
        """A dropped membership of a foreign user still holds on the peer's side:
        remember it, so later joins of our users into that room can be refused."""
        if event.type == MEMBER and event.state_key == event.sender:
            await self._foreign_members.set_foreign_member(
                event.room_id, event.sender, event.content.get("membership", ""), event.origin_server_ts
            )

    async def check_login_for_spam(
        self,
        user_id: str,
        device_id: str | None,
        initial_display_name: str | None,
        request_info: Collection[tuple[str | None, str]],
        auth_provider_id: str | None = None,
    ) -> SpamAnswer:
        """Every login type passes here, after the credentials were checked."""
        denial = await self._devices.check_login(user_id, device_id, list(request_info))
        if denial is None:
            return NOT_SPAM
        return (Codes(denial.errcode), denial.error_fields())

    async def on_user_login(
        self, user_id: str, auth_provider_type: str | None, auth_provider_id: str | None
    ) -> None:
        await self._devices.on_user_login(user_id)

    async def check_new_event(self, event: EventBase) -> None:
        """Every event this server creates: from our users' clients the sending
        device must be enrolled. Then membership events: nobody removes a
        service user; remote users' make_join and make_knock, and our users'
        knocks (joins have user_may_join_room). Raises to refuse.

        It sees the event, not the room's state: its cost does not grow with
        the room. The one rule that needs the members (a knock) reads them."""
        if self._api.is_mine(event.sender):
            denial = await self._devices.check_event(event)
            if denial is not None:
                raise denial.as_error()
            if event.type == CREATE and event.sender not in self._seated:
                auditor = seating.auditor_to_seat(event.room_id, event.content, self._auditors)
                self._api.run_as_background_process(
                    "police_policy_seat_service_users",
                    self._seat_service_users,
                    event.room_id,
                    event.sender,
                    auditor,
                )
        if event.type != MEMBER:
            return
        if event.state_key in self._seated and event.sender != event.state_key:
            denial = seating.check_system_user_removal(event.membership, event.state_key)
            if denial is not None:
                self._decisions.deny(denial, user=event.sender, room=event.room_id)
                raise denial.as_error()
        if self._api.is_mine(event.sender):
            if event.membership != "knock":
                return
            denial = federation.check_room_members(
                self._allowed_servers, await self._joined_members(event.room_id)
            )
        else:
            denial = federation.check_remote_joiner(self._allowed_servers, event.sender)
        if denial is None:
            return
        self._decisions.deny(denial, user=event.sender, room=event.room_id)
        raise denial.as_error()

    async def _seat_service_users(self, room_id: str, creator: str, auditor: str | None) -> None:
        """Bring the system user (it redacts expired content) and the auditor bot
        (it archives; one of several: ``seating.auditor_to_seat``) into a new
        room. They are invited once the room exists, not in the creation
        request: invitees of a trusted private chat become its creators."""
        for _ in range(ENLIST_CHECKS):
            await self._api.sleep(ENLIST_CHECK_INTERVAL_S)
            # The creator joins before the power levels and the initial state
            # are stored: invited earlier, a service user's membership would
            # fork the room's first events and be judged against other levels.
            state = await self._api.get_room_state(room_id, [(MEMBER, creator), (rooms.POWER_LEVELS, "")])
            member = state.get((MEMBER, creator))
            if member is not None and member.membership == "join" and (rooms.POWER_LEVELS, "") in state:
                break
        else:
            logger.warning("Room %s was not created; its service users stay out", room_id)
            return
        for user in (self._sweep.system_user, auditor):
            if user is None:
                continue
            try:
                await self._api.update_room_membership(creator, user, room_id, "invite")
                await self._api.update_room_membership(user, user, room_id, "join")
            except SynapseError as error:
                logger.warning("Could not seat %s in %s: %s", user, room_id, error.msg)

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> SpamAnswer:
        denial = federation.check_invite_target(self._allowed_servers, invitee)
        if denial is None:
            return NOT_SPAM
        return self._refuse(denial, user=inviter, room=room_id)

    async def federated_user_may_invite(self, event: EventBase) -> SpamAnswer:
        denial = federation.check_remote_inviter(self._allowed_servers, event.sender)
        if denial is None:
            return NOT_SPAM
        return self._refuse(denial, user=event.sender, room=event.room_id)

    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> SpamAnswer:
        joined = await self._joined_members(room_id)
        if joined:
            denial = federation.check_room_members(self._allowed_servers, joined)
        elif not is_invited:
            denial = federation.check_uninvited_unknown_room()
        else:
            # A first join into a remote room, on an invite from an allowed
            # server: the members are known only once the join is through.
            denial = None
            self._api.run_as_background_process(
                "police_policy_check_remote_join", self._undo_join_with_foreign_members, user_id, room_id
            )
        if denial is None:
            return NOT_SPAM
        return self._refuse(denial, user=user_id, room=room_id)

    async def _joined_members(self, room_id: str) -> list[str]:
        """Members as Synapse sees them, plus foreign members whose join was dropped."""
        return await self._members_in_state(room_id) + await self._foreign_members.foreign_members(room_id)

    async def _members_in_state(self, room_id: str) -> list[str]:
        members = await self._api.get_room_state(room_id, [(MEMBER, None)])
        return [event.state_key for event in members.values() if event.membership == "join"]

    async def _undo_join_with_foreign_members(self, user_id: str, room_id: str) -> None:
        """Wait for a remote join to land, then leave again if a member's server is
        not allowed. Only the state the join brought counts: a foreign user who
        joins later does not push our user out (their events are dropped)."""
        for _ in range(REMOTE_JOIN_CHECKS):
            await self._api.sleep(REMOTE_JOIN_CHECK_INTERVAL_S)
            joined = await self._members_in_state(room_id)
            if user_id not in joined:
                continue
            denial = federation.check_room_members(self._allowed_servers, joined)
            if denial is not None:
                self._decisions.deny(denial, user=user_id, room=room_id)
                await self._api.update_room_membership(user_id, user_id, room_id, "leave")
            return

    def refuse_remote_knock(self, user_id: str, room_id: str) -> SynapseError | None:
        """Synapse knocks remotely only on rooms this server is not in."""
        denial = federation.check_knock_on_unknown_room()
        self._decisions.deny(denial, user=user_id, room=room_id)
        return denial.as_error()

    def refuse_federation_origin(self, origin: str) -> Denial | None:
        """Every inbound federation request: one set lookup. Logged once per
        server and minute (a hostile server retries), counted every time."""
        denial = federation.check_origin(self._allowed_servers, origin)
        if denial is not None:
            self._decisions.deny(denial, user=None, server=origin, throttle=origin)
        return denial

    def refuse_federation_destination(self, destination: str) -> Denial | None:
        """Every outbound federation request; the user whose request caused it,
        where there is one (a profile or key lookup)."""
        denial = federation.check_destination(self._allowed_servers, destination)
        if denial is not None:
            self._decisions.deny(denial, user=current_requester(), server=destination, throttle=destination)
        return denial

    def refuse_remote_media(self, server_name: str) -> SynapseError | None:
        denial = federation.check_media_origin(self._allowed_servers, server_name)
        if denial is None:
            return None
        self._decisions.deny(denial, user=None)
        return denial.as_error()

    async def is_user_allowed_to_upload_media_of_size(self, user_id: str, size: int) -> bool:
        """Before the body is stored: the declared length and the daily quota.
        Raising (rather than returning False) lets the answer say which limit."""
        uploaded = await self._media_usage.uploaded_today(user_id)
        denial = media.check_declared_size(self._config.media, size, uploaded)
        if denial is None:
            self._media_usage.admitted(user_id, size)
            return True
        self._decisions.deny(denial, user=user_id)
        raise denial.as_error()

    async def check_media_file_for_spam(self, file: ReadableFileWrapper, info: FileInfo) -> SpamAnswer:
        """Every stored file, uploaded here or fetched from another server, by
        what its bytes are. Thumbnails Synapse makes itself are exempt. Raising
        gives the uploader the reason; Synapse then deletes the file and writes
        no database row."""
        if info.thumbnail is not None:
            return NOT_SPAM
        sniffed = await self._api.defer_to_thread(sniff, file.path, self._config.media)
        denial = media.check_file(self._config.media, sniffed)
        if denial is None:
            return NOT_SPAM
        self._decisions.deny(
            denial,
            user=current_requester(),
            media=f"{info.server_name or self._api.server_name}/{info.file_id}",
        )
        raise denial.as_error()

    async def user_may_publish_room(self, user_id: str, room_id: str) -> SpamAnswer:
        return self._refuse(rooms.check_directory_publication(), user=user_id, room=room_id)

    async def check_username_for_spam(self, user_profile: UserProfile, requester_id: str) -> bool:
        """The user directory (Element's "Start chat" search) leaves out the
        service users: they are members of every room, not chat partners. They
        stay visible as room members; a full user ID still finds their profile."""
        return user_profile["user_id"] in self._hidden_from_directory
