"""Police messenger policy for Synapse: closed federation, enrolled devices,
media rules, room policy and retention tiers. Load ``PolicePolicy`` through
Synapse's ``modules:`` list.

``PolicePolicy`` is imported when first asked for: the bots import the config
parser and the media rules from this package without Synapse installed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .module import PolicePolicy

__all__ = ["PolicePolicy"]


def __getattr__(name: str) -> Any:
    if name == "PolicePolicy":
        from .module import PolicePolicy

        return PolicePolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
