"""``python -m bots.dispatch -c config/dispatch.yaml``: run the dispatch bot until SIGTERM or SIGINT.

Exit status: 0 stopped by a signal, 2 the configuration is wrong, 1 the bot failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


async def _run(bot: object) -> None:
    from .bot import DispatchBot

    assert isinstance(bot, DispatchBot)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, bot.stop)
    await bot.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bots.dispatch", description="Run the dispatch bot.")
    parser.add_argument("-c", "--config", required=True, help="the bot's YAML configuration")
    parser.add_argument("-v", "--verbose", action="store_true", help="log nio's debug messages too")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("nio").setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"{args.config}: {error}", file=sys.stderr)
        return EXIT_CONFIG

    from .bot import DispatchBot

    try:
        bot = DispatchBot(config)
    except Exception as error:
        print(f"cannot start the dispatch bot: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        asyncio.run(_run(bot))
    except Exception:
        logging.getLogger("bots.dispatch").exception("the dispatch bot failed")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
