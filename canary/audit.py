"""The audit log on disk: one sealed JSON line per record, appended under a lock, never lost or torn.

- **One writer at a time.** Every command that appends holds an exclusive lock on the log (`LOG.lock`
  beside it, `flock`, released by the kernel if the process dies) for its whole read → check → record →
  write → record sequence; a second command waits up to its timeout, then fails with a clear conflict.
- **Whole lines.** An append is one `write` of the whole line, then `fsync`; a write the disk cut short
  is truncated back, so a failed append leaves the log as it was.
- **A torn last line never blocks.** A last line without its newline that is a complete, chained record
  gets its newline; anything else there (a crash mid-write, zeros after a power cut) is copied to
  `LOG.torn` by the command's first write and overwritten by it, with a note saying so; a command that
  writes nothing leaves it for the next one, so no tear is ever gone unrecorded.
- **Anchored.** `verify` checks every line's hash and link, that every change has its outcome, and, given
  the head the route holds (or one a command printed), that the log ends there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from canary.codec import refuse_constant
from canary.errors import AuditError, ConflictError, InputError
from canary.inputs import AUDIT_LINE_LIMIT, MIB, check_regular
from canary.records import (
    GENESIS,
    DecisionRecord,
    NoteRecord,
    OutcomeRecord,
    Record,
    Sealed,
    applied_outcome,
    chain_holds,
    decode,
    seal,
)

READ_BLOCK = 1 << 16
LOCK_POLL_S = 0.05


class AuditSink(Protocol):
    @property
    def path(self) -> Path: ...

    def locked(self, timeout_s: float) -> contextlib.AbstractContextManager[None]: ...

    @property
    def head(self) -> str: ...

    def last(self) -> Sealed | None: ...

    def open_change(self) -> Sealed | None: ...

    def append(self, record: Record) -> Sealed: ...

    def append_sealed(self, sealed: Sealed) -> None: ...

    def changes_after(self, digest: str) -> int | None: ...

    def other_route(self, namespace: str, name: str) -> str | None: ...


class MemoryAudit:
    """The same chain without a disk (the benchmark's thousands of rollouts)."""

    def __init__(self) -> None:
        self.path = Path("<memory>")
        self.records: list[Sealed] = []
        self._routes: dict[tuple[str, str], int] = {}  # kept as records come: `_read` asks at every tick

    @contextlib.contextmanager
    def locked(self, timeout_s: float) -> Iterator[None]:
        yield

    @property
    def head(self) -> str:
        return self.records[-1].hash if self.records else GENESIS

    def last(self) -> Sealed | None:
        return self.records[-1] if self.records else None

    def open_change(self) -> Sealed | None:
        return _open_change(reversed(self.records))

    def append(self, record: Record) -> Sealed:
        sealed = seal(record, self.head)
        self._add(sealed)
        return sealed

    def append_sealed(self, sealed: Sealed) -> None:
        if sealed.prev_hash != self.head:
            raise AuditError(f"{self.path}: the record does not follow the log's head")
        self._add(sealed)

    def _add(self, sealed: Sealed) -> None:
        self.records.append(sealed)
        if isinstance(sealed.record, DecisionRecord):
            self._routes.setdefault(_route_of(sealed.record), len(self.records))

    def changes_after(self, digest: str) -> int | None:
        return changes_after(self.records, digest)

    def other_route(self, namespace: str, name: str) -> str | None:
        return _other_route(self._routes, (namespace, name))


class AuditLog:
    """Append-only JSON lines. Appends need the lock; `append` returns once the line is on disk."""

    def __init__(self, path: str | Path, *, actor: str = "canary") -> None:
        self.path = Path(path)
        self.actor = actor  # who the notes the log writes about itself are from
        self._last: Sealed | None = None  # the last record, while the lock is held (None if it does not decode)
        self._head = GENESIS
        self._locked = False
        self._checked = False  # whether this command has verified the records before the tail
        self._routes: dict[tuple[str, str], int] = {}  # the routes the log's decisions are of, at their first line
        self._scanned = 0  # the offset up to which `_routes` has read the log
        self._notes: list[NoteRecord] = []  # what the log says about itself, appended at the next safe point
        self._end = 0  # where the next record goes: the end of the last whole line
        self._torn: tuple[int, int] | None = None  # the offsets of bytes past it, set aside by the first write
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot create the audit directory: {exc.strerror}") from exc

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def torn_path(self) -> Path:
        return self.path.with_name(self.path.name + ".torn")

    @contextlib.contextmanager
    def locked(self, timeout_s: float) -> Iterator[None]:
        """Hold the log's lock (waiting up to `timeout_s`), with the tail checked and repaired."""
        if self._locked:
            raise RuntimeError("the audit lock is not reentrant")
        try:
            check_regular(self.path, "audit log")
            check_regular(self.lock_path, "lock file")
        except InputError as exc:
            raise AuditError(str(exc)) from None
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AuditError(f"{self.lock_path}: cannot open the lock file: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + max(timeout_s, 0.0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ConflictError(
                            f"{self.path}: another canary command holds its lock ({self.lock_path}); "
                            f"waited {timeout_s:g}s (--lock-timeout)"
                        ) from None
                    time.sleep(LOCK_POLL_S)
            self._locked = True
            try:
                self._read_tail()
                self._check_once()
                self._scan_routes()
                yield
            finally:
                self._locked = False
                self._last, self._head, self._notes, self._torn = None, GENESIS, [], None
        finally:
            os.close(fd)  # closing releases the lock

    @property
    def head(self) -> str:
        self._need_lock()
        return self._head

    def last(self) -> Sealed | None:
        self._need_lock()
        return self._last

    def open_change(self) -> Sealed | None:
        """The last change whose outcome is not recorded (only records that write nothing may follow it)."""
        self._need_lock()
        return _open_change(self._backwards())

    def _backwards(self) -> Iterator[Sealed]:
        """The log's records from the last to the first, read block by block from the end."""
        try:
            with self.path.open("rb") as fh:
                end = self._end  # a torn tail past it is not a record
                rest = b""
                while end > 0:
                    start = max(0, end - READ_BLOCK)
                    fh.seek(start)
                    chunk = fh.read(end - start) + rest
                    lines = chunk.split(b"\n")
                    rest = lines.pop(0) if start > 0 else b""
                    if len(rest) > AUDIT_LINE_LIMIT:
                        return  # a line longer than any record: nothing before it is read
                    for line in reversed(lines):
                        if line.strip():
                            sealed = _parse(line)
                            if sealed is None:
                                return  # a line that is no record: nothing before it can be trusted here
                            yield sealed
                    end = start
        except FileNotFoundError:
            return

    def append(self, record: Record) -> Sealed:
        self._flush_notes(record.time)
        sealed = seal(record, self.head)
        self._write(sealed)
        return sealed

    def append_sealed(self, sealed: Sealed) -> None:
        """Append a record sealed beforehand (the outcome a route's state already names). Notes wait until it
        is written, so they never come between a change and the outcome it was sealed to follow."""
        if sealed.prev_hash != self.head:
            raise AuditError(f"{self.path}: the record does not follow the log's head")
        self._write(sealed)
        self._flush_notes(sealed.record.time)

    def _flush_notes(self, at: float) -> None:
        """The log's own notes, at the time of the record they go with (the command's clock, which may be a
        rollout's simulated one), so the log's times never go backwards."""
        notes, self._notes = self._notes, []
        for note in notes:
            self._write(seal(dataclasses.replace(note, time=at), self.head))

    def changes_after(self, digest: str) -> int | None:
        """`changes_after` over the log as a reader sees it: a line that is no record is left out (the check
        that runs once per command notes it), so a damaged log never blocks a rollback."""
        if not self.path.exists():
            return None
        return changes_after(read_records(self.path, warn=lambda _: None), digest)

    def other_route(self, namespace: str, name: str) -> str | None:
        """Another route whose decisions the log holds, with the line of its first (None: only this one's).
        Read by the chain's check, once per command: each route needs a log of its own, since a change and
        its outcome must follow each other with nothing between."""
        self._need_lock()
        return _other_route(self._routes, (namespace, name))

    def _need_lock(self) -> None:
        if not self._locked:
            raise RuntimeError("append to the audit log only while holding its lock")

    def _write(self, sealed: Sealed) -> None:
        """One write of the whole line where the last whole line ends, then fsync.

        A torn tail is first copied to the side file, then overwritten by this line: at every moment the log
        holds the torn bytes or what replaced them, so a command that fails (or dies) before its first write
        leaves the tear for the next one, never a tear gone unrecorded.
        """
        self._need_lock()
        line = sealed.encode()
        torn = self._torn
        try:
            if torn is not None:
                self._copy_aside(*torn)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append the audit record: {exc.strerror}") from None
        try:
            try:
                written = os.pwrite(fd, line, self._end)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "the disk took only part of the record")
                os.ftruncate(fd, self._end + len(line))
                os.fsync(fd)
            except OSError as exc:
                if torn is None:  # a torn tail stays as it is: the next command sets it aside
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, self._end)  # no torn line left behind
                raise AuditError(f"{self.path}: cannot append the audit record: {exc.strerror}") from None
        finally:
            os.close(fd)
        self._end += len(line)
        self._torn = None
        self._last, self._head = sealed, sealed.hash

    # ------------------------------------------------------------------------------------ the tail

    def _read_tail(self) -> None:
        """Find the head and where the next record goes; a torn last line is noted, and set aside by the first
        write (a complete last record that only lost its newline gets it back at once). Memory stays bounded
        whatever the tail holds: lines are found by their offsets and none over the line cap is read whole."""
        self._last, self._head, self._end, self._torn = None, GENESIS, 0, None
        try:
            with self.path.open("rb") as fh:
                end = self._end = fh.seek(0, os.SEEK_END)
                if end == 0:
                    return
                last_nl = _newline_before(fh, end)
                if last_nl == end - 1:  # the file ends with a newline: its last line is whole
                    line_start = _newline_before(fh, last_nl) + 1
                    line = _read_line(fh, line_start, last_nl)
                    data = _json_object(line) if line is not None else None
                    if line is not None and data is not None:
                        self._last, self._head = _parse(line), _hash_of(line)
                        if self._last is None and not isinstance(data.get("hash"), str):  # a JSON file, not a log
                            raise AuditError(f"{self.path}: not an audit log (its last line is JSON but no audit "
                                             "record); name the log with --audit")  # fmt: skip
                        return
                    torn_start = line_start  # a whole line that is no JSON at all (zeros, garbage)
                else:
                    torn_start = last_nl + 1
                    tail = _read_line(fh, torn_start, end)
                    prev = _read_line(fh, _newline_before(fh, last_nl) + 1, last_nl) if last_nl >= 0 else b""
                    whole = _parse(tail) if tail is not None else None
                    if whole is not None and whole.prev_hash == _hash_of(prev or b""):
                        self._append_raw(b"\n")  # a complete record whose newline was lost
                        self._last, self._head, self._end = whole, whole.hash, end + 1
                        return
                prev_end = torn_start - 1
                prev_line = _read_line(fh, _newline_before(fh, prev_end) + 1, prev_end) if prev_end >= 0 else b""
                # A torn line follows a record, or is the start of a first one: anything else is another file
                # (a policy, a manifest named by mistake), which canary must not write to.
                if prev_line:
                    foreign = _parse(prev_line) is None
                else:
                    fh.seek(torn_start)
                    foreign = fh.read(1) != b"{"
                if foreign:
                    raise AuditError(f"{self.path}: not an audit log (its last lines are not audit records); "
                                     "name the log with --audit")  # fmt: skip
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read: {exc.strerror}") from None
        self._torn, self._end = (torn_start, end), torn_start
        self._last, self._head = _parse(prev_line or b""), _hash_of(prev_line or b"")
        size = end - torn_start
        self._notes.append(
            NoteRecord(
                time=0.0,  # stamped with the record it is written with
                reason=f"a torn last line ({size} bytes at offset {torn_start}) was set aside in {self.torn_path.name}",
                actor=self.actor,
                details={"offset": torn_start, "bytes": size, "file": str(self.torn_path)},
            )
        )

    def _check_once(self) -> None:
        """Once per command, the whole chain: a log edited before its tail is still appended to (a rollback
        never waits on an audit), and the first record this command appends is a note saying where the
        chain breaks, so the edit is on record from then on. A torn tail is the tail's own business."""
        if self._checked:
            return
        self._checked = True
        if self._end == 0:
            return
        check = verify_chain(self.path)
        self._routes, self._scanned = check.routes, self._end
        if check.problem is None or check.line is None or check.gap:  # a gap is noted where it was found
            return
        if self._torn is not None and check.line > self._lines_before_tail():
            return  # the torn tail itself, which the first write sets aside and notes
        self._notes.append(
            NoteRecord(
                time=0.0,  # stamped with the record it is written with
                reason=f"this log does not verify at line {check.line} ({check.problem}); appended after it",
                actor=self.actor,
                details={"line": check.line, "problem": check.problem},
            )
        )

    def _scan_routes(self) -> None:
        """The routes of the records appended since this command last looked, another command's too: two
        commands on two routes that both began on an empty log must not both go on appending to it."""
        start = self._scanned
        if self._end <= start:
            return
        with self.path.open("rb") as fh:
            fh.seek(start)
            chunk = fh.read(self._end - start)
            at = start
            for line in chunk.split(b"\n")[:-1]:
                sealed = _parse(line)
                if sealed is not None and isinstance(sealed.record, DecisionRecord):
                    route = _route_of(sealed.record)
                    if route not in self._routes:  # its line, counted only for a route not seen before
                        fh.seek(0)
                        self._routes[route] = fh.read(at).count(b"\n") + 1
                at += len(line) + 1
        self._scanned = self._end

    def _lines_before_tail(self) -> int:
        """How many lines lie before where the next record goes (a torn tail after them is not counted)."""
        count, left = 0, self._end
        with self.path.open("rb") as fh:
            while left > 0 and (chunk := fh.read(min(MIB, left))):
                count, left = count + chunk.count(b"\n"), left - len(chunk)
        return count

    def _copy_aside(self, start: int, end: int) -> None:
        """The torn bytes [start, end) of the log, appended to the side file (streamed), ending with a newline."""
        with self.path.open("rb") as src, self.torn_path.open("ab") as side:
            src.seek(start)
            last = b""
            while start < end and (chunk := src.read(min(MIB, end - start))):
                side.write(chunk)
                start += len(chunk)
                last = chunk[-1:]
            if last != b"\n":
                side.write(b"\n")
            side.flush()
            os.fsync(side.fileno())

    def _append_raw(self, data: bytes) -> None:
        try:
            _durable_append(self.path, data)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot repair the last line: {exc.strerror}") from None


