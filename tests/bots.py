"""A bot (``python -m bots.<name>``) as a real process for the integration tests.

The tests drive a bot the way operators do: start it from its YAML file, wait
for its "ready" log line, stop it with SIGTERM (or kill it), and read its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from devtools.homeserver import Homeserver

REPO = Path(__file__).resolve().parents[1]


def repo_env() -> dict[str, str]:
    """The environment of a child process that imports this checkout's packages."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def bot_account(
    hs: Homeserver, directory: Path, localpart: str, device_id: str, label: str
) -> dict[str, Any]:
    """Register the bot's user and enroll its device, as an operator does; the account part
    of its config, with the password in a file in ``directory`` (as in production)."""
    password = f"pw-{uuid.uuid4().hex}"
    hs.register_user(localpart, password, login=False)
    hs.enroll(localpart, device_id, label=label)
    (directory / "bot-password").write_text(password)
    return {
        "homeserver_url": hs.url,
        "user_id": hs.user_id(localpart),
        "password_file": "bot-password",
        "device_id": device_id,
        "store_dir": "store",
    }


def auditor_config(
    hs: Homeserver, directory: Path, localpart: str, device_id: str, auditors: list[str]
) -> dict[str, Any]:
    """The auditor bot's account (``bot_account``) and the rest of a minimal config: a new
    archive key in ``directory``, the archive and the consultation log beside it."""
    (directory / "archive.key").write_text(os.urandom(32).hex())
    return {
        **bot_account(hs, directory, localpart, device_id, label="auditor bot"),
        "archive_path": "archive.sqlite",
        "archive_key_file": "archive.key",
        "log_path": "consultations.sqlite",
        "auditors": auditors,
    }


def dispatch_config(
    hs: Homeserver, directory: Path, localpart: str, device_id: str, dispatcher: str, officer: str
) -> dict[str, Any]:
    """The dispatch bot's account and a minimal config: a new state key in ``directory``,
    the control room ``#leitstelle``, one dispatcher and unit ``alpha`` with one officer."""
    (directory / "state.key").write_text(os.urandom(32).hex())
    return {
        **bot_account(hs, directory, localpart, device_id, label="dispatch bot"),
        "state_path": "state.sqlite",
        "state_key_file": "state.key",
        "control_rooms": [f"#leitstelle:{hs.server_name}"],
        "roles": {"dispatcher": [dispatcher]},
        "units": [{"name": "alpha", "call_sign": "Adler 1", "members": [officer]}],
        "ack_deadline": "5m",
    }


@contextlib.contextmanager
def both_bots(
    dispatch: tuple[Path, dict[str, Any]], auditor: tuple[Path, dict[str, Any]], timeout: float
) -> Iterator[dict[str, BotProcess]]:
    """Both bots started from their (directory, config), stopped afterwards even on failure."""
    processes: dict[str, BotProcess] = {}
    for name, (directory, config), ready in (
        ("dispatch", dispatch, "dispatch bot ready"),
        ("auditor", auditor, "auditor bot ready"),
    ):
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(config))
        processes[name] = BotProcess(f"bots.{name}", directory / f"{name}.yaml", directory / "bot.log", ready)
    with stopped_afterwards(processes["dispatch"]), stopped_afterwards(processes["auditor"]):
        for process in processes.values():
            process.start(timeout=timeout)
        yield processes


class BotProcess:
    """One bot's process; ``ready`` is the log line that says it synced and handles events."""

    def __init__(self, module: str, config_file: Path, log_file: Path, ready: str) -> None:
        self.module = module
        self.config_file = config_file
        self.log_file = log_file
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def reconfigure(self, **changes: object) -> None:
        """Change settings for the next start (None removes one)."""
        config = yaml.safe_load(self.config_file.read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        self.config_file.write_text(yaml.safe_dump(config))

    def start(
        self, timeout: float = 30.0, args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        """Start the bot and wait for a new ``ready`` line (earlier starts logged theirs too);
        ``env`` adds to its environment (a test hook such as DISPATCH_TEST_STOP_AFTER)."""
        ready_before = self.log().count(self.ready)
        self._spawn(args, env)
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.log().count(self.ready) <= ready_before:
            if self.process.poll() is not None:
                raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the bot was not ready within {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def start_refused(self, timeout: float = 60.0, args: tuple[str, ...] = ()) -> tuple[int, str]:
        """Start the bot expecting it to exit before it is ready: its exit status and what it
        logged in this run."""
        logged_before = len(self.log())
        self._spawn(args)
        assert self.process is not None
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the bot did not exit within {timeout}s:\n{self.log()}") from None
        return status, self.log()[logged_before:]

    def _spawn(self, args: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "-c", str(self.config_file), *args],
                cwd=REPO,
                env={**repo_env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def killed_itself(self, timeout: float = 60.0) -> None:
        """Wait until the bot killed itself (SIGKILL: a test hook's chosen step was reached)."""
        assert self.process is not None
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the bot did not stop within {timeout}s:\n{self.log()}") from None
        assert status == -signal.SIGKILL, f"the bot exited with {status}:\n{self.log()}"

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything (what a crash or power loss does)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and the exit status; a bot that does not stop in time fails the test."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the bot did not stop on SIGTERM:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextlib.contextmanager
def stopped_afterwards(bot: BotProcess) -> Iterator[BotProcess]:
    """Yield ``bot``; a test that failed with it still running does not leave it behind."""
    try:
        yield bot
    finally:
        if bot.running:
            bot.stop()
