"""The audit log: one JSON line per decision, appended and flushed to disk before the weight change it
justifies, each line chained to the previous one by a SHA-256 hash so a removed or edited line shows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from canary.errors import AuditError

GENESIS = "0" * 64


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null / strings rather than invalid JSON."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _digest(prev: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + canonical).encode()).hexdigest()


def _seal(prev: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as written: JSON-safe, chained to the previous record's hash."""
    body: dict[str, Any] = _clean({k: v for k, v in record.items() if k not in ("hash", "prev_hash")})
    body["prev_hash"] = prev
    body["hash"] = _digest(prev, body)
    return body


class AuditSink(Protocol):
    @property
    def path(self) -> Path: ...

    def append(self, record: dict[str, Any]) -> dict[str, Any]: ...


class MemoryAudit:
    """Builds and chains the same records without touching disk (the benchmark's thousands of rollouts)."""

    def __init__(self) -> None:
        self.path = Path("<memory>")
        self.records: list[dict[str, Any]] = []
        self._prev = GENESIS

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        body = _seal(self._prev, record)
        self._prev = body["hash"]
        self.records.append(body)
        return body


class AuditLog:
    """Append-only JSON lines; `append` returns only once the line is on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot create the audit directory: {exc.strerror}") from exc
        self._prev = GENESIS
        if self.path.exists():
            last = None
            for record in read_records(self.path):
                last = record
            if last is not None:
                self._prev = str(last.get("hash", GENESIS))

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        body = _seal(self._prev, record)
        line = json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot append the audit record: {exc.strerror}") from exc
        self._prev = body["hash"]
        return body


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AuditError(f"{path}:{number}: not a JSON record: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise AuditError(f"{path}:{number}: not a JSON object")
                yield record
    except FileNotFoundError:
        raise AuditError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise AuditError(f"{path}: not a text file of JSON records") from None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read: {exc.strerror}") from None


@dataclass(frozen=True)
class ChainCheck:
    records: int
    broken_at: int | None  # 1-based line of the first record whose hash does not verify

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_chain(path: str | Path) -> ChainCheck:
    prev = GENESIS
    count = 0
    for count, record in enumerate(read_records(path), start=1):
        body = {k: v for k, v in record.items() if k != "hash"}
        if record.get("prev_hash") != prev or _digest(prev, body) != record.get("hash"):
            return ChainCheck(count, count)
        prev = str(record["hash"])
    return ChainCheck(count, None)
