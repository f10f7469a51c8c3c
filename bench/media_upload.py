"""Media uploads: throughput and the Synapse process's memory, with the
module's content check and without.

The module judges every upload twice: before the body is stored,
``is_user_allowed_to_upload_media_of_size`` checks the declared size and the
user's daily quota (one database query); once the file is stored,
``check_media_file_for_spam`` reads its first 256 KiB and its last block in
a thread, has libmagic say what it is, and for content libmagic cannot name
runs the randomness test on those bytes (``synapse_police_policy/media/filetype.py``).
Neither should cost throughput, and the reads should not make memory grow
with the size of the file.

Two Synapse processes on SQLite (policy settings on both, test rate limits),
one with the module and one without. The module's config lets the bench's
files through: ``media.encrypted_max_size`` 200M, ``daily_upload_quota`` 100G
(``MODULE_CONFIG``); both servers get the same homeserver settings derived
from it (``max_upload_size`` included). On each, one user on an enrolled
device (``bench/accounts.py``) uploads with ``POST /_matrix/media/v3/upload``,
the raw body in the request, one upload at a time on a keep-alive connection:

* random bytes, as an end-to-end encrypted attachment is (opaque ciphertext
  to the server), of 5 MiB and of 100 MiB, ``application/octet-stream``;
* an MP4 of 100 MiB: the head of ``tests/media_corpus.py``'s ``mp4()`` (an
  ``ftyp`` box) and one ``mdat`` box of random bytes (compressed video looks
  random), ``video/mp4``; the module must recognise it as video/mp4 and hold
  it to that type's limit.

The same bytes go to both servers. Each case is uploaded once on each server
before the rounds (not compared). In each of ``ROUNDS`` rounds, each case's
uploads alternate between the servers, upload by upload (A B A B ..., the
next round B A B A ...): the module's fixed cost per upload is about 1 ms
against 12 ms for a 5 MiB upload over loopback, and whatever else the machine
does drifts over seconds, so uploads far apart in time would differ by more
than the module costs. A server's throughput in a round is bytes / the sum of
its uploads' times (request sent until the answer arrived); the medians over
the rounds are compared.

Memory: during every 100 MiB upload a thread per server samples its Synapse process's
``VmRSS`` (``/proc/PID/status``) every ``RSS_INTERVAL_S``; the peak per
server is compared (RSS before the first upload and the process's ``VmHWM``
at the end for information).

After each case of a round the stored files are deleted from the media store (not timed),
so the kernel writing gigabytes of earlier uploads to disk does not slow later
ones; the database rows stay.
"""

from __future__ import annotations

import http.client
import os
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import attrs
import magic

from devtools.homeserver import Homeserver
from synapse_police_policy.media.filetype import HEAD_BYTES, sniff

from .accounts import BenchError, enrolled_user, has_module
from .module_overhead import PASSWORD, homeserver_pair, print_table

MIB = 1024**2
#: runs per server; rounds alternate which server goes first
ROUNDS = 10
#: VmRSS sampling period during the 100 MiB uploads
RSS_INTERVAL_S = 0.02
#: files accepted whole: random bytes up to 200 MiB, a daily quota no run reaches
MODULE_CONFIG = {"media": {"encrypted_max_size": "200M", "daily_upload_quota": "100G"}}
UPLOAD_PATH = "/_matrix/media/v3/upload"

THROUGHPUT_TARGET = 0.90
#: the module's process may peak at most this much above the other one
RSS_TARGET_MIB = 64


@attrs.frozen
class Case:
    name: str
    size: int
    content_type: str
    #: uploads per run
    uploads: int
    mp4: bool = False
    #: whether the process's memory is sampled during these uploads (the large ones)
    sampled: bool = False

    def content(self) -> bytes:
        return mp4(self.size) if self.mp4 else os.urandom(self.size)


CASES = (
    Case("5 MiB random bytes", 5 * MIB, "application/octet-stream", uploads=40),
    Case("100 MiB random bytes", 100 * MIB, "application/octet-stream", uploads=3, sampled=True),
    Case("100 MiB MP4", 100 * MIB, "video/mp4", uploads=3, mp4=True, sampled=True),
)


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    cases: tuple[Case, ...]
    #: runs per server
    rounds: int

    @property
    def sampled_size(self) -> str:
        """The size of the uploads during which memory is sampled, for the report."""
        sizes = sorted({case.size for case in self.cases if case.sampled})
        return " and ".join(f"{size // MIB} MiB" for size in sizes)


FULL = Sizes(cases=CASES, rounds=ROUNDS)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(
    cases=(
        Case("256 KiB random bytes", 256 * 1024, "application/octet-stream", uploads=2),
        Case("2 MiB random bytes", 2 * MIB, "application/octet-stream", uploads=1, sampled=True),
        Case("2 MiB MP4", 2 * MIB, "video/mp4", uploads=1, mp4=True, sampled=True),
    ),
    rounds=2,
)


