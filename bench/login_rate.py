"""Password logins per second with 100,000 enrolled devices in the registry.

With enrollment required, every login passes the module's gate
(``check_login_for_spam``, after Synapse checked the password): a lookup of
(user, device) in the enrollment registry, a table in Synapse's database. This
entry measures what that gate costs once the registry has the size of a large
force's fleet.

Two Synapse processes on SQLite (policy settings on both, test rate limits,
bcrypt cost 4 as on every test homeserver), one with the module and one
without, get the same ``USERS`` users (shared-secret admin API, no device). On
the module's server the registry then gets ``REGISTRY`` enrolled devices,
``REGISTRY / USERS`` per user, bulk-inserted in one SQLite transaction once the
module has created its tables (``bench/accounts.py``). One device per user,
spread over the registry, forms the login pool. Every login is
``m.login.password`` naming an enrolled device ID, the path of an MDM-managed
client. A first pass over the pool creates the devices in Synapse (not timed,
its rate printed for information); measured logins sign in again on an
existing device and get a new access token, as a phone does after its session
ended.

``CLIENTS`` threads keep logins in flight, one keep-alive connection each, so
the Synapse process is the bottleneck. ``ROUNDS`` alternating rounds (A B,
B A, ...) of ``LOGINS`` logins each, the same sequence for both servers in a
round; the medians are compared:

* throughput: logins / (first request sent to last answer received);
* latency (for information): request sent until its answer arrived.

bcrypt cost 4 makes a login cheap, so the module's fixed cost per login weighs
more here than with Synapse's default cost 12; the report sets the difference
against one password check at either cost.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from devtools.homeserver import Homeserver

from .accounts import BenchError, count_enrolled, enroll_many, has_module, register_many
from .module_overhead import PASSWORD, RunResult, homeserver_pair, median, print_table

#: enrolled devices in the module's registry
REGISTRY = 100_000
#: users on both servers; the registry holds REGISTRY / USERS devices of each
USERS = 1000
#: measured logins per run
LOGINS = 1000
#: runs per server; rounds alternate which server goes first
ROUNDS = 8
#: logins in flight (threads, one connection each)
CLIENTS = 8
#: requests in flight while registering the users
SETUP_WORKERS = 4

THROUGHPUT_TARGET = 0.95
#: bcrypt cost of the bench servers (``for_tests``) and Synapse's default
BENCH_BCRYPT_ROUNDS = 4
DEFAULT_BCRYPT_ROUNDS = 12
LOGIN_PATH = "/_matrix/client/v3/login"


def localpart(user: int) -> str:
    return f"officer-{user:05d}"


def device_id(user: int, device: int) -> str:
    return f"MDM-{user:05d}-{device:04d}"


def devices_per_user() -> int:
    return REGISTRY // USERS


def login_pool() -> list[tuple[str, str]]:
    """One enrolled device per user, at a different place in each user's range."""
    per_user = devices_per_user()
    return [(localpart(user), device_id(user, (user * 37) % per_user)) for user in range(USERS)]


def fill_registry(hs: Homeserver) -> float:
    """All REGISTRY devices of the users, the pool's among them; returns the seconds it took."""
    started = time.perf_counter()
    per_user = devices_per_user()
    rows = (
        (hs.user_id(localpart(user)), device_id(user, device))
        for user in range(USERS)
        for device in range(per_user)
    )
    written = enroll_many(hs, rows, label="bench registry")
    enrolled = count_enrolled(hs)
    if written != USERS * per_user or enrolled != USERS * per_user:
        raise BenchError(f"registry: wrote {written} rows, {enrolled} enrolled, expected {USERS * per_user}")
    return time.perf_counter() - started


def set_up(label: str, hs: Homeserver) -> None:
    """Same users on both servers, the registry on the module's (not timed)."""
    started = time.perf_counter()
    register_many(hs, [localpart(user) for user in range(USERS)], PASSWORD, workers=SETUP_WORKERS)
    registered = time.perf_counter() - started
    note = ""
    if has_module(hs):
        note = f", {REGISTRY:,} enrolled devices written in {fill_registry(hs):.1f} s"
    print(f"  {label}: {USERS:,} users registered in {registered:.1f} s{note}", flush=True)


def login_bodies(logins: Sequence[tuple[str, str]]) -> list[bytes]:
    return [
        json.dumps(
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": PASSWORD,
                "device_id": device,
            }
        ).encode()
        for user, device in logins
    ]


def run_logins(label: str, hs: Homeserver, logins: Sequence[tuple[str, str]]) -> RunResult:
    """CLIENTS threads take the next login from a shared position until all are done."""
    bodies = login_bodies(logins)
    times: list[tuple[float, float]] = [(0.0, 0.0)] * len(bodies)
    position = iter(range(len(bodies)))
    lock = threading.Lock()
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection(hs.spec.bind_address, hs.spec.http_port, timeout=60)
        try:
            while True:
                with lock:
                    index = next(position, None)
                if index is None:
                    return
                sent = time.perf_counter()
                connection.request("POST", LOGIN_PATH, body=bodies[index], headers=headers)
                response = connection.getresponse()
                raw = response.read()
                times[index] = (sent, time.perf_counter())
                if response.status != 200:
                    raise BenchError(f"{label}: login failed: HTTP {response.status} {raw[:300]!r}")
                if json.loads(raw).get("device_id") != logins[index][1]:
                    raise BenchError(f"{label}: login of {logins[index][0]} answered another device")
        finally:
            connection.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client) for _ in range(CLIENTS)]:
            future.result()
    latencies = [(end - sent) * 1000 for sent, end in times]
    elapsed = max(end for _, end in times) - min(sent for sent, _ in times)
    return RunResult(
        throughput=len(times) / elapsed,
        p50_ms=statistics.median(latencies),
        p95_ms=statistics.quantiles(latencies, n=20, method="inclusive")[18],
    )


