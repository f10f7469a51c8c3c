"""Test only: stop the dispatch bot hard after a chosen step (see ``bots.common.testhook``).

``DISPATCH_TEST_STOP_FILE`` names the file; the steps:

* ``received``: a command is in the state as a job, nothing of it done yet;
* ``applied``: a command's changes and the messages it sends are in the state;
* ``recorded``: ``!incident new`` has its number, its room is not made yet;
* ``room-created``: the homeserver made a room, the state does not know it yet;
* ``encrypted``: a message's ciphertext is in the outbox, not sent yet;
* ``sent``: the homeserver took a message, the outbox does not know it yet.
"""

from __future__ import annotations

from ..common.testhook import StopHook

ENV = "DISPATCH_TEST_STOP_FILE"
_hook = StopHook(ENV)


def reached(step: str) -> None:
    _hook.reached(step)
