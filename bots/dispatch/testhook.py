"""Test only: stop the bot hard (SIGKILL) the moment it has done a chosen step.

The integration tests check that a crash at any step of a command neither loses
nor repeats anything. With ``DISPATCH_TEST_STOP_FILE`` naming a file, the bot
reads that file at each step: once it names a step (``<step>``, or ``<step>#<n>``
for the n-th time that step is done after the file appeared), the bot deletes
the file and kills itself right after that step; the restart runs the real code.
Never set it in production. The steps:

* ``received``: a command is in the state as a job, nothing of it done yet;
* ``applied``: a command's changes and the messages it sends are in the state;
* ``recorded``: ``!incident new`` has its number, its room is not made yet;
* ``room-created``: the homeserver made a room, the state does not know it yet;
* ``encrypted``: a message's ciphertext is in the outbox, not sent yet;
* ``sent``: the homeserver took a message, the outbox does not know it yet.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from pathlib import Path

ENV = "DISPATCH_TEST_STOP_FILE"

log = logging.getLogger(__name__)
_reached: Counter[str] = Counter()
_armed: list[str] = [""]


def reached(step: str) -> None:
    """Called after each step; kills the process when it is the one the file names."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        wanted = Path(path).read_text().strip()
    except OSError:
        return
    if wanted != _armed[0]:  # a new wish: count from now on
        _armed[0] = wanted
        _reached.clear()
    name, _, nth = wanted.partition("#")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] == int(nth or 1):
        Path(path).unlink(missing_ok=True)
        log.warning("test hook %s: stopping the bot after step %s", ENV, wanted)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
