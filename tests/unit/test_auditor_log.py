"""The consultation log: hash chain, tamper detection, the year-end purge, ``police-audit verify-log``."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.auditor.chain_heads import (
    append_head,
    check_heads,
    head_notice,
    parse_heads,
    read_heads,
    signed_head,
)
from bots.auditor.cli import main
from bots.auditor.consultation_log import (
    GENESIS_HASH,
    Action,
    ChainBroken,
    ConsultationLog,
    Entry,
    LogKeyError,
    Problem,
    expires_at,
)
from bots.auditor.export import key_fingerprint

AUDITOR = "@auditor1:police.test"


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def add(log: ConsultationLog, n: int = 1, **overrides: object) -> None:
    for i in range(n):
        fields: dict = {
            "auditor": AUDITOR,
            "action": Action.SEARCH,
            "reason": f"Beschwerde 17/26, Prüfung {i}",
            "recipient": AUDITOR,
            "case_ref": "AZ 4711/26",
            "query": {"room": "!r:police.test", "text": "Übergabe"},
            "result_count": 3,
        }
        fields.update(overrides)
        log.append(**fields)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "consultations.sqlite"


@pytest.fixture
def log(db: Path) -> Iterator[ConsultationLog]:
    with ConsultationLog(db, clock=Clock(ms(2026, 3, 5))) as log:
        yield log


def tamper(db: Path, *statements: str) -> None:
    """What someone with write access to the file could do: drop the guards, then edit."""
    raw = sqlite3.connect(db)
    raw.execute("DROP TRIGGER consultations_append_only")
    raw.execute("DROP TRIGGER consultations_purge_only")
    for statement in statements:
        raw.execute(statement)
    raw.commit()
    raw.close()


def test_appended_entries_form_a_chain_that_verifies(log: ConsultationLog) -> None:
    add(log, 3)

    entries = log.entries()
    assert [entry.seq for entry in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert entries[1].prev_hash == entries[0].entry_hash
    assert entries[2].prev_hash == entries[1].entry_hash
    assert entries[0].time == datetime(2026, 3, 5, tzinfo=UTC)
    result = log.verify()
    assert result.ok
    assert (result.entries_checked, result.head_seq, result.head_hash) == (3, 3, entries[2].entry_hash)


def test_entry_hash_is_sha256_over_canonical_json_of_all_other_fields(log: ConsultationLog) -> None:
    entry = log.append(
        auditor=AUDITOR,
        action="export_request",
        reason="Disziplinarverfahren",
        recipient="@requester:police.test",
        case_ref="AZ 1/26",
        query={"to": 2, "from": 1},
        result_count=12,
    )

    fields = {
        "seq": 1,
        "time_ms": ms(2026, 3, 5),
        "auditor": AUDITOR,
        "action": "export_request",
        "case_ref": "AZ 1/26",
        "reason": "Disziplinarverfahren",
        "recipient": "@requester:police.test",
        "query": '{"from":1,"to":2}',
        "result_count": 12,
        "prev_hash": GENESIS_HASH,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert entry.query == fields["query"]
    assert entry.entry_hash == hashlib.sha256(canonical.encode("utf8")).hexdigest()


def test_append_refuses_missing_justification_and_unknown_actions(log: ConsultationLog) -> None:
    with pytest.raises(ValueError, match="reason"):
        add(log, reason="  ")
    with pytest.raises(ValueError):
        add(log, action="delete_everything")
    assert log.entries() == []


def test_entries_of_one_auditor(log: ConsultationLog) -> None:
    add(log, 2)
    add(log, auditor="@auditor2:police.test", action=Action.LOG_VIEW, case_ref=None)

    assert [entry.seq for entry in log.entries(auditor="@auditor2:police.test")] == [3]
    assert len(log.entries(auditor=AUDITOR)) == 2


def test_the_database_refuses_updates_and_deletes_ahead_of_the_checkpoint(
    log: ConsultationLog, db: Path
) -> None:
    add(log, 2)
    raw = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        raw.execute("UPDATE consultations SET reason = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="checkpoint"):
        raw.execute("DELETE FROM consultations WHERE seq = 1")
    raw.close()
    assert log.verify().ok


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("time_ms", "time_ms + 1"),
        ("auditor", "'@someone-else:police.test'"),
        ("action", "'show'"),
        ("case_ref", "NULL"),
        ("reason", "reason || '.'"),
        ("recipient", "'@press:elsewhere.test'"),
        ("query", "'{}'"),
        ("result_count", "0"),
        ("prev_hash", "'" + "1" * 64 + "'"),
        ("entry_hash", "'" + "2" * 64 + "'"),
    ],
)
def test_editing_any_field_names_the_entry(log: ConsultationLog, db: Path, column: str, value: str) -> None:
    add(log, 4)

    tamper(db, f"UPDATE consultations SET {column} = {value} WHERE seq = 2")

    result = log.verify()
    assert not result.ok
    assert (result.broken_seq, result.problem) == (2, Problem.EDITED)
    assert result.describe().startswith("entry 2: edited")


def test_an_edited_entry_with_a_recomputed_hash_no_longer_links(log: ConsultationLog, db: Path) -> None:
    add(log, 3)
    new_hash = attrs.evolve(log.entries()[1], reason="harmlos").computed_hash()

    tamper(db, f"UPDATE consultations SET reason = 'harmlos', entry_hash = '{new_hash}' WHERE seq = 2")

    result = log.verify()
    assert (result.broken_seq, result.problem) == (3, Problem.EDITED)
    assert "does not link to entry 2" in result.detail


def test_deleting_a_middle_entry_is_a_gap(log: ConsultationLog, db: Path) -> None:
    add(log, 5)

    tamper(db, "DELETE FROM consultations WHERE seq = 3")

    result = log.verify()
    assert (result.ok, result.broken_seq, result.problem) == (False, 3, Problem.GAP)
    assert "entries 3 are missing" in result.detail


def test_deleting_the_newest_entries_is_a_gap_at_the_end(log: ConsultationLog, db: Path) -> None:
    add(log, 5)

    tamper(db, "DELETE FROM consultations WHERE seq >= 4")

    result = log.verify()
    assert (result.broken_seq, result.problem) == (4, Problem.GAP)
    assert "4-5" in result.detail


def test_swapping_two_entries_is_reported_as_reordered(log: ConsultationLog, db: Path) -> None:
    add(log, 4)

    tamper(
        db,
        "UPDATE consultations SET seq = -2 WHERE seq = 2",
        "UPDATE consultations SET seq = 2 WHERE seq = 3",
        "UPDATE consultations SET seq = 3 WHERE seq = -2",
    )

    result = log.verify()
    assert (result.broken_seq, result.problem) == (2, Problem.REORDERED)
    assert "made as 3 is stored as 2" in result.detail


def test_retention_ends_with_the_year_after_the_entry(log: ConsultationLog) -> None:
    assert expires_at(ms(2026, 3, 5)) == datetime(2028, 1, 1, tzinfo=UTC)
    assert expires_at(ms(2026, 12, 31, 23, 59, 59)) == datetime(2028, 1, 1, tzinfo=UTC)
    assert expires_at(ms(2027, 1, 1)) == datetime(2029, 1, 1, tzinfo=UTC)


def test_purge_by_the_year_rule_keeps_the_chain_verifiable(db: Path) -> None:
    clock = Clock(ms(2026, 3, 5))
    with ConsultationLog(db, clock=clock) as log:
        for moment in [(2026, 3, 5), (2026, 12, 31, 23, 59, 59), (2027, 1, 1), (2027, 6, 1)]:
            clock.now_ms = ms(*moment)
            add(log)

        assert log.purge_expired(datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC)) == 0
        clock.now_ms = ms(2028, 1, 1)
        assert log.purge_expired(datetime(2028, 1, 1, tzinfo=UTC)) == 2

        assert [entry.seq for entry in log.entries()] == [3, 4]
        result = log.verify()
        assert (result.ok, result.anchor_seq, result.entries_checked) == (True, 2, 2)
        clock.now_ms = ms(2028, 1, 2)
        add(log)
        assert log.verify().ok

    # Everything purged: the checkpoint is the head, appending continues the chain.
    with ConsultationLog(db, clock=clock) as log:
        clock.now_ms = ms(2030, 1, 1)
        assert log.purge_expired(datetime(2030, 1, 1, tzinfo=UTC)) == 3
        assert log.entries() == []
        assert log.verify().ok
        add(log)
        assert [entry.seq for entry in log.entries()] == [6]
        assert log.verify().ok


def test_purge_still_detects_tampering_after_the_checkpoint(db: Path) -> None:
    clock = Clock(ms(2026, 3, 5))
    with ConsultationLog(db, clock=clock) as log:
        add(log, 2)
        clock.now_ms = ms(2027, 3, 5)
        add(log, 3)
        log.purge_expired(datetime(2028, 1, 1, tzinfo=UTC))

        tamper(db, "DELETE FROM consultations WHERE seq = 3")

        result = log.verify()
        assert (result.broken_seq, result.problem) == (3, Problem.GAP)


def test_purge_refuses_to_delete_a_broken_part_of_the_chain(log: ConsultationLog, db: Path) -> None:
    add(log, 3)
    tamper(db, "UPDATE consultations SET reason = 'x' WHERE seq = 2")

    with pytest.raises(ChainBroken, match="entry 2: edited"):
        log.purge_expired(datetime(2028, 1, 1, tzinfo=UTC))
    assert len(log.entries()) == 3


def test_purge_needs_an_aware_time(log: ConsultationLog) -> None:
    with pytest.raises(ValueError, match="timezone"):
        log.purge_expired(datetime(2028, 1, 1))


def test_cli_verify_log(
    log: ConsultationLog, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add(log, 3)
    assert main(["verify-log", str(db)]) == 0
    assert "chain intact: 3 entries" in capsys.readouterr().out

    tamper(db, "UPDATE consultations SET recipient = '@press:elsewhere.test' WHERE seq = 2")
    assert main(["verify-log", str(db)]) == 1
    captured = capsys.readouterr()
    assert "entry 2: edited" in captured.out
    assert "FAILED" in captured.err


def test_cli_verify_log_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.sqlite"
    assert main(["verify-log", str(missing)]) == 2
    assert not missing.exists()

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    assert main(["verify-log", str(garbage)]) == 2

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert main(["verify-log", str(other)]) == 2
    err = capsys.readouterr().err
    assert "not a consultation log" in err
    assert "Traceback" not in err


def test_a_command_is_claimed_once(db: Path) -> None:
    """A sync replayed after a restart brings the command again: it must not be
    answered, nor logged, twice."""
    clock = Clock(ms(2026, 3, 1))
    with ConsultationLog(db, clock=clock) as log:
        assert log.claim_command("$cmd1")
        assert not log.claim_command("$cmd1")
        assert log.claim_command("$cmd2")
    with ConsultationLog(db, clock=clock) as log:
        assert not log.claim_command("$cmd1"), "claims survive a restart"
        clock.now_ms += 8 * 24 * 3600 * 1000
        log.claim_command("$other")
        assert log.claim_command("$cmd1"), "claims are forgotten after a week"
        assert log.verify().ok


def legacy_log(db: Path, entries: int, *, version: int = 1) -> None:
    """A log as version 1 (or 2) of this code wrote it: no sealed queries, no entry times chained."""
    from bots.auditor import consultation_log as module

    with sqlite3.connect(db) as raw:
        raw.executescript(module._SCHEMA)
        if version == 1:
            raw.execute("DROP TABLE answered_commands")
        prev = module.GENESIS_HASH
        for seq in range(1, entries + 1):
            entry = Entry(
                seq, ms(2026, 3, seq), AUDITOR, "search", None, "r", AUDITOR, '{"q":"x"}', 1, prev, ""
            )
            entry = attrs.evolve(entry, entry_hash=entry.computed_hash())
            raw.execute(
                "INSERT INTO consultations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                attrs.astuple(entry)[:11],
            )
            prev = entry.entry_hash
        raw.execute("UPDATE consultation_chain SET head_seq = ?, head_hash = ?", (entries, prev))
        raw.execute(f"PRAGMA user_version = {version}")


def test_a_version_1_log_gains_the_claims_and_keeps_verifying(db: Path) -> None:
    legacy_log(db, 3)
    with ConsultationLog(db, read_only=True) as log:
        assert log.verify().ok, "verify-log reads a version 1 file as it is"
    with ConsultationLog(db) as log:
        assert log.claim_command("$cmd1")
        assert log.verify().ok
        assert len(log.entries()) == 3
        add(log)
        assert log.verify().ok
    (version,) = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()
    assert version == 3


# -- sealed queries, the checkpoint held to the retention rule, exported heads (issue 19) ---------

LOG_KEY = bytes(range(32))


def test_queries_are_sealed_and_the_chain_verifies_without_the_key(db: Path) -> None:
    with ConsultationLog(db, key=LOG_KEY, clock=Clock(ms(2026, 3, 5))) as log:
        add(log, 2)
        entry = log.entries()[0]
        assert json.loads(entry.query) == {"room": "!r:police.test", "text": "Übergabe"}
    at_rest = b"".join(path.read_bytes() for path in db.parent.iterdir() if path.is_file())
    assert "Übergabe".encode() not in at_rest and b"!r:police.test" not in at_rest
    with ConsultationLog(db, read_only=True) as log:
        assert log.verify().ok
        assert log.entries()[0].query.startswith("sealed:")
    with pytest.raises(LogKeyError, match="does not match"):
        ConsultationLog(db, key=bytes(32))


def test_a_sealed_query_moved_to_another_entry_does_not_open(db: Path) -> None:
    with ConsultationLog(db, key=LOG_KEY) as log:
        add(log, 2, query={"text": "eins"})
        first, second = (log.entry(1), log.entry(2))
        assert first is not None and second is not None
        with pytest.raises(LogKeyError, match="altered"):
            log.open_query(attrs.evolve(second, query=first.query))


def moved_checkpoint(db: Path, anchor_seq: int, anchor_time: int | None, delete_up_to: int) -> None:
    """What the log's own triggers allow: the checkpoint forward, the entries behind it deleted."""
    with sqlite3.connect(db) as raw:
        hash_ = raw.execute("SELECT entry_hash FROM consultations WHERE seq = ?", (anchor_seq,)).fetchone()[0]
        raw.execute(
            "UPDATE consultation_chain SET anchor_seq = ?, anchor_hash = ?, anchor_time_ms = ?",
            (anchor_seq, hash_, anchor_time),
        )
        raw.execute("DELETE FROM consultations WHERE seq <= ?", (delete_up_to,))