def check_gate(without_hs: Homeserver, with_hs: Homeserver) -> None:
    """Make sure the A/B is what it claims: only the module refuses a device
    that is not in the registry."""
    user = localpart(0)
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": PASSWORD,
        "device_id": "NOT-ENROLLED",
    }
    for hs, loaded in ((without_hs, False), (with_hs, True)):
        status, answer = hs.request("POST", LOGIN_PATH, body)
        if (status != 200) != loaded:
            expected = "refused" if loaded else "accepted"
            raise BenchError(f"login on a device not enrolled should be {expected}: HTTP {status} {answer}")


def bcrypt_check_ms(rounds: int, repeat: int) -> float:
    """What one password check costs on this machine at a bcrypt cost."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds))
    started = time.perf_counter()
    for _ in range(repeat):
        bcrypt.checkpw(PASSWORD.encode(), hashed)
    return (time.perf_counter() - started) / repeat * 1000


def report(without: list[RunResult], with_: list[RunResult]) -> None:
    rows = [
        ("logins/s", "throughput", f">= {THROUGHPUT_TARGET:.2f}"),
        ("login latency p50 (ms)", "p50_ms", "-"),
        ("login latency p95 (ms)", "p95_ms", "-"),
    ]
    lines: list[tuple[str, ...]] = [("metric", "without module", "with module", "ratio", "target")]
    verdict = ""
    for name, field, target_text in rows:
        a, b = median(without, field), median(with_, field)
        ratio = b / a
        lines.append((name, f"{a:.1f}", f"{b:.1f}", f"{ratio:.3f}", target_text))
        if field == "throughput":
            met = ratio >= THROUGHPUT_TARGET
            verdict = f"{name}: ratio {ratio:.3f} {target_text}: {'met' if met else 'MISSED'}"
    print(
        f"\nmedian of {ROUNDS} rounds, {LOGINS} password logins each on enrolled devices, {CLIENTS} in "
        f"flight; registry of {REGISTRY:,} enrolled devices ({USERS:,} users); "
        "ratio = with / without; latency for information, no target"
    )
    print_table(lines)
    print()
    print(verdict)
    a, b = (1000 / median(results, "throughput") for results in (without, with_))
    print(f"time per login (1 / throughput): without {a:.2f} ms, with {b:.2f} ms, difference {b - a:+.2f} ms")
    # The servers hash with bcrypt cost 4, which makes a login cheap and the
    # module's fixed cost per login stand out; production runs Synapse's default.
    cheap, default = bcrypt_check_ms(BENCH_BCRYPT_ROUNDS, 200), bcrypt_check_ms(DEFAULT_BCRYPT_ROUNDS, 3)
    print(
        f"for scale: the password check alone takes {cheap:.1f} ms at bcrypt cost {BENCH_BCRYPT_ROUNDS} "
        f"(these servers) and {default:.0f} ms at Synapse's default cost {DEFAULT_BCRYPT_ROUNDS}, against "
        f"which the difference is {(b - a) / default * 100:.2f} %"
    )


def main() -> None:
    """Start both homeservers, fill the registry, measure, print the table; always stop them."""
    with homeserver_pair() as (without_hs, with_hs):
        print(f"registering {USERS:,} users on each, filling the registry (not timed) ...", flush=True)
        # Each Synapse is one process: setting up both at once keeps both cores busy.
        with ThreadPoolExecutor(2) as pool:
            for future in [
                pool.submit(set_up, "without module", without_hs),
                pool.submit(set_up, "with module", with_hs),
            ]:
                future.result()
        check_gate(without_hs, with_hs)
        pool_devices = login_pool()
        targets = {"without module": without_hs, "with module": with_hs}
        for label, hs in targets.items():
            first = run_logins(label, hs, pool_devices)
            print(
                f"  first login on each of {len(pool_devices):,} devices (creates it), {label}: "
                f"{first.throughput:.1f} logins/s (warm-up, not compared)",
                flush=True,
            )
        results: dict[str, list[RunResult]] = {label: [] for label in targets}
        for round_no in range(ROUNDS):
            sequence = random.Random(round_no).sample(pool_devices, LOGINS)
            order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
            for label in order:
                result = run_logins(label, targets[label], sequence)
                results[label].append(result)
                print(
                    f"  round {round_no + 1}/{ROUNDS} {label:<14} {result.throughput:7.1f} logins/s  "
                    f"p50 {result.p50_ms:6.1f} ms  p95 {result.p95_ms:6.1f} ms",
                    flush=True,
                )
        report(results["without module"], results["with module"])
