"""The one place that reaches into Synapse's private objects.

Private APIs change between releases; a test pins each use:

- Synapse offers no module callback before it fetches remote media (the
  media spam check runs after the download). Guarding the media repository's
  two entry points for remote media keeps foreign media from being fetched at
  all (``test_federation.py::test_foreign_media_is_never_fetched``).
- The module API cannot delete a device. Synapse's device handler does what
  its admin API does: access tokens, E2E keys, pushers and pending to-device
  messages go, and the other users' servers and clients learn of the device
  list change (``test_enrollment_revocation.py``).
- ``ModuleApi.invalidate_access_token`` fails on Synapse 1.163 (it reads a
  ``Requester`` as a dict); the auth handler deletes a token as logout does
  (``test_enrollment_devices.py::test_tokens_without_a_device_are_cut_by_the_sweep``).
- Synapse deletes old media by last access only; the retention sweep picks
  media by upload (or fetch) time and removes files, thumbnails and rows with
  the media repository's own paths and store (``test_retention_sweep.py``).
- Synapse's retention purge jobs tell nobody which rooms they purged; the
  pagination handler's ``purge_history`` is wrapped to count them
  (``test_retention_sweep.py::test_audit_tier_purges_the_events_from_the_database``).
- Whether a room version lists creators in the power levels, and the
  server's default room version (``test_retention_rooms.py``).
- The media spam check is not told who uploaded the file; the request's
  logging context knows (``test_media_types.py::test_hostile_files_are_refused_by_content``).
- Synapse offers no module callback before a local user knocks on a room the
  server is not in; the room member handler's ``remote_knock`` is wrapped
  (``test_federation.py::test_our_users_cannot_knock_on_rooms_this_server_is_not_in``).
- Synapse offers no module callback for authenticated client requests: the
  auth object's ``get_user_by_req`` is wrapped, so a device nobody enrolled
  can only log out (``test_device_binding.py::test_a_device_nobody_enrolled_can_only_log_out``).
- Synapse replaces a device's identity keys on any ``/keys/upload`` and has no
  callback for it: the E2E keys handler's ``upload_device_keys_for_user`` is
  wrapped (``test_device_binding.py::test_identity_keys_cannot_be_replaced``).
- Synapse has no module callback for federation requests that are not
  events (profile, directory and key queries, device lists, EDUs such as
  to-device messages) and applies its own allowlist only where
  ``federation_domain_whitelist`` is set. The federation ``Authenticator``'s
  ``authenticate_request`` (every federation servlet's origin check, on every
  process) is wrapped, reading the claimed origin with ``_parse_auth_header``
  (``test_federation.py::test_a_foreign_server_is_refused_at_the_edge``), and
  so is the federation HTTP client's ``_send_request``, through which every
  outbound federation request of the process goes
  (``test_federation.py::test_our_server_sends_nothing_to_a_foreign_server``).
- A ``check_event_allowed`` module callback costs every event the room's whole
  state: once one is registered, Synapse loads every current state event of
  the room before it calls the callbacks (about 4 µs each: 20 ms a message in
  a room of 5,000 members). The module's event check needs the event only,
  so it wraps the third-party rules' ``check_event_allowed`` itself and runs
  first, at the same call sites (every event this process creates, and
  knocks received over federation) with no state loaded
  (``test_room_size.py::test_a_message_costs_the_same_in_a_large_room``, and
  the refusals it makes: ``test_retention_rooms.py``).
- Whether a database transaction runs on PostgreSQL, where the schema
  migration takes an advisory lock (``test_workers.py``: main and workers
  start together).
- Whether a redaction took effect is decided by Synapse when it reads the
  event; the retention sweep asks the event store, as Synapse's own censoring
  job does, and censors redacted state at the audit tier with the JSON that
  job would store (``redact_event``)
  (``test_retention_sweep.py::test_a_redaction_without_power_does_not_stop_the_sweep``,
  ``test_retention_inventory.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from synapse.api.errors import FederationDeniedError, SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import EventBase
from synapse.federation.transport.server._base import AuthenticationError, Authenticator, _parse_auth_header
from synapse.logging.context import LoggingContext, current_context
from synapse.module_api import ModuleApi
from synapse.storage.engines import PostgresEngine
from synapse.synapse_rust.events import redact_event
from synapse.types import Requester
from synapse.util.json import json_encoder

from .decisions import Denial

logger = logging.getLogger(__name__)

# Each ``# type: ignore[method-assign]`` below puts a wrapper in place of a
# Synapse method: that replacement is what this module is for (see above).
# mypy still checks the wrapper against the method's signature: a mismatch
# would be an [assignment] error, which those comments do not silence.

#: returns the error to raise when media of the given server must not be fetched
RemoteMediaGate = Callable[[str], SynapseError | None]


def guard_remote_media(api: ModuleApi, refuse: RemoteMediaGate) -> bool:
    """Wrap the media repository of this process; False where it has none."""
    hs = api._hs
    if not hs.config.media.can_load_media_repo:
        return False
    repository = hs.get_media_repository()
    get_remote_media = repository.get_remote_media
    get_remote_media_info = repository.get_remote_media_info

    async def guarded_get_remote_media(request: Any, server_name: str, *args: Any, **kwargs: Any) -> None:
        error = refuse(server_name)
        if error is not None:
            raise error
        return await get_remote_media(request, server_name, *args, **kwargs)

    async def guarded_get_remote_media_info(server_name: str, *args: Any, **kwargs: Any) -> Any:
        error = refuse(server_name)
        if error is not None:
            raise error
        return await get_remote_media_info(server_name, *args, **kwargs)

    repository.get_remote_media = guarded_get_remote_media  # type: ignore[method-assign]
    repository.get_remote_media_info = guarded_get_remote_media_info  # type: ignore[method-assign]
    return True


def guard_remote_knocks(api: ModuleApi, refuse: Callable[[str, str], SynapseError | None]) -> None:
    """Wrap this process's room member handler: ``refuse(user_id, room_id)``
    runs before a knock leaves for another server. Workers knock through
    their own handler (then replication), so each process wraps its own."""
    handler = api._hs.get_room_member_handler()
    remote_knock = handler.remote_knock

    async def guarded_remote_knock(
        requester: Any, remote_room_hosts: list[str], room_id: str, user: Any, content: dict[str, Any]
    ) -> tuple[str, int]:
        error = refuse(user.to_string(), room_id)
        if error is not None:
            raise error
        return await remote_knock(requester, remote_room_hosts, room_id, user, content)

    handler.remote_knock = guarded_remote_knock  # type: ignore[method-assign]


#: raises the SynapseError that refuses an event about to be created; returns to let it through
EventGate = Callable[[EventBase], Awaitable[None]]


def guard_new_events(api: ModuleApi, check: EventGate) -> None:
    """Wrap this process's third-party event rules' ``check_event_allowed``:
    ``check(event)`` runs where module ``check_event_allowed`` callbacks would,
    before the room's state is loaded for them (Synapse skips that load when
    no module registers such a callback). A SynapseError raised there reaches
    the client as the answer, as one raised by a callback does."""
    rules = api._hs.get_module_api_callbacks().third_party_event_rules
    check_event_allowed = rules.check_event_allowed

    async def guarded_check_event_allowed(
        event: EventBase, context: Any
    ) -> tuple[bool, dict[str, Any] | None]:
        await check(event)
        return await check_event_allowed(event, context)

    rules.check_event_allowed = guarded_check_event_allowed  # type: ignore[method-assign]


#: returns the denial for a client request of ``requester`` to ``path``, or None
RequestGate = Callable[[Requester, str], Awaitable[Denial | None]]
#: returns the denial for a ``device_keys`` upload of (user, device), or None
DeviceKeysGate = Callable[[str, str, Any], Awaitable[Denial | None]]


def guard_client_requests(api: ModuleApi, check: RequestGate) -> None:
    """Wrap this process's ``Auth.get_user_by_req``: every servlet that needs an
    access token (the client API, media, Synapse's admin API, the module's own
    resources) asks it who is calling, so ``check`` sees each authenticated
    request before its handler runs. Synapse offers no module callback there."""
    auth = api._hs.get_auth()
    get_user_by_req = auth.get_user_by_req

    async def guarded_get_user_by_req(request: Any, *args: Any, **kwargs: Any) -> Requester:
        requester = await get_user_by_req(request, *args, **kwargs)
        denial = await check(requester, request.path.decode("ascii", "replace"))
        if denial is not None:
            raise denial.as_error()
        return requester

    auth.get_user_by_req = guarded_get_user_by_req  # type: ignore[method-assign]


def guard_device_keys(api: ModuleApi, check: DeviceKeysGate) -> None:
    """Wrap this process's E2E keys handler, through which every ``/keys/upload``
    stores a device's identity keys (workers store them themselves). Synapse
    replaces a device's keys on any upload and has no module callback for it."""
    handler = api._hs.get_e2e_keys_handler()
    upload_device_keys_for_user = handler.upload_device_keys_for_user

    async def guarded_upload_device_keys_for_user(user_id: str, device_id: str, keys: Any) -> None:
        denial = await check(user_id, device_id, keys.get("device_keys") if isinstance(keys, dict) else None)
        if denial is not None:
            raise denial.as_error()
        await upload_device_keys_for_user(user_id=user_id, device_id=device_id, keys=keys)

    handler.upload_device_keys_for_user = guarded_upload_device_keys_for_user  # type: ignore[method-assign]


