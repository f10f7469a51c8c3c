"""Denials and how they become visible: one JSON log line and one counter each.

Every rule of the module returns a ``Denial`` instead of raising, so the rule
stays a pure function and this file is the one place that decides what a
denial looks like in the log, in the metrics and on the wire.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import Counter

if TYPE_CHECKING:
    from synapse.api.errors import SynapseError

DECISION_LOGGER = logging.getLogger("synapse_police_policy.decisions")

#: Exposed on Synapse's metrics listener (prometheus_client's default registry,
#: which Synapse serves). The server_name label follows Synapse's convention for
#: several homeservers sharing one process.
DENIALS = Counter(
    "police_policy_denials",
    "Requests and events refused by the police policy module, by rule",
    labelnames=["rule", "server_name"],
)
REWRITES = Counter(
    "police_policy_rewrites",
    "Settings of room creation requests the police policy module replaced by its own values, by rule",
    labelnames=["rule", "server_name"],
)
RETENTION_FAILURES = Counter(
    "police_policy_retention_failures",
    "Attempts of the retention sweep to redact an expired event that failed, by kind "
    "(forbidden, not_in_room, refused, error); each attempt counts, retries too",
    labelnames=["kind", "server_name"],
)

#: Values quoted from requests are cut to this length in reasons and logs.
_QUOTE_LIMIT = 64


def quote(value: Any) -> str:
    """A short, safe rendering of a client-supplied value for a reason text."""
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."


@attrs.frozen
class Denial:
    """Why something was refused. ``reason`` goes to the client and the log,
    so it names the rule and the offending setting, never message content."""

    rule: str
    reason: str
    errcode: str = "M_FORBIDDEN"
    http_status: int = 403

    def error_fields(self) -> dict[str, str]:
        """Extra fields for Synapse's spam-checker error tuple (overrides its message)."""
        return {"error": self.reason}

    def as_error(self) -> SynapseError:
        # Synapse's: imported here, so the bots can judge media by the same rules without it
        from synapse.api.errors import SynapseError

        return SynapseError(self.http_status, self.reason, self.errcode)


#: a denial given a ``throttle`` key is logged at most once per key in this many seconds
THROTTLE_WINDOW_SECONDS = 60.0
_THROTTLE_KEYS_KEPT = 10_000


class _OncePerWindow:
    """Which keys were seen within the window; bounded, oldest forgotten first."""

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def first_in_window(self, key: Hashable) -> bool:
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen < self._window:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        if len(self._seen) > _THROTTLE_KEYS_KEPT:
            self._seen.popitem(last=False)
        return True


class DecisionLog:
    """Writes denials to the decision logger and the denial counter."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        self._throttle = _OncePerWindow(THROTTLE_WINDOW_SECONDS)

    def deny(
        self,
        denial: Denial,
        *,
        user: str | None,
        device: str | None = None,
        room: str | None = None,
        event: str | None = None,
        media: str | None = None,
        server: str | None = None,
        throttle: Hashable | None = None,
    ) -> None:
        """``event``: the ID of the refused event, for denials about one event;
        ``media``: the media ID (mxc server/ID) of a refused file; ``server``: the
        other server of a refused federation request; ``throttle``: a
        key (a device, a server) whose denials of this rule are counted every
        time but logged once a minute, so that a client retrying in a loop
        cannot flood the log."""
        DENIALS.labels(rule=denial.rule, server_name=self._server_name).inc()
        if throttle is not None and not self._throttle.first_in_window((denial.rule, throttle)):
            return
        entry = {
            "rule": denial.rule,
            "decision": "deny",
            "user": user,
            "device": device,
            "room": room,
            "reason": denial.reason,
        }
        if event is not None:
            entry["event"] = event
        if media is not None:
            entry["media"] = media
        if server is not None:
            entry["server"] = server
        DECISION_LOGGER.info(json.dumps(entry, sort_keys=True))

    def rewrite(
        self, rule: str, reason: str, *, user: str | None, device: str | None = None, room: str | None = None
    ) -> None:
        """A setting of a request the module replaced by the policy's value
        instead of refusing the request (decision "rewrite"; not a denial)."""
        REWRITES.labels(rule=rule, server_name=self._server_name).inc()
        entry = {
            "rule": rule,
            "decision": "rewrite",
            "user": user,
            "device": device,
            "room": room,
            "reason": reason,
        }
        DECISION_LOGGER.info(json.dumps(entry, sort_keys=True))

    def retention(self, decision: str, *, user: str, room: str, event: str, **details: Any) -> None:
        """What the retention sweep could not do, or did only after retrying
        (``redaction_failed``, ``redacted_after_retry``, ``redaction_abandoned``):
        written once per event and failure kind, never per attempt. ``user`` is
        the system user."""
        entry = {"decision": decision, "rule": "retention.sweep", "user": user, "room": room, "event": event}
        DECISION_LOGGER.info(json.dumps({**entry, **details}, sort_keys=True))

    def record(self, action: str, *, actor: str, user: str, device: str | None, **details: Any) -> None:
        """An operator's or the sweep's action that changed who may use which
        device (enroll, approve, reject, revoke, expire, remove)."""
        entry = {"decision": action, "actor": actor, "user": user, "device": device, **details}
        DECISION_LOGGER.info(json.dumps(entry, sort_keys=True))
