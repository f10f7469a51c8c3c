"""``python -m bots.dispatch -c config/dispatch.yaml``: run the dispatch bot until SIGTERM or SIGINT.

Exit status: 0 stopped by a signal, 2 the configuration is wrong, 1 the bot failed
(the entry point itself is ``bots.common.main``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..common.main import Bot, run_main
from .config import Config, load_config


def _bot(config: Config, reset_identity: bool) -> Bot:
    from .bot import DispatchBot  # nio and the E2EE store: only once the configuration is good

    return DispatchBot(config, reset_identity=reset_identity)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(argv, name="dispatch", load_config=load_config, make_bot=_bot)


if __name__ == "__main__":
    sys.exit(main())
