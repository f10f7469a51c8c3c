"""Password logins per second with 100,000 enrolled devices in the registry.

With enrollment required, every login passes the module's gate
(``check_login_for_spam``, after Synapse checked the password): a lookup of
(user, device) in the enrollment registry, a table in Synapse's database, and
whether the device is in use already (logged in or holding keys: an enrolled
device is claimed by its first login, and a login naming a device in use is
refused). This entry measures what that gate costs once the registry has the
size of a large force's fleet.

Two variants, each on a fresh pair of Synapse processes on SQLite (policy
settings on both, test rate limits), one with the module and one without:

* the headline: the servers hash passwords with bcrypt cost 12, Synapse's
  default and what production runs, so a login costs what it costs there
  (the password check alone is about 220 ms of CPU on the 2-core development
  machine); compared against the target;
* for information, the worst case: bcrypt cost 4, the cost of every test
  homeserver, where a login takes about 4 ms of the server's time instead of
  about 120 ms, so the module's fixed cost per login weighs about 30 times
  more than at cost 12. No target.

In either, the registry of the module's server holds ``REGISTRY`` enrolled
devices, ``REGISTRY / USERS`` of each of ``USERS`` users, bulk-inserted in one
SQLite transaction once the module has created its tables
(``bench/accounts.py``). Of those users, the variant's login pool is
registered on both servers (shared-secret admin API, no device; the server
hashes the password at the variant's cost, checked in the database): all
``USERS`` at cost 4, ``HEADLINE_POOL`` of them, spread over the registry, at
cost 12 (registering 1,000 would take 220 s of CPU per server). Every login is
``m.login.password`` naming an enrolled device ID, the path of an MDM-managed
client, and every login is the first one on its device: it claims the device
and Synapse creates it, as when a phone is set up or logs in again after its
session ended (logging out deletes the device in Synapse; a login on a device
still in use is refused by the module, so it is no path to measure). So each
pass over the pool (the warm-up and every round) logs each pool user in on
another of its enrolled devices, the same ones on both servers. A first pass,
on both servers at once, warms them up (not timed).

Client threads (the variant's ``clients``) keep logins in flight, one
keep-alive connection each, so the Synapse process is the bottleneck: at cost
12 two, one password check per core. Alternating rounds (A B, B A, ...), the
same sequence of logins for both servers in a round; the medians are
compared:

* throughput: logins / (first request sent to last answer received);
* latency (for information): request sent until its answer arrived.
"""

from __future__ import annotations

import http.client
import json
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import attrs
import bcrypt

from devtools.homeserver import Homeserver

from .accounts import BenchError, count_enrolled, database_path, enroll_many, has_module, register_many
from .module_overhead import PASSWORD, RunResult, homeserver_pair, median, print_table

#: enrolled devices in the module's registry
REGISTRY = 100_000
#: users the registry's devices belong to, REGISTRY / USERS each
USERS = 1000
#: users registered and logging in at bcrypt cost 12 (a registration costs a
#: password hash, 220 ms here)
HEADLINE_POOL = 50
#: requests in flight while registering the users
SETUP_WORKERS = 4

THROUGHPUT_TARGET = 0.95
#: Synapse's default bcrypt cost, and that of the test homeservers
DEFAULT_BCRYPT_ROUNDS = 12
BENCH_BCRYPT_ROUNDS = 4
LOGIN_PATH = "/_matrix/client/v3/login"


@attrs.frozen
class Variant:
    name: str
    bcrypt_rounds: int
    #: users registered on both servers, each logging in on one enrolled device
    pool_users: int
    #: measured logins per run
    logins: int
    #: runs per server; rounds alternate which server goes first
    rounds: int
    #: logins in flight (threads, one connection each)
    clients: int
    #: compared against THROUGHPUT_TARGET; otherwise for information
    headline: bool


VARIANTS = (
    # 2 cores: two logins in flight keep both busy with password checks.
    Variant(
        f"bcrypt cost {DEFAULT_BCRYPT_ROUNDS} (Synapse's default)",
        DEFAULT_BCRYPT_ROUNDS,
        pool_users=HEADLINE_POOL,
        logins=HEADLINE_POOL,
        rounds=6,
        clients=2,
        headline=True,
    ),
    Variant(
        f"bcrypt cost {BENCH_BCRYPT_ROUNDS} (cheap hashing, worst case)",
        BENCH_BCRYPT_ROUNDS,
        pool_users=USERS,
        logins=1000,
        rounds=4,
        clients=8,
        headline=False,
    ),
)


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    #: enrolled devices in the module's registry
    registry: int
    #: users the registry's devices belong to, registry / users each
    users: int
    variants: tuple[Variant, ...]
    #: password checks timed for "one password check takes", by bcrypt cost
    bcrypt_checks: dict[int, int]

    @property
    def devices_per_user(self) -> int:
        return self.registry // self.users


