"""The admin HTTP API for the MDM and operators, under ``/_synapse/client/police/v1/``.

Callers are Synapse server admins on an enrolled device (``DeviceEnrollment.
require_admin``). Answers and errors are JSON; errors carry a Matrix
``errcode`` and a message naming the field that was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from synapse.api.errors import Codes, SynapseError
from synapse.http.server import DirectServeJsonResource
from synapse.http.servlet import parse_json_object_from_request
from synapse.http.site import SynapseRequest
from synapse.module_api import ModuleApi

from .devices import DeviceEnrollment
from .enrollment import ENROLLMENT_STATES, PENDING_STATES, InvalidInput
from .enrollment_store import Conflict

PREFIX = "/_synapse/client/police/v1"
MAX_IMPORT = 1000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Handler = Callable[[SynapseRequest, str, list[str]], Awaitable[tuple[int, Any]]]


def _bad(error: InvalidInput) -> SynapseError:
    return SynapseError(400, str(error), Codes.INVALID_PARAM)


def _query(request: SynapseRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf8")
    except UnicodeDecodeError:
        raise SynapseError(400, f"{name}: not valid UTF-8", Codes.INVALID_PARAM) from None


def _query_int(request: SynapseRequest, name: str, default: int, maximum: int) -> int:
    raw = _query(request, name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= maximum:
        raise SynapseError(
            400, f"{name}: expected an integer from 0 to {maximum}, got {raw!r}", Codes.INVALID_PARAM
        )
    return int(raw)


def _state(request: SynapseRequest, allowed: frozenset[str], default: str | None) -> str | None:
    state = _query(request, "state") or default
    if state == "all":
        return None
    if state is not None and state not in allowed:
        raise SynapseError(
            400,
            f"state: expected one of {', '.join(sorted(allowed))} or all, got {state!r}",
            Codes.INVALID_PARAM,
        )
    return state


class PoliceAdminResource(DirectServeJsonResource):
    isLeaf = True

    def __init__(self, api: ModuleApi, devices: DeviceEnrollment) -> None:
        super().__init__()
        self._api = api
        self._devices = devices
        # (method, path pattern) -> handler; groups are URL-decoded path segments
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("PUT", re.compile(r"^devices/([^/]+)/([^/]+)$"), self._enroll),
            ("DELETE", re.compile(r"^devices/([^/]+)/([^/]+)$"), self._revoke),
            ("POST", re.compile(r"^devices/import$"), self._import),
            ("GET", re.compile(r"^devices$"), self._list),
            ("GET", re.compile(r"^pending$"), self._pending),
            ("POST", re.compile(r"^pending/([^/]+)/(approve|reject)$"), self._decide),
        ]

    async def _async_render(self, request: SynapseRequest) -> tuple[int, Any]:
        path = request.path.decode("ascii", "replace")
        relative = path[len(PREFIX) :].strip("/") if path.startswith(PREFIX) else ""
        method = request.method.decode("ascii", "replace")
        matched_path = False
        for route_method, pattern, handler in self._routes:
            match = pattern.match(relative)
            if match is None:
                continue
            matched_path = True
            if route_method == method:
                requester = await self._api.get_user_by_req(request)
                actor = await self._devices.require_admin(requester)
                return await handler(request, actor, [unquote(group) for group in match.groups()])
        if matched_path:
            raise SynapseError(405, f"{method} is not supported on {path}", Codes.UNRECOGNIZED)
        raise SynapseError(404, f"No such endpoint: {path}", Codes.UNRECOGNIZED)

    async def _enroll(self, request: SynapseRequest, actor: str, args: list[str]) -> tuple[int, Any]:
        body = parse_json_object_from_request(request)
        try:
            record, created = await self._devices.enroll(actor, args[0], args[1], body)
        except InvalidInput as error:
            raise _bad(error) from None
        return 200, {"enrollment": record.to_json(), "created": created}

    async def _revoke(self, request: SynapseRequest, actor: str, args: list[str]) -> tuple[int, Any]:
        try:
            record = await self._devices.revoke(actor, args[0], args[1])
        except InvalidInput as error:
            raise _bad(error) from None
        if record is None:
            raise SynapseError(404, f"device {args[1]} of {args[0]} is not enrolled", Codes.NOT_FOUND)
        return 200, {"enrollment": record.to_json()}

    async def _import(self, request: SynapseRequest, actor: str, args: list[str]) -> tuple[int, Any]:
        body = parse_json_object_from_request(request)
        entries = body.get("devices")
        if not isinstance(entries, list):
            raise SynapseError(
                400, "devices: expected a list of {user_id, device_id, label}", Codes.INVALID_PARAM
            )
        if len(entries) > MAX_IMPORT:
            raise SynapseError(
                400,
                f"devices: at most {MAX_IMPORT} entries per request, got {len(entries)}",
                Codes.INVALID_PARAM,
            )
        results = await self._devices.import_devices(actor, entries)
        return 200, {"results": [result.to_json() for result in results]}

    async def _list(self, request: SynapseRequest, actor: str, args: list[str]) -> tuple[int, Any]:
        user_id = _query(request, "user_id")
        state = _state(request, ENROLLMENT_STATES, None)
        limit = _query_int(request, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        offset = _query_int(request, "from", 0, 2**31)
        records = await self._devices.store.list(user_id, state, limit + 1, offset)
        answer: dict[str, Any] = {"enrollments": [record.to_json() for record in records[:limit]]}
        if len(records) > limit:
            answer["next_from"] = str(offset + limit)
        return 200, answer

    async def _pending(self, request: SynapseRequest, actor: str, args: list[str]) -> tuple[int, Any]:
        state = _state(request, PENDING_STATES, "open")
        limit = _query_int(request, "limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        pending = await self._devices.store.list_pending(state, limit)
        return 200, {"pending": [entry.to_json() for entry in pending]}

    async def _decide(self, request: SynapseRequest, actor: str, args: list[str]) -> tuple[int, Any]:
        request_id, verb = args
        try:
            pending = await self._devices.decide(actor, request_id, verb == "approve")
        except Conflict as conflict:
            raise SynapseError(
                409,
                f"login request {request_id} is already {conflict.pending.state}; "
                "only open requests can be decided",
                Codes.UNKNOWN,
            ) from None
        if pending is None:
            raise SynapseError(404, f"no login request {request_id}", Codes.NOT_FOUND)
        return 200, {"pending": pending.to_json()}
