"""The room policy: who may create what room, which settings may change, who is seated."""
