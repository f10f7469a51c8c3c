"""The auditor's archive at 90 days of a busy force: ingest rate, search latency, memory.

A synthetic archive (``bots/auditor/archive.py``) of ``MESSAGES`` messages
(1,000,000; ``BENCH_AUDITOR_MESSAGES`` or the first argument of ``python -m
bench.auditor_archive`` for fewer), written straight through the library, no
homeserver: bodies of 3 to 25 words drawn from a fixed vocabulary of
``VOCABULARY`` German-ish words (a few dozen real frequent words first, then
generated ones with umlauts and ß) by a Zipf law, so the commonest words are
in most messages and the rarest in a few hundred; some words capitalised,
some punctuation. ``ROOMS`` rooms, ``SENDERS`` senders (each room has its
own 20 or so), origin_server_ts spread over 89 days in arrival order with
jitter, event IDs like Synapse's (``$`` and 43 base64 characters). The random
generator is seeded: every run builds the same archive.

Full events (issue 19): every message carries its whole content as a client
receives it (``Message.content``, sealed in the archive, every column under
the row MAC): ``msgtype`` and ``body``; ``HTML_SHARE`` of them a
``formatted_body`` too; ``REPLY_SHARE`` reply to an earlier message of their
room (``m.in_reply_to``), ``THREAD_SHARE`` sit in a thread, and
``EDIT_SHARE`` are edits (``m.replace`` with ``m.new_content``) of their
sender's earlier message in that room, so ``SearchHit.current`` has work.

1. Ingest: ``add_many`` in batches of ``BATCH`` (one transaction each);
   timed: the calls only (building the ``Message`` objects is not timed).
   Target: ``INGEST_TARGET`` messages/s, AES-GCM and the blind index included.
2. Search, in a new process, so its peak RSS is the searcher's and not the
   generator's (a ``forkserver`` child: Linux carries ``ru_maxrss`` across
   fork and exec, so a child forked from this big process would report this
   process's size). It opens the archive and runs the fixed queries
   (``Corpus.queries``: 1 to 3 words of different frequencies, some with a
   room, a sender, both, a time range or a later page, a few with no hit and
   a few with no words) once in order: the first pass, with the caches of
   that process cold (the kernel's page cache is warm: the archive was just
   written); then ``WARM_ROUNDS`` more passes. Each query asks for a page of
   ``PAGE`` decrypted hits with snippets. Targets: p95 <= ``P95_TARGET_MS``
   for the first pass and for the warm passes, and the process's peak RSS
   (``ru_maxrss``) <= ``RSS_TARGET_MB``.
3. For information: the daily purge (the oldest day, about 1/89 of the archive,
   with the index merge and WAL truncation it ends with), the archive's size on
   disk, and the ingest process's peak RSS.
"""

from __future__ import annotations

import base64
import itertools
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from bots.auditor.archive import REPLACE, Archive, Message, canonical_content, new_key

MESSAGES = 1_000_000
VOCABULARY = 5_000
ROOMS = 100
SENDERS = 200
#: senders seen in a room
ROOM_SENDERS = 20
BATCH = 5_000
DAYS = 89
SEED = 20_240_901
WARM_ROUNDS = 4
PAGE = 20


@attrs.frozen
class Sizes:
    """Full size, or the smoke test's (``SMOKE``)."""

    messages: int
    #: messages per add_many
    batch: int
    #: search passes after the first
    warm_rounds: int


FULL = Sizes(messages=MESSAGES, batch=BATCH, warm_rounds=WARM_ROUNDS)
#: the same path in seconds: proves the entry runs, its figures mean nothing
SMOKE = Sizes(messages=2_000, batch=500, warm_rounds=2)

INGEST_TARGET = 5_000.0
P95_TARGET_MS = 50.0
RSS_TARGET_MB = 300.0
#: shares of messages with formatting, replies, threads and edits
HTML_SHARE = 0.10
REPLY_SHARE = 0.05
THREAD_SHARE = 0.03
EDIT_SHARE = 0.03

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000  # 2026-01-01 UTC