@pytest.mark.parametrize("keep_after", [True, False])
def test_a_checkpoint_moved_forward_to_delete_entries_is_detected(db: Path, keep_after: bool) -> None:
    clock = Clock(ms(2026, 3, 5))
    with ConsultationLog(db, clock=clock) as log:
        add(log, 5)
        made = log.entry(3).time_ms if keep_after else log.entry(5).time_ms  # type: ignore[union-attr]
    anchor = 3 if keep_after else 5
    moved_checkpoint(db, anchor, made, anchor)
    with ConsultationLog(db, read_only=True, clock=clock) as log:
        result = log.verify()
        assert (result.ok, result.problem, result.broken_seq) == (False, Problem.CHECKPOINT, anchor)
        assert "before their retention ended" in result.detail
        # once the retention rule allows it, the same checkpoint is a lawful purge
        assert log.verify(now_ms=ms(2028, 1, 1)).ok


def test_a_checkpoint_with_a_forged_time_is_caught_by_the_entry_after_it(db: Path) -> None:
    clock = Clock(ms(2026, 3, 5))
    with ConsultationLog(db, clock=clock) as log:
        add(log, 5)
    moved_checkpoint(db, 3, ms(2020, 1, 1), 3)
    with ConsultationLog(db, read_only=True, clock=clock) as log:
        result = log.verify()
        assert (result.ok, result.problem) == (False, Problem.CHECKPOINT)
        assert "does not match" in result.detail


