"""Hypothesis strategies for tests/test_hostile.py: hostile policies, VirtualService manifests, Prometheus answers.

Each strategy starts from a real, valid document (policies/web-app.yaml, fixtures/istio) and breaks it: fields
removed, values replaced by ones of the wrong type, huge, negative, NaN or infinite numbers, strings with
unicode, control characters and newlines, YAML aliases, and text-level damage (cut short, a byte changed).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
POLICY_TEXT = (REPO / "policies" / "web-app.yaml").read_text(encoding="utf-8")
POLICY_DOC: dict[str, Any] = yaml.safe_load(POLICY_TEXT)
DR_TEXT = (REPO / "fixtures" / "istio" / "web-app-destinationrule.yaml").read_text(encoding="utf-8")
VS_TEXT = (REPO / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_text(encoding="utf-8")
VS_DOC: dict[str, Any] = yaml.safe_load(VS_TEXT)
SECRET = "s3cr3t-TOKEN-4f9a"

# ------------------------------------------------------------------------------------------ values

CONTROL = "".join(chr(c) for c in (*range(0, 32), 127, 0x85, 0x2028, 0x2029, 0x202E, 0x200B, 0xFEFF))
hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from(CONTROL + "ab-.{}`$\"'\\/ #:*&!|>%@"), min_size=1, max_size=12),
    st.sampled_from(
        ["", " ", "v1 ", "Default", "../../etc/x", "web-app\n# evil", "web-app{}", "web`app", "web-app\x07",
         'web-app"} or vector(1) #', "1m]) or vector(1", "ñ", "😀", "\u202eppa-bew", "a" * 300, "null", "~", "0x10",
         "1e400", "-1", ".nan", "yes", "5xx\n"]
    ),
)  # fmt: skip
hostile_number = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 100, 101, 2**63, -(2**63), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0]),
)
scalar = st.one_of(st.none(), st.booleans(), hostile_number, hostile_text)
hostile_value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(hostile_text, inner, max_size=3)),
    max_leaves=6,
)


# ---------------------------------------------------------------------------------------- documents


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc` (dict keys and list indices), the root excluded."""
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out.extend(paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.append((*prefix, i))
            out.extend(paths(value, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw: st.DrawFn, original: dict[str, Any], max_changes: int = 3) -> Any:
    """`original` with 1..max_changes structural changes: a field removed, replaced, renamed or added."""
    doc: Any = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, max_changes))):
        where = paths(doc)
        if not where or draw(st.integers(0, 30)) == 0:
            return draw(hostile_value)  # the whole document is something else
        path = draw(st.sampled_from(where))
        parent = _parent(doc, path)
        action = draw(st.sampled_from(["remove", "replace", "replace", "replace", "rename", "add"]))
        key = path[-1]
        if action == "remove":
            del parent[key]
        elif action == "replace":
            parent[key] = draw(hostile_value)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(hostile_text)] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(hostile_text)] = draw(hostile_value)
        elif action == "add" and isinstance(parent, list):
            parent.insert(key, draw(hostile_value))
    return doc


def dump(doc: Any) -> str:
    """YAML for any value the strategies make (numbers YAML cannot say as themselves become their text)."""
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return json.dumps(doc, default=str)


@st.composite
def damaged_text(draw: st.DrawFn, text: str) -> str:
    """Text-level damage: cut short, a character replaced or inserted, a line duplicated."""
    kind = draw(st.sampled_from(["cut", "replace", "insert", "duplicate"]))
    at = draw(st.integers(0, max(0, len(text) - 1)))
    if kind == "cut":
        return text[:at]
    if kind == "replace":
        return text[:at] + draw(st.sampled_from(CONTROL + "\t:{}[]&*!|>'\"%@`#-?,")) + text[at + 1 :]
    if kind == "insert":
        return text[:at] + draw(hostile_text) + text[at:]
    lines = text.splitlines(keepends=True)
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    return "".join(lines[: i + 1] + lines[i:])