async def delete_devices(api: ModuleApi, user_id: str, device_ids: list[str]) -> None:
    """Delete devices as Synapse's admin API does (missing ones are skipped)."""
    await api._hs.get_device_handler().delete_devices(user_id, device_ids)


async def delete_access_token(api: ModuleApi, token: str) -> None:
    """Delete one access token as a logout does (an unknown token is skipped)."""
    try:
        await api._hs.get_auth_handler().delete_access_token(token)
    except SynapseError as error:
        if error.code != 401:
            raise


def current_requester() -> str | None:
    """The user (or, for federation, the server) whose request is being served."""
    context = current_context()
    if isinstance(context, LoggingContext) and context.request is not None:
        return context.request.requester
    return None


def runs_on_postgres(txn: Any) -> bool:
    return isinstance(txn.database_engine, PostgresEngine)


def _media_repository_here(api: ModuleApi) -> bool:
    """Media are deleted by the process that runs the background tasks; it
    needs the media repository (media stay on the main process or on that one)."""
    if api._hs.config.media.can_load_media_repo:
        return True
    logger.warning(
        "This process runs the background tasks but not the media repository, so expired media "
        "are not deleted: run background tasks where the media repository runs"
    )
    return False


async def delete_local_media(api: ModuleApi, media_ids: list[str]) -> int:
    """Remove local media files, their thumbnails and rows; returns how many."""
    hs = api._hs
    if not _media_repository_here(api):
        return 0
    _, count = await hs.get_media_repository().delete_local_media_ids(media_ids)
    return count


