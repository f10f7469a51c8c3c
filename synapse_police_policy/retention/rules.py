"""The retention tiers in every room, as pure functions: what a new room
carries, and which changes to it are refused.

A room announces the device tier in ``m.room.retention`` (Synapse hides older
events from clients and purges at the audit tier, see docs/policy.md); the
system user, seated in every room (``rooms/seating.py``), redacts there once
content passes the device tier (``sweep.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import RetentionConfig
from ..decisions import Denial

RETENTION = "m.room.retention"


def retention_content(config: RetentionConfig) -> dict[str, int]:
    return {"max_lifetime": config.device_lifetime * 1000}


def retention_state(config: RetentionConfig) -> dict[str, Any]:
    return {"type": RETENTION, "state_key": "", "content": retention_content(config)}


def check_retention_change(config: RetentionConfig, content: Mapping[str, Any]) -> Denial | None:
    """Only the policy's own ``m.room.retention`` content may be sent."""
    if dict(content) == retention_content(config):
        return None
    return Denial(
        rule="retention.room_policy",
        reason="The retention of rooms is set by the server's policy "
        f"(content leaves devices after {config.device_lifetime}s); m.room.retention cannot be changed",
    )