def _box(kind: bytes, payload: bytes) -> bytes:
    """An ISO base media file box (as in ``tests/media_corpus.py``)."""
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def mp4(size: int) -> bytes:
    """``ftyp`` (brand isom, as ``tests/media_corpus.py``'s ``mp4()``), an empty
    ``free`` box and an ``mdat`` box of random bytes filling ``size``."""
    head = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41") + _box(b"free", b"")
    payload = size - len(head) - 8
    return head + struct.pack(">I", 8 + payload) + b"mdat" + os.urandom(payload)


@attrs.define
class Target:
    label: str
    homeserver: Homeserver
    token: str
    #: case name -> throughput (MiB/s) of each run
    throughput: dict[str, list[float]] = attrs.field(factory=dict)
    #: case name -> seconds of each upload
    seconds: dict[str, list[float]] = attrs.field(factory=dict)
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    hwm_end_kib: int = 0

    @property
    def pid(self) -> int:
        process = self.homeserver.process
        if process is None:
            raise BenchError(f"{self.label}: Synapse is not running")
        return process.pid


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


@contextmanager
def rss_sampler(target: Target) -> Iterator[None]:
    """Sample the process's VmRSS every RSS_INTERVAL_S during the block; the
    peak goes into ``target.rss_peak_kib``."""
    stop = threading.Event()
    peak = 0

    def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, proc_status_kib(target.pid, "VmRSS"))
            if stop.wait(RSS_INTERVAL_S):
                return

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        # one last sample once the answer came
        peak = max(peak, proc_status_kib(target.pid, "VmRSS"))
        target.rss_peak_kib = max(target.rss_peak_kib, peak)


