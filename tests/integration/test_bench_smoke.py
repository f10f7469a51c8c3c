"""Every benchmark entry still runs: each at its smoke size (``main(smoke=True)``,
what ``python -m bench --smoke`` runs), against real Synapse processes where it
uses them, and prints its report.

No figure is asserted: at these sizes they mean nothing, and a missed target
is a result, not a failure (``bench/__main__.py``). What fails is an
exception, or a report that is missing the lines it always ends with; so a
change to the module, the bots or devtools that breaks a benchmark shows here
instead of at the next measurement.
"""

from __future__ import annotations

import re

import pytest

from bench.__main__ import ENTRIES, Entry

VERDICT = r": (met|MISSED)$"

#: per entry, lines (regular expressions, matched per line) its report always
#: prints once it has measured: the last ones, so an entry that stopped early fails
REPORTED: dict[str, tuple[str, ...]] = {
    "module_overhead": (r"^-+\+-", r"^throughput \(msgs/s\): ratio .*" + VERDICT, r"^latency p95 "),
    "federation_inbound": (r"^-+\+-", r"^inbound throughput \(events/s\): ratio .*" + VERDICT),
    "large_room": (
        r"into a room of \d+ joined members",
        r"^throughput \(msgs/s\): ratio .*" + VERDICT,
        r"^time per message \(1 / throughput\): without .* difference [+-][\d.]+ ms$",
        r"^the module's extra time per message by room size: .*" + VERDICT,
    ),
    "login_rate": (
        r"^logins/s: ratio .*" + VERDICT,
        r"^logins/s: ratio [\d.]+ \(information: cheap hashing",
        r"^time per login \(1 / throughput, .* at cost 4 takes [\d.]+ ms on this machine$",
    ),
    "media_upload": (
        r"^-+\+-",
        r"^peak RSS during .* uploads: [+-]\d+ MiB .*" + VERDICT,
        r"^for scale: the module's content check",
    ),
    "media_detection": (
        r"^detection: \d+ of \d+ smuggled files refused",
        r"^allowed files accepted: \d+ of \d+",
        r"^false refusals: \d+ of [\d,]+ ciphertext buffers",
        r"check time median [\d.]+ ms",
    ),
    "device_import": (r"^-+\+-", r"^re-run \(all rows enrolled\): \d+ rows/s .*" + VERDICT),
    "retention_sweep": (r"^-+\+-", r"^sweep throughput: ratio .*" + VERDICT),
    "auditor_archive": (r"^-+\+-", r"^search p95, first pass ", r"^after the purge: [\d,]+ messages$"),
    "auditor_shards": (
        r"^-+\+-",
        r"^\d+ rooms, \d+ shards?: lag p95 .* catch-up [\d.]+ s <= \d+ s: (met|MISSED)",
        r"^CPU per message, \d+ -> \d+ rooms, 1 shard: .* ratio .*" + VERDICT,
        r"^CPU per message, \d+ -> \d+ rooms, 2 shards: .* ratio .*" + VERDICT,
        r"^catch-up, \d+ -> \d+ rooms, 2 shards: .*" + VERDICT,
        r"^\d+ rooms, 2 shards against 1: lag p95 ",
    ),
    "retention_scaling": (r"^-+\+-", r"^SQLite: .*" + VERDICT, r"^PostgreSQL: .*" + VERDICT),
    "dispatch_alert": (
        r"ratio alert / plain, warm",
        r"acknowledgements stored by the bot .*(met|MISSED)$",
        r"bot peak RSS \(VmHWM\) .*(met|MISSED)$",
    ),
}


def test_every_entry_says_what_its_report_ends_with() -> None:
    assert {entry.name for entry in ENTRIES} == set(REPORTED)


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_the_entry_runs_at_smoke_size(entry: Entry, capsys: pytest.CaptureFixture[str]) -> None:
    entry.run(True)
    out = capsys.readouterr().out
    missing = [pattern for pattern in REPORTED[entry.name] if not re.search(pattern, out, re.MULTILINE)]
    assert not missing, f"{entry.name} did not print its report (no line matches {missing}):\n{out[-3000:]}"
