"""The ``python -m bots.<name> -c <config>`` entry both bots share: run until SIGTERM or SIGINT.

Exit status: 0 stopped by a signal, 2 the configuration is wrong, 1 the bot failed
(an identity that disagrees with the server's among them, said in one line).
Logging goes to stderr and says what the bot does, never a secret or message
content; nio's debug messages only with ``-v``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .config import ConfigError
from .identity import RESET_FLAG, IdentityError
from .session import LoginRefused

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

ConfigT = TypeVar("ConfigT")


class Bot(Protocol):
    """What the entry point needs of a bot."""

    def stop(self) -> None: ...
    async def run(self) -> None: ...


async def _run(bot: Bot) -> None:
    """Run ``bot``; SIGTERM and SIGINT ask it to stop (it finishes what it does and closes)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, bot.stop)
    await bot.run()


def run_main(
    argv: Sequence[str] | None,
    *,
    name: str,
    load_config: Callable[[str], ConfigT],
    make_bot: Callable[[ConfigT, bool], Bot],
) -> int:
    """Parse the arguments, set up logging, load the config and run the bot ``name``.

    ``make_bot(config, reset_identity)`` imports the bot itself, so a wrong configuration
    is reported before nio and the bot's storage are even loaded."""
    parser = argparse.ArgumentParser(prog=f"python -m bots.{name}", description=f"Run the {name} bot.")
    parser.add_argument("-c", "--config", required=True, help="the bot's YAML configuration")
    parser.add_argument("-v", "--verbose", action="store_true", help="log nio's debug messages too")
    parser.add_argument(
        RESET_FLAG,
        action="store_true",
        help="replace the bot's cross-signing identity on the server with a new one (users see the change)",
    )
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
    try:
        bot = make_bot(config, args.reset_identity)
    except Exception as error:
        print(f"cannot start the {name} bot: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        asyncio.run(_run(bot))
    except (IdentityError, LoginRefused) as error:
        logging.getLogger(f"bots.{name}").error("cannot start the %s bot: %s", name, error)
        return EXIT_FAILED
    except Exception:
        logging.getLogger(f"bots.{name}").exception("the %s bot failed", name)
        return EXIT_FAILED
    return EXIT_OK


__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "Bot", "run_main"]