def upload(connection: http.client.HTTPConnection, target: Target, case: Case, body: bytes) -> float:
    """One upload; returns its seconds (request sent until the answer arrived)."""
    headers = {
        "Authorization": f"Bearer {target.token}",
        "Content-Type": case.content_type,
        "Content-Length": str(len(body)),
    }
    started = time.perf_counter()
    connection.request("POST", UPLOAD_PATH, body=body, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or b"content_uri" not in raw:
        raise BenchError(
            f"{target.label}: upload of {case.name} failed: HTTP {response.status} {raw[:300]!r}"
        )
    return elapsed


def connect(hs: Homeserver) -> http.client.HTTPConnection:
    # Large blocks: sending a file-like body is then not the client's bottleneck.
    return http.client.HTTPConnection(hs.spec.bind_address, hs.spec.http_port, timeout=120, blocksize=MIB)


def run_case(targets: Sequence[Target], case: Case, body: bytes, uploads: int) -> list[list[float]]:
    """``uploads`` uploads on each target, alternating between them upload by
    upload in the given order; memory sampled for the large ones. Returns
    each target's upload times."""
    connections = [connect(target.homeserver) for target in targets]
    times: list[list[float]] = [[] for _ in targets]
    try:
        with ExitStack() as sampling:
            if case.sampled:
                for target in targets:
                    sampling.enter_context(rss_sampler(target))
            for _ in range(uploads):
                for index, target in enumerate(targets):
                    times[index].append(upload(connections[index], target, case, body))
        return times
    finally:
        for connection in connections:
            connection.close()


def clear_media_store(hs: Homeserver) -> int:
    """Delete the stored uploads (not their database rows); returns how many."""
    removed = 0
    for path in (hs.spec.directory / "media_store" / "local_content").rglob("*"):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def check_module(without: Target, with_: Target) -> None:
    """Make sure the A/B is what it claims: only the module refuses a plain
    text file (not an allowed type, not ciphertext)."""
    body = b"Clear text is not an allowed media type.\n" * 100
    for target, loaded in ((without, False), (with_, True)):
        connection = connect(target.homeserver)
        try:
            headers = {"Authorization": f"Bearer {target.token}", "Content-Type": "text/plain"}
            connection.request("POST", UPLOAD_PATH, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if (response.status != 200) != loaded:
            expected = "refused" if loaded else "accepted"
            raise BenchError(
                f"{target.label}: a text/plain upload should be {expected}, "
                f"got HTTP {response.status} {raw[:200]!r}"
            )


def set_up(label: str, hs: Homeserver) -> Target:
    token = enrolled_user(hs, "uploader", PASSWORD)
    return Target(label, hs, token)


def mib_per_s(size: int, seconds: Sequence[float]) -> float:
    return size * len(seconds) / sum(seconds) / MIB


def measure(without: Target, with_: Target, sizes: Sizes, bodies: dict[str, bytes]) -> None:
    targets = (without, with_)
    rounds = sizes.rounds
    for target in targets:
        target.rss_before_kib = proc_status_kib(target.pid, "VmRSS")
    for case in sizes.cases:
        run_case(targets, case, bodies[case.name], 1)
    for target in targets:
        clear_media_store(target.homeserver)
    print("  warm-up: one upload of each case on each server (not compared)", flush=True)
    for round_no in range(rounds):
        order = targets if round_no % 2 == 0 else targets[::-1]
        figures: dict[str, list[str]] = {target.label: [] for target in targets}
        for case in sizes.cases:
            for target, seconds in zip(
                order, run_case(order, case, bodies[case.name], case.uploads), strict=True
            ):
                rate = mib_per_s(case.size, seconds)
                target.throughput.setdefault(case.name, []).append(rate)
                target.seconds.setdefault(case.name, []).extend(seconds)
                figures[target.label].append(f"{case.name} {rate:6.1f}")
            for target in targets:
                clear_media_store(target.homeserver)
        for target in order:
            rates = ", ".join(figures[target.label])
            print(
                f"  round {round_no + 1}/{rounds} {target.label:<14} MiB/s: {rates}; "
                f"peak RSS so far {target.rss_peak_kib / 1024:.0f} MiB",
                flush=True,
            )
    for target in targets:
        target.hwm_end_kib = proc_status_kib(target.pid, "VmHWM")


def report(without: Target, with_: Target, sizes: Sizes) -> None:
    header = ("metric", "without module", "with module", "ratio / difference", "target")
    lines: list[tuple[str, ...]] = [header]
    verdicts: list[str] = []
    for case in sizes.cases:
        a = statistics.median(without.throughput[case.name])
        b = statistics.median(with_.throughput[case.name])
        ratio = b / a
        target_text = f">= {THROUGHPUT_TARGET:.2f}"
        lines.append((f"{case.name}: MiB/s", f"{a:.1f}", f"{b:.1f}", f"{ratio:.3f}", target_text))
        verdicts.append(
            f"{case.name}: throughput ratio {ratio:.3f} {target_text}: "
            f"{'met' if ratio >= THROUGHPUT_TARGET else 'MISSED'}"
        )
    before_a, before_b = without.rss_before_kib / 1024, with_.rss_before_kib / 1024
    peak_a, peak_b = without.rss_peak_kib / 1024, with_.rss_peak_kib / 1024
    hwm_a, hwm_b = without.hwm_end_kib / 1024, with_.hwm_end_kib / 1024
    rss_target = f"<= +{RSS_TARGET_MIB} MiB"
    during = f"peak RSS during {sizes.sampled_size} uploads"
    lines += [
        (
            "RSS before the first upload (MiB)",
            f"{before_a:.0f}",
            f"{before_b:.0f}",
            f"{before_b - before_a:+.0f}",
            "-",
        ),
        (
            f"{during} (MiB)",
            f"{peak_a:.0f}",
            f"{peak_b:.0f}",
            f"{peak_b - peak_a:+.0f}",
            rss_target,
        ),
        ("VmHWM at the end (MiB)", f"{hwm_a:.0f}", f"{hwm_b:.0f}", f"{hwm_b - hwm_a:+.0f}", "-"),
    ]
    verdicts.append(
        f"{during}: {peak_b - peak_a:+.0f} MiB {rss_target}: "
        f"{'met' if peak_b - peak_a <= RSS_TARGET_MIB else 'MISSED'}"
    )
    uploads = ", ".join(f"{case.uploads} x {case.name}" for case in sizes.cases)
    print(
        f"\nmedian of {sizes.rounds} rounds of {uploads} per server, one upload at a time, "
        f"alternating between the servers "
        f"(throughput ratio = with / without; RSS difference = with - without; "
        f"RSS sampled every {RSS_INTERVAL_S * 1000:.0f} ms)"
    )
    print_table(lines)
    print()
    for verdict in verdicts:
        print(verdict)
    for case in sizes.cases:
        a = statistics.median(without.seconds[case.name]) * 1000
        b = statistics.median(with_.seconds[case.name]) * 1000
        print(
            f"{case.name}: median time per upload without {a:.1f} ms, with {b:.1f} ms, "
            f"difference {b - a:+.1f} ms"
        )
    print(
        f"for scale: the module's content check of a stored file (read the head, libmagic, randomness "
        f"test; filetype.sniff) takes {sniff_ms(sizes.cases[0].size):.2f} ms in this process (median of 50)"
    )


def sniff_ms(size: int, repeat: int = 50) -> float:
    """What ``check_media_file_for_spam`` does in its thread, timed here."""
    with tempfile.NamedTemporaryFile() as file:
        file.write(os.urandom(size))
        file.flush()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            sniff(file.name)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(smoke: bool = False) -> None:
    """Start both homeservers, upload, print the table; always stop them.
    ``smoke``: at ``SMOKE`` sizes instead of ``FULL``."""
    sizes = SMOKE if smoke else FULL
    bodies = {case.name: case.content() for case in sizes.cases}
    detected = {name: magic.from_buffer(body[:HEAD_BYTES], mime=True) for name, body in bodies.items()}
    print(f"libmagic on the files' heads: {', '.join(f'{n}: {m}' for n, m in detected.items())}", flush=True)
    with homeserver_pair(module_config=MODULE_CONFIG) as (without_hs, with_hs):
        if not has_module(with_hs) or has_module(without_hs):
            raise BenchError("the pair is not one server with the module and one without")
        with ThreadPoolExecutor(2) as pool:
            without_setup = pool.submit(set_up, "without module", without_hs)
            with_setup = pool.submit(set_up, "with module", with_hs)
            without, with_ = without_setup.result(), with_setup.result()
        check_module(without, with_)
        measure(without, with_, sizes, bodies)
        report(without, with_, sizes)