def creators_have_unlimited_power(api: ModuleApi, room_version: str | None) -> bool:
    """Whether rooms of this version (default: the server's) leave creators out
    of the power levels' ``users`` (room version 12 and later)."""
    hs = api._hs
    version = KNOWN_ROOM_VERSIONS.get(room_version or "") or hs.config.server.default_room_version
    return bool(version.msc4289_creator_power_enabled)


async def delete_remote_media(api: ModuleApi, cached: list[tuple[str, str, str]]) -> int:
    """Remove cached copies of other servers' media, given as (origin, media ID,
    file ID): files, thumbnails and rows; returns how many."""
    hs = api._hs
    if not _media_repository_here(api):
        return 0
    repository = hs.get_media_repository()
    for origin, media_id, file_id in cached:
        with contextlib.suppress(FileNotFoundError):
            os.remove(repository.filepaths.remote_media_filepath(origin, file_id))
        shutil.rmtree(repository.filepaths.remote_media_thumbnail_dir(origin, file_id), ignore_errors=True)
        await hs.get_datastores().main.delete_remote_media(origin, media_id)
    return len(cached)


def count_history_purges(api: ModuleApi, purged: Callable[[str], None]) -> None:
    """Call ``purged(room_id)`` after each successful history purge (retention
    purge jobs and the admin API both go through the pagination handler)."""
    handler = api._hs.get_pagination_handler()
    purge_history = handler.purge_history

    async def counted_purge_history(room_id: str, *args: Any, **kwargs: Any) -> str | None:
        error = await purge_history(room_id, *args, **kwargs)
        if error is None:
            purged(room_id)
        return error

    handler.purge_history = counted_purge_history  # type: ignore[method-assign]