#: real words, most frequent first; then generated ones
COMMON_WORDS = """
und der die das ist nicht ein eine zu mit auf für an im von wir bitte wo sind noch
Einsatz Streife Lage Polizei Fahrzeug Kollegen Meldung Zeuge Person Kennzeichen Anfahrt
Verkehrsunfall Absperrung Rückmeldung Straße Einsatzleitung Hauptbahnhof Verstärkung Lagebild
unterwegs vor Ort erledigt Funk Status Übergabe Täter Fluchtrichtung Beschreibung männlich weiblich
"""
_SYLLABLE_PARTS = """
b br d f fr g gr h k kl kr l m n p pf r s sch schw st str t tr w z zw
a e i o u ä ö ü au ei eu ie
"""
_ONSETS, _VOWELS = (line.split() for line in _SYLLABLE_PARTS.strip().splitlines())
_CODAS = ["", "", "n", "r", "l", "ch", "ck", "ng", "nd", "st", "tz", "ß", "rt", "ft", "s"]
_SUFFIXES = ["", "", "", "ung", "heit", "keit", "schaft", "lich", "er", "en", "ig"]
_PUNCTUATION = ["", "", "", "", "", ",", ".", "!", "?", ":"]


def vocabulary(rng: random.Random) -> list[str]:
    """``VOCABULARY`` distinct words (distinct after case folding), the real ones first."""
    result = list(dict.fromkeys(COMMON_WORDS.split()))
    seen = {word.casefold() for word in result}
    while len(result) < VOCABULARY:
        syllables = rng.randint(1, 3)
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        word += rng.choice(_SUFFIXES)
        if word.casefold() not in seen:
            seen.add(word.casefold())
            result.append(word)
    return result


class Corpus:
    """The synthetic archive's content, reproducible from ``SEED``."""

    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.rng = random.Random(SEED)
        self.words = vocabulary(self.rng)
        self.cum_weights = list(itertools.accumulate(1.0 / rank for rank in range(1, VOCABULARY + 1)))
        self.rooms = [f"!room{n:03d}abcdefghij:polizei.example" for n in range(ROOMS)]
        self.senders = [f"@officer{n:03d}:polizei.example" for n in range(SENDERS)]
        self.step_ms = DAYS * DAY_MS // messages

    def room_senders(self, room: int) -> list[str]:
        return [self.senders[(room * 7 + k) % SENDERS] for k in range(ROOM_SENDERS)]

    def batches(self, size: int) -> Iterator[list[Message]]:
        rng, words, weights = self.rng, self.words, self.cum_weights
        batch: list[Message] = []
        #: (room, sender) -> the sender's last event ID there; room -> its last event ID
        last_by: dict[tuple[int, str], str] = {}
        last_in: dict[int, str] = {}
        for n in range(self.messages):
            room = rng.randrange(ROOMS)
            sender = self.room_senders(room)[rng.randrange(ROOM_SENDERS)]
            event_id = "$" + base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")
            picked = rng.choices(words, cum_weights=weights, k=rng.randint(3, 25))
            body = " ".join(
                (word.capitalize() if rng.random() < 0.1 else word) + rng.choice(_PUNCTUATION)
                for word in picked
            )
            content: dict[str, Any] = {"msgtype": "m.text", "body": body}
            if rng.random() < HTML_SHARE:
                content["format"] = "org.matrix.custom.html"
                content["formatted_body"] = f"<p><strong>{picked[0]}</strong> {body}</p>"
            relates_to = rel_type = None
            kind = rng.random()
            if kind < EDIT_SHARE and (room, sender) in last_by:
                relates_to, rel_type = last_by[(room, sender)], REPLACE
                content = {
                    "msgtype": "m.text",
                    "body": f"* {body}",
                    "m.new_content": {"msgtype": "m.text", "body": body},
                    "m.relates_to": {"rel_type": REPLACE, "event_id": relates_to},
                }
            elif kind < EDIT_SHARE + REPLY_SHARE and room in last_in:
                relates_to, rel_type = last_in[room], "m.in_reply_to"
                content["m.relates_to"] = {"m.in_reply_to": {"event_id": relates_to}}
            elif kind < EDIT_SHARE + REPLY_SHARE + THREAD_SHARE and room in last_in:
                relates_to, rel_type = last_in[room], "m.thread"
                content["m.relates_to"] = {"rel_type": "m.thread", "event_id": relates_to}
            if rel_type != REPLACE:
                last_by[(room, sender)] = last_in[room] = event_id
            batch.append(
                Message(
                    event_id=event_id,
                    room_id=self.rooms[room],
                    sender=sender,
                    device_id=f"PHONE{rng.randrange(10_000):05d}",
                    origin_server_ts=START_MS + n * self.step_ms + rng.randrange(self.step_ms),
                    body=body,
                    msgtype="m.text",
                    content=canonical_content(content),
                    relates_to=relates_to,
                    rel_type=rel_type,
                )
            )
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def queries(self) -> list[tuple[str, dict[str, Any]]]:
        """The fixed queries: (words, filters)."""
        w = self.words
        end = START_MS + DAYS * DAY_MS
        week = {"since": end - 7 * DAY_MS}
        old_days = {"since": START_MS + 10 * DAY_MS, "until": START_MS + 12 * DAY_MS}
        room, other_room = self.rooms[17], self.rooms[60]
        sender = self.room_senders(17)[3]
        stranger = self.senders[(17 * 7 + 100) % SENDERS]  # never writes in room 17
        return [
            *((w[rank], {}) for rank in (0, 3, 9, 20, 35)),  # in most messages
            *((w[rank], {}) for rank in (80, 150, 400, 900, 1500)),
            *((w[rank], {}) for rank in (2500, 3300, 4100, 4700, 4999)),  # in a few hundred
            (w[2].upper(), {}),
            (f"{w[0]} {w[1]}", {}),
            (f"{w[5]} {w[60]}", {}),
            (f"{w[100]} {w[700]}", {}),
            (f"{w[1200]} {w[2200]}", {}),
            (f"{w[3000]} {w[4000]}", {}),  # rarely together
            (f"{w[4500]} {w[4998]}", {}),
            (f"{w[0]} {w[4]} {w[11]}", {}),
            (f"{w[40]} {w[300]} {w[2000]}", {}),
            (f"{w[1000]} {w[2000]} {w[3000]}", {}),  # rarely all three
            (f"{w[7]}, {w[25]}!", {}),
            (w[0], {"room_id": room}),
            (w[500], {"room_id": room}),
            (w[4200], {"room_id": other_room}),
            (f"{w[1]} {w[30]}", {"room_id": other_room}),
            (f"{w[150]} {w[1500]}", {"room_id": room}),
            (w[0], {"sender": sender}),
            (w[800], {"sender": sender}),
            (w[3500], {"sender": sender}),
            (w[2], {"room_id": room, "sender": sender}),
            (w[2], {"room_id": room, "sender": stranger}),  # no hit: the index must say so quickly
            (w[0], week),
            (w[600], week),
            (w[3900], week),
            (w[0], old_days),
            (w[1100], old_days),
            (f"{w[9]} {w[90]}", {**old_days, "room_id": room}),
            (w[0], {"offset": PAGE}),
            (w[250], {"offset": PAGE}),
            (w[0], {"offset": 10 * PAGE}),
            (w[2600], {"offset": PAGE}),
            ("", {"room_id": room}),
            ("", {"sender": sender}),
            ("", old_days),
            ("", {}),
            (f"{w[13]} {w[4400]}", {"sender": sender}),
            (f"{w[200]} {w[210]}", week),
            (w[4999], {"room_id": room}),
            ("Einsatz", {"room_id": other_room, **week}),
        ]