def _durable_append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _open_change(newest_first: Iterable[Sealed]) -> Sealed | None:
    for sealed in newest_first:
        record = sealed.record
        if isinstance(record, OutcomeRecord):
            return None
        if isinstance(record, DecisionRecord) and record.writes:
            return sealed
    return None


def _newline_before(fh: BinaryIO, end: int) -> int:
    """The offset of the last newline before `end`, or -1; read backwards a block at a time."""
    start = end
    while start > 0:
        start = max(0, start - READ_BLOCK)
        fh.seek(start)
        found = fh.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def _read_line(fh: BinaryIO, start: int, end: int) -> bytes | None:
    """The bytes of [start, end), or None when longer than a record may be (never read whole)."""
    if end - start > AUDIT_LINE_LIMIT:
        return None
    fh.seek(start)
    return fh.read(end - start)


def _json_object(line: bytes) -> dict[str, object] | None:
    """The line as a JSON object, or None: not JSON, not an object, or holding NaN or Infinity (which canary
    never writes, and which no record's hash can be recomputed over)."""
    try:
        data = json.loads(line, parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _hash_of(line: bytes) -> str:
    """The hash a line says it has (what the next record must chain to), GENESIS for no line."""
    data = _json_object(line) if line else None
    value = data.get("hash") if data is not None else None
    return value if isinstance(value, str) else GENESIS


def _parse(line: bytes) -> Sealed | None:
    """The line as a record whose own hash checks out, else None."""
    data = _json_object(line)
    if data is None or not isinstance(data.get("prev_hash"), str) or not chain_holds(data, str(data["prev_hash"])):
        return None
    try:
        return decode(data, "")
    except AuditError:
        return None


def read_records(path: str | Path, warn: Callable[[str], None] | None = None) -> Iterator[Sealed]:
    """Every record, decoded; AuditError names the first line that is not one. With `warn`, a torn last line
    (no newline, no record: a write a crash cut short) ends the records instead, and `warn` is told why:
    after a crash is when the log is most needed, and the next command that writes sets the tear aside.
    `warn` is told too of the first record whose hash or link does not hold (an edit) and of the first whole
    line that is no record (it is left out): the records are shown as written, and the reader knows they no
    longer verify. A reader must still show a log a hand or a tool damaged: the commands that write go on
    appending to it (a person's rollback must not wait for a repair)."""
    prev, broken, skipped = GENESIS, False, False
    for number, data, whole in _lines(path):
        if data is None and not whole and warn is not None:
            warn(f"{path}:{number}: {TORN}; left out (the next command that writes to the log moves it to {path}.torn)")
            return
        if data is None and warn is not None:
            if not skipped:
                skipped = True
                warn(f"{path}:{number}: {NOT_A_RECORD}; left out, with any more such lines "
                     "(the log no longer verifies)")  # fmt: skip
            continue
        if data is None:
            raise AuditError(f"{path}:{number}: {NOT_A_RECORD}")
        if warn is not None and not broken and not chain_holds(data, prev):
            broken = True
            warn(f"{path}:{number}: {BROKEN}; the records from here are shown as written, not as verified")
        sealed = decode(data, f"{path}:{number}")
        prev = sealed.hash
        yield Sealed(sealed.record, sealed.prev_hash, sealed.hash, number)
    if skipped and prev == GENESIS:
        raise AuditError(f"{path}: no line is an audit record: not an audit log")


NOT_A_RECORD = "not a JSON record"
BROKEN = "the hash chain breaks here (a record was edited, removed or moved)"
NO_NEWLINE = "the last line has no newline (torn by a crash?)"


TORN = "the last line is torn (a write a crash cut short)"
# In a note's details: the command that wrote it found the log without the route's history (cut short,
# replaced, or the route older than it) and went ahead; the log then never verifies as that history.
HISTORY_GAP = "history_gap"


def _lines(path: str | Path) -> Iterator[tuple[int, dict[str, object] | None, bool]]:
    """Each line parsed (None for a line that is no JSON object), and whether it is whole: it ends in a
    newline, or it cannot be a torn record (as the writer judges: a torn line follows a record, or begins
    one). A line over the cap is not read whole."""
    try:
        check_regular(path, "audit log")
        with Path(path).open("rb") as fh:
            number, after_record = 0, False
            while raw := fh.readline(AUDIT_LINE_LIMIT + 1):
                number += 1
                if len(raw) > AUDIT_LINE_LIMIT and not raw.endswith(b"\n"):
                    while (rest := fh.readline(MIB)) and not rest.endswith(b"\n"):
                        pass  # skip the rest of the overlong line without holding it
                    yield number, None, rest.endswith(b"\n") or not after_record
                    after_record = False
                    continue
                if raw.strip():
                    data = _json_object(raw)
                    yield number, data, raw.endswith(b"\n") or not (after_record or raw.startswith(b"{"))
                    after_record = data is not None
    except InputError as exc:
        raise AuditError(str(exc)) from None
    except FileNotFoundError:
        raise AuditError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AuditError(f"{path}: is a directory, not an audit log") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------- verifying


HEAD_DIGITS = 16  # how much of a head canary's messages print: enough to name one record of any log


@dataclass(frozen=True)
class ChainCheck:
    records: int
    head: str  # the last record's hash (GENESIS for an empty log)
    problem: str | None  # why the log does not verify
    line: int | None = None  # where
    note: str | None = None  # something worth saying about a log that verifies
    gap: bool = False  # the problem is a history the log itself notes it lost (HISTORY_GAP), no edit
    routes: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (namespace, name): first line

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(path: str | Path, head: str | None = None, *, route_head: bool = False) -> ChainCheck:
    """Check every line's hash and link, that every change has its outcome, and the end against `head`.

    A `head` a person gives (one a command printed) must be the last record's hash; it may be given by its
    first digits (HEAD_DIGITS or more, as canary's messages print it) when they name one record of the log.
    The head a route holds (`route_head`) may be followed by records that changed nothing on it (changes that
    failed, holds, notes).
    """
    routes: dict[tuple[str, str], int] = {}
    return dataclasses.replace(_verify(path, head, route_head, routes), routes=routes)


def _verify(path: str | Path, head: str | None, route_head: bool, routes: dict[tuple[str, str], int]) -> ChainCheck:
    """`verify_chain`, noting in `routes` the route of each decision read, at its first line."""
    prev, count, last_line = GENESIS, 0, 0
    open_change: Sealed | None = None
    gap: Sealed | None = None  # the first note that says the log lost the route's history
    after_head: list[Sealed] = []
    seen_head = head is None or GENESIS.startswith(head)
    named = 0  # the records whose hash starts with `head`: a head given by its first digits must name one
    for number, data, whole in _lines(path):
        last_line = number
        if data is None:
            return ChainCheck(count, prev, f"{NOT_A_RECORD} (edited)" if whole else TORN, number)
        if not chain_holds(data, prev):
            return ChainCheck(count, prev, BROKEN, number)
        try:
            decoded = decode(data, f"{path}:{number}")
        except AuditError as exc:
            return ChainCheck(count, prev, str(exc).split(": ", 1)[-1], number)
        sealed = Sealed(decoded.record, decoded.prev_hash, decoded.hash, number)
        count, prev = count + 1, sealed.hash
        record = sealed.record
        if isinstance(record, DecisionRecord):
            routes.setdefault(_route_of(record), number)
        if isinstance(record, OutcomeRecord):
            if open_change is None or record.of != open_change.hash:
                return ChainCheck(count, prev, "an outcome of no change waiting for one", number)
            open_change = None
        elif isinstance(record, DecisionRecord) and record.writes:
            if open_change is not None:
                return ChainCheck(count, prev, "a change recorded before the outcome of the one before it", number)
            open_change = sealed  # records that write nothing (a hold while the route was unreadable) may follow
        elif isinstance(record, NoteRecord) and gap is None and (record.details or {}).get(HISTORY_GAP):
            gap = sealed
        if head is not None and sealed.hash.startswith(head):
            named += 1
        if seen_head:
            after_head.append(sealed)
        elif head is not None and sealed.hash.startswith(head):
            seen_head = True
    if count == 0:
        return ChainCheck(0, GENESIS, "holds no records")
    check = _verify_end(path, prev, count, last_line, head, named, seen_head, open_change, after_head, route_head)
    if check.ok and gap is not None:
        assert isinstance(gap.record, NoteRecord)
        why = f"the log holds the route's history only from here on ({gap.record.reason})"
        return ChainCheck(count, prev, why, gap.line, gap=True)
    return check


def _verify_end(
    path: str | Path, prev: str, count: int, last_line: int, head: str | None, named: int, seen_head: bool,
    open_change: Sealed | None, after_head: list[Sealed], route_head: bool,
) -> ChainCheck:  # fmt: skip
    """`verify_chain` once every line is read: the end of the log, against the head."""
    if not _ends_with_newline(path):
        return ChainCheck(count, prev, NO_NEWLINE, last_line)
    pending = "the last change has no recorded outcome yet (the next command records it)"
    if named > 1:
        return ChainCheck(count, prev, f"{named} records have a hash starting {head}: give more of the head's digits")
    if head is None or prev.startswith(head):
        return ChainCheck(count, prev, None, note=pending if open_change is not None else None)
    if route_head and open_change is not None and head == seal(applied_outcome(open_change), prev).hash:
        return ChainCheck(
            count, prev, "the route holds the last change but the log lacks its outcome (removed, or a crash kept "
            "it off: the next command on this route records it)", last_line,
        )  # fmt: skip
    if not seen_head:
        return ChainCheck(count, prev, f"does not lead to the head {head[:16]}: cut short, or re-hashed after an edit")
    if not route_head:
        return ChainCheck(count, prev, f"{len(after_head)} records follow the head {head[:16]} (appended after it)")
    changed = [s for s in after_head if _claims_change(s.record)]
    if changed:
        return ChainCheck(
            count, prev, "a record after the route's head says a change was applied that the route does not hold",
            changed[0].line,
        )  # fmt: skip
    return ChainCheck(count, prev, None, note=f"{len(after_head)} records after the route's head changed nothing on it")


def _route_of(record: DecisionRecord) -> tuple[str, str]:
    return record.target.namespace, record.target.virtual_service


def _other_route(routes: dict[tuple[str, str], int], mine: tuple[str, str]) -> str | None:
    others = [(line, route) for route, line in routes.items() if route != mine]
    if not others:
        return None
    line, (namespace, name) = min(others)
    return f"{namespace}/{name}, from line {line}"


def _claims_change(record: Record) -> bool:
    return isinstance(record, OutcomeRecord) and record.result == "applied"


def changes_after(records: Iterable[Sealed], digest: str) -> int | None:
    """How many records after the one whose hash is `digest` say a change was applied to the route (None when
    no record has that hash). A route's head may be followed only by changes that failed: one that was
    applied and is not on the route means the route is older than its log (a restored or reverted manifest)."""
    found: int | None = None
    for sealed in records:
        if found is not None:
            found += _claims_change(sealed.record)
        elif sealed.hash == digest:
            found = 0
    return found


def _ends_with_newline(path: str | Path) -> bool:
    try:
        with Path(path).open("rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return True
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
    except OSError:
        return True  # reading the lines reports the problem
