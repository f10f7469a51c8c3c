"""``make run``: a development homeserver with the policy module on
http://127.0.0.1:8008 (SQLite), demo accounts, Synapse in the foreground.

Each demo account gets an enrolled device (``DEMO-<NAME>``) the way an
operator bootstraps one on the server host; the admin is logged in on its
device and its token kept in ``var/admin-token`` for the ``police-policy
devices`` commands (approve Element Web logins, enroll, revoke).

State lives in ``var/``; running again reuses it (same database, same keys,
same demo passwords). Ctrl-C stops Synapse cleanly.

``make run`` owns its children: Ctrl-C, SIGTERM and SIGHUP (a process manager,
a closed terminal) stop the bots and Synapse before it exits, and each child
gets SIGTERM from the kernel when ``make run`` dies any other way (SIGKILL, a
crash: Linux's parent-death signal). Processes an older run left behind are
found by their pid file in ``var/`` and stopped, with a message.

``POLICE_RUN_DIR`` and ``POLICE_RUN_PORTS`` (``HTTP,METRICS,AUDITOR_METRICS``)
move the state and the ports, so that tests run it beside a developer's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from synapse_police_policy.ops.check_config import find_problems

from .homeserver import REPO_ROOT, Homeserver, HomeserverSpec, SynapseError

VAR = Path(os.environ.get("POLICE_RUN_DIR") or REPO_ROOT / "var")
SERVER_NAME = "localhost"
HTTP_PORT, METRICS_PORT, AUDITOR_METRICS_PORT = (
    int(port) for port in (os.environ.get("POLICE_RUN_PORTS") or "8008,9008,9101").split(",")
)
#: the children of the running ``make run`` (role -> pid), to stop what a killed run left
PID_FILE = VAR / "make-run.pids"
#: prctl option: the signal a child gets when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
POLICY_FILE = REPO_ROOT / "config" / "police_policy.yaml"

#: localpart -> (role shown to the user, server admin?)
DEMO_ACCOUNTS: dict[str, tuple[str, bool]] = {
    "officer": ("patrol officer (Element iOS)", False),
    "dispatcher": ("control-centre dispatcher (Element Web)", False),
    "auditor": ("unit auditor", False),
    "admin": ("server administrator (admin API)", True),
    "auditor-bot": ("the auditor bot (archives every room; talk to it as 'auditor')", False),
    "dispatch-bot": (
        "the dispatch bot (control room #leitstelle:localhost; talk to it as 'dispatcher')",
        False,
    ),
}
BOT = "auditor-bot"
BOT_DIR = VAR / "auditor-bot"
DISPATCH_BOT = "dispatch-bot"
DISPATCH_DIR = VAR / "dispatch-bot"
DISPATCH_TEMPLATE = REPO_ROOT / "config" / "dispatch.yaml"


def dev_spec() -> HomeserverSpec:
    module_config: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text()) or {}
    module_config["auditor"] = {"user_id": f"@{BOT}:{SERVER_NAME}"}
    # not offered in Element's "Start chat" search (the auditor bot is left out by itself)
    module_config["directory"] = {"hidden_users": [f"@{DISPATCH_BOT}:{SERVER_NAME}"]}
    return HomeserverSpec(
        directory=VAR / "homeserver",
        server_name=SERVER_NAME,
        http_port=HTTP_PORT,
        metrics_port=METRICS_PORT,
        module_config=module_config,
        console_log=True,
        for_tests=False,
        # a developer trying Element and a phone next to the bots' own logins; Synapse's
        # default (5 per address, then one per ~5.5 min) locks them out within minutes
        extra={
            "rc_login": {
                "address": {"per_second": 0.2, "burst_count": 30},
                "account": {"per_second": 0.2, "burst_count": 15},
                "failed_attempts": {"per_second": 0.1, "burst_count": 10},
            }
        },
    )


def _demo_passwords() -> dict[str, str]:
    path = VAR / "demo-accounts.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for localpart in DEMO_ACCOUNTS:
        stored.setdefault(localpart, secrets.token_urlsafe(12))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2))
    path.chmod(0o600)
    return stored


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def demo_device(localpart: str) -> str:
    return f"DEMO-{localpart.upper()}"


def _enroll_demo_devices(homeserver: Homeserver) -> None:
    for localpart, (role, _) in DEMO_ACCOUNTS.items():
        homeserver.enroll(localpart, demo_device(localpart), label=f"make run: {role}")


def _write_admin_token(homeserver: Homeserver, password: str) -> str:
    """The admin's token of the last run while it works: an enrolled device is claimed
    by its first login, so logging in on it again would be refused."""
    path = VAR / "admin-token"
    if path.exists():
        token = path.read_text().strip()
        status, _ = homeserver.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        if status == 200:
            return token
    status, answer = homeserver.try_login("admin", password, demo_device("admin"))
    if status != 200:
        raise SystemExit(
            f"make run: the admin could not log in on {demo_device('admin')} ({answer.get('error')}). "
            f"Its token in {path} is gone but the device is still logged in: "
            "delete var/ to start afresh (a new database)."
        )
    path.write_text(answer["access_token"])
    path.chmod(0o600)
    return answer["access_token"]


def _write_secret_files(directory: Path, secret_files: dict[str, str | None]) -> None:
    """Write each secret (mode 0600); ``None`` is a random 32-byte key made once and kept
    across runs (the store it protects stays readable)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in secret_files.items():
        path = directory / name
        if value is not None:
            path.write_text(value)
        elif not path.exists():
            path.write_text(secrets.token_hex(32))
        path.chmod(0o600)


