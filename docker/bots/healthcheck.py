#!/usr/bin/env python3
"""Health check of a bot container: ``police-bot-healthcheck CONFIG``.

Healthy when the bot process (PID 1 after the entrypoint's exec) runs and the
homeserver named in its config answers ``/_matrix/client/versions``. Whether
the bot decrypts and answers is visible in the chat (``!health``) and, for the
auditor, in its metrics (``metrics_port``).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: police-bot-healthcheck CONFIG", file=sys.stderr)
        return 2
    try:
        os.kill(1, 0)
    except OSError:
        print("the bot process is not running", file=sys.stderr)
        return 1
    config = yaml.safe_load(Path(argv[1]).read_text())
    url = str(config["homeserver_url"]).rstrip("/") + "/_matrix/client/versions"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
