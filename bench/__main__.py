"""``python -m bench [--smoke] [NAME ...]``: run every benchmark entry, or the named ones.

New benchmarks add themselves to ``ENTRIES``. Missing a target is a result,
not a failure: the exit code is non-zero only when a benchmark could not run.

Every entry is ``main(smoke: bool = False)``: at full size (what ``make
bench`` runs and docs/performance.md reports), or with ``--smoke`` the same
code at tiny sizes, in seconds; its figures then mean nothing, only that the
entry still runs and reports. The test suite runs every entry that way
(tests/integration/test_bench_smoke.py), so a change that breaks a benchmark
fails the tests rather than the next measurement.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import traceback
from collections.abc import Callable

import attrs

from . import (
    auditor_archive,
    auditor_shards,
    device_import,
    dispatch_alert,
    federation_inbound,
    large_room,
    login_rate,
    media_detection,
    media_upload,
    module_overhead,
    retention_scaling,
    retention_sweep,
)


@attrs.frozen
class Entry:
    name: str
    #: the entry's ``main``; ``True``: at smoke size
    run: Callable[[bool], None]
    summary: str


ENTRIES: list[Entry] = [
    Entry("module_overhead", module_overhead.main, "cost of the policy module on the message path"),
    Entry(
        "federation_inbound",
        federation_inbound.main,
        "cost of the policy module on events arriving from an allowed peer",
    ),
    Entry(
        "large_room",
        large_room.main,
        "cost of the policy module on the message path of rooms of "
        f"{' and '.join(f'{n:,}' for n in large_room.MEMBERS)} members",
    ),
    Entry(
        "login_rate",
        login_rate.main,
        f"password logins per second with {login_rate.REGISTRY:,} enrolled devices in the registry",
    ),
    Entry(
        "media_upload",
        media_upload.main,
        "upload throughput of 5 MiB and 100 MiB files and the server's peak memory",
    ),
    Entry(
        "media_detection",
        media_detection.main,
        f"media content check: false refusals of {media_detection.BUFFERS:,} ciphertext buffers "
        "(16 bytes to 1 MiB) and detection of a corpus of smuggled files",
    ),
    Entry(
        "device_import",
        device_import.main,
        f"`police-policy devices import` of a {device_import.ROWS:,}-row CSV: rows per second",
    ),
    Entry(
        "retention_sweep",
        retention_sweep.main,
        f"retention sweep: {retention_sweep.EVENTS:,} expired events redacted per second, against the "
        "same redactions through the client API",
    ),
    Entry(
        "auditor_archive",
        auditor_archive.main,
        "auditor archive: ingest rate of full events with encryption and row MACs, search latency "
        "and peak RSS over a synthetic archive of 1,000,000 messages",
    ),
    Entry(
        "auditor_shards",
        auditor_shards.main,
        f"auditor bot in {' and '.join(f'{n:,}' for n in auditor_shards.ROOMS)} rooms at "
        f"{auditor_shards.RATE:g} msgs/s (E2EE senders, PostgreSQL archive), as one process and as "
        f"{max(auditor_shards.SHARDS)} shards: archive lag, RSS, CPU per message, catch-up after a "
        f"{auditor_shards.OUTAGE_S / 60:g}-minute outage",
    ),
    Entry(
        "retention_scaling",
        retention_scaling.main,
        f"retention sweep: time to redact {retention_scaling.NEW:,} newly expired events with "
        f"{retention_scaling.SIZES[0]:,} against {retention_scaling.SIZES[1]:,} events stored on SQLite, "
        f"{retention_scaling.PG_SIZES[0]:,} against {retention_scaling.PG_SIZES[1]:,} on PostgreSQL",
    ),
    Entry(
        "dispatch_alert",
        dispatch_alert.main,
        f"dispatch bot: an alert to a unit of {dispatch_alert.OFFICERS} officers (nio clients, E2EE) against "
        "one plain room_send to the same members, then all acknowledging at once; the bot's peak RSS",
    ),
]


def machine() -> str:
    """What the figures were measured on; nproc matters because client and Synapse share the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    system = f"{platform.system()} {platform.release()}"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc={cores}, {platform.machine()}, {system}, Python {platform.python_version()}, "
        f"load average before start {load} (other work on the cores skews the figures)"
    )


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    wanted = {arg for arg in argv if arg != "--smoke"}
    unknown = wanted - {entry.name for entry in ENTRIES}
    if unknown:
        names = ", ".join(entry.name for entry in ENTRIES)
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; available: {names}", file=sys.stderr)
        return 2
    print(f"command: {shlex.join([sys.executable, '-m', 'bench', *argv])}")
    print(f"machine: {machine()}")
    if smoke:
        print("smoke sizes: tiny workloads, the figures mean nothing; only a failure to run counts")
    failed: list[str] = []
    for entry in ENTRIES:
        if wanted and entry.name not in wanted:
            continue
        size = " (smoke size)" if smoke else ""
        print(f"\n=== {entry.name}{size}: {entry.summary} ===", flush=True)
        try:
            entry.run(smoke)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception:
            traceback.print_exc()
            failed.append(entry.name)
    if failed:
        print(f"\nbenchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