def ingest(path: Path, key: bytes, corpus: Corpus, batch_size: int = BATCH) -> tuple[float, int]:
    """(seconds in add_many, messages added)."""
    spent = 0.0
    added = 0
    report_every = max(1, corpus.messages // 10)
    with Archive(path, key) as archive:
        for batch in corpus.batches(batch_size):
            started = time.perf_counter()
            added += archive.add_many(batch)
            spent += time.perf_counter() - started
            if added % report_every < len(batch):
                print(f"  {added:>9,} messages, {added / spent:7.0f} messages/s so far", flush=True)
    return spent, added


def search_process(
    path: str, key: bytes, queries: Sequence[tuple[str, dict[str, Any]]], warm_rounds: int = WARM_ROUNDS
) -> dict[str, Any]:
    """Run in a fresh process: the latencies (ms) of each pass, the hits, the peak RSS."""
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    passes: list[list[float]] = []
    hits: list[int] = []
    with Archive(path, key, create=False) as archive:
        for round_no in range(1 + warm_rounds):
            latencies = []
            for text, filters in queries:
                started = time.perf_counter()
                found = archive.search(text, limit=PAGE, **filters)
                latencies.append((time.perf_counter() - started) * 1000)
                if round_no == 0:
                    hits.append(len(found))
            passes.append(latencies)
    return {
        "passes": passes,
        "hits": hits,
        "rss_start_mb": rss_start / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(smoke: bool = False) -> None:
    """The entry of ``python -m bench``: ``FULL`` (``BENCH_AUDITOR_MESSAGES``
    messages if set), or ``SMOKE`` with ``smoke``."""
    if smoke:
        run(SMOKE)
    else:
        run(attrs.evolve(FULL, messages=int(os.environ.get("BENCH_AUDITOR_MESSAGES") or MESSAGES)))


def cli(argv: Sequence[str]) -> int:
    """``python -m bench.auditor_archive [MESSAGES]``."""
    if argv:
        run(attrs.evolve(FULL, messages=int(argv[0])))
    else:
        main()
    return 0


def run(sizes: Sizes) -> None:
    count = sizes.messages
    corpus = Corpus(count)
    key = new_key()
    with tempfile.TemporaryDirectory(prefix="bench-auditor-") as workdir:
        path = Path(workdir, "archive.db")
        print(f"  building an archive of {count:,} messages in batches of {sizes.batch:,} ...", flush=True)
        ingest_s, added = ingest(path, key, corpus, sizes.batch)
        ingest_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size = sum(p.stat().st_size for p in Path(workdir).iterdir() if p.is_file())

        queries = corpus.queries()
        with multiprocessing.get_context("forkserver").Pool(1) as pool:
            result = pool.apply(search_process, (str(path), key, queries, sizes.warm_rounds))

        with Archive(path, key) as archive:
            started = time.perf_counter()
            purged = archive.purge_older_than(START_MS + DAY_MS)
            purge_s = time.perf_counter() - started
            remaining = archive.count()
    report(sizes, added, ingest_s, ingest_rss, size, queries, result, purged, purge_s, remaining)


def report(
    sizes: Sizes,
    added: int,
    ingest_s: float,
    ingest_rss: float,
    size: int,
    queries: Sequence[tuple[str, dict[str, Any]]],
    result: dict[str, Any],
    purged: int,
    purge_s: float,
    remaining: int,
) -> None:
    # here, not at the top: module_overhead pulls in Synapse (90 MB), and the
    # search process imports this module
    from .module_overhead import print_table

    rate = added / ingest_s
    first = result["passes"][0]
    warm = [ms for latencies in result["passes"][1:] for ms in latencies]
    every = [*first, *warm]
    slowest = max(range(len(queries)), key=lambda i: max(p[i] for p in result["passes"]))
    text, filters = queries[slowest]
    print(
        f"\n{added:,} of {sizes.messages:,} messages added, {size / 2**20:.0f} MiB on disk "
        f"({size / max(added, 1):.0f} bytes/message); {len(queries)} queries, page of {PAGE}, "
        f"{sum(1 for h in result['hits'] if h == PAGE)} with a full page, "
        f"{sum(1 for h in result['hits'] if h == 0)} without hits"
    )
    lines: list[tuple[str, ...]] = [("measure", "value", "target", "verdict")]

    def line(name: str, value: str, target: str, met: bool | None) -> None:
        lines.append((name, value, target, "-" if met is None else ("met" if met else "MISSED")))

    line(
        "ingest (add_many), full events",
        f"{rate:,.0f} msgs/s",
        f">= {INGEST_TARGET:,.0f} msgs/s",
        rate >= INGEST_TARGET,
    )
    line("search p50, first pass", f"{statistics.median(first):.1f} ms", "", None)
    p95_first, p95_warm, rss = percentile(first, 0.95), percentile(warm, 0.95), result["rss_peak_mb"]
    line(
        "search p95, first pass",
        f"{p95_first:.1f} ms",
        f"<= {P95_TARGET_MS:.0f} ms",
        p95_first <= P95_TARGET_MS,
    )
    line(f"search p50, {sizes.warm_rounds} warm passes", f"{statistics.median(warm):.1f} ms", "", None)
    line(
        f"search p95, {sizes.warm_rounds} warm passes",
        f"{p95_warm:.1f} ms",
        f"<= {P95_TARGET_MS:.0f} ms",
        p95_warm <= P95_TARGET_MS,
    )
    line("search max, all passes", f"{max(every):.1f} ms", "", None)
    line("searcher peak RSS", f"{rss:.0f} MB", f"<= {RSS_TARGET_MB:.0f} MB", rss <= RSS_TARGET_MB)
    line("searcher RSS before opening", f"{result['rss_start_mb']:.0f} MB", "", None)
    line("ingest process peak RSS", f"{ingest_rss:.0f} MB", "", None)
    line("purge of the oldest day", f"{purged:,} msgs in {purge_s:.2f} s", "", None)
    print_table(lines)
    print(f"\nslowest query: {text!r} {filters} ({max(p[slowest] for p in result['passes']):.1f} ms)")
    print(f"after the purge: {remaining:,} messages")


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
