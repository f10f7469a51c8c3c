"""The admin HTTP API for the MDM and operators, under ``/_synapse/client/police/v1/``.

Callers are Synapse server admins on an enrolled device (``DeviceEnrollment.
require_admin``). Answers and errors are JSON; errors carry a Matrix
``errcode`` and a message naming the field that was wrong. Input never gets a
5xx: every path segment, query parameter and body field is checked here or by
the rules in ``rules.py`` before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import unquote_to_bytes

from synapse.api.errors import Codes, SynapseError
from synapse.http.server import DirectServeJsonResource
from synapse.http.servlet import parse_json_object_from_request
from synapse.http.site import SynapseRequest
from synapse.module_api import ModuleApi

from ..api import ADMIN_PREFIX
from ..decisions import quote
from .glue import DeviceEnrollment
from .rules import (
    ENROLLMENT_STATES,
    PENDING_STATES,
    InvalidInput,
    field_name,
    parse_whole_number,
    validate_request_id,
    validate_user_id,
)
from .store import Conflict

MAX_IMPORT = 1000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: far past any registry's size; keeps OFFSET a small number
MAX_OFFSET = 2**31
#: Synapse reads the access token from this query parameter too
_AUTH_PARAMETERS = frozenset({"access_token"})

#: a handler gets the request, the acting admin and the decoded path segments by name
Handler = Callable[[SynapseRequest, str, dict[str, str]], Awaitable[tuple[int, Any]]]


def _bad(error: InvalidInput) -> SynapseError:
    return SynapseError(400, str(error), Codes.INVALID_PARAM)


class Query:
    """The query parameters an endpoint reads, checked once: only known names
    (a typo such as ``?user=`` must not list everyone), each at most once, UTF-8."""

    def __init__(self, request: SynapseRequest, names: frozenset[str]) -> None:
        self._values: dict[str, str] = {}
        for raw_name, values in (request.args or {}).items():
            name = raw_name.decode("utf8", "backslashreplace")
            if name in _AUTH_PARAMETERS:
                continue
            if name not in names:
                expected = f"expected {', '.join(sorted(names))}" if names else "this endpoint takes none"
                raise InvalidInput(field_name(name), f"unknown query parameter; {expected}")
            if len(values) != 1:
                raise InvalidInput(name, "given more than once; give it once")
            try:
                self._values[name] = values[0].decode("utf8")
            except UnicodeDecodeError:
                raise InvalidInput(name, "not valid UTF-8 (percent-encode the UTF-8 bytes)") from None

    def text(self, name: str) -> str | None:
        return self._values.get(name)

    def whole_number(self, name: str, default: int, minimum: int, maximum: int) -> int:
        """The one contract of an integer query parameter: ``parse_whole_number``."""
        raw = self._values.get(name)
        return default if raw is None else parse_whole_number(raw, name, minimum, maximum)

    def state(self, allowed: Collection[str], default: str | None) -> str | None:
        """``state``: one of ``allowed``, or ``all`` for no filter (None)."""
        state = self._values.get("state", default)
        if state == "all":
            return None
        if state is not None and state not in allowed:
            raise InvalidInput(
                "state", f"expected one of {', '.join(sorted(allowed))} or all, got {quote(state)}"
            )
        return state


def _segments(match: re.Match[str]) -> dict[str, str]:
    """Path segments by name, percent-decoded as UTF-8 (invalid bytes are refused,
    not replaced: a device ID must be the one the caller meant)."""
    segments = {}
    for name, raw in match.groupdict().items():
        try:
            segments[name] = unquote_to_bytes(raw).decode("utf8")
        except UnicodeDecodeError:
            raise InvalidInput(name, "not valid UTF-8 once percent-decoded") from None
    return segments


def _no_fields(request: SynapseRequest) -> None:
    """A decision takes no body, or an empty JSON object."""
    body = parse_json_object_from_request(request, allow_empty_body=True)
    if body:
        raise InvalidInput(field_name(sorted(body)[0]), "unknown field; this call takes an empty object")


class PoliceAdminResource(DirectServeJsonResource):
    isLeaf = True

    def __init__(self, api: ModuleApi, devices: DeviceEnrollment) -> None:
        super().__init__()
        self._api = api
        self._devices = devices
        device = r"devices/(?P<user_id>[^/]+)/(?P<device_id>[^/]+)"
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("PUT", re.compile(device), self._enroll),
            ("DELETE", re.compile(device), self._revoke),
            ("POST", re.compile(r"devices/import"), self._import),
            ("GET", re.compile(r"devices"), self._list),
            ("GET", re.compile(r"pending"), self._pending),
            ("POST", re.compile(r"pending/(?P<request_id>[^/]+)/approve"), self._approve),
            ("POST", re.compile(r"pending/(?P<request_id>[^/]+)/reject"), self._reject),
        ]

    async def _async_render(self, request: SynapseRequest) -> tuple[int, Any]:
        try:
            path = request.path.decode("ascii")
        except UnicodeDecodeError:
            raise SynapseError(
                400, "the path must be ASCII: percent-encode user and device IDs", Codes.INVALID_PARAM
            ) from None
        relative = path[len(ADMIN_PREFIX) :].strip("/") if path.startswith(ADMIN_PREFIX) else ""
        method = request.method.decode("ascii", "replace")
        matched_path = False
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(relative)
            if match is None:
                continue
            matched_path = True
            if route_method == method:
                requester = await self._api.get_user_by_req(request)
                actor = await self._devices.require_admin(requester)
                try:
                    return await handler(request, actor, _segments(match))
                except InvalidInput as error:
                    raise _bad(error) from None
        if matched_path:
            raise SynapseError(405, f"{method} is not supported on {path}", Codes.UNRECOGNIZED)
        raise SynapseError(404, f"No such endpoint: {path}", Codes.UNRECOGNIZED)

    async def _enroll(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        Query(request, frozenset())
        body = parse_json_object_from_request(request)
        record, created = await self._devices.enroll(actor, args["user_id"], args["device_id"], body)
        return 200, {"enrollment": record.to_json(), "created": created}

    async def _revoke(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        Query(request, frozenset())
        user_id, device_id = args["user_id"], args["device_id"]
        record = await self._devices.revoke(actor, user_id, device_id)
        if record is None:
            raise SynapseError(
                404, f"device {quote(device_id)} of {user_id} is not enrolled", Codes.NOT_FOUND
            )
        return 200, {"enrollment": record.to_json()}

    async def _import(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        """Each entry is judged on its own (``DeviceEnrollment.import_devices``);
        a request that is wrong as a whole gets a 400 and enrolls nothing."""
        Query(request, frozenset())
        body = parse_json_object_from_request(request)
        unknown = sorted(key for key in body if key != "devices")
        if unknown:
            raise InvalidInput(field_name(unknown[0]), "unknown field; expected devices")
        entries = body.get("devices")
        if not isinstance(entries, list):
            raise InvalidInput(
                "devices",
                f"expected a list of {{user_id, device_id, label, expires_at}}, got {quote(entries)}",
            )
        if len(entries) > MAX_IMPORT:
            raise InvalidInput(
                "devices",
                f"at most {MAX_IMPORT} entries per request, got {len(entries)}; send smaller batches",
            )
        results = await self._devices.import_devices(actor, entries)
        return 200, {"results": [result.to_json() for result in results]}

    async def _list(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        query = Query(request, frozenset({"user_id", "state", "limit", "from"}))
        user_id = query.text("user_id")
        if user_id is not None:
            user_id = validate_user_id(user_id, self._api.server_name)
        state = query.state(ENROLLMENT_STATES, None)
        limit = query.whole_number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = query.whole_number("from", 0, 0, MAX_OFFSET)
        records = await self._devices.store.list(user_id, state, limit + 1, offset)
        answer: dict[str, Any] = {"enrollments": [record.to_json() for record in records[:limit]]}
        if len(records) > limit:
            answer["next_from"] = str(offset + limit)
        return 200, answer

    async def _pending(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        query = Query(request, frozenset({"state", "limit"}))
        state = query.state(PENDING_STATES, "open")
        limit = query.whole_number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        pending = await self._devices.store.list_pending(state, limit)
        return 200, {"pending": [entry.to_json() for entry in pending]}

    async def _approve(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        return await self._decide(request, actor, args["request_id"], approve=True)

    async def _reject(self, request: SynapseRequest, actor: str, args: dict[str, str]) -> tuple[int, Any]:
        return await self._decide(request, actor, args["request_id"], approve=False)

    async def _decide(
        self, request: SynapseRequest, actor: str, request_id: str, *, approve: bool
    ) -> tuple[int, Any]:
        Query(request, frozenset())
        _no_fields(request)
        try:
            request_id = validate_request_id(request_id)
        except InvalidInput:
            # A path that names no request: 404, like an unknown one, saying what IDs look like.
            raise SynapseError(
                404,
                f"no login request {quote(request_id)}: request IDs look like K7Q2-M9XD (see GET pending)",
                Codes.NOT_FOUND,
            ) from None
        try:
            pending = await self._devices.decide(actor, request_id, approve)
        except Conflict as conflict:
            raise SynapseError(
                409,
                f"login request {conflict.pending.request_id} is already {conflict.pending.state}; "
                "only open requests can be decided",
                Codes.UNKNOWN,
            ) from None
        if pending is None:
            raise SynapseError(404, f"no login request {quote(request_id)}", Codes.NOT_FOUND)
        return 200, {"pending": pending.to_json()}
