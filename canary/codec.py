"""One encoder and one decoder for every value canary persists: dataclasses as plain JSON data and back.

The rollout state on the route, the judges' evidence inside it and the audit records are frozen (or
plain) dataclasses. `to_data` turns them into JSON-ready dicts, lists, strings and numbers; `from_data`
rebuilds the typed value from the type hints and refuses anything that does not fit, with the path of the
field that is wrong (`evidence.checks.latency p95.seq.fail.weight: expected a number, got 'x'`), so a
hand-edited annotation or a damaged record is one clear line, never a half-built value.

Supported: dataclasses, enums, str, int, float (NaN and infinities as the strings "nan", "inf", "-inf",
which JSON lacks), bool, None, tuples, lists, dicts with string keys, and unions (`X | None`; a union of
dataclasses is told apart by its fields).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import json
import math
import types
import typing
from typing import Any


class DecodeError(ValueError):
    """Data that does not fit the type it should hold; `path` names the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


_FLOAT_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_data(value: Any) -> Any:
    """A dataclass tree as JSON-ready data (dicts in field order)."""
    kind: type = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # the common case first: it is hot
        return value
    if kind is float:
        if value != value:
            return "nan"
        if value in (math.inf, -math.inf):
            return "inf" if value > 0 else "-inf"
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): to_data(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [to_data(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in _fields(kind)}
    if isinstance(value, set | frozenset):
        return sorted(to_data(v) for v in value)
    for base in (float, int, str):  # subclasses (numpy's float64, say) as the plain value
        if isinstance(value, base):
            return to_data(base(value))
    raise TypeError(f"cannot encode {kind.__name__}")


def clone(value: Any) -> Any:
    """A copy that shares nothing mutable: what a pure function edits instead of its input.

    Frozen dataclasses, enums, strings and numbers are shared (they cannot change); mutable dataclasses,
    lists, dicts and sets are copied. Several times faster than `copy.deepcopy` on judge evidence.
    """
    kind: type = type(value)
    if kind is list:
        return [clone(v) for v in value]
    if kind is dict:
        return {k: clone(v) for k, v in value.items()}
    if kind is tuple:
        return tuple(clone(v) for v in value)
    if kind is set:
        return {clone(v) for v in value}
    if kind in _SHARED or not dataclasses.is_dataclass(value) or isinstance(value, type) or _frozen(kind):
        return value
    copied: Any = object.__new__(kind)
    for f in _fields(kind):
        object.__setattr__(copied, f.name, clone(getattr(value, f.name)))
    return copied


_SHARED = {str, int, float, bool, type(None)}


def from_data(kind: Any, data: Any, path: str = "") -> Any:
    """Rebuild a value of type `kind` from `to_data`'s output; DecodeError names the field that does not fit."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return data
    if kind is type(None):
        if data is not None:
            raise DecodeError(path, f"expected nothing, got {describe(data)}")
        return None
    if origin in (typing.Union, types.UnionType):
        return _union(typing.get_args(kind), data, path)
    if origin is typing.Literal:
        if data not in typing.get_args(kind):
            raise DecodeError(path, f"expected one of {', '.join(map(repr, typing.get_args(kind)))}, got {data!r}")
        return data
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(data)
        except ValueError:
            raise DecodeError(path, f"expected one of {', '.join(str(m.value) for m in kind)}, got {data!r}") from None
    if kind is bool:
        if not isinstance(data, bool):
            raise DecodeError(path, f"expected true or false, got {describe(data)}")
        return data
    if kind is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise DecodeError(path, f"expected a whole number, got {describe(data)}")
        return data
    if kind is float:
        if isinstance(data, str) and data in _FLOAT_WORDS:
            return _FLOAT_WORDS[data]
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DecodeError(path, f"expected a number, got {describe(data)}")
        return float(data)
    if kind is str:
        if not isinstance(data, str):
            raise DecodeError(path, f"expected text, got {describe(data)}")
        return data
    if origin in (tuple, list):
        if not isinstance(data, list):
            raise DecodeError(path, f"expected a list, got {describe(data)}")
        args = typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(data) != len(args):
                raise DecodeError(path, f"expected {len(args)} items, got {len(data)}")
            return tuple(from_data(a, d, f"{path}[{i}]") for i, (a, d) in enumerate(zip(args, data, strict=True)))
        item = args[0] if args else Any
        items = [from_data(item, d, f"{path}[{i}]") for i, d in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(data, dict):
            raise DecodeError(path, f"expected a mapping, got {describe(data)}")
        _, value_kind = typing.get_args(kind) or (str, Any)
        return {str(k): from_data(value_kind, v, join(path, str(k))) for k, v in data.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _dataclass(kind, data, path)
    raise TypeError(f"cannot decode into {kind!r}")


def _dataclass(kind: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise DecodeError(path, f"expected a mapping, got {describe(data)}")
    fields = _fields(kind)
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DecodeError(join(path, unknown[0]), "unknown field")
    hints = _hints(kind)
    values: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(join(path, f.name), "missing")
            continue
        values[f.name] = from_data(hints[f.name], data[f.name], join(path, f.name))
    try:
        return kind(**values)
    except (ValueError, TypeError) as exc:  # the dataclass's own checks (weights summing to 100, ...)
        raise DecodeError(path, str(exc)) from None


def _union(members: tuple[Any, ...], data: Any, path: str) -> Any:
    if data is None and type(None) in members:
        return None
    candidates = [m for m in members if m is not type(None)]
    problems = []
    for member in candidates:
        try:
            return from_data(member, data, path)
        except DecodeError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    raise DecodeError(path, f"fits none of {', '.join(getattr(m, '__name__', str(m)) for m in candidates)}")


@functools.cache
def _fields(kind: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(kind) if f.init)


@functools.cache
def _frozen(kind: type) -> bool:
    return bool(kind.__dataclass_params__.frozen)  # type: ignore[attr-defined]


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def join(path: str, key: str) -> str:
    """A field path one level down: `spec` + `target` is `spec.target`."""
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    """A value in an error message: its kind for containers, a short repr otherwise (never a whole file)."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > 24:  # a long string may be a file's content, a token: not echoed
        return f"a string of {len(value)} characters"
    if isinstance(value, datetime.date):  # YAML reads 2001-12-14 as a date: say it as written, not its repr
        return f"the date {value.isoformat()}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class JsonError(ValueError):
    """Text that is not the JSON canary reads, in one line; `line` where the parser can say."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(message)


def parse_json(text: str | bytes) -> Any:
    """JSON text as data, refusing what a reader must not guess at: a key named twice in one object (the
    last would silently win), NaN and the infinities (not JSON), and, as one clear line rather than the
    parser's own failure, a number of more digits than Python converts and nesting deeper than its stack."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON: {exc.msg}", exc.lineno) from None
    except RecursionError:
        raise JsonError("nested too deeply") from None
    except JsonError:
        raise
    except ValueError as exc:  # int() past sys.get_int_max_str_digits, or text that is not UTF-8
        too_long = "digits" in str(exc)
        raise JsonError("a number of thousands of digits" if too_long else f"not valid JSON: {exc}") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise JsonError(f"the key {describe(key)} appears twice in one object")
        data[key] = value
    return data


def refuse_constant(name: str) -> Any:
    """For json.loads' parse_constant: NaN, Infinity and -Infinity are not JSON, and canary never writes them."""
    raise JsonError(f"{name} is not JSON")
