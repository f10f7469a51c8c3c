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

from bots.auditor.cli import main
from bots.auditor.consultation_log import (
    GENESIS_HASH,
    Action,
    ChainBroken,
    ConsultationLog,
    Problem,
    expires_at,
)

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
        assert log.purge_expired(datetime(2028, 1, 1, tzinfo=UTC)) == 2

        assert [entry.seq for entry in log.entries()] == [3, 4]
        result = log.verify()
        assert (result.ok, result.anchor_seq, result.entries_checked) == (True, 2, 2)
        clock.now_ms = ms(2028, 1, 2)
        add(log)
        assert log.verify().ok

    # Everything purged: the checkpoint is the head, appending continues the chain.
    with ConsultationLog(db, clock=clock) as log:
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


def test_a_version_1_log_gains_the_claims_and_keeps_verifying(db: Path) -> None:
    with ConsultationLog(db) as log:
        add(log, 3)
    with sqlite3.connect(db) as raw:
        raw.execute("DROP TABLE answered_commands")
        raw.execute("PRAGMA user_version = 1")
    with ConsultationLog(db, read_only=True) as log:
        assert log.verify().ok, "verify-log reads a version 1 file as it is"
    with ConsultationLog(db) as log:
        assert log.claim_command("$cmd1")
        assert log.verify().ok
        assert len(log.entries()) == 3
    (version,) = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()
    assert version == 2