@st.composite
def with_aliases(draw: st.DrawFn, text: str) -> str:
    """A YAML anchor and aliases: a value reused, a self-reference, or a small alias bomb in a field."""
    kind = draw(st.sampled_from(["reuse", "bomb", "self", "merge"]))
    if kind == "reuse":
        return text.replace("baseline: v1", "baseline: &sub v1").replace("canary: v2", "canary: *sub")
    if kind == "self":
        return text.replace("metadata:\n", "metadata: &m\n  self: *m\n", 1)
    if kind == "merge":
        return text.replace("  analysis:\n", "  analysis:\n    <<: {judge: kayenta}\n", 1)
    depth = draw(st.integers(2, 4))
    lines = ["x0: &a0 [lol, lol, lol]"] + [f"x{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, depth)]
    labels = "\n".join(f"    {line}" for line in lines)
    return text.replace("  namespace: default\nspec:", f"  namespace: default\n  labels:\n{labels}\nspec:", 1)


policy_texts = st.one_of(
    mutated(POLICY_DOC).map(dump),
    damaged_text(POLICY_TEXT),
    with_aliases(POLICY_TEXT),
    mutated(POLICY_DOC, 1).map(dump).flatmap(damaged_text),
)


def manifest_text(vs: Any) -> str:
    return DR_TEXT.rstrip("\n") + "\n---\n" + dump(vs)


virtual_service_docs = st.one_of(mutated(VS_DOC), st.just(VS_DOC).map(copy.deepcopy))
manifest_texts = st.one_of(
    mutated(VS_DOC).map(manifest_text),
    damaged_text(manifest_text(VS_DOC)),
)


# --------------------------------------------------------------------------------------- Prometheus


def _number_text(x: float) -> str:
    return repr(x) if isinstance(x, float) else str(x)


timestamps = st.one_of(
    st.floats(min_value=1.7e9, max_value=2.0e9),
    st.sampled_from([math.nan, math.inf, -1.0, 0.0, 1e308]),
    st.just("1800000000"),
    hostile_text,
)
good_values = st.integers(0, 10**6).map(str)
bad_values = st.one_of(
    st.sampled_from(["-5", "NaN", "+Inf", "-Inf", "Inf", "1e308", "abc", "", "0x1f", " 1", "1_000", "٣"]),
    st.integers(-(10**20), 10**20).map(str),
    st.floats().map(_number_text),
    hostile_value,
)


@st.composite
def answer_series(draw: st.DrawFn, at: float, *, hostile: bool) -> Any:
    version = draw(st.sampled_from(["v1", "v2"])) if not hostile else draw(st.sampled_from(["v1", "v2", "v3", ""]))
    count = draw(st.integers(0, 6))
    start = at - 600
    times = sorted(draw(st.lists(st.floats(0, 660), min_size=count, max_size=count)))
    values = sorted(draw(st.lists(st.integers(0, 10**6), min_size=count, max_size=count)))
    samples: list[Any] = [[start + t, str(v)] for t, v in zip(times, values, strict=True)]
    metric: Any = {
        "destination_service": "web-app.default.svc.cluster.local",
        "destination_version": version,
        "pod": draw(st.sampled_from(["web-app-v1-a", "web-app-v2-c", "p"])),
        "response_code": draw(st.sampled_from(["200", "503", "404"])),
        "le": draw(st.sampled_from(["5", "50", "500", "+Inf"])),
        "reporter": "destination",
    }
    if hostile:
        change = draw(st.sampled_from(["value", "timestamp", "pair", "values", "metric", "label", "reverse"]))
        if change == "value" and samples:
            samples[draw(st.integers(0, len(samples) - 1))][1] = draw(bad_values)
        elif change == "timestamp" and samples:
            samples[draw(st.integers(0, len(samples) - 1))][0] = draw(timestamps)
        elif change == "pair" and samples:
            samples[draw(st.integers(0, len(samples) - 1))] = draw(hostile_value)
        elif change == "values":
            samples = draw(hostile_value)
        elif change == "metric":
            metric = draw(hostile_value)
        elif change == "label":
            metric[draw(st.sampled_from(["pod", "le", "destination_version", "response_code"]))] = draw(hostile_value)
        elif change == "reverse":
            samples.reverse()
    return {"metric": metric, "values": samples}


@st.composite
def prometheus_answers(draw: st.DrawFn, at: float = 1.8e9) -> tuple[int, Any, bool]:
    """(status, body, malformed): a body that is bytes or JSON; `malformed` when no honest Prometheus sends it."""
    kind = draw(st.sampled_from(["good", "hostile-series", "hostile-series", "shape", "status", "bytes"]))
    if kind == "good":
        return 200, _matrix(draw(st.lists(answer_series(at, hostile=False), max_size=4))), False
    if kind == "hostile-series":
        result = draw(st.lists(answer_series(at, hostile=False), max_size=2))
        result.insert(draw(st.integers(0, len(result))), draw(answer_series(at, hostile=True)))
        return 200, _matrix(result), False  # some damage is honest (NaN stale markers, resets): not asserted
    if kind == "shape":
        shape = draw(st.sampled_from(["data", "result", "top", "status"]))
        if shape == "data":
            body: Any = {"status": "success", "data": draw(hostile_value)}
        elif shape == "result":
            body = {"status": "success", "data": {"resultType": "matrix", "result": draw(hostile_value)}}
        elif shape == "status":
            body = {"status": draw(hostile_value), "errorType": draw(hostile_value), "error": draw(hostile_value)}
        else:
            body = draw(hostile_value)
        return 200, body, not (isinstance(body, dict) and _matrix_like(body))
    if kind == "status":
        status = draw(st.sampled_from([204, 301, 400, 401, 403, 404, 405, 410, 418, 422, 429, 500, 502, 503, 504]))
        error = draw(st.one_of(hostile_text, st.just(f"token {SECRET} refused")))
        body = {"status": "error", "errorType": draw(hostile_text), "error": error}
        return status, body, True
    raw = draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"{", b"[" * 5000, b"\xff\xfe", b"null"])))
    return 200, raw, True


def _matrix(result: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def _matrix_like(body: dict[str, Any]) -> bool:
    data = body.get("data")
    return isinstance(data, dict) and isinstance(data.get("result"), list) and not data["result"]