def test_the_log_refuses_a_checkpoint_without_its_time(db: Path) -> None:
    with ConsultationLog(db) as log:
        add(log, 2)
    with sqlite3.connect(db) as raw, pytest.raises(sqlite3.IntegrityError, match="checkpoint moves"):
        raw.execute("UPDATE consultation_chain SET anchor_seq = 2")


def heads_file(tmp_path: Path, log: ConsultationLog, key: Ed25519PrivateKey, now: int) -> Path:
    path = tmp_path / "chain-heads.jsonl"
    append_head(path, signed_head(log, key, now))
    return path


def test_exported_heads_catch_a_rebuilt_or_shortened_chain(db: Path, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    fingerprint = key_fingerprint(key.public_key())
    clock = Clock(ms(2026, 3, 5))
    with ConsultationLog(db, clock=clock) as log:
        add(log, 3)
        heads = heads_file(tmp_path, log, key, clock())
        add(log, 2)
        append_head(heads, signed_head(log, key, clock()))
        parsed, problems = parse_heads(read_heads(heads), fingerprint)
        assert problems == [] and [head.seq for head in parsed] == [3, 5]
        assert check_heads(log, parsed, clock()) == []
    # deleting the newest entries and winding the head back: consistent in itself
    tamper(
        db,
        "DROP TRIGGER consultation_chain_forward",
        "DELETE FROM consultations WHERE seq > 3",
        "UPDATE consultation_chain SET head_seq = 3, head_hash = "
        "(SELECT entry_hash FROM consultations WHERE seq = 3)",
    )
    with ConsultationLog(db, read_only=True, clock=clock) as log:
        assert log.verify().ok
        parsed, _ = parse_heads(read_heads(heads), fingerprint)
        assert any("log ends at entry 3" in problem for problem in check_heads(log, parsed, clock()))


def test_exported_heads_catch_everything_purged_under_a_forged_checkpoint_time(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = Ed25519PrivateKey.generate()
    fingerprint = key_fingerprint(key.public_key())
    clock = Clock(ms(2026, 3, 5))
    with ConsultationLog(db, clock=clock) as log:
        add(log, 3)
        heads = heads_file(tmp_path, log, key, clock())
        made = log.entry(3).time_ms  # type: ignore[union-attr]
    assert main(["verify-log", str(db), "--heads", str(heads), "--fingerprint", fingerprint]) == 0
    assert "agree with the log" in capsys.readouterr().out
    moved_checkpoint(db, 3, ms(2020, 1, 1), 3)  # nothing left after it to contradict the time
    with ConsultationLog(db, read_only=True, clock=clock) as log:
        assert log.verify().ok
        parsed, _ = parse_heads(read_heads(heads), fingerprint)
        (problem,) = check_heads(log, parsed, clock())
        assert "deleted before its retention ended" in problem
        assert check_heads(log, parsed, expires_at_ms(made)) == []
    assert main(["verify-log", str(db), "--heads", str(heads), "--fingerprint", fingerprint]) == 1
    assert "retention ended" in capsys.readouterr().out


def expires_at_ms(time_ms: int) -> int:
    return int(expires_at(time_ms).timestamp() * 1000)


def test_heads_signed_by_another_key_or_altered_do_not_count(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with ConsultationLog(db) as log:
        add(log, 2)
        heads = heads_file(tmp_path, log, other, 1)
        line = signed_head(log, key, 1)
    altered = line.replace('"seq":2', '"seq":1')
    parsed, problems = parse_heads(
        [read_heads(heads)[0], altered, "", "prose", "{not json"], key_fingerprint(key.public_key())
    )
    assert parsed == []
    assert [p.split(": ", 1)[1][:14] for p in problems] == [
        "signed by key ",
        "the signature ",
        "not a chain he",
    ]
    # without a trusted key there is no check of the heads: it fails
    assert main(["verify-log", str(db), "--heads", str(heads), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no trusted signing key" in capsys.readouterr().err


def test_head_notice_carries_the_signed_line(db: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with ConsultationLog(db) as log:
        add(log)
        line = signed_head(log, key, ms(2026, 3, 5))
    notice = head_notice(line)
    assert "entry 1" in notice
    parsed, problems = parse_heads(notice.splitlines(), key_fingerprint(key.public_key()))
    assert problems == [] and parsed[0].seq == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(max_size=300) | st.builds(json.dumps, st.dictionaries(st.text(max_size=12), st.integers())),
        max_size=5,
    )
)
def test_any_heads_file_gives_problems_never_an_exception(lines: list[str]) -> None:
    parsed, problems = parse_heads(lines, "0" * 64)
    assert parsed == [] and len(problems) <= len(lines)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.text(max_size=20), st.text(max_size=40) | st.integers(), max_size=4))
def test_any_query_round_trips_sealed(tmp_path_factory: pytest.TempPathFactory, query: dict) -> None:
    path = tmp_path_factory.mktemp("log") / "log.sqlite"
    with ConsultationLog(path, key=LOG_KEY) as log:
        add(log, query=query)
        assert json.loads(log.entries()[0].query) == query
        assert log.verify().ok