def _write_bot_config(homeserver: Homeserver, password: str, audit_lifetime: str) -> Path:
    """The auditor bot's config, password and archive key under var/ (kept across runs)."""
    _write_secret_files(BOT_DIR, {"password": password, "archive.key": None})
    config = {
        "homeserver_url": homeserver.url,
        "user_id": homeserver.user_id(BOT),
        "password_file": "password",
        "device_id": demo_device(BOT),
        "store_dir": "store",
        "archive_path": "archive.sqlite",
        "archive_key_file": "archive.key",
        "log_path": "consultations.sqlite",
        "auditors": [homeserver.user_id("auditor")],
        "audit_lifetime": audit_lifetime,
        # attachments are checked with the module's media rules; refused files
        # are quarantined with the demo admin's token
        "policy_file": str(POLICY_FILE),
        "admin_token_file": str(VAR / "admin-token"),
        "metrics_port": AUDITOR_METRICS_PORT,
    }
    path = BOT_DIR / "auditor.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _write_dispatch_config(homeserver: Homeserver, password: str) -> Path:
    """config/dispatch.yaml with this server, the demo password and state under var/dispatch-bot/
    (its key made once, so the state stays readable across runs)."""
    _write_secret_files(DISPATCH_DIR, {"password": password, "state.key": None})
    config: dict[str, Any] = yaml.safe_load(DISPATCH_TEMPLATE.read_text())
    for key in ("password", "state_key_env"):
        config.pop(key, None)
    config.update(
        {
            "homeserver_url": homeserver.url,
            "user_id": homeserver.user_id(DISPATCH_BOT),
            "password_file": "password",
            "device_id": demo_device(DISPATCH_BOT),
            "store_dir": "store",
            "state_path": "state.sqlite",
            "state_key_file": "state.key",
        }
    )
    path = DISPATCH_DIR / "dispatch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached ``make run``: stop everything as Ctrl-C does."""


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _term_when_parent_dies(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent process dies, however it dies
    (Linux); a parent that is gone already (``parent`` no longer ours) counts."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when this process dies."""
    parent = os.getpid()
    return lambda: _term_when_parent_dies(parent)


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` runs with this run's state directory on its command line."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return str(VAR) in command


def _stop_leftovers() -> None:
    """Stop the processes a killed earlier run left (its pid file names them)."""
    try:
        pids: dict[str, int] = json.loads(PID_FILE.read_text())
    except (OSError, ValueError):
        return
    for role, pid in pids.items():
        if isinstance(pid, int) and _is_ours(pid):
            print(f"Stopping {role} (pid {pid}), left running by an earlier `make run` ...", file=sys.stderr)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _is_ours(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _is_ours(pid):
                os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)


def _record_children(children: dict[str, subprocess.Popen[bytes] | None]) -> None:
    pids = {role: child.pid for role, child in children.items() if child is not None}
    PID_FILE.write_text(json.dumps(pids))


def _start_bot(
    config_path: Path, package: str = "bots.auditor", directory: Path = BOT_DIR
) -> subprocess.Popen[bytes]:
    log = (directory / "bot.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", package, "-c", str(config_path)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches Synapse; the bot is stopped below
        preexec_fn=die_with_parent(),
    )


def _stop_bot(bot: subprocess.Popen[bytes] | None) -> None:
    if bot is None or bot.poll() is not None:
        return
    bot.terminate()
    try:
        bot.wait(15)
    except subprocess.TimeoutExpired:
        bot.kill()


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)
    # make itself may die: then this process gets SIGTERM and stops its children
    _term_when_parent_dies(os.getppid())
    VAR.mkdir(parents=True, exist_ok=True)
    _stop_leftovers()
    for port in (HTTP_PORT, METRICS_PORT, AUDITOR_METRICS_PORT):
        if _port_in_use(port):
            print(
                f"Port {port} on 127.0.0.1 is already in use (another `make run`?). "
                "Stop that process and run `make run` again.",
                file=sys.stderr,
            )
            return 1
    homeserver = Homeserver(dev_spec())
    findings = find_problems(yaml.safe_load(homeserver.config_path.read_text()))
    for finding in findings:
        print(f"check-config: {finding}", file=sys.stderr)
    passwords = _demo_passwords()
    bot: subprocess.Popen[bytes] | None = None
    dispatch_bot: subprocess.Popen[bytes] | None = None
    print(f"Starting Synapse with the police policy module (config {homeserver.config_path}) ...")
    try:
        homeserver.start(foreground_output=True, preexec_fn=die_with_parent())
        _record_children({"Synapse": homeserver.process})
        created = []
        for localpart, (_, admin) in DEMO_ACCOUNTS.items():
            if (
                homeserver.register_user(localpart, passwords[localpart], admin=admin, login=False)
                is not None
            ):
                created.append(localpart)
        _enroll_demo_devices(homeserver)
        admin_token = _write_admin_token(homeserver, passwords["admin"])
        for bot_user in (BOT, DISPATCH_BOT):
            homeserver.exempt_from_rate_limits(homeserver.user_id(bot_user), admin_token)
        audit_lifetime = (dev_spec().module_config or {}).get("retention", {}).get("audit_lifetime", "90d")
        bot = _start_bot(_write_bot_config(homeserver, passwords[BOT], audit_lifetime))
        dispatch_bot = _start_bot(
            _write_dispatch_config(homeserver, passwords[DISPATCH_BOT]), "bots.dispatch", DISPATCH_DIR
        )
        _record_children(
            {"Synapse": homeserver.process, "the auditor bot": bot, "the dispatch bot": dispatch_bot}
        )
        _print_welcome(homeserver, passwords, created)
        assert homeserver.process is not None
        return homeserver.process.wait()
    except (KeyboardInterrupt, _Stopped) as why:
        print(f"\nStopping the bots and Synapse ({why or 'Ctrl-C'}) ...", flush=True)
        _stop_bot(dispatch_bot)
        _stop_bot(bot)
        # Ctrl-C in a terminal reached Synapse too (the foreground process group)
        homeserver.stop(already_signalled=isinstance(why, KeyboardInterrupt))
        print(f"Stopped. State is kept in {VAR}; `make run` starts it again.", flush=True)
        return 0
    except SynapseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second signal does not cut the cleanup short
        _stop_bot(dispatch_bot)
        _stop_bot(bot)
        homeserver.stop()
        PID_FILE.unlink(missing_ok=True)


def _login_limits_line() -> str:
    address = dev_spec().extra["rc_login"]["address"]
    return (
        f"Login limits for development: {address['burst_count']} logins per address in a burst, then one "
        f"every {1 / address['per_second']:.0f} s (production: stricter, rc_login in config/homeserver.yaml)."
    )


def _print_welcome(homeserver: Homeserver, passwords: dict[str, str], created: list[str]) -> None:
    width = max(len(name) for name in DEMO_ACCOUNTS)
    lines = [
        "",
        f"Homeserver ready: {homeserver.url}  (server name '{SERVER_NAME}')",
        f"Metrics:          http://127.0.0.1:{METRICS_PORT}/_synapse/metrics",
        "",
        "Log in with Element (Web or iOS) or any Matrix client: choose 'Edit' next to the",
        f"homeserver, enter {homeserver.url}, then one of these accounts:",
    ]
    for localpart, (role, _) in DEMO_ACCOUNTS.items():
        note = " (new)" if localpart in created else ""
        lines.append(
            f"  {localpart:<{width}}  password {passwords[localpart]}"
            f"  device {demo_device(localpart)}  {role}{note}"
        )
    lines += [
        "",
        "Only enrolled devices may log in. A client that names the device above gets in at once:",
        f"  curl -s -XPOST {homeserver.url}/_matrix/client/v3/login -d "
        f'\'{{"type":"m.login.password","identifier":{{"type":"m.id.user","user":"officer"}},'
        f'"password":"{passwords["officer"]}","device_id":"{demo_device("officer")}"}}\'',
        "Element names no device: its first login is refused with a request ID.",
        "Approve the request, then log in again from the same machine:",
        f"  export POLICE_HOMESERVER_URL={homeserver.url} POLICE_ADMIN_TOKEN=$(cat {VAR / 'admin-token'})",
        "  .venv/bin/police-policy devices pending",
        "  .venv/bin/police-policy devices approve REQUEST-ID",
        "",
        f"Passwords are kept in {VAR / 'demo-accounts.json'}; Synapse's log is {homeserver.log_path}.",
        f"The auditor bot runs beside Synapse (log {BOT_DIR / 'bot.log'}): as 'auditor', open a direct",
        "chat with @auditor-bot:localhost and send !help. Its metrics: "
        f"http://127.0.0.1:{AUDITOR_METRICS_PORT}/metrics.",
        f"The dispatch bot runs beside it (log {DISPATCH_DIR / 'bot.log'}; units and roles in",
        f"{DISPATCH_TEMPLATE}): as 'dispatcher', accept the invite to the control room",
        "#leitstelle:localhost and send !help there; as 'officer', join the unit room and send !s 2.",
        _login_limits_line(),
        "Policy decisions appear below. Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
