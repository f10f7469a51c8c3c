"""Test only: stop a bot hard (SIGKILL) the moment it has done a chosen step.

Integration tests check that a crash at a given step neither loses nor repeats
anything. With the hook's environment variable naming a file, the bot reads that
file at each step: once it names a step (``<step>``, or ``<step>#<n>`` for the n-th
time that step is done after the file appeared), the bot deletes the file and kills
itself right after that step; the restart runs the real code. Never set it in
production.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)


class StopHook:
    """The hook of one bot, armed by the file its environment variable ``env`` names."""

    def __init__(self, env: str) -> None:
        self.env = env
        self._reached: Counter[str] = Counter()
        self._armed = ""

    def reached(self, step: str) -> None:
        """Called after each step; kills the process when it is the one the file names."""
        path = os.environ.get(self.env)
        if not path:
            return
        try:
            wanted = Path(path).read_text().strip()
        except OSError:
            return
        if wanted != self._armed:  # a new wish: count from now on
            self._armed = wanted
            self._reached.clear()
        name, _, nth = wanted.partition("#")
        if name != step:
            return
        self._reached[step] += 1
        if self._reached[step] == int(nth or 1):
            Path(path).unlink(missing_ok=True)
            log.warning("test hook %s: stopping the bot after step %s", self.env, wanted)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["StopHook"]