FULL = Sizes(
    registry=REGISTRY,
    users=USERS,
    variants=VARIANTS,
    bcrypt_checks={DEFAULT_BCRYPT_ROUNDS: 5, BENCH_BCRYPT_ROUNDS: 200},
)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(
    registry=200,
    users=20,
    variants=tuple(
        attrs.evolve(variant, pool_users=pool, logins=pool, rounds=2)
        for variant, pool in zip(VARIANTS, (4, 20), strict=True)
    ),
    bcrypt_checks={DEFAULT_BCRYPT_ROUNDS: 1, BENCH_BCRYPT_ROUNDS: 5},
)


def localpart(user: int) -> str:
    return f"officer-{user:05d}"


def device_id(user: int, device: int) -> str:
    return f"MDM-{user:05d}-{device:04d}"


def pool_users(sizes: Sizes, count: int) -> list[int]:
    """``count`` of the registry's users, spread evenly over the registry."""
    return sorted({user * sizes.users // count for user in range(count)})


def login_pool(sizes: Sizes, users: Sequence[int], pass_no: int) -> list[tuple[str, str]]:
    """One enrolled device per user, at a different place in each user's range,
    and another one in each pass (its first login claims a device)."""
    per_user = sizes.devices_per_user
    if pass_no >= per_user:
        raise BenchError(f"pass {pass_no}: each user has only {per_user} enrolled devices to log in on")
    return [(localpart(user), device_id(user, (user * 37 + pass_no) % per_user)) for user in users]


def fill_registry(hs: Homeserver, sizes: Sizes) -> float:
    """All the registry's devices of its users, the pool's among them; returns the seconds it took."""
    started = time.perf_counter()
    per_user = sizes.devices_per_user
    rows = (
        (hs.user_id(localpart(user)), device_id(user, device))
        for user in range(sizes.users)
        for device in range(per_user)
    )
    written = enroll_many(hs, rows, label="bench registry")
    enrolled = count_enrolled(hs)
    expected = sizes.users * per_user
    if written != expected or enrolled != expected:
        raise BenchError(f"registry: wrote {written} rows, {enrolled} enrolled, expected {expected}")
    return time.perf_counter() - started


def stored_bcrypt_cost(hs: Homeserver, user_id: str) -> int:
    """The cost in the password hash Synapse stored ("$2b$12$..."): what a login pays."""
    with closing(sqlite3.connect(database_path(hs), timeout=30)) as db:
        row = db.execute("SELECT password_hash FROM users WHERE name = ?", (user_id,)).fetchone()
    if not row or not row[0]:
        raise BenchError(f"{hs.server_name}: no password hash stored for {user_id}")
    return int(row[0].split("$")[2])


def set_up(label: str, hs: Homeserver, sizes: Sizes, variant: Variant, users: Sequence[int]) -> None:
    """Same users on both servers, the registry on the module's (not timed)."""
    started = time.perf_counter()
    register_many(hs, [localpart(user) for user in users], PASSWORD, workers=SETUP_WORKERS)
    registered = time.perf_counter() - started
    for user in (users[0], users[-1]):
        cost = stored_bcrypt_cost(hs, hs.user_id(localpart(user)))
        if cost != variant.bcrypt_rounds:
            raise BenchError(
                f"{label}: password hashed at bcrypt cost {cost}, expected {variant.bcrypt_rounds}"
            )
    note = ""
    if has_module(hs):
        note = f", {sizes.registry:,} enrolled devices written in {fill_registry(hs, sizes):.1f} s"
    print(
        f"  {label}: {len(users):,} users registered (bcrypt cost {variant.bcrypt_rounds}) "
        f"in {registered:.1f} s{note}",
        flush=True,
    )


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


def run_logins(label: str, hs: Homeserver, logins: Sequence[tuple[str, str]], clients: int) -> RunResult:
    """``clients`` threads take the next login from a shared position until all are done."""
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

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    latencies = [(end - sent) * 1000 for sent, end in times]
    elapsed = max(end for _, end in times) - min(sent for sent, _ in times)
    return RunResult(
        throughput=len(times) / elapsed,
        p50_ms=statistics.median(latencies),
        p95_ms=statistics.quantiles(latencies, n=20, method="inclusive")[18],
    )


def check_gate(without_hs: Homeserver, with_hs: Homeserver, user: str) -> None:
    """Make sure the A/B is what it claims: only the module refuses a device
    that is not in the registry."""
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


@attrs.frozen
class Outcome:
    variant: Variant
    without: list[RunResult]
    with_: list[RunResult]
    seconds: float


def run_variant(sizes: Sizes, variant: Variant) -> Outcome:
    """A fresh pair of servers at the variant's bcrypt cost: set up, warm up,
    alternating rounds; always stop them."""
    started = time.perf_counter()
    print(f"\n--- {variant.name} ---", flush=True)
    with homeserver_pair({"bcrypt_rounds": variant.bcrypt_rounds}) as (without_hs, with_hs):
        users = pool_users(sizes, variant.pool_users)
        print(f"registering {len(users):,} users on each, filling the registry (not timed) ...", flush=True)
        # Each Synapse is one process: setting up both at once keeps both cores busy.
        with ThreadPoolExecutor(2) as pool:
            for future in [
                pool.submit(set_up, "without module", without_hs, sizes, variant, users),
                pool.submit(set_up, "with module", with_hs, sizes, variant, users),
            ]:
                future.result()
        check_gate(without_hs, with_hs, localpart(users[0]))
        pool_devices = login_pool(sizes, users, 0)
        targets = {"without module": without_hs, "with module": with_hs}
        # Warm-up, both servers at once (it is not compared, and at cost 12 it is long).
        with ThreadPoolExecutor(2) as pool:
            firsts = {
                label: pool.submit(run_logins, label, hs, pool_devices, variant.clients)
                for label, hs in targets.items()
            }
            for label, future in firsts.items():
                print(
                    f"  first login on each of {len(pool_devices):,} devices (creates it), {label}: "
                    f"{future.result().throughput:.1f} logins/s (warm-up, both at once, not compared)",
                    flush=True,
                )
        results: dict[str, list[RunResult]] = {label: [] for label in targets}
        for round_no in range(variant.rounds):
            sequence = random.Random(round_no).sample(login_pool(sizes, users, round_no + 1), variant.logins)
            order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
            for label in order:
                result = run_logins(label, targets[label], sequence, variant.clients)
                results[label].append(result)
                print(
                    f"  round {round_no + 1}/{variant.rounds} {label:<14} {result.throughput:7.2f} logins/s  "
                    f"p50 {result.p50_ms:6.1f} ms  p95 {result.p95_ms:6.1f} ms",
                    flush=True,
                )
    return Outcome(variant, results["without module"], results["with module"], time.perf_counter() - started)


def bcrypt_check_ms(rounds: int, repeat: int) -> float:
    """What one password check costs on this machine at a bcrypt cost."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds))
    started = time.perf_counter()
    for _ in range(repeat):
        bcrypt.checkpw(PASSWORD.encode(), hashed)
    return (time.perf_counter() - started) / repeat * 1000


def report(sizes: Sizes, outcome: Outcome, check_ms: float) -> None:
    variant = outcome.variant
    target = f">= {THROUGHPUT_TARGET:.2f}" if variant.headline else "(information: cheap hashing, worst case)"
    rows = [
        ("logins/s", "throughput", target),
        ("login latency p50 (ms)", "p50_ms", "-"),
        ("login latency p95 (ms)", "p95_ms", "-"),
    ]
    lines: list[tuple[str, ...]] = [("metric", "without module", "with module", "ratio", "target")]
    ratio = 0.0
    for name, field, target_text in rows:
        a, b = median(outcome.without, field), median(outcome.with_, field)
        lines.append(
            (
                name,
                f"{a:.2f}" if a < 100 else f"{a:.1f}",
                f"{b:.2f}" if b < 100 else f"{b:.1f}",
                f"{b / a:.3f}",
                target_text,
            )
        )
        if field == "throughput":
            ratio = b / a
    print(
        f"\n{variant.name}{'' if variant.headline else ', for information'}: median of {variant.rounds} "
        f"rounds, {variant.logins:,} password logins each on enrolled devices "
        f"of {variant.pool_users:,} users, "
        f"{variant.clients} in flight; registry of {sizes.registry:,} enrolled devices "
        f"({sizes.users:,} users); ratio = with / without; latency for information, no target; "
        f"{outcome.seconds:.0f} s with set-up"
    )
    print_table(lines)
    print()
    if variant.headline:
        verdict = "met" if ratio >= THROUGHPUT_TARGET else "MISSED"
        print(f"logins/s: ratio {ratio:.3f} >= {THROUGHPUT_TARGET:.2f}: {verdict}")
    else:
        print(f"logins/s: ratio {ratio:.3f} (information: cheap hashing, worst case; not held to the target)")
    a, b = (1000 / median(results, "throughput") for results in (outcome.without, outcome.with_))
    print(
        f"time per login (1 / throughput, {variant.clients} in flight): without {a:.2f} ms, with {b:.2f} ms, "
        f"difference {b - a:+.2f} ms; one password check at cost {variant.bcrypt_rounds} takes "
        f"{check_ms:.1f} ms on this machine"
    )


def main(smoke: bool = False) -> None:
    """Each variant on its own pair of homeservers, then both tables.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``."""
    sizes = SMOKE if smoke else FULL
    outcomes = [run_variant(sizes, variant) for variant in sizes.variants]
    checks = {rounds: bcrypt_check_ms(rounds, sizes.bcrypt_checks[rounds]) for rounds in sizes.bcrypt_checks}
    for outcome in outcomes:
        report(sizes, outcome, checks[outcome.variant.bcrypt_rounds])
