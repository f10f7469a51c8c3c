"""Bulk enrollment through the real CLI: ``police-policy devices import FILE.csv``.

One Synapse process with the module (SQLite, the policy's homeserver
settings, test rate limits). ``USERS`` users are registered through the
shared-secret admin API (no device), and an admin logs in on an enrolled
device (``bench/accounts.py``). The CSV (header ``user_id,device_id,label``)
lists ``DEVICES_PER_USER`` devices of each user, user by user as an inventory
export lists them: ``ROWS`` rows.

The CLI runs as a subprocess, as an operator starts it, with the homeserver
URL and the admin's token in ``POLICE_HOMESERVER_URL`` and
``POLICE_ADMIN_TOKEN``; it reads the file and sends batches of 500 rows to
``POST /_synapse/client/police/v1/devices/import``. Timed: from starting the
process until it exited, so Python's start-up and reading the CSV count. The
start-up alone (median of three runs on a file with only the header) is
printed, and the rate without it, for information.

``ROUNDS`` rounds, each with a new file (new device IDs, so the registry grows
by ``ROWS`` a round), imported twice; medians reported:

* first run: every row is a new enrollment;
* re-run of the same file: every row is already enrolled (the server keeps
  who enrolled it when), what an operator does after a run that stopped
  halfway.

Each run must end with exit code 0 and a summary naming all ``ROWS`` rows and
no failure, and the registry must hold the new rows afterwards. The target is
absolute (rows per second), there is no baseline: without the module there is
no import.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

from devtools.homeserver import Homeserver
from synapse_police_policy.ops.devices import IMPORT_COLUMNS, IMPORT_DEFAULT_BATCH

from .accounts import BenchError, count_enrolled, enrolled_user, register_many
from .module_overhead import PASSWORD, homeservers, print_table

#: users whose devices the file lists
USERS = 100
#: devices of each user in the file
DEVICES_PER_USER = 100
ROWS = USERS * DEVICES_PER_USER
#: rounds, each a new file imported twice
ROUNDS = 3
#: requests in flight while registering the users
SETUP_WORKERS = 4


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    #: users whose devices the file lists
    users: int
    #: devices of each user in the file
    devices_per_user: int
    #: rounds, each a new file imported twice
    rounds: int
    #: runs on a header-only file, the median of which is the CLI's start-up
    startup_runs: int

    @property
    def rows(self) -> int:
        return self.users * self.devices_per_user


FULL = Sizes(users=USERS, devices_per_user=DEVICES_PER_USER, rounds=ROUNDS, startup_runs=3)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(users=5, devices_per_user=10, rounds=1, startup_runs=1)

RATE_TARGET = 200.0
SUMMARY = re.compile(r"^(\d+) enrolled \(new\), (\d+) already enrolled, (\d+) failed$", re.MULTILINE)


def cli_command() -> list[str]:
    """The console script next to this interpreter (the venv's), else the module."""
    script = Path(sys.executable).with_name("police-policy")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "synapse_police_policy.ops.cli"]


def write_csv(path: Path, hs: Homeserver, sizes: Sizes, round_no: int) -> None:
    """The file's devices, new in every round (the device IDs name the round)."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "device_id", "label"])
        for user in range(sizes.users):
            user_id = hs.user_id(localpart(user))
            for device in range(sizes.devices_per_user):
                number = user * sizes.devices_per_user + device
                writer.writerow(
                    [user_id, f"PHONE-{round_no}-{number:06d}", f"inventory {round_no}-{number:06d}"]
                )


def localpart(user: int) -> str:
    return f"officer-{user:03d}"


def run_import(hs: Homeserver, token: str, path: Path) -> tuple[float, tuple[int, int, int]]:
    """Seconds from process start to exit, and (new, already enrolled, failed)."""
    env = {**os.environ, "POLICE_HOMESERVER_URL": hs.url, "POLICE_ADMIN_TOKEN": token}
    started = time.perf_counter()
    done = subprocess.run(
        [*cli_command(), "devices", "import", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - started
    summary = SUMMARY.findall(done.stdout)
    if done.returncode != 0 or not summary:
        raise BenchError(
            f"police-policy devices import {path.name} exited with {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    new, existing, failed = (int(n) for n in summary[-1])
    return elapsed, (new, existing, failed)


def main(smoke: bool = False) -> None:
    """Start the homeserver, register the users, run the CLI; always stop it.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``."""
    sizes = SMOKE if smoke else FULL
    rows = sizes.rows
    with homeservers(["with-module"]) as servers, tempfile.TemporaryDirectory() as workdir:
        hs = servers["with-module"]
        started = time.perf_counter()
        token = enrolled_user(hs, "mdm-admin", PASSWORD, admin=True)
        register_many(hs, [localpart(user) for user in range(sizes.users)], PASSWORD, workers=SETUP_WORKERS)
        print(
            f"  {sizes.users} users and an admin on an enrolled device set up in "
            f"{time.perf_counter() - started:.1f} s (not timed)",
            flush=True,
        )
        header_only = Path(workdir, "header.csv")
        header_only.write_text(",".join(IMPORT_COLUMNS) + "\n", encoding="utf-8")
        startup = statistics.median(run_import(hs, token, header_only)[0] for _ in range(sizes.startup_runs))

        runs = {"first run (all rows new)": (rows, 0, 0), "re-run (all rows enrolled)": (0, rows, 0)}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for round_no in range(sizes.rounds):
            devices = Path(workdir, f"devices-{round_no}.csv")
            write_csv(devices, hs, sizes, round_no)
            enrolled_before = count_enrolled(hs)
            for name, expected in runs.items():
                elapsed, counts = run_import(hs, token, devices)
                if counts != expected:
                    raise BenchError(
                        f"{name}: (new, already enrolled, failed) = {counts}, expected {expected}"
                    )
                seconds[name].append(elapsed)
                print(
                    f"  round {round_no + 1}/{sizes.rounds} {name:<26} {rows:,} rows in {elapsed:5.2f} s, "
                    f"{rows / elapsed:6.0f} rows/s",
                    flush=True,
                )
            enrolled = count_enrolled(hs) - enrolled_before
            if enrolled != rows:
                raise BenchError(f"the registry holds {enrolled} new enrollments, expected {rows}")
        report(sizes, seconds, startup)


def report(sizes: Sizes, seconds: dict[str, list[float]], startup: float) -> None:
    rows = sizes.rows
    lines: list[tuple[str, ...]] = [
        ("run", "rows", "seconds", "rows/s", "rows/s after start-up", "target (rows/s)")
    ]
    verdicts = []
    for name, values in seconds.items():
        elapsed = statistics.median(values)
        rate = rows / elapsed
        lines.append(
            (
                name,
                f"{rows:,}",
                f"{elapsed:.2f}",
                f"{rate:.0f}",
                f"{rows / (elapsed - startup):.0f}" if elapsed > startup else "-",
                f"> {RATE_TARGET:.0f}",
            )
        )
        verdicts.append(
            f"{name}: {rate:.0f} rows/s > {RATE_TARGET:.0f}: {'met' if rate > RATE_TARGET else 'MISSED'}"
        )
    print(
        f"\nmedian of {sizes.rounds} rounds, each a new file of {rows:,} rows ({sizes.users} users x "
        f"{sizes.devices_per_user} devices) through `police-policy devices import`, batches of "
        f"{IMPORT_DEFAULT_BATCH}; seconds: the process from start to exit; start-up alone (a header-only "
        f"file): {startup:.2f} s"
    )
    print_table(lines)
    print()
    for verdict in verdicts:
        print(verdict)
