"""Test only: stop the auditor bot hard after a chosen step (see ``bots.common.testhook``).

``AUDITOR_TEST_STOP_FILE`` names the file; the steps:

* ``approved``: an export's approval is recorded (and logged), its bundle not delivered yet;
* ``delivered``: the bundle and its notice are in the requester's room, not recorded yet.
"""

from __future__ import annotations

from ..common.testhook import StopHook

ENV = "AUDITOR_TEST_STOP_FILE"
_hook = StopHook(ENV)


def reached(step: str) -> None:
    _hook.reached(step)
