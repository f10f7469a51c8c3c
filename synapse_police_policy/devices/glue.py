"""Device enrollment applied to Synapse: the login gate, the event gate, the
operators' actions and the sweep. Rules and messages are in ``rules.py``;
the module's callbacks and the admin API call into ``DeviceEnrollment``."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
from synapse.api.errors import Codes, SynapseError
from synapse.config._base import ConfigError
from synapse.events import EventBase
from synapse.module_api import ModuleApi
from synapse.types import Requester

from ..api import login_link
from ..clock import now_ms
from ..config import DevicesConfig
from ..decisions import DecisionLog, Denial
from ..internals import delete_access_token, delete_devices
from . import rules as enrollment
from .rules import ENROLLED, EXPIRED, REVOKED, Enrollment, InvalidInput, PendingLogin
from .store import EnrollmentStore

logger = logging.getLogger(__name__)

#: how long a positive enrollment lookup is trusted by the event gate; a
#: revoked device loses its tokens at once, so this only spares queries
ACTIVE_CACHE_SECONDS = 30.0
ACTIVE_CACHE_MAX = 100_000
#: seconds between an approved login passing the gate and Synapse's login callback
APPROVAL_BINDING_SECONDS = 60.0
SWEEP_BATCH = 500
SWEEP_MAX_BATCHES = 20
SWEEP_ACTOR = "sweep"
#: who approved a login of devices.auto_approve_users from devices.auto_approve_networks
AUTO_APPROVE_ACTOR = "auto_approve"


@attrs.frozen
class _AwaitingDevice:
    """An approved stock-client login between the gate and device creation."""

    approval: PendingLogin
    known_before: frozenset[str]
    deadline: float


@attrs.frozen
class ImportResult:
    index: int
    error: InvalidInput | None = None
    created: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.error is None:
            return {"index": self.index, "ok": True, "created": self.created}
        return {
            "index": self.index,
            "ok": False,
            "errcode": Codes.INVALID_PARAM,
            "field": self.error.field,
            "error": str(self.error),
        }


class DeviceEnrollment:
    def __init__(
        self, config: DevicesConfig, api: ModuleApi, store: EnrollmentStore, log: DecisionLog
    ) -> None:
        for user_id in sorted(config.auto_approve_users):
            if not api.is_mine(user_id):
                raise ConfigError(
                    f"devices.auto_approve_users: expected users of this server ({api.server_name}), "
                    f"got {user_id!r}",
                    path=("devices", "auto_approve_users"),
                )
        self._config = config
        self._api = api
        self._store = store
        self._log = log
        self._active: OrderedDict[tuple[str, str], tuple[int | None, float]] = OrderedDict()
        self._awaiting: dict[str, _AwaitingDevice] = {}

    @property
    def store(self) -> EnrollmentStore:
        return self._store

    # -- gates -------------------------------------------------------------

    async def check_login(
        self, user_id: str, device_id: str | None, request_info: Sequence[tuple[str | None, str]]
    ) -> Denial | None:
        user_agent, ip = request_info[0] if request_info else (None, "")
        address = enrollment.parse_ip(ip)
        ip = str(address) if address is not None else ip
        denial = enrollment.check_login_network(self._config.login_networks, ip)
        if denial is None and self._config.enrollment_required:
            denial = await self._check_login_device(user_id, device_id, ip, (user_agent or "")[:256])
        if denial is not None:
            self._log.deny(denial, user=user_id, device=device_id)
        return denial

    async def _check_login_device(
        self, user_id: str, device_id: str | None, ip: str, user_agent: str
    ) -> Denial | None:
        now = now_ms()
        if device_id is not None:
            record = await self._store.get(user_id, device_id)
            if record is not None and record.is_active(now):
                self._remember_active(record)
                if not await self._store.device_in_use(user_id, device_id):
                    return None  # the first login claims the device
                pending = await self._store.record_pending(user_id, device_id, ip, user_agent, now)
                return enrollment.device_in_use(user_id, device_id, pending.request_id)
            if record is not None:
                # A revoked or expired phone gets no request an operator could
                # approve by mistake: enrolling it again must be deliberate.
                return enrollment.enrollment_ended(record)
        else:
            approval = await self._store.consume_approval(
                user_id, ip, user_agent, now, self._config.approval_window * 1000
            )
            if approval is None and enrollment.auto_approves(
                self._config.auto_approve_networks, self._config.auto_approve_users, user_id, ip
            ):
                approval = await self._store.record_auto_approval(
                    user_id, ip, user_agent, AUTO_APPROVE_ACTOR, now
                )
                self._log.record(
                    "auto_approve_login",
                    actor=AUTO_APPROVE_ACTOR,
                    user=user_id,
                    device=None,
                    request_id=approval.request_id,
                    ip=ip,
                )
            if approval is not None:
                known = frozenset(await self._store.user_devices(user_id))
                self._awaiting[user_id] = _AwaitingDevice(
                    approval, known, time.monotonic() + APPROVAL_BINDING_SECONDS
                )
                return None
        if device_id is not None:
            pending = await self._store.record_pending(user_id, device_id, ip, user_agent, now)
            return enrollment.device_not_enrolled(user_id, device_id, pending.request_id)
        # A stock client: the answer links to a page that shows the request code
        # (Element shows no server message at login, see AwaitingApproval).
        token = enrollment.new_link_token()
        pending = await self._store.record_pending(
            user_id, None, ip, user_agent, now, enrollment.link_token_hash(token)
        )
        return enrollment.login_awaits_approval(
            user_id, pending.request_id, login_link(self._api.public_baseurl, token)
        )

    async def pending_for_link(self, token: str) -> tuple[PendingLogin, str] | None:
        """The request behind a login link and what its page shows, or None
        for an unknown token or a request that is no longer open or approved."""
        if not enrollment.is_link_token(token):
            return None
        pending = await self._store.pending_by_link(enrollment.link_token_hash(token))
        if pending is None:
            return None
        shows = enrollment.link_shows(pending, now_ms(), self._config.approval_window * 1000)
        return (pending, shows) if shows is not None else None

    async def on_user_login(self, user_id: str) -> None:
        """Synapse just created the device of a login; enroll it when the login
        was an approved stock-client login."""
        awaiting = self._awaiting.pop(user_id, None)
        if awaiting is None or awaiting.deadline < time.monotonic():
            return
        enrolled = [record.device_id for record in await self._store.list(user_id, ENROLLED, 10_000, 0)]
        device_id = enrollment.candidate_devices_for_approval(
            await self._store.devices_by_newest_token(user_id), enrolled, awaiting.known_before
        )
        if device_id is None:
            logger.warning("Approved login %s of %s created no device", awaiting.approval.request_id, user_id)
            return
        record = await self._store.bind(awaiting.approval, device_id, now_ms())
        self._remember_active(record)
        self._log.record(
            "enroll",
            actor=record.enrolled_by,
            user=user_id,
            device=device_id,
            request_id=awaiting.approval.request_id,
        )

    async def check_event(self, event: EventBase) -> Denial | None:
        """Events of local users from devices that are not enrolled. Events the
        server makes itself (module, admin API, appservices) carry no device."""
        if not self._config.enrollment_required:
            return None
        device_id = getattr(event.internal_metadata, "device_id", None)
        if device_id is None or await self.is_active(event.sender, device_id):
            return None
        denial = enrollment.event_from_unenrolled_device(event.sender, device_id)
        self._log.deny(denial, user=event.sender, device=device_id, room=event.room_id)
        return denial

    async def check_request(self, requester: Requester, path: str) -> Denial | None:
        """Every authenticated client request: a device nobody enrolled may only log out.

        Refused when the request comes, not when the sweep finds the device: until then
        it could upload media, send to-device messages or change the profile."""
        if requester.app_service_id is not None or enrollment.allowed_without_enrollment(path):
            return None
        user_id = requester.user.to_string()
        if await self.is_active(user_id, requester.device_id):
            return None
        denial = enrollment.request_from_unenrolled_device(user_id, requester.device_id)
        self._log.deny(
            denial, user=user_id, device=requester.device_id, throttle=(user_id, requester.device_id)
        )
        return denial

    async def check_device_keys(self, user_id: str, device_id: str, device_keys: Any) -> Denial | None:
        """A key upload for a device: its identity keys are those it uploaded first."""
        if not isinstance(device_keys, dict):
            return None  # Synapse refuses malformed uploads itself
        stored = await self._store.stored_device_keys(user_id, device_id)
        if stored is None:
            return None
        denial = enrollment.check_identity_keys(
            user_id,
            device_id,
            enrollment.identity_keys(stored, device_id),
            enrollment.identity_keys(device_keys, device_id),
        )
        if denial is not None:
            self._log.deny(denial, user=user_id, device=device_id)
        return denial

    async def is_active(self, user_id: str, device_id: str | None) -> bool:
        if device_id is None:
            return False
        key = (user_id, device_id)
        cached = self._active.get(key)
        if cached is not None:
            expires_at, cached_at = cached
            if time.monotonic() - cached_at < ACTIVE_CACHE_SECONDS and (
                expires_at is None or expires_at > now_ms()
            ):
                return True
            del self._active[key]
        record = await self._store.get(user_id, device_id)
        if record is None or not record.is_active(now_ms()):
            return False
        self._remember_active(record)
        return True

    def _remember_active(self, record: Enrollment) -> None:
        key = (record.user_id, record.device_id)
        self._active[key] = (record.expires_at, time.monotonic())
        self._active.move_to_end(key)
        if len(self._active) > ACTIVE_CACHE_MAX:
            self._active.popitem(last=False)

    async def require_admin(self, requester: Requester) -> str:
        """The admin API's caller: a server admin on an enrolled device."""
        user_id = requester.user.to_string()
        if not await self._api.is_user_admin(user_id):
            raise SynapseError(403, f"{user_id} is not a server admin", Codes.FORBIDDEN)
        if self._config.enrollment_required and not await self.is_active(user_id, requester.device_id):
            denial = enrollment.unusable_admin_device(user_id, requester.device_id)
            self._log.deny(denial, user=user_id, device=requester.device_id)
            raise denial.as_error()
        return user_id

    # -- operators' actions --------------------------------------------------

    async def _existing_user(self, value: Any, field: str) -> str:
        user_id = enrollment.validate_user_id(value, self._api.server_name, field)
        if await self._api.check_user_exists(user_id) is None:
            raise InvalidInput(field, f"there is no user {user_id} on this server")
        return user_id

    async def enroll(self, actor: str, user_id: str, device_id: str, body: Any) -> tuple[Enrollment, bool]:
        user_id = await self._existing_user(user_id, "user_id")
        device_id = enrollment.validate_device_id(device_id)
        label, expires_at = enrollment.parse_enrollment_body(body, now_ms())
        record, created = await self._store.enroll(user_id, device_id, label, expires_at, actor, now_ms())
        self._remember_active(record)
        self._log.record(
            "enroll" if created else "update_enrollment",
            actor=actor,
            user=user_id,
            device=device_id,
            label=label,
            expires_at=expires_at,
        )
        return record, created

    async def import_devices(self, actor: str, entries: list[Any]) -> list[ImportResult]:
        """Enroll many at once: each entry is judged on its own, so one bad row
        of an MDM export holds up none of the others. Valid entries go in one
        transaction; the rules leave the database nothing to refuse, so a bad
        entry cannot fail the others there either. Each bad one is reported by
        its index and field and left out."""
        now = now_ms()
        results: list[ImportResult] = []
        valid: list[tuple[str, str, str, int | None]] = []
        known_users: dict[str, bool] = {}
        for index, entry in enumerate(entries):
            prefix = f"devices[{index}]."
            try:
                label, expires_at = enrollment.parse_enrollment_body(
                    entry, now, prefix=prefix, also=frozenset({"user_id", "device_id"})
                )
                user_id = enrollment.validate_user_id(
                    entry.get("user_id"), self._api.server_name, prefix + "user_id"
                )
                if user_id not in known_users:
                    known_users[user_id] = await self._api.check_user_exists(user_id) is not None
                if not known_users[user_id]:
                    raise InvalidInput(prefix + "user_id", f"there is no user {user_id} on this server")
                device_id = enrollment.validate_device_id(entry.get("device_id"), prefix + "device_id")
            except InvalidInput as error:
                results.append(ImportResult(index, error))
                continue
            results.append(ImportResult(index))
            valid.append((user_id, device_id, label, expires_at))
        outcomes = iter(await self._store.enroll_many(valid, actor, now) if valid else [])
        for position, result in enumerate(results):
            if result.error is None:
                record, created = next(outcomes)
                results[position] = ImportResult(result.index, created=created)
                if created:
                    self._log.record("enroll", actor=actor, user=record.user_id, device=record.device_id)
        return results

    async def revoke(
        self, actor: str, user_id: str, device_id: str, state: str = REVOKED
    ) -> Enrollment | None:
        """End an enrollment and delete the device with its tokens and keys."""
        user_id = enrollment.validate_user_id(user_id, self._api.server_name)
        device_id = enrollment.validate_device_id(device_id)
        record = await self._store.end(user_id, device_id, actor, now_ms(), state)
        if record is None:
            return None
        self._active.pop((user_id, device_id), None)
        await delete_devices(self._api, user_id, [device_id])
        self._log.record(
            "revoke" if state == REVOKED else "expire", actor=actor, user=user_id, device=device_id
        )
        return record

    async def decide(self, actor: str, request_id: str, approve: bool) -> PendingLogin | None:
        request_id = enrollment.validate_request_id(request_id)
        pending, record = await self._store.decide(request_id, approve, actor, now_ms())
        if pending is not None:
            self._log.record(
                "approve_login" if approve else "reject_login",
                actor=actor,
                user=pending.user_id,
                device=pending.device_id,
                request_id=request_id,
            )
        if record is not None:
            self._remember_active(record)
        if approve and pending is not None and pending.device_id is not None:
            await self._end_earlier_session(actor, pending)
        return pending

    async def _end_earlier_session(self, actor: str, pending: PendingLogin) -> None:
        """An approved login on a device that is in use (a wiped phone, a reinstalled
        app): the earlier session and its keys go, so the next login claims the device."""
        assert pending.device_id is not None
        if not await self._store.device_in_use(pending.user_id, pending.device_id):
            return
        await delete_devices(self._api, pending.user_id, [pending.device_id])
        self._log.record(
            "end_earlier_session",
            actor=actor,
            user=pending.user_id,
            device=pending.device_id,
            request_id=pending.request_id,
        )

    # -- sweep ------------------------------------------------------------------

    async def sweep(self) -> None:
        """Expire enrollments, remove devices nobody enrolled, cut device-less
        tokens and lapse old login requests. Runs on one process only; a step
        that fails is logged and does not keep the others from running."""
        counts = {}
        for name, step in (
            ("enrollments expired", self._expire_enrollments),
            ("non-enrolled devices removed", self._remove_unenrolled_devices),
            ("device-less access tokens deleted", self._delete_deviceless_tokens),
            ("login requests lapsed", self._lapse_pending),
        ):
            try:
                counts[name] = await step()
            except Exception:
                logger.exception("Device sweep: %s failed", name)
        if any(counts.values()):
            logger.info("Device sweep: %s", ", ".join(f"{count} {name}" for name, count in counts.items()))

    async def _expire_enrollments(self) -> int:
        expired = 0
        for record in await self._store.due_expiries(now_ms(), SWEEP_BATCH):
            if await self.revoke(SWEEP_ACTOR, record.user_id, record.device_id, EXPIRED) is not None:
                expired += 1
        return expired

    async def _delete_deviceless_tokens(self) -> int:
        tokens = await self._store.deviceless_tokens(SWEEP_BATCH)
        for user_id, token in tokens:
            await delete_access_token(self._api, token)
            self._log.record("delete_deviceless_token", actor=SWEEP_ACTOR, user=user_id, device=None)
        return len(tokens)

    async def _lapse_pending(self) -> int:
        return await self._store.lapse_pending(now_ms(), self._config.approval_window * 1000)

    async def _remove_unenrolled_devices(self) -> int:
        removed = 0
        for _ in range(SWEEP_MAX_BATCHES):
            found = await self._store.unenrolled_devices(SWEEP_BATCH)
            # An approved login's device exists a moment before it is enrolled,
            # on this process or on another worker.
            binding = set(self._awaiting)
            binding.update(await self._store.users_binding(now_ms() - int(APPROVAL_BINDING_SECONDS * 1000)))
            batch = [(user, device) for user, device in found if user not in binding]
            by_user: dict[str, list[str]] = {}
            for user_id, device_id in batch:
                by_user.setdefault(user_id, []).append(device_id)
            for user_id, device_ids in by_user.items():
                await delete_devices(self._api, user_id, device_ids)
                for device_id in device_ids:
                    self._log.record(
                        "remove_unenrolled_device", actor=SWEEP_ACTOR, user=user_id, device=device_id
                    )
            removed += len(batch)
            if len(found) < SWEEP_BATCH or not batch:
                break
        return removed