# --- Closed federation at the transport (both directions) ---------------------

#: returns the denial for federation with the given server, or None
FederationGate = Callable[[str], Denial | None]

#: this process's inbound gate per server name (``Authenticator`` is wrapped
#: once per process, at class level: its instances appear only when the
#: listeners start, after the modules are loaded)
_ORIGIN_GATES: dict[str, FederationGate] = {}


class FederationRefused(FederationDeniedError):
    """Synapse's own refusal (403 ``M_FORBIDDEN``), which its callers already
    expect (transaction queues drop, device-list resyncs give up, key fetches
    move on), carrying the module's reason."""

    def __init__(self, server: str, denial: Denial) -> None:
        SynapseError.__init__(self, denial.http_status, denial.reason, denial.errcode)
        self.destination = server


def _claimed_origins(request: Any) -> list[str]:
    """The servers an inbound request's ``X-Matrix`` headers name, before their
    signatures are checked; [] when one is malformed (Synapse refuses those)."""
    origins = []
    for header in request.requestHeaders.getRawHeaders(b"Authorization") or []:
        if header.startswith(b"X-Matrix"):
            try:
                origins.append(_parse_auth_header(header)[0])
            except AuthenticationError:
                return []
    return origins


def guard_federation_origins(api: ModuleApi, refuse: FederationGate) -> None:
    """Refuse every authenticated federation request (all servlets, EDUs in
    transactions included) from a server ``refuse`` denies, before its
    signature is checked and before any handler runs. Synapse applies
    ``federation_domain_whitelist`` at the same place."""
    _ORIGIN_GATES[api.server_name] = refuse
    if getattr(Authenticator.authenticate_request, "police_policy_guard", False):
        return
    authenticate_request = Authenticator.authenticate_request

    async def guarded_authenticate_request(self: Authenticator, request: Any, content: Any) -> str:
        gate = _ORIGIN_GATES.get(self.server_name)
        if gate is not None:
            for origin in _claimed_origins(request):
                denial = gate(origin)
                if denial is not None:
                    raise FederationRefused(origin, denial)
        return await authenticate_request(self, request, content)

    # a function attribute: marks Synapse's method as wrapped already (checked above)
    guarded_authenticate_request.police_policy_guard = True  # type: ignore[attr-defined]
    Authenticator.authenticate_request = guarded_authenticate_request  # type: ignore[method-assign]


def guard_federation_destinations(api: ModuleApi, refuse: FederationGate) -> None:
    """Send no federation request (transactions, queries, key and media
    fetches, joins) to a server ``refuse`` denies: all of them leave this
    process through the one federation HTTP client's ``_send_request``."""
    client = api._hs.get_federation_http_client()
    send_request = client._send_request

    async def guarded_send_request(request: Any, *args: Any, **kwargs: Any) -> Any:
        denial = refuse(request.destination)
        if denial is not None:
            raise FederationRefused(request.destination, denial)
        return await send_request(request, *args, **kwargs)

    client._send_request = guarded_send_request  # type: ignore[method-assign]


# --- Retention: which redactions took effect, and censoring at the audit tier --


async def redacted_events(api: ModuleApi, event_ids: Collection[str]) -> set[str]:
    """The events Synapse hands out redacted. A row in ``redactions`` is not
    enough: from room version 3 on, a redaction by someone without the power
    to redact is stored, yet applied only when both senders share a server;
    Synapse decides when it reads the event, as its own censoring job does."""
    if not event_ids:
        return set()
    events = await api._hs.get_datastores().main.get_events(list(event_ids), allow_rejected=True)
    return {event_id for event_id, event in events.items() if event.internal_metadata.is_redacted()}


async def pruned_json_of_redacted(api: ModuleApi, event_ids: Collection[str]) -> dict[str, str]:
    """event ID -> the JSON Synapse's censoring job would store for it, for the
    given events that are redacted (the others are left out)."""
    if not event_ids:
        return {}
    events = await api._hs.get_datastores().main.get_events(list(event_ids), allow_rejected=True)
    return {
        event_id: json_encoder.encode(redact_event(event).get_pdu_json())
        for event_id, event in events.items()
        if event.internal_metadata.is_redacted()
    }
