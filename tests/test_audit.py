"""The audit log: typed records, whole-line appends under a lock, torn lines set aside, and a chain anchored by
its head, so an edit, a removal, a swap, a forged append, a cut and a re-hash are all found."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from canary.audit import AuditLog, read_records, verify_chain
from canary.cli import app
from canary.errors import AuditError, ConflictError
from canary.model import Action, Phase, Weights
from canary.records import (
    GENESIS,
    DecisionRecord,
    NoteRecord,
    OutcomeRecord,
    PolicyRef,
    RouteName,
    applied_outcome,
    digest,
    seal,
)


def decision(n: int, *, writes: bool = True, reason: str = "") -> DecisionRecord:
    return DecisionRecord(
        time=1_700_000_000.0 + n,
        rollout="r1",
        policy=PolicyRef("web-app", "abc", "p.yaml"),
        target=RouteName("default", "web-app"),
        action=Action.HOLD,
        phase=Phase.PROGRESSING,
        weights_before=Weights(90, 10),
        weights_after=Weights(90, 10),
        reason=reason or f"tick {n}",
        actor="test",
        writes=writes,
        tick=n,
    )


def write_log(path: Path, ticks: int) -> str:
    """A log of `ticks` changes, each an intent and its applied outcome; returns the head."""
    log = AuditLog(path)
    with log.locked(1):
        for n in range(ticks):
            sealed = log.append(decision(n))
            log.append_sealed(seal(applied_outcome(sealed), sealed.hash))
        return log.head


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def rehash(records: list[dict[str, object]]) -> str:
    """Recompute every hash (and every outcome's link to its change) as someone rewriting history would;
    returns the new head."""
    prev, renamed = GENESIS, {}
    for record in records:
        if record.get("of") in renamed:
            record["of"] = renamed[str(record["of"])]
        old = str(record["hash"])
        record["prev_hash"] = prev
        record["hash"] = digest(prev, record)
        prev = renamed[old] = str(record["hash"])
    return prev


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "audit.jsonl"
    return path, write_log(path, 3)


# ----------------------------------------------------------------------------------------------- records


def test_every_record_is_typed_versioned_and_decodes_to_what_was_written(log: tuple[Path, str]) -> None:
    path, head = log
    sealed = list(read_records(path))
    assert [type(s.record) for s in sealed] == [DecisionRecord, OutcomeRecord] * 3
    assert all(json.loads(line)["schema"] == 1 for line in lines(path))
    assert sealed[0].record == decision(0) and sealed[-1].hash == head
    assert [s.line for s in sealed] == [1, 2, 3, 4, 5, 6]


def test_the_applied_outcome_is_known_before_the_write() -> None:
    sealed = seal(decision(1), GENESIS)
    outcome = applied_outcome(sealed)
    assert (outcome.of, outcome.result, outcome.weights) == (sealed.hash, "applied", Weights(90, 10))
    assert seal(outcome, sealed.hash).hash == seal(applied_outcome(sealed), sealed.hash).hash


@pytest.mark.parametrize(("line", "message"), [
    ('{"kind": "decision"}', "record schema None, this canary reads schema 1"),
    ('{"schema": 1, "kind": "mystery", "prev_hash": "", "hash": ""}', "unknown record kind 'mystery'"),
    ("[1, 2]", "not a JSON record"),
])  # fmt: skip
def test_a_line_that_is_no_record_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(AuditError, match=f"{path}:1: {message}"):
        list(read_records(path))


# ----------------------------------------------------------------------------------------------- verify


def test_an_untouched_log_verifies_against_its_head(log: tuple[Path, str]) -> None:
    path, head = log
    check = verify_chain(path, head)
    assert check.ok and check.records == 6 and check.head == head


def test_a_head_given_by_its_first_digits_must_name_one_record(tmp_path: Path) -> None:
    """The 16 digits canary's messages print name the head; digits shared by two records' hashes name none."""
    path = tmp_path / "a.jsonl"
    head = write_log(path, 9)  # 18 records: two hashes share their first digit
    assert verify_chain(path, head[:16]).ok
    earlier = list(read_records(path))[-3].hash
    assert verify_chain(path, earlier[:16]).problem == f"2 records follow the head {earlier[:16]} (appended after it)"
    hashes = [sealed.hash for sealed in read_records(path)]
    shared = next(h[:1] for h in hashes if sum(other.startswith(h[:1]) for other in hashes) > 1)
    count = sum(h.startswith(shared) for h in hashes)
    check = verify_chain(path, shared)
    assert check.problem == f"{count} records have a hash starting {shared}: give more of the head's digits"


def test_an_edited_byte_breaks_the_chain_at_its_line(log: tuple[Path, str]) -> None:
    path, _ = log
    text = lines(path)
    text[2] = text[2].replace("tick 1", "tick 7")
    path.write_text("".join(text))
    check = verify_chain(path)
    assert not check.ok and check.line == 3 and "breaks here" in str(check.problem)


def test_a_reader_of_an_edited_log_shows_it_as_written_and_is_told_where_it_stops_verifying(
    log: tuple[Path, str],
) -> None:
    path, _ = log
    text = lines(path)
    text[2] = text[2].replace("tick 1", "tick 7")
    path.write_text("".join(text))
    warned: list[str] = []
    records = list(read_records(path, warned.append))
    assert len(records) == 6 and "tick 7" in records[2].record.reason  # type: ignore[union-attr]
    assert warned == [f"{path}:3: the hash chain breaks here (a record was edited, removed or moved); the records "
                      "from here are shown as written, not as verified"]  # fmt: skip


def test_a_command_appending_to_an_edited_log_first_notes_where_the_chain_breaks(log: tuple[Path, str]) -> None:
    """A rollback must never wait on an audit: the append is made, and the edit is on record from then on,
    noted by each command that appends after it."""
    path, _ = log
    text = lines(path)
    text[2] = text[2].replace("tick 1", "tick 7")
    path.write_text("".join(text))
    for _ in range(2):
        audit = AuditLog(path, actor="user:ana")
        with audit.locked(1):
            audit.append(decision(8, writes=False))
    notes = [s.record for s in read_records(path) if isinstance(s.record, NoteRecord)]
    assert [n.reason for n in notes] == [
        "this log does not verify at line 3 (the hash chain breaks here (a record was edited, removed or moved)); "
        "appended after it"
    ] * 2
    assert notes[0].actor == "user:ana" and notes[0].details == {"line": 3, "problem": notes[0].details["problem"]}
    assert [type(s.record) for s in read_records(path)][6:] == [NoteRecord, DecisionRecord] * 2
    untouched = AuditLog(path.with_name("fresh.jsonl"))
    with untouched.locked(1):
        untouched.append(decision(1, writes=False))
    assert not any(isinstance(s.record, NoteRecord) for s in read_records(untouched.path))


def test_a_removed_record_breaks_the_chain(log: tuple[Path, str]) -> None:
    path, _ = log
    text = lines(path)
    del text[2:4]  # a whole change, intent and outcome
    path.write_text("".join(text))
    assert verify_chain(path).line == 3


def test_two_records_swapped_break_the_chain(log: tuple[Path, str]) -> None:
    path, _ = log
    text = lines(path)
    text[2], text[4] = text[4], text[2]
    path.write_text("".join(text))
    assert not verify_chain(path).ok


def test_a_forged_append_with_a_valid_hash_is_caught_by_the_head(log: tuple[Path, str]) -> None:
    path, head = log
    forged = seal(decision(9, writes=False, reason="all fine, promoted"), head)
    with path.open("ab") as fh:
        fh.write(forged.encode())
    assert verify_chain(path).ok, "without the head an append that follows the chain cannot be told"
    check = verify_chain(path, head)
    assert not check.ok and "1 records follow the head" in str(check.problem)


def test_truncation_to_any_prefix_is_caught_by_the_head(log: tuple[Path, str]) -> None:
    path, head = log
    text = lines(path)
    for keep in range(len(text)):
        path.write_text("".join(text[:keep]))
        check = verify_chain(path, head)
        assert not check.ok, f"a log cut to {keep} lines verified"


def test_an_empty_log_does_not_verify(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("")
    assert verify_chain(path).problem == "holds no records"


def test_a_rehashed_chain_is_caught_by_the_head(log: tuple[Path, str]) -> None:
    path, head = log
    records = [json.loads(line) for line in lines(path)]
    records[0]["reason"] = "rewritten"
    new_head = rehash(records)
    path.write_text("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records))
    assert verify_chain(path).ok and verify_chain(path, new_head).ok
    check = verify_chain(path, head)
    assert not check.ok and "does not lead to the head" in str(check.problem)


def test_a_change_without_its_outcome_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    with log.locked(1):
        log.append(decision(0))
        log.append(decision(1))
    check = verify_chain(path)
    assert not check.ok and check.line == 2 and "before the outcome" in str(check.problem)


def test_the_route_head_may_be_followed_only_by_records_that_changed_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    head = write_log(path, 2)
    log = AuditLog(path)
    with log.locked(1):
        failed = log.append(decision(5))
        log.append(OutcomeRecord(1.0, "r1", failed.hash, "failed", Weights(90, 10), "not made: 503"))
        log.append(NoteRecord(2.0, "a note", "test"))
    check = verify_chain(path, head, route_head=True)
    assert check.ok and "3 records after the route's head changed nothing" in str(check.note)
    assert not verify_chain(path, head).ok, "a printed head must be the last record"
    with log.locked(1):
        made = log.append(decision(6))
        log.append_sealed(seal(applied_outcome(made), made.hash))
    assert not verify_chain(path, head, route_head=True).ok, "an applied change the route does not hold"


def test_a_route_head_past_the_log_says_the_last_outcome_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_log(path, 1)
    log = AuditLog(path)
    with log.locked(1):
        intent = log.append(decision(1))
    route_head = seal(applied_outcome(intent), intent.hash).hash
    check = verify_chain(path, route_head, route_head=True)
    assert not check.ok and "lacks its outcome" in str(check.problem)


# ------------------------------------------------------------------------------------------- torn lines


@pytest.mark.parametrize("tail", [b'{"schema":1,"kind":"deci', b"\x00\x00\x00\x00", b"garbage\n", b"\x00" * 4096])
def test_a_torn_last_line_is_set_aside_recorded_and_blocks_nothing(log: tuple[Path, str], tail: bytes) -> None:
    path, head = log
    with path.open("ab") as fh:
        fh.write(tail)
    assert not verify_chain(path).ok
    audit = AuditLog(path, actor="user:ana")
    with audit.locked(1):
        assert audit.head == head, "the head is the last whole record"
        audit.append(decision(7, writes=False))
    assert verify_chain(path).ok
    assert (path.with_name("audit.jsonl.torn")).read_bytes().startswith(tail.rstrip(b"\n"))
    note = [s.record for s in read_records(path) if isinstance(s.record, NoteRecord)]
    assert len(note) == 1 and "torn last line" in note[0].reason and note[0].actor == "user:ana"
    records = list(read_records(path))
    assert records[5].hash == head, "every whole record before the tear is kept"
    assert [type(s.record) for s in records[6:]] == [NoteRecord, DecisionRecord], "the note comes first"


@pytest.mark.parametrize("tail", [b'{"schema":1,"kind":"deci', b"\x00\x00\x00\x00"])
def test_a_reader_shows_every_record_before_a_torn_last_line_and_names_the_tear(
    log: tuple[Path, str], tail: bytes
) -> None:
    """After a crash is when the log is read: the tear is named, the records before it are all there."""
    path, head = log
    with path.open("ab") as fh:
        fh.write(tail)
    told: list[str] = []
    records = list(read_records(path, told.append))
    assert records[-1].hash == head and len(records) == 6
    assert told == [f"{path}:7: the last line is torn (a write a crash cut short); left out (the next command "
                    f"that writes to the log moves it to {path}.torn)"]  # fmt: skip
    with pytest.raises(AuditError, match=":7: not a JSON record"):
        list(read_records(path))  # a reader that asks for every record gets an error, not fewer records
    assert verify_chain(path).problem == "the last line is torn (a write a crash cut short)"


def test_a_line_that_is_no_record_before_the_last_is_never_a_tear_and_is_left_out_with_a_warning(
    log: tuple[Path, str],
) -> None:
    """A line a hand or a tool put in the middle: a reader that warns shows every record and names the line
    (it used to stop at it, so `status`, `audit list` and `report` could never show a rollback appended
    after it); a reader that asks for every record, and verify, still fail at it."""
    path, head = log
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:3], b"garbage\n", *lines[3:4], b"[1]\n", *lines[4:]]))
    told: list[str] = []
    records = list(read_records(path, told.append))
    assert len(records) == 6 and records[-1].hash == head
    assert told == [f"{path}:4: not a JSON record; left out, with any more such lines (the log no longer verifies)"]
    with pytest.raises(AuditError, match=":4: not a JSON record"):
        list(read_records(path))
    check = verify_chain(path)
    assert not check.ok and check.line == 4


def test_a_complete_last_record_without_its_newline_is_kept(log: tuple[Path, str]) -> None:
    path, head = log
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert "no newline" in str(verify_chain(path).problem)
    audit = AuditLog(path)
    with audit.locked(1):
        assert audit.head == head
    assert verify_chain(path, head).ok and not path.with_name("audit.jsonl.torn").exists()


def test_an_edited_last_record_is_not_mistaken_for_a_torn_one(log: tuple[Path, str]) -> None:
    path, _ = log
    text = lines(path)
    text[-1] = text[-1].replace("the route holds", "the route held")
    path.write_text("".join(text))
    with AuditLog(path).locked(1):
        pass
    assert not path.with_name("audit.jsonl.torn").exists(), "a whole JSON line is evidence, left for verify"
    assert verify_chain(path).line == 6


def test_a_failed_append_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jsonl"
    head = write_log(path, 1)
    size = path.stat().st_size
    real_write = os.pwrite

    def short_write(fd: int, data: bytes, offset: int) -> int:
        return real_write(fd, data[: len(data) // 2], offset)

    monkeypatch.setattr(os, "pwrite", short_write)
    log = AuditLog(path)
    with log.locked(1), pytest.raises(AuditError, match="cannot append the audit record"):
        log.append(decision(3))
    monkeypatch.undo()
    assert path.stat().st_size == size and verify_chain(path, head).ok


# ------------------------------------------------------------------------------------------------- lock


def _hold(path: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    log = AuditLog(path)
    with log.locked(5):
        ready.set()
        time.sleep(seconds)


def test_a_second_writer_waits_for_the_lock_then_fails_with_a_clear_conflict(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), 1.5, ready))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with (
            pytest.raises(ConflictError, match=r"another canary command holds its lock .*waited 0.3s"),
            AuditLog(path).locked(0.3),
        ):
            pass
        assert time.monotonic() - started >= 0.3
        with AuditLog(path).locked(10):  # the holder lets go: a patient writer gets in
            pass
    finally:
        holder.join(10)
    assert holder.exitcode == 0


def test_appending_without_the_lock_is_a_bug_caught_at_once(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="while holding its lock"):
        AuditLog(tmp_path / "a.jsonl").append(decision(0))


def test_a_note_waits_until_the_outcome_a_route_names_is_written(log: tuple[Path, str]) -> None:
    """A crash tore the outcome line of the last change: the next command writes exactly the outcome the route's
    state names, and only then the note about the torn line."""
    path, _ = log
    text = lines(path)
    path.write_text("".join(text[:-1]) + text[-1][:40])  # the last outcome torn mid-write
    audit = AuditLog(path)
    with audit.locked(1):
        change = audit.open_change()
        assert change is not None and isinstance(change.record, DecisionRecord)
        audit.append_sealed(seal(applied_outcome(change), change.hash))
    kinds = [type(s.record) for s in read_records(path)]
    assert kinds[-2:] == [OutcomeRecord, NoteRecord] and verify_chain(path).ok


def test_a_command_that_writes_nothing_leaves_a_torn_line_where_it_is(log: tuple[Path, str]) -> None:
    """The tear is set aside by a write, never before: a command that fails first leaves the log as it was."""
    path, _ = log
    with path.open("ab") as fh:
        fh.write(b'{"schema":1,"kin')
    before = path.read_bytes()
    with pytest.raises(ConflictError), AuditLog(path).locked(1):
        raise ConflictError("refused before writing")
    assert path.read_bytes() == before and not path.with_name("audit.jsonl.torn").exists()


def test_a_huge_garbage_tail_is_set_aside_without_being_read_into_memory(log: tuple[Path, str]) -> None:
    path, head = log
    with path.open("ab") as fh:  # 40 MiB of garbage with no newline: more than any record may be
        for _ in range(40):
            fh.write(b"\x00" * (1024 * 1024))
    audit = AuditLog(path)
    with audit.locked(1):
        assert audit.head == head
        audit.append(decision(8, writes=False))
    assert verify_chain(path).ok
    assert path.with_name("audit.jsonl.torn").stat().st_size == 40 * 1024 * 1024 + 1


@pytest.mark.parametrize("where", ["/dev/zero", "dir"])
def test_an_audit_log_that_is_not_a_regular_file_is_one_line(tmp_path: Path, where: str) -> None:
    path = Path(where) if where.startswith("/") else tmp_path
    with pytest.raises(AuditError, match="not an audit log"):
        list(read_records(path))
    with pytest.raises(AuditError, match="not an audit log"), AuditLog(path).locked(1):
        pass


def test_the_cli_readers_warn_at_the_line_where_an_edited_log_stops_verifying(log: tuple[Path, str]) -> None:
    path, _ = log
    text = lines(path)
    text[2] = text[2].replace("tick 1", "tick 7")
    path.write_text("".join(text))
    for command in (["audit", "show"], ["audit", "list"], ["audit", "export"]):
        done = CliRunner().invoke(app, [*command, str(path)])
        assert done.exit_code == 0, done.output
        assert done.stderr.strip() == (
            f"canary: warning: {path}:3: the hash chain breaks here (a record was edited, removed or moved); "
            "the records from here are shown as written, not as verified"
        ), command
