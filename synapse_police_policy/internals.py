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
- Whether a database transaction runs on PostgreSQL, where the schema
  migration takes an advisory lock (``test_workers.py``: main and workers
  start together).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from synapse.api.errors import SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.logging.context import LoggingContext, current_context
from synapse.module_api import ModuleApi
from synapse.storage.engines import PostgresEngine

logger = logging.getLogger(__name__)

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

    repository.get_remote_media = guarded_get_remote_media
    repository.get_remote_media_info = guarded_get_remote_media_info
    return True


def guard_remote_knocks(api: ModuleApi, refuse: Callable[[str, str], SynapseError | None]) -> None:
    """Wrap this process's room member handler: ``refuse(user_id, room_id)``
    runs before a knock leaves for another server. Workers knock through
    their own handler (then replication), so each process wraps its own."""
    handler = api._hs.get_room_member_handler()
    remote_knock = handler.remote_knock

    async def guarded_remote_knock(
        requester: Any, remote_room_hosts: list[str], room_id: str, user: Any, content: dict
    ) -> tuple[str, int]:
        error = refuse(user.to_string(), room_id)
        if error is not None:
            raise error
        return await remote_knock(requester, remote_room_hosts, room_id, user, content)

    handler.remote_knock = guarded_remote_knock  # type: ignore[method-assign]


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
    if isinstance(context, LoggingContext):
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

    handler.purge_history = counted_purge_history
