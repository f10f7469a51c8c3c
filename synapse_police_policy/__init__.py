"""Police messenger policy for Synapse: closed federation, enrolled devices,
media rules, room policy and retention tiers. Load ``PolicePolicy`` through
Synapse's ``modules:`` list."""

from .module import PolicePolicy

__all__ = ["PolicePolicy"]
