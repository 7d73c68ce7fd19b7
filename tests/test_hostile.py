"""Bad and hostile input: one clear line, bounded time and memory, no secret ever printed.

For every bad input (a file that is not what it should be, a field that breaks Kubernetes' or Istio's rules,
a number out of range, a Prometheus or Kubernetes API server that answers garbage, wrong types, slowly, or
without end) canary must:
- exit 2 (1 only where a real comparison said so, never for bad input);
- say so in at most four lines on stderr: no traceback, no "internal error";
- print no secret (a token, a password) anywhere, nor write one into any file (audit log, manifest);
- move no weight, and record no change that was not made;
- end within a bounded time and memory: commands that could hang or grow run as real processes (forked from
  a server that imported canary once) under RLIMIT_AS, and are killed at a time limit (a hang is a failure).

Named cases cover each input the issue lists and more; hypothesis properties (200 generated cases each, in
process through typer's CliRunner) cover mutated policies, VirtualServices and Prometheus answers.

Properties do not shrink a failure (for time); run with HOSTILE_SHRINK=1 to see the smallest failing case.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import hostile_strategies as hs
import pytest
import typer.main
import typer.testing
import yaml
from hostile_servers import (
    ANY,
    DISCOVERY,
    VS_GET,
    Drip,
    Hostile,
    HostileKubeApi,
    HostilePrometheus,
    Huge,
    MemoryLimitedLauncher,
    Ran,
    Redirect,
    Reply,
    garbage_reply,
    healthy_answer,
    matrix,
    series,
)
from hypothesis import HealthCheck, Phase, given, settings
from typer.testing import CliRunner

from canary import secrets
from canary.cli import app

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "web-app.yaml"
POLICY_TEXT = POLICY.read_text(encoding="utf-8")
DR_FIXTURE = REPO / "fixtures" / "istio" / "web-app-destinationrule.yaml"
VS_FIXTURE = REPO / "fixtures" / "istio" / "web-app-virtualservice.yaml"
MANIFEST_TEXT = DR_FIXTURE.read_text(encoding="utf-8").rstrip("\n") + "\n---\n" + VS_FIXTURE.read_text(encoding="utf-8")
HOST = "web-app.default.svc.cluster.local"
PROMTOOL = shutil.which("promtool")

SECRET = hs.SECRET  # "s3cr3t-TOKEN-4f9a": in every token file, kubeconfig token and hostile echo
PASSWORD = "pa55w0rd-SECRET-77c1"
SECRETS = (SECRET, PASSWORD)

FILE_LIMIT_S = 8.0  # a file canary must refuse is refused at once; anything near this is a hang
PROM_TIMEOUT_S = 1.0  # --prometheus-timeout of the slow-drip cases
DRIP_MARGIN_S = 4.0  # what a whole query may take beyond --prometheus-timeout
KUBE_DRIP_LIMIT_S = 15.0  # a whole Kubernetes call must end within canary's own deadline (10 s per call today)

pytestmark = [pytest.mark.timeout(120)]


def params(cases: Mapping[str, Any]) -> list[Any]:
    """pytest params named by the keys of `cases`."""
    return [pytest.param(value, id=key) for key, value in cases.items()]


# ------------------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """What a command did, in process (CliRunner) or as a real process (the fork server)."""

    code: int | None  # None: killed at its time limit
    out: str
    err: str
    exception: BaseException | None = None  # an exception canary let escape (CliRunner only)
    seconds: float = 0.0

    @classmethod
    def of(cls, ran: Ran) -> Outcome:
        return cls(ran.code, ran.out, ran.err, None, ran.seconds)


CLEAN_ENV = {"CANARY_PROMETHEUS_URL": None, "KUBECONFIG": None, "HOSTILE_TOKEN": None}


_COMMAND: list[Any] = []


def _command(given: Any) -> Any:
    """canary's click command, built from the typer app once (building it is most of a small command's time)."""
    if not _COMMAND:
        _COMMAND.append(typer.main.get_command(given))
    return _COMMAND[0]


def invoke(*args: str | Path, cwd: Path | None = None, env: Mapping[str, str | None] | None = None) -> Outcome:
    """The command in process, as `canary.cli.main` runs it (an escaped exception is kept, not raised), knowing
    no secret yet, as a new process does: one an earlier command registered would be scrubbed from this one's
    output and hide a leak."""
    runner = CliRunner()
    started = time.monotonic()
    with (
        contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext(),
        mock.patch.object(typer.testing, "_get_command", _command),
        mock.patch.object(secrets, "_known", set()),
    ):
        result = runner.invoke(app, [str(a) for a in args], env={**CLEAN_ENV, **(env or {})})
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, exc, time.monotonic() - started)


def _short(text: str, limit: int = 600) -> str:
    return repr(text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)")


def check_clean(o: Outcome, *, codes: Sequence[int] = (2,), secrets: Sequence[str] = SECRETS) -> None:
    """The properties every answer to bad input has: exit code, a few lines, no traceback, no secret."""
    assert o.code is not None, f"hung: killed after {o.seconds:.1f} s; stderr so far {_short(o.err)}"
    assert o.exception is None, f"canary let {type(o.exception).__name__} escape: {o.exception!s:.300}"
    assert "Traceback" not in o.err and "Traceback" not in o.out, f"a traceback: {_short(o.err)}"
    assert "internal error" not in o.err, f"an internal error: {_short(o.err)}"
    assert o.code in codes, f"exit {o.code} (wanted {' or '.join(map(str, codes))}); stderr {_short(o.err)}"
    lines = o.err.splitlines()
    assert len(lines) <= 4, f"{len(lines)} lines on stderr: {_short(o.err)}"
    for secret in secrets:
        assert secret not in o.err, f"a secret printed on stderr: {_short(o.err)}"
        assert secret not in o.out, f"a secret printed on stdout: {_short(o.out[max(0, o.out.find(secret) - 300) :])}"


def check_refused(
    o: Outcome,
    *,
    codes: Sequence[int] = (2,),
    mentions: Sequence[str] = (),
    root: Path | None = None,
    before: Mapping[Path, str] | None = None,
) -> None:
    """`check_clean`, that stderr names what was wrong, and that no file canary wrote holds a secret."""
    check_clean(o, codes=codes)
    for what in mentions:
        assert what in o.err, f"stderr does not name {what!r}: {_short(o.err)}"
    if root is not None:
        for path in written(root, before or {}):
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"canary wrote a secret into {path}"


# ------------------------------------------------------------------------------------ files on disk


def snapshot(root: Path) -> dict[Path, str]:
    """Every regular file under root, with a digest of its content (FIFOs, devices and links skipped)."""
    out: dict[Path, str] = {}
    for path in root.rglob("*"):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
            out[path] = digest.hexdigest()
    return out


def written(root: Path, before: Mapping[Path, str]) -> list[Path]:
    return [p for p, d in snapshot(root).items() if before.get(p) != d]


def route_weights(vs: Any) -> dict[str, Any] | None:
    """The weights of web-app's plain split (the first route without `match` to both subsets), read raw."""
    try:
        rules = list(vs["spec"]["http"])
    except (KeyError, TypeError):
        return None
    for rule in rules:
        try:
            if not rule.get("match"):
                found = {
                    d["destination"]["subset"]: d.get("weight")
                    for d in rule["route"]
                    if isinstance(d, dict) and isinstance(d.get("destination"), dict) and "subset" in d["destination"]
                }
                if {"v1", "v2"} <= set(found):
                    return found
        except (KeyError, TypeError, AttributeError):
            continue
    return None


def manifest_weights(path: Path) -> dict[str, int] | None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(doc, dict) and doc.get("kind") == "VirtualService":
            return route_weights(doc)
    return None


def applied_outcomes(audit: Path) -> list[dict[str, Any]]:
    """The outcome records of the log saying a change was applied (raw JSON, not canary's reader)."""
    if not audit.is_file():
        return []
    out = []
    for line in audit.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and record.get("kind") == "outcome" and record.get("result") == "applied":
            out.append(record)
    return out


def check_no_change(audit: Path, weights_now: dict[str, int] | None, weights_before: dict[str, int] | None) -> None:
    """No weight moved, and no record says a change was applied that the route does not hold."""
    assert weights_now == weights_before, f"weights moved: {weights_before} -> {weights_now}"
    for record in applied_outcomes(audit):
        held = record.get("weights") or {}
        assert weights_now == {"v1": held.get("baseline"), "v2": held.get("canary")}, (
            f"the audit log records a change the route does not hold: {record}"
        )


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def launcher() -> Iterator[MemoryLimitedLauncher]:
    """canary as real processes under RLIMIT_AS (one fork server for the module, always closed)."""
    forks = MemoryLimitedLauncher()
    try:
        yield forks
    finally:
        forks.close()


@pytest.fixture
def prom() -> Iterator[HostilePrometheus]:
    with HostilePrometheus() as server:
        yield server


@pytest.fixture
def kube() -> Iterator[HostileKubeApi]:
    with HostileKubeApi.with_fixtures() as server:
        yield server


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """fixtures/istio's DestinationRule and VirtualService for web-app in one manifest (v1 90%, v2 10%)."""
    path = tmp_path / "web-app.yaml"
    path.write_text(MANIFEST_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "web-app.jsonl"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def policy_file(tmp_path: Path, text: str = POLICY_TEXT, name: str = "policy.yaml") -> Path:
    return write(tmp_path / name, text)


FAST_POLICY_TEXT = (
    POLICY_TEXT.replace("interval: 60s", "interval: 1s")
    .replace("maxDuration: 60m", "maxDuration: 5s")
    .replace("  audit: audit/web-app.jsonl         # one JSON line per decision\n", "")
)


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    os.mkfifo(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def alias_bomb(depth: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def policy_with_alias_bomb() -> str:
    """The example policy with a billion-laughs alias bomb in metadata.labels."""
    bomb = "\n".join(f"    {line}" for line in alias_bomb().splitlines())
    return POLICY_TEXT.replace("  namespace: default\nspec:", f"  namespace: default\n  labels:\n{bomb}\nspec:", 1)


def big_file(path: Path, size: int, head: str = "") -> Path:
    with path.open("wb") as fh:
        fh.write(head.encode())
        line = b"# " + b"x" * 1021 + b"\n"
        for _ in range(size // len(line)):
            fh.write(line)
    return path


def in_target(text: str, field: str, value: str) -> str:
    """The example policy with one spec.target field set to `value` (a YAML double-quoted scalar)."""
    pattern = re.compile(rf"^(    {field}:) [^\n#]*?(\s*#.*)?$", re.MULTILINE)
    changed, n = pattern.subn(lambda m: f"{m.group(1)} {json.dumps(value)}", text, count=1)
    assert n == 1, field
    return changed


# =============================================================================================== files
# Every file canary reads must be a regular file under a size cap; anything else is one line naming it.


SPECIAL_FILE_KINDS = ["directory", "fifo", "dev-zero"]


def special_file(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> Path:
    if kind == "directory":
        path = tmp_path / "a-directory"
        path.mkdir()
        return path
    if kind == "fifo":
        return stack.enter_context(fifo(tmp_path / "a-fifo"))
    return Path("/dev/zero")


@pytest.mark.parametrize("kind", SPECIAL_FILE_KINDS)
def test_a_policy_that_is_not_a_regular_file(kind: str, tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        ran = launcher.run(["validate", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


def test_a_policy_of_50_mb(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    path = big_file(tmp_path / "big.yaml", 50 * 1024 * 1024, POLICY_TEXT)
    ran = launcher.run(["validate", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


def test_a_policy_with_a_yaml_alias_bomb(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    path = policy_file(tmp_path, policy_with_alias_bomb())
    ran = launcher.run(["validate", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


def test_a_policy_that_is_only_an_alias_bomb(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    path = policy_file(tmp_path, alias_bomb())
    ran = launcher.run(["validate", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


def test_a_policy_nested_a_hundred_thousand_deep(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    path = policy_file(tmp_path, "spec: " + "[" * 100_000 + "]" * 100_000 + "\n")
    ran = launcher.run(["validate", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


BAD_POLICY_BYTES = {
    "invalid-utf8": POLICY_TEXT.encode().replace(b"web-app", b"web-\xff\xfeapp", 1),
    "binary": bytes(range(256)) * 8,
    "utf16": POLICY_TEXT.encode("utf-16"),
    "empty": b"",
    "nul-byte": POLICY_TEXT.encode().replace(b"name: web-app", b"name: web\x00app", 1),
    "a-token-file": (SECRET + "\n").encode(),
    "a-long-token-file": (SECRET + "-" + "7fQ2xLk9" * 6 + "\n").encode(),
    "a-yaml-list": b"- " + SECRET.encode() + b"\n",
    "a-kubeconfig": f"apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user: {{token: {SECRET}}}\n".encode(),
}


@pytest.mark.parametrize("content", params(BAD_POLICY_BYTES))
def test_a_policy_file_that_is_no_policy(content: bytes, tmp_path: Path) -> None:
    """One line naming the file; never the file's content (a token file passed as a policy stays secret)."""
    path = write(tmp_path / "policy.yaml", content)
    check_refused(invoke("validate", path), mentions=[str(path)])


def test_a_missing_policy_file(tmp_path: Path) -> None:
    check_refused(invoke("validate", tmp_path / "nope.yaml"), mentions=[str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("kind", SPECIAL_FILE_KINDS)
def test_a_scenario_that_is_not_a_regular_file(kind: str, tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        ran = launcher.run(
            ["run", POLICY, "--simulate", path, "--audit", tmp_path / "a.jsonl", "--output", "json"],
            cwd=tmp_path, timeout_s=FILE_LIMIT_S,
        )  # fmt: skip
    check_refused(Outcome.of(ran), mentions=[str(path)])


def test_a_scenario_nested_a_hundred_thousand_deep(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    """Refused in one line, as a policy that deep is (not a RecursionError from the JSON parser)."""
    path = write(tmp_path / "deep.json", b"[" * 100_000 + b"]" * 100_000 + b"\n")
    ran = launcher.run(["run", POLICY, "--simulate", path, "--audit", tmp_path / "a.jsonl"], cwd=tmp_path,
                       timeout_s=FILE_LIMIT_S)  # fmt: skip
    check_refused(Outcome.of(ran), mentions=[f"canary: {path}: nested too deeply"])


def test_a_scenario_that_is_a_token_file(tmp_path: Path) -> None:
    path = write(tmp_path / "scenario.json", SECRET + "\n")
    check_refused(invoke("run", POLICY, "--simulate", path, "--audit", tmp_path / "a.jsonl"), mentions=[str(path)])


# --- manifests


@pytest.mark.parametrize("kind", SPECIAL_FILE_KINDS)
def test_a_manifest_that_is_not_a_regular_file(kind: str, tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        ran = launcher.run(["status", POLICY, "--manifest", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


@pytest.mark.parametrize("kind", SPECIAL_FILE_KINDS)
def test_a_rollback_on_a_manifest_that_is_not_a_regular_file(
    kind: str, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    audit = tmp_path / "audit.jsonl"
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        ran = launcher.run(
            ["rollback", POLICY, "--manifest", path, "--audit", audit], cwd=tmp_path, timeout_s=FILE_LIMIT_S
        )
    check_refused(Outcome.of(ran), mentions=[str(path)])
    assert not applied_outcomes(audit)


def test_a_manifest_with_a_yaml_alias_bomb(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    path = write(tmp_path / "manifest.yaml", MANIFEST_TEXT + "---\n" + alias_bomb())
    before = path.read_bytes()
    ran = launcher.run(["status", POLICY, "--manifest", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])
    assert path.read_bytes() == before


def test_a_manifest_of_50_mb(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    """Refused for its size, or read within the time and memory limits; either way, one clear answer."""
    path = big_file(tmp_path / "manifest.yaml", 50 * 1024 * 1024, MANIFEST_TEXT)
    ran = launcher.run(["status", POLICY, "--manifest", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), codes=(0, 2))


BAD_MANIFEST_BYTES = {
    "binary": bytes(range(256)) * 8,
    "invalid-utf8": MANIFEST_TEXT.encode().replace(b"web-app", b"web\xffapp"),
    "a-token-file": (SECRET + "\n").encode(),
    "yaml-error": b"kind: VirtualService\nmetadata: {name: web-app\n",
    "nested-deep": b"- " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    # kubectl refuses a key given twice; PyYAML would keep the last, and canary move a weight no one applies
    "duplicate-weight-key": MANIFEST_TEXT.replace(
        "      weight: 90\n", "      weight: 90\n      weight: 50\n"
    ).encode(),
}


@pytest.mark.parametrize("content", params(BAD_MANIFEST_BYTES))
@pytest.mark.parametrize("command", ["status", "rollback"])
def test_a_manifest_file_that_is_no_manifest(command: str, content: bytes, tmp_path: Path, audit: Path) -> None:
    path = write(tmp_path / "manifest.yaml", content)
    extra = ["--audit", audit] if command == "rollback" else []
    check_refused(invoke(command, POLICY, "--manifest", path, *extra), mentions=[str(path)])
    assert path.read_bytes() == content and not applied_outcomes(audit)


# --- audit logs


@pytest.mark.parametrize("kind", SPECIAL_FILE_KINDS)
@pytest.mark.parametrize("command", ["show", "verify", "run"])
def test_an_audit_log_that_is_not_a_regular_file(
    command: str, kind: str, tmp_path: Path, manifest: Path, launcher: MemoryLimitedLauncher
) -> None:
    before = manifest.read_bytes()
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        argv: list[str | Path] = ["audit", command, path]
        if command == "run":
            argv = ["run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", path, "--output", "json"]
        ran = launcher.run(argv, cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])
    assert manifest.read_bytes() == before


def _torn_log(path: Path, size: int = 10 * 1024 * 1024) -> Path:
    with path.open("wb") as fh:
        fh.write(b'{"kind": "decision", "reason": "')
        fh.write(b"x" * size)  # no closing quote, no newline: one 10 MB torn line
    return path


@pytest.mark.parametrize("command", ["show", "verify"])
def test_an_audit_log_of_one_10_mb_line_without_newline(
    command: str, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    """A torn first record: `show` reads no records and names the tear (exit 0), `verify` fails on it."""
    path = _torn_log(tmp_path / "audit.jsonl")
    ran = launcher.run(["audit", command, path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), codes=(1,) if command == "verify" else (0,), mentions=[str(path), "torn"])
    assert len(ran.err) < 2000, "the error echoes the log's content"


def test_a_run_on_an_audit_log_of_one_10_mb_line_without_newline(
    tmp_path: Path, manifest: Path, launcher: MemoryLimitedLauncher
) -> None:
    """The torn line is set aside (a normal crash repair) or refused; either way in bounded time and memory."""
    path = _torn_log(tmp_path / "audit.jsonl")
    ran = launcher.run(
        ["run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", path, "--output", "json"],
        cwd=tmp_path, timeout_s=3 * FILE_LIMIT_S,
    )  # fmt: skip
    check_refused(Outcome.of(ran), codes=(0, 2))
    assert len(ran.err) < 2000 and len(ran.out) < 100_000, "the output echoes the log's content"


BAD_AUDIT_BYTES = {
    "binary": bytes(range(256)) * 8,
    "nested-deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "a-token-file": (SECRET + "\n").encode(),
    "huge-number": b'{"kind": "decision", "time": 1' + b"0" * 5000 + b"}\n",
}


AUDIT_CASES = {
    f"{command}-{name}": (command, name) for command in ("show", "verify", "run") for name in BAD_AUDIT_BYTES
}


@pytest.mark.parametrize("case", params(AUDIT_CASES))
def test_an_audit_log_that_is_no_audit_log(case: tuple[str, str], tmp_path: Path, manifest: Path) -> None:
    command, name = case
    path = write(tmp_path / "audit.jsonl", BAD_AUDIT_BYTES[name])
    weights = manifest_weights(manifest)
    if command == "run":
        o = invoke("run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", path, "--output", "json")
        check_refused(o, codes=(0, 2))  # a damaged last line is set aside by design; nothing else may break
        if o.code == 2:
            check_no_change(path, manifest_weights(manifest), weights)
    else:
        check_refused(invoke("audit", command, path), codes=(1, 2) if command == "verify" else (2,))


@pytest.mark.parametrize("other", ["policy", "manifest", "json-file"])
def test_an_audit_flag_naming_another_file_refuses_and_leaves_it_whole(
    other: str, tmp_path: Path, manifest: Path
) -> None:
    others = {"policy": lambda: write(tmp_path / "policy.yaml", POLICY_TEXT), "manifest": lambda: manifest,
              "json-file": lambda: write(tmp_path / "scenario.json", '{"scenarios": []}\n')}  # fmt: skip
    target = others[other]()
    before, weights = target.read_bytes(), manifest_weights(manifest)
    o = invoke("run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", target)
    check_refused(o, codes=(2,))
    assert "not an audit log" in o.err
    assert target.read_bytes() == before and not target.with_name(target.name + ".torn").exists()
    check_no_change(target, manifest_weights(manifest), weights)


# --- kubeconfig, token, password and CA files


@pytest.mark.parametrize("kind", SPECIAL_FILE_KINDS)
def test_a_kubeconfig_that_is_not_a_regular_file(kind: str, tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        ran = launcher.run(["status", POLICY, "--kubeconfig", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


def test_a_kubeconfig_with_a_yaml_alias_bomb(tmp_path: Path, launcher: MemoryLimitedLauncher) -> None:
    path = write(tmp_path / "kubeconfig", "apiVersion: v1\nkind: Config\n" + alias_bomb())
    ran = launcher.run(["status", POLICY, "--kubeconfig", path], cwd=tmp_path, timeout_s=FILE_LIMIT_S)
    check_refused(Outcome.of(ran), mentions=[str(path)])


BAD_KUBECONFIG_BYTES = {
    "binary": bytes(range(256)) * 8,
    "invalid-yaml": b"apiVersion: v1\nclusters: [\n",
    "a-list": b"- 1\n- 2\n",
    "a-token-file": (SECRET + "\n").encode(),
    "empty": b"",
}


@pytest.mark.parametrize("content", list(BAD_KUBECONFIG_BYTES.values()), ids=list(BAD_KUBECONFIG_BYTES))
def test_a_kubeconfig_file_that_is_no_kubeconfig(content: bytes, tmp_path: Path) -> None:
    path = write(tmp_path / "kubeconfig", content)
    check_refused(invoke("status", POLICY, "--kubeconfig", path), mentions=[str(path)])


def test_a_missing_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    check_refused(invoke("status", POLICY, "--kubeconfig", path), mentions=[str(path)])


def kubeconfig_with(api: HostileKubeApi, path: Path, user: dict[str, Any], **cluster: Any) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": api.url, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "local", "user": "u"}}],
        "current-context": "test",
    }
    return write(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_style=None))


def test_a_kubeconfig_token_block_ending_in_a_newline_is_never_printed(kube: HostileKubeApi, tmp_path: Path) -> None:
    """`token: |` keeps a trailing newline: trimmed and used, or refused, but the token is never printed."""
    path = write(
        tmp_path / "kubeconfig",
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {kube.url}\n"
        f"users:\n- name: u\n  user:\n    token: |\n      {SECRET}\ncontexts:\n- name: test\n  context:\n"
        "    cluster: local\n    user: u\ncurrent-context: test\n",
    )
    before = snapshot(tmp_path)
    o = invoke("status", POLICY, "--kubeconfig", path)
    check_refused(o, codes=(0, 2), root=tmp_path, before=before)
    if o.code == 0:
        assert f"Bearer {SECRET}" in kube.authorizations


@pytest.mark.parametrize(
    "token",
    [f"{SECRET}\nX-Injected: 1", f"{SECRET}\rX", f"\x1b[2J{SECRET}", f"{SECRET}✓", f"{SECRET}\x00"],
    ids=["inner-newline", "inner-carriage-return", "escape", "non-latin-1", "nul"],
)
def test_a_kubeconfig_token_that_cannot_be_a_header(token: str, kube: HostileKubeApi, tmp_path: Path) -> None:
    path = kubeconfig_with(kube, tmp_path / "kubeconfig", {"token": token})
    before = snapshot(tmp_path)
    o = invoke("status", POLICY, "--kubeconfig", path)
    check_refused(o, mentions=[str(path)], root=tmp_path, before=before)
    assert "not valid JSON" not in o.err, "a bad token reported as the server's fault"


TOKEN_FILES = {
    "trailing-newline": (SECRET + "\n").encode(),
    "inner-newline": (SECRET + "\ninner\n").encode(),
    "binary": b"\xff" + SECRET.encode(),
}


@pytest.mark.parametrize("content", list(TOKEN_FILES.values()), ids=list(TOKEN_FILES))
def test_a_kubeconfig_token_file(content: bytes, kube: HostileKubeApi, tmp_path: Path) -> None:
    """A tokenFile ending in one newline is used without it; anything else unprintable is refused by name."""
    token = write(tmp_path / "token", content)
    path = kubeconfig_with(kube, tmp_path / "kubeconfig", {"tokenFile": str(token)})
    before = snapshot(tmp_path)
    o = invoke("status", POLICY, "--kubeconfig", path)
    good = content == TOKEN_FILES["trailing-newline"]
    check_refused(o, codes=(0, 2) if good else (2,), root=tmp_path, before=before)
    if good and o.code == 0:
        assert f"Bearer {SECRET}" in kube.authorizations


def test_a_kubeconfig_whose_ca_file_is_missing(kube: HostileKubeApi, tmp_path: Path) -> None:
    missing = tmp_path / "no-ca.pem"
    path = kubeconfig_with(kube, tmp_path / "kubeconfig", {"token": SECRET}, **{"certificate-authority": str(missing)})
    path.write_text(path.read_text().replace(kube.url, kube.url.replace("http:", "https:")))
    check_refused(invoke("status", POLICY, "--kubeconfig", path), mentions=[str(missing)])


# --- Prometheus credentials


def analyze(prom: HostilePrometheus, policy: Path = POLICY, *extra: str | Path, **kw: Any) -> Outcome:
    return invoke("analyze", policy, "--prometheus-url", prom.url, "--prometheus-retries", "0", *extra, **kw)


SECRET_FILE_CASES = {
    "binary": b"\xff\xfe\x00" + SECRET.encode(),
    "non-latin-1": (SECRET + "✓").encode(),
    "inner-newline": (SECRET + "\nX-Injected: 1\n").encode(),
    "carriage-return-inside": (SECRET + "\rX").encode(),
    "nul": (SECRET + "\x00").encode(),
    "escape": ("\x1b]0;" + SECRET).encode(),
    "empty": b"",
    "only-a-newline": b"\n",
}


@pytest.mark.parametrize("content", list(SECRET_FILE_CASES.values()), ids=list(SECRET_FILE_CASES))
def test_a_prometheus_token_file_that_cannot_be_a_header(
    content: bytes, prom: HostilePrometheus, tmp_path: Path
) -> None:
    token = write(tmp_path / "token", content)
    before = snapshot(tmp_path)
    o = analyze(prom, POLICY, "--prometheus-token-file", token)
    check_refused(o, mentions=[str(token)], root=tmp_path, before=before)
    assert "other than JSON" not in o.err, "a bad token reported as the server's fault"
    assert not prom.requests, "a bad token was sent"


@pytest.mark.parametrize("content", list(SECRET_FILE_CASES.values()), ids=list(SECRET_FILE_CASES))
def test_a_prometheus_password_file_that_cannot_be_a_header(
    content: bytes, prom: HostilePrometheus, tmp_path: Path
) -> None:
    password = write(tmp_path / "password", content.replace(SECRET.encode(), PASSWORD.encode()))
    o = analyze(prom, POLICY, "--prometheus-user", "canary", "--prometheus-password-file", password)
    check_refused(o, mentions=[str(password)])
    assert "other than JSON" not in o.err and not prom.requests


def test_a_prometheus_token_file_ending_in_one_newline_is_used_without_it(
    prom: HostilePrometheus, tmp_path: Path
) -> None:
    token = write(tmp_path / "token", SECRET + "\n")
    before = snapshot(tmp_path)
    o = analyze(prom, POLICY, "--prometheus-token-file", token)
    check_refused(o, codes=(0, 1, 3), root=tmp_path, before=before)
    assert prom.requests and all(h.get("authorization") == f"Bearer {SECRET}" for _, _, h in prom.requests)


@pytest.mark.parametrize(
    "value", [f"{SECRET}\nX: 1", f"{SECRET}✓", f"{SECRET}\x7f"], ids=["newline", "non-latin-1", "del"]
)
def test_a_prometheus_token_env_that_cannot_be_a_header(value: str, prom: HostilePrometheus) -> None:
    o = analyze(prom, POLICY, "--prometheus-token-env", "HOSTILE_TOKEN", env={"HOSTILE_TOKEN": value})
    check_refused(o, mentions=["HOSTILE_TOKEN"])
    assert "other than JSON" not in o.err and not prom.requests


@pytest.mark.parametrize("kind", ["directory", "missing", "a-token-file"])
def test_a_prometheus_token_file_that_is_no_file(kind: str, prom: HostilePrometheus, tmp_path: Path) -> None:
    path = tmp_path / "token"
    if kind == "directory":
        path.mkdir()
    elif kind == "a-token-file":
        path = write(tmp_path / "big-token", SECRET * 10_000)  # 170 KB: no header is that long
    check_refused(analyze(prom, POLICY, "--prometheus-token-file", path), mentions=[str(path)])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_prometheus_token_file_that_is_not_a_regular_file(
    kind: str, prom: HostilePrometheus, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        ran = launcher.run(
            ["analyze", POLICY, "--prometheus-url", prom.url, "--prometheus-token-file", path],
            cwd=tmp_path, timeout_s=FILE_LIMIT_S,
        )  # fmt: skip
    check_refused(Outcome.of(ran), mentions=[str(path)])


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem"])
def test_a_prometheus_ca_file_that_cannot_be_used(kind: str, prom: HostilePrometheus, tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-pem":
        write(path, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    url = prom.url.replace("http:", "https:")  # TLS to a server that speaks plain HTTP: the CA is read first
    o = invoke("analyze", POLICY, "--prometheus-url", url, "--prometheus-ca-file", path, "--prometheus-retries", "0")
    check_refused(o, mentions=[str(path)] if kind != "not-pem" else [])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_prometheus_ca_file_that_is_not_a_regular_file(
    kind: str, prom: HostilePrometheus, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    with contextlib.ExitStack() as stack:
        path = special_file(kind, tmp_path, stack)
        url = prom.url.replace("http:", "https:")
        ran = launcher.run(
            ["analyze", POLICY, "--prometheus-url", url, "--prometheus-ca-file", path, "--prometheus-retries", "0"],
            cwd=tmp_path, timeout_s=FILE_LIMIT_S,
        )  # fmt: skip
    check_refused(Outcome.of(ran), mentions=[str(path)])


# ============================================================================================== fields
# Names, hosts, namespaces and subsets follow Kubernetes' and Istio's rules; each error names the field.


FIELD_CASES: dict[str, tuple[str, str, str]] = {
    # id: (spec.target field or metadata.name, value, field path the error must name)
    "name-path-traversal": ("name", "../../etc/x", "metadata.name"),
    "name-with-newline": ("name", "web-app\nx", "metadata.name"),
    "name-uppercase": ("name", "Web-App", "metadata.name"),
    "namespace-Default": ("namespace", "Default", "spec.target.namespace"),
    "namespace-too-long": ("namespace", "n" * 64, "spec.target.namespace"),
    "namespace-with-slash": ("namespace", "default/x", "spec.target.namespace"),
    "virtualservice-underscore": ("virtualService", "web_app", "spec.target.virtualService"),
    "virtualservice-with-newline": ("virtualService", "web-app\n", "spec.target.virtualService"),
    "subset-trailing-space": ("baseline", "v1 ", "spec.target.baseline"),
    "subset-with-newline": ("canary", "v2\nv3", "spec.target.canary"),
    "subset-with-quote": ("canary", 'v2"}', "spec.target.canary"),
    "host-control-char": ("host", "web-app\x07.default.svc.cluster.local", "spec.target.host"),
    "host-newline-comment": ("host", "web-app\n# evil", "spec.target.host"),
    "host-braces": ("host", "web-app{}", "spec.target.host"),
    "host-backtick": ("host", "web`app", "spec.target.host"),
    "host-promql-injection": ("host", 'web-app"} or vector(1) #', "spec.target.host"),
    "host-bidi-override": ("host", "\u202eppa-bew", "spec.target.host"),
    "host-space": ("host", "web app", "spec.target.host"),
}


def field_policy(tmp_path: Path, case: str) -> tuple[Path, str]:
    key, value, field = FIELD_CASES[case]
    if key == "name":
        text = POLICY_TEXT.replace("  name: web-app\n", f"  name: {json.dumps(value)}\n", 1)
    else:
        text = in_target(POLICY_TEXT, key, value)
    return policy_file(tmp_path, text), field


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_validate_refuses_a_name_kubernetes_or_istio_would_refuse(case: str, tmp_path: Path) -> None:
    path, field = field_policy(tmp_path, case)
    check_refused(invoke("validate", path), mentions=[str(path), field])


def test_a_policy_name_cannot_put_the_default_audit_log_outside_audit(tmp_path: Path) -> None:
    """The default audit log is audit/<name>.jsonl: a name `../../etc/x` must not write ../../etc/x.jsonl."""
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    text = POLICY_TEXT.replace("  name: web-app\n", '  name: "../../etc/x"\n', 1)
    text = text.replace("  audit: audit/web-app.jsonl         # one JSON line per decision\n", "")
    path = policy_file(tmp_path, text)
    before = snapshot(tmp_path)
    o = invoke("run", path, "--simulate", "healthy", "--output", "json", cwd=work)
    check_refused(o, mentions=["metadata.name"])
    assert not [p for p in written(tmp_path, before) if work / "audit" not in p.parents], "wrote outside audit/"


@pytest.mark.parametrize(
    ("audit_path", "what"),
    [("audit/a\x00b.jsonl", "nul"), ("audit/a\nb.jsonl", "newline"), ("", "empty")],
    ids=["nul", "newline", "empty"],
)
def test_a_policy_audit_path_that_is_no_path(audit_path: str, what: str, tmp_path: Path) -> None:
    text = POLICY_TEXT.replace("audit: audit/web-app.jsonl", f"audit: {json.dumps(audit_path)}")
    path = policy_file(tmp_path, text)
    check_refused(invoke("validate", path), mentions=[str(path), "spec.audit"])
    o = invoke("run", path, "--simulate", "healthy", "--output", "json", cwd=tmp_path)
    check_refused(o, mentions=["spec.audit"])


DURATION_CASES = {
    # id: (the line changed, its replacement, the field the error must name)
    "interval-1e300s": ("interval: 60s", "interval: 1e300s", "spec.interval"),
    "interval-100ns": ("interval: 60s", "interval: 0.0000001s", "spec.interval"),
    "maxduration-huge-hours": ("maxDuration: 60m", "maxDuration: 99999999999999h", "spec.maxDuration"),
    "maxduration-1e300": ("maxDuration: 60m", "maxDuration: 1e300", "spec.maxDuration"),
}


@pytest.mark.parametrize("case", list(DURATION_CASES))
def test_a_duration_out_of_any_sane_range(case: str, tmp_path: Path) -> None:
    line, replacement, field = DURATION_CASES[case]
    path = policy_file(tmp_path, POLICY_TEXT.replace(line, replacement, 1))
    check_refused(invoke("validate", path), mentions=[str(path), field])


POLICY_VALUE_CASES = {
    # id: (the text changed, its replacement, the field the error must name)
    "alpha-subnormal": ("alpha: 0.05", "alpha: 1.0e-310", "spec.analysis.alpha"),
    "passAlpha-1e-45": ("passAlpha: 0.2", "passAlpha: 1.0e-45", "spec.analysis.passAlpha"),
    "weight-1e308": ("      errors: 5xx", "      weight: 1.0e+308\n      errors: 5xx", "spec.metrics[0].weight"),
    "metric-name-lone-surrogate": ("name: error-rate", 'name: "err\\udc80"', "spec.metrics[0].name"),
    "apiVersion-5000-characters": ("apiVersion: canary.dev/v1alpha1", "apiVersion: " + "x" * 5000, "apiVersion"),
    "alpha-5000-digits": ("alpha: 0.05", "alpha: !!int " + "9" * 5000, "spec.analysis.alpha"),
    "a-list-as-a-key": ("spec:\n", "? [" + ", ".join(["a"] * 3000) + "]\n: 1\nspec:\n", "policy.yaml:"),
    "flagger-maxP99-bare-number": (
        "judge: sequential",
        "judge: flagger\n    flagger: {maxP99: 500}",
        "spec.analysis.flagger.maxP99",
    ),
}


@pytest.mark.parametrize("case", list(POLICY_VALUE_CASES))
def test_validate_refuses_a_value_that_cannot_mean_what_it_says(case: str, tmp_path: Path) -> None:
    """A level so small it underflows, a weight that overflows the score, a name no terminal or label can
    hold, a p99 limit whose unit is a guess (Flagger reads 500 as ms), a key that is a list: each refused by
    field, and a value thousands of characters long named by its size, not echoed."""
    line, replacement, field = POLICY_VALUE_CASES[case]
    assert line in POLICY_TEXT, line
    path = policy_file(tmp_path, POLICY_TEXT.replace(line, replacement, 1))
    o = invoke("validate", path)
    check_refused(o, mentions=[str(path), field])
    assert len(o.err) < 400, f"the error echoes the value: {len(o.err)} characters"


# ============================================================================================= numbers


def test_run_with_a_negative_seed(tmp_path: Path, audit: Path) -> None:
    o = invoke("run", POLICY, "--simulate", "healthy", "--seed", "-1", "--audit", audit, "--output", "json")
    check_refused(o, mentions=["--seed"])


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "1e308"])
def test_run_with_a_lock_timeout_out_of_range(value: str, manifest: Path, audit: Path) -> None:
    before = manifest.read_bytes()
    o = invoke("run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", audit,
               "--lock-timeout", value, "--output", "json")  # fmt: skip
    check_refused(o, mentions=["--lock-timeout"])
    assert manifest.read_bytes() == before and not applied_outcomes(audit)


@pytest.mark.parametrize("value", ["-5", "nan"])
def test_rollback_with_a_lock_timeout_out_of_range(value: str, manifest: Path, audit: Path) -> None:
    before = manifest.read_bytes()
    o = invoke("rollback", POLICY, "--manifest", manifest, "--audit", audit, "--lock-timeout", value)
    check_refused(o, mentions=["--lock-timeout"])
    assert manifest.read_bytes() == before and not applied_outcomes(audit)


@pytest.mark.parametrize(
    "args",
    [["plan", "POL", "--rps", "V"], ["plan", "POL", "--rps", "1", "--latency-median", "V"],
     ["plan", "POL", "--rps", "1", "--error-rate", "V"], ["plan", "POL", "--rps", "1", "--latency-sigma", "V"],
     ["run", "POL", "--simulate", "healthy", "--lock-timeout", "V"], ["rollback", "POL", "--lock-timeout", "V"]],
    ids=["plan-rps", "plan-latency-median", "plan-error-rate", "plan-latency-sigma", "run-lock-timeout",
         "rollback-lock-timeout"],
)  # fmt: skip
@pytest.mark.parametrize("value", ["nan", "-nan", "NaN"])
def test_a_nan_option_is_refused_as_not_a_number(args: list[str], value: str, tmp_path: Path) -> None:
    """NaN compares false with every bound: it is named as no number, not as "should be less than or equal"."""
    o = invoke(*[{"POL": str(POLICY), "V": value}.get(a, a) for a in args], cwd=tmp_path)
    option = args[args.index("V") - 1]
    check_refused(
        o, mentions=[f"Invalid value for '{option}': expected a number from", f"got '{value}' (not a number)"]
    )
    assert "less than" not in o.err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["1e308", "1e20", "nan", "inf", "-1", "0"])
def test_analyze_with_a_prometheus_timeout_out_of_range(value: str, prom: HostilePrometheus) -> None:
    check_refused(analyze(prom, POLICY, "--prometheus-timeout", value), mentions=["timeout"])


@pytest.mark.parametrize("value", ["1e308", "-1", "nan"])
def test_analyze_with_a_prometheus_delay_out_of_range(value: str, prom: HostilePrometheus) -> None:
    check_refused(analyze(prom, POLICY, "--prometheus-delay", value), mentions=["delay"])


@pytest.mark.slow
def test_analyze_with_a_billion_retries_against_a_failing_server(
    prom: HostilePrometheus, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    """Refused as out of range, or cut by a deadline: never retrying (with growing backoff) for ever."""
    prom.misbehave(Reply(503, {"status": "error", "error": "down"}))
    ran = launcher.run(
        ["analyze", POLICY, "--prometheus-url", prom.url, "--prometheus-retries", "1000000000"],
        cwd=tmp_path, timeout_s=20,
    )  # fmt: skip
    check_refused(Outcome.of(ran))


def test_analyze_from_the_epoch_is_refused_not_planned(
    prom: HostilePrometheus, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    """`--start 0` is 29 million one-minute intervals: refused at once by a window cap."""
    ran = launcher.run(
        ["analyze", POLICY, "--prometheus-url", prom.url, "--start", "0"], cwd=tmp_path, timeout_s=FILE_LIMIT_S
    )
    check_refused(Outcome.of(ran), mentions=["--start"])
    assert len(prom.requests) < 1000


WINDOWS = {
    "promql-injection": "1m]) or vector(1",
    "word": "abc",
    "empty": "",
    "zero": "0s",
    "negative": "-1m",
    "newline": "1m\n",
    "1e400s": "1e400s",
    "brace": "5m}",
    "huge": "99999999999999999h",
}


@pytest.mark.parametrize("window", params(WINDOWS))
def test_queries_with_a_window_that_is_no_duration(window: str) -> None:
    check_refused(invoke("queries", POLICY, "--window", window), mentions=["--window"])


@pytest.mark.parametrize(
    "args",
    [
        ["run", "POLICY", "--seed", "abc"],
        ["analyze", "POLICY", "--prometheus-timeout", "soon"],
        ["status"],
        ["run", "POLICY", "--output", "yaml", "--simulate", "healthy"],
    ],
    ids=["seed-not-a-number", "timeout-not-a-number", "missing-argument", "bad-choice"],
)
def test_a_usage_error_is_at_most_four_lines(args: list[str]) -> None:
    check_clean(invoke(*[str(POLICY) if a == "POLICY" else a for a in args]))


# ================================================================================================ alerts


ALERT_HOSTS = {
    "newline-comment": "web-app\n# evil",
    "braces": "web-app{}",
    "backtick": "web`app",
    "control-char": "web-app\x1b[31m",
    "replaces-the-rules": "web-app\ngroups: []\n#",
}


def check_rules_sound(text: str, tmp_path: Path) -> None:
    """Rules canary printed are the generated ones (nothing a host injected) and promtool accepts them."""
    rules = yaml.safe_load(text)["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["HighErrorRate", "HighLatency", "HighLatency", "HighLatency"]
    if PROMTOOL is not None:
        write(tmp_path / "rules.yml", text)
        run = subprocess.run([PROMTOOL, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("host", list(ALERT_HOSTS.values()), ids=list(ALERT_HOSTS))
def test_alerts_for_a_host_that_is_no_host(host: str, tmp_path: Path) -> None:
    """Refused naming the host (as validate refuses it); were it accepted, the rules must still be sound."""
    path = policy_file(tmp_path, in_target(POLICY_TEXT, "host", host))
    o = invoke("alerts", path)
    if o.code == 0:
        check_rules_sound(o.out, tmp_path)
    check_refused(o, mentions=["spec.target.host"])
    check_refused(invoke("validate", path), mentions=["spec.target.host"])


def test_alerts_for_the_example_policy_are_sound(tmp_path: Path) -> None:
    o = invoke("alerts", POLICY)
    check_clean(o, codes=(0,))
    check_rules_sound(o.out, tmp_path)


CUSTOM_METRIC = (
    "    - name: checkouts\n"
    "      kind: custom\n"
    '      events: sum by (pod) (app_failures_total{svc=~"{service}", version="{version}"})\n'
    '      total: sum by (pod) (app_total{svc=~"{service}", version="{version}"})\n'
    "      maxIncrease: 0.02\n"
)


def regex_matchers(promql: str, label: str = "svc") -> list[str]:
    """The regexes of every `label=~"..."` matcher, as Prometheus reads the string (escapes undone)."""
    found = re.findall(rf'{label}=~"((?:[^"\\]|\\.)*)"', promql)
    return [re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s) for s in found]


def check_escaped(promql: str, host: str = HOST) -> None:
    regexes = regex_matchers(promql)
    assert regexes, promql
    for regex in regexes:
        assert re.fullmatch(regex, host), f"{regex!r} does not match the host itself"
        assert not re.fullmatch(regex, host.replace(".", "X")), f"{{service}} is not regex-escaped in =~: {regex!r}"


def test_a_custom_template_service_in_a_regex_matcher_is_escaped_in_alerts(tmp_path: Path) -> None:
    path = policy_file(tmp_path, POLICY_TEXT + CUSTOM_METRIC)
    o = invoke("alerts", path)
    check_clean(o, codes=(0,))
    rules = yaml.safe_load(o.out)["groups"][0]["rules"]
    check_escaped(rules[-1]["expr"])


def test_a_custom_template_service_in_a_regex_matcher_is_escaped_in_the_queries_sent(
    prom: HostilePrometheus, tmp_path: Path
) -> None:
    path = policy_file(tmp_path, POLICY_TEXT + CUSTOM_METRIC)
    o = analyze(prom, path, "--start", "-1m")
    check_clean(o, codes=(0, 1, 2, 3))
    sent = [q for _, q, _ in prom.requests if "app_total" in q]
    assert sent
    check_escaped(sent[0])


# ========================================================================================== Prometheus


def _samples(at: float, values: Sequence[Any], *, step: float = 15.0, backwards: bool = False) -> list[list[Any]]:
    """Samples inside the last minute before `at` (the window of every interval canary reads)."""
    times = [at - 50 + step * i for i in range(len(values))]
    pairs = [[t, v] for t, v in zip(times, values, strict=True)]
    return pairs[::-1] if backwards else pairs


def _both(values: Callable[[float], list[list[Any]]]) -> Callable[[str, float], Hostile]:
    """An answer with one series per version, each with the given samples (of the query's time)."""

    def answer(query: str, at: float) -> Hostile:
        if "bucket" in query:
            return Reply(200, matrix([{**series(v, values(at)), "metric": {**series(v, [])["metric"], "le": le}}
                                      for v in ("v1", "v2") for le in ("100", "+Inf")]))  # fmt: skip
        return Reply(200, matrix([series("v1", values(at)), series("v2", values(at))]))

    return answer


def deep_json(depth: int = 100_000) -> bytes:
    return b'{"status": "success", "data": {"resultType": "matrix", "result": ' + b"[" * depth + b"]" * depth + b"}}"


MALFORMED_ANSWERS: dict[str, Callable[[str, float], Hostile]] = {
    "garbage-200": lambda q, at: garbage_reply(),
    "html-500": lambda q, at: garbage_reply(500),
    "json-list": lambda q, at: Reply(200, [1, 2, 3]),
    "json-string": lambda q, at: Reply(200, "x"),
    "json-null": lambda q, at: Reply(200, None),
    "data-null": lambda q, at: Reply(200, {"status": "success", "data": None}),
    "result-string": lambda q, at: Reply(200, matrix("x")),
    "result-null": lambda q, at: Reply(200, matrix(None)),
    "result-of-numbers": lambda q, at: Reply(200, matrix([5, 6])),
    "metric-null": lambda q, at: Reply(200, matrix([{"metric": None, "values": []}])),
    "values-a-number": lambda q, at: Reply(200, matrix([series("v1", 5)])),
    "values-a-string": lambda q, at: Reply(200, matrix([series("v1", "abc")])),
    "values-null": lambda q, at: Reply(200, matrix([series("v1", None)])),
    "sample-not-a-pair": lambda q, at: Reply(200, matrix([series("v1", [[at]])])),
    "sample-a-dict": lambda q, at: Reply(200, matrix([series("v1", [{"t": at, "v": "1"}])])),
    "values-not-numbers": _both(lambda at: _samples(at, ["abc", "def", "ghi"])),
    "values-json-objects": _both(lambda at: _samples(at, [{"a": 1}, [1], None])),
    "negative-counters": _both(lambda at: _samples(at, ["-500", "-600", "-700"])),
    "deep-nesting": lambda q, at: Reply(200, deep_json()),
    "status-error-200": lambda q, at: Reply(200, {"status": "error", "errorType": "bad_data", "error": "no"}),
    "http-400": lambda q, at: Reply(400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
    "http-401": lambda q, at: Reply(401, b"Unauthorized\n"),
    "http-403": lambda q, at: Reply(403, {"status": "error", "error": "forbidden"}),
    "http-404": lambda q, at: Reply(404, b"404 page not found\n"),
    "http-429": lambda q, at: Reply(429, b"slow down\n"),
    "http-500": lambda q, at: Reply(500, {"status": "error", "errorType": "internal", "error": "boom"}),
    "http-503": lambda q, at: Reply(503, b"<html>Service Unavailable</html>"),
    "http-error-with-ansi": lambda q, at: Reply(400, {"status": "error", "error": "\x1b[2J\x1b[31mfake\nline\r"}),
    "redirect-loop": lambda q, at: Redirect(),
    "redirect-loop-307": lambda q, at: Redirect(307),
    "echoes-the-token": lambda q, at: Reply(
        400, {"status": "error", "errorType": "bad_data", "error": f"token {SECRET} is not allowed"}
    ),
    "echoes-the-token-in-500": lambda q, at: Reply(500, f"upstream said: Bearer {SECRET}".encode()),
}

HONEST_ODDITIES: dict[str, Callable[[str, float], Hostile]] = {
    # Things a real Prometheus may send: the analysis may judge them (0, 1, 3) or refuse them (2), cleanly.
    "nan-and-inf-strings": _both(lambda at: _samples(at, ["NaN", "+Inf", "-Inf", "5", "Inf", "7"])),
    "timestamps-going-backwards": _both(lambda at: _samples(at, ["100", "200", "300", "400"], backwards=True)),
    "a-counter-reset": _both(lambda at: _samples(at, ["100", "200", "5", "50"])),
    "counts-beyond-floats": _both(lambda at: _samples(at, ["0", "1e308", "1.7e308", "1e309"])),
    "timestamp-huge": _both(lambda at: [[1e308, "5"], [1e308, "6"]]),
    "timestamp-nan": _both(lambda at: [["NaN", "5"], ["NaN", "6"]]),
    "no-series": lambda q, at: Reply(200, matrix([])),
    "labels-with-control-chars": lambda q, at: Reply(
        200,
        matrix(
            [
                series("v1", _samples(at, ["1", "2"]), pod="\x1b[2J\npod\u202e"),
                series("v2", _samples(at, ["1", "2"]), pod="p\r\n# forged"),
            ]
        ),
    ),
    "an-instant-vector": lambda q, at: Reply(
        200, {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [at, "1"]}]}}
    ),
}


def secret_token(tmp_path: Path) -> Path:
    return write(tmp_path / "prometheus-token", SECRET + "\n")


@pytest.mark.parametrize("mode", params({k: k for k in MALFORMED_ANSWERS}))
def test_analyze_against_a_prometheus_that_answers(mode: str, prom: HostilePrometheus, tmp_path: Path) -> None:
    prom.answer_with(MALFORMED_ANSWERS[mode])
    token = secret_token(tmp_path)
    before = snapshot(tmp_path)
    o = analyze(prom, POLICY, "--prometheus-token-file", token)
    check_refused(o, root=tmp_path, before=before)


@pytest.mark.parametrize(
    "reply",
    [garbage_reply(), Reply(200, b"<!doctype html><title>Sign in</title>\n", {"Content-Type": "text/html"})],
    ids=["garbage", "a-login-page"],
)
def test_analyze_against_a_server_answering_html_says_it_is_not_json(reply: Reply, prom: HostilePrometheus) -> None:
    """A 200 that is no JSON (a proxy's login page, a wrong URL) is named for what it is, not as a decode error."""
    o = analyze(prom.misbehave(reply), POLICY)
    check_refused(o, mentions=[f"{prom.url} answered the metric 'error-rate' query with something other than JSON"])
    assert "JSONDecodeError" not in o.err


@pytest.mark.parametrize("mode", params({k: k for k in HONEST_ODDITIES}))
def test_analyze_against_a_prometheus_with_odd_but_honest_data(
    mode: str, prom: HostilePrometheus, tmp_path: Path
) -> None:
    prom.answer_with(HONEST_ODDITIES[mode])
    o = analyze(prom, POLICY, "--prometheus-token-file", secret_token(tmp_path))
    check_refused(o, codes=(0, 1, 2, 3))
    assert "\x1b" not in o.out + o.err and "# forged" not in o.out.replace("\\n# forged", "")


RUN_MODES: dict[str, tuple[Callable[[str, float], Hostile], bool]] = {
    # id: (answer, metrics only): the connectivity check fails, or the first tick's metrics are hostile
    "check-garbage": (MALFORMED_ANSWERS["garbage-200"], False),
    "check-401": (MALFORMED_ANSWERS["http-401"], False),
    "check-redirect-loop": (MALFORMED_ANSWERS["redirect-loop"], False),
    "check-deep-nesting": (MALFORMED_ANSWERS["deep-nesting"], False),
    "check-echoes-the-token": (MALFORMED_ANSWERS["echoes-the-token"], False),
    "metrics-negative-counters": (MALFORMED_ANSWERS["negative-counters"], True),
    "metrics-values-a-number": (MALFORMED_ANSWERS["values-a-number"], True),
    "metrics-values-not-numbers": (MALFORMED_ANSWERS["values-not-numbers"], True),
    "metrics-deep-nesting": (MALFORMED_ANSWERS["deep-nesting"], True),
    "metrics-echo-the-token": (MALFORMED_ANSWERS["echoes-the-token"], True),
}


@pytest.mark.parametrize(
    "mode",
    params({k: k for k in RUN_MODES}),
)
def test_run_against_a_prometheus_that_answers(
    mode: str, prom: HostilePrometheus, tmp_path: Path, manifest: Path, audit: Path
) -> None:
    """The rollout ends with exit 2; the manifest holds its weights, or only the recorded start."""
    answer, metrics_only = RUN_MODES[mode]
    prom.answer_with(answer, metrics_only=metrics_only)
    path, token = policy_file(tmp_path, FAST_POLICY_TEXT), secret_token(tmp_path)
    weights, before_bytes, before = manifest_weights(manifest), manifest.read_bytes(), snapshot(tmp_path)
    o = invoke("run", path, "--prometheus-url", prom.url, "--prometheus-retries", "0", "--manifest", manifest,
               "--audit", audit, "--output", "json", "--prometheus-token-file", token)  # fmt: skip
    check_refused(o, root=tmp_path, before=before)
    check_no_change(audit, manifest_weights(manifest), weights)
    if not metrics_only:  # the connectivity check failed: nothing was started, nothing written
        assert manifest.read_bytes() == before_bytes and not applied_outcomes(audit)
    elif manifest.read_bytes() != before_bytes:  # the start was written (weights as they were): and recorded
        assert applied_outcomes(audit), "the manifest changed with no change recorded as applied"


@pytest.mark.parametrize("answer", ["http-401", "garbage-200"])
def test_a_metric_query_prometheus_refuses_ends_run_before_any_weight_moves(
    answer: str, prom: HostilePrometheus, tmp_path: Path, manifest: Path, audit: Path
) -> None:
    """The connectivity check passes, every metric's query is refused (a proxy that forbids a metric, a
    template Prometheus cannot parse): the first tick used to abort after the start had sent 10% to the
    canary. Every query is tried once before the start: exit 2, one line, the manifest as it was."""
    prom.answer_with(MALFORMED_ANSWERS[answer], metrics_only=True)
    path, before_bytes = policy_file(tmp_path, FAST_POLICY_TEXT), manifest.read_bytes()
    o = invoke("run", path, "--prometheus-url", prom.url, "--prometheus-retries", "0", "--manifest", manifest,
               "--audit", audit, "--output", "json")  # fmt: skip
    assert o.code == 2 and len(o.err.strip().splitlines()) == 1, o.err
    assert manifest.read_bytes() == before_bytes and not applied_outcomes(audit)


def test_run_reflecting_the_token_in_a_pod_label_writes_it_nowhere(
    prom: HostilePrometheus, tmp_path: Path, manifest: Path, audit: Path
) -> None:
    """A Prometheus that puts the bearer token into a series' labels: no record, no line carries it."""
    prom.answer_with(lambda q, at: Reply(200, matrix([series("v1", _samples(at, ["1", "5"]), pod=SECRET)])),
                     metrics_only=True)  # fmt: skip
    path = policy_file(tmp_path, FAST_POLICY_TEXT.replace("maxDuration: 5s", "maxDuration: 2s"))
    token = secret_token(tmp_path)
    before = snapshot(tmp_path)
    o = invoke("run", path, "--prometheus-url", prom.url, "--prometheus-retries", "0", "--manifest", manifest,
               "--audit", audit, "--output", "json", "--prometheus-token-file", token)  # fmt: skip
    check_refused(o, codes=(0, 1, 2, 3), root=tmp_path, before=before)


# --- slow, huge and endless answers, in real processes under RLIMIT_AS


def drip_body() -> bytes:
    return json.dumps(healthy_answer("istio_requests_total{}[660s]", time.time())).encode()


@pytest.mark.slow
def test_analyze_against_a_prometheus_dripping_one_byte_a_second(
    prom: HostilePrometheus, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    prom.misbehave(Drip(drip_body(), 1.0))
    ran = launcher.run(
        ["analyze", POLICY, "--prometheus-url", prom.url, "--prometheus-timeout", str(PROM_TIMEOUT_S)],
        cwd=tmp_path, timeout_s=PROM_TIMEOUT_S + 3 * DRIP_MARGIN_S,
    )  # fmt: skip
    check_refused(Outcome.of(ran))
    assert ran.seconds <= PROM_TIMEOUT_S + DRIP_MARGIN_S, f"took {ran.seconds:.1f} s"


@pytest.mark.slow
def test_run_against_a_prometheus_dripping_one_byte_a_second(
    prom: HostilePrometheus, tmp_path: Path, manifest: Path, launcher: MemoryLimitedLauncher
) -> None:
    prom.misbehave(Drip(drip_body(), 1.0))
    before = manifest.read_bytes()
    audit = tmp_path / "audit.jsonl"
    ran = launcher.run(
        ["run", POLICY, "--prometheus-url", prom.url, "--prometheus-timeout", str(PROM_TIMEOUT_S), "--manifest",
         manifest, "--audit", audit, "--output", "json"],
        cwd=tmp_path, timeout_s=PROM_TIMEOUT_S + 3 * DRIP_MARGIN_S,
    )  # fmt: skip
    check_refused(Outcome.of(ran))
    assert ran.seconds <= PROM_TIMEOUT_S + DRIP_MARGIN_S, f"took {ran.seconds:.1f} s"
    assert manifest.read_bytes() == before and not applied_outcomes(audit)


_GZIP_BOMB: bytes | None = None


def gzip_bomb() -> bytes:
    """About 1 MB that inflates to 1 GiB of JSON: gzip members, one per MiB, which a decoder joins."""
    global _GZIP_BOMB
    if _GZIP_BOMB is None:
        head = b'{"status":"success","data":{"resultType":"matrix","result":[]},"padding":"'
        block = gzip.compress(b"0" * (1 << 20), compresslevel=9)
        _GZIP_BOMB = gzip.compress(head) + block * 1024 + gzip.compress(b'"}')
    return _GZIP_BOMB


HUGE_MODES = {
    "huge-body": lambda: Huge(),
    "gzip-bomb": lambda: Reply(200, gzip_bomb(), {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(HUGE_MODES))
def test_analyze_against_a_prometheus_sending_a_gigabyte(
    mode: str, prom: HostilePrometheus, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    prom.misbehave(HUGE_MODES[mode]())
    ran = launcher.run(["analyze", POLICY, "--prometheus-url", prom.url], cwd=tmp_path, timeout_s=30)
    check_refused(Outcome.of(ran))


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(HUGE_MODES))
def test_run_against_a_prometheus_sending_a_gigabyte(
    mode: str, prom: HostilePrometheus, tmp_path: Path, manifest: Path, launcher: MemoryLimitedLauncher
) -> None:
    prom.misbehave(HUGE_MODES[mode]())
    before = manifest.read_bytes()
    audit = tmp_path / "audit.jsonl"
    ran = launcher.run(
        ["run", POLICY, "--prometheus-url", prom.url, "--manifest", manifest, "--audit", audit, "--output", "json"],
        cwd=tmp_path, timeout_s=30,
    )  # fmt: skip
    check_refused(Outcome.of(ran))
    assert manifest.read_bytes() == before and not applied_outcomes(audit)


# ========================================================================================== Kubernetes


def vs_as_served(kube: HostileKubeApi, change: Callable[[dict[str, Any]], Any]) -> Any:
    """The stored VirtualService as the server serves it, changed (or replaced by what `change` returns)."""
    vs = kube.get("default", "web-app")
    vs["apiVersion"] = "networking.istio.io/v1"
    replaced = change(vs)
    return vs if replaced is None else replaced


def _set(path: Sequence[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(vs: dict[str, Any]) -> None:
        node: Any = vs
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


KUBE_OBJECTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "spec-null": _set(["spec"], None),
    "metadata-5": _set(["metadata"], 5),
    "metadata-null": _set(["metadata"], None),
    "annotations-5": _set(["metadata", "annotations"], 5),
    "resource-version-5": _set(["metadata", "resourceVersion"], 5),
    "http-null-item": _set(["spec", "http"], [None]),
    "http-a-string": _set(["spec", "http"], "x"),
    "route-a-string": _set(["spec", "http", 1, "route"], "x"),
    "destination-5": _set(["spec", "http", 1, "route", 0, "destination"], 5),
    "weight-null": _set(["spec", "http", 1, "route", 0, "weight"], None),
    "weights-strings": lambda vs: (
        [_set(["spec", "http", 1, "route", i, "weight"], w)(vs) for i, w in ((0, "90"), (1, "10"))] and None
    ),
    "weight-huge": _set(["spec", "http", 1, "route", 0, "weight"], 10**30),
    "weight-float": _set(["spec", "http", 1, "route", 0, "weight"], 90.5),
    "subset-5": _set(["spec", "http", 1, "route", 0, "destination", "subset"], 5),
    "a-list": lambda vs: [vs],
    "a-string": lambda vs: "VirtualService",
}

TOLERATED_SHAPES = {"annotations-5"}  # no readable state annotation: the route's weights still are (exit 0 fine)

KUBE_REPLIES: dict[str, tuple[Callable[[], Hostile], Callable[[str, str], bool]]] = {
    "vs-garbage": (garbage_reply, VS_GET),
    "discovery-garbage": (garbage_reply, DISCOVERY),
    "discovery-json-list": (lambda: Reply(200, [1, 2]), DISCOVERY),
    "vs-deep-nesting": (lambda: Reply(200, b"[" * 100_000 + b"]" * 100_000), VS_GET),
    "all-401": (lambda: Reply(401, {"kind": "Status", "code": 401, "message": f"token {SECRET} expired"}), ANY),
    "all-403": (lambda: Reply(403, {"kind": "Status", "code": 403, "message": "forbidden"}), ANY),
    "vs-500": (lambda: Reply(500, b"<html>oops</html>"), VS_GET),
    "vs-503": (lambda: Reply(503, {"kind": "Status", "code": 503, "message": "\x1b[2Jetcd\ndown"}), VS_GET),
    "redirect-loop": (Redirect, ANY),
    "vs-redirect-loop-307": (lambda: Redirect(307), VS_GET),
}

KUBE_COMMANDS = ["status", "promote", "rollback", "run"]


def kube_command(command: str, kubeconfig: Path, audit: Path) -> list[str | Path]:
    if command == "run":
        return ["run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit,
                "--output", "json"]  # fmt: skip
    if command == "status":
        return ["status", POLICY, "--kubeconfig", kubeconfig]
    full = ["--full"] if command == "promote" else []  # the write path: without a rollout a step promote is refused
    return [command, *full, POLICY, "--kubeconfig", kubeconfig, "--audit", audit]


def check_kube_unchanged(kube: HostileKubeApi, audit: Path, weights: dict[str, int] | None) -> None:
    now = route_weights(kube.get("default", "web-app"))
    check_no_change(audit, now, weights)


@pytest.mark.parametrize("shape", params({k: k for k in KUBE_OBJECTS}))
@pytest.mark.parametrize("command", KUBE_COMMANDS)
def test_a_virtualservice_of_the_wrong_shape_from_the_api_server(
    command: str, shape: str, kube: HostileKubeApi, tmp_path: Path, audit: Path
) -> None:
    kube.serve_object(vs_as_served(kube, KUBE_OBJECTS[shape]))
    weights = route_weights(kube.get("default", "web-app"))
    kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
    o = invoke(*kube_command(command, kubeconfig, audit))
    check_refused(o, codes=(0, 2) if shape in TOLERATED_SHAPES else (2,))
    if o.code == 2:
        check_kube_unchanged(kube, audit, weights)


@pytest.mark.parametrize("reply", params({k: k for k in KUBE_REPLIES}))
@pytest.mark.parametrize("command", KUBE_COMMANDS)
def test_an_api_server_that_answers(
    command: str, reply: str, kube: HostileKubeApi, tmp_path: Path, audit: Path
) -> None:
    make, when = KUBE_REPLIES[reply]
    kube.misbehave(make(), when=when)
    weights = route_weights(kube.get("default", "web-app"))
    kubeconfig = kubeconfig_with(kube, tmp_path / "kubeconfig", {"token": SECRET})
    before = snapshot(tmp_path)
    o = invoke(*kube_command(command, kubeconfig, audit))
    check_refused(o, root=tmp_path, before=before)
    assert "\x1b" not in o.err
    check_kube_unchanged(kube, audit, weights)


def test_an_api_server_whose_destinationrule_list_is_garbage(kube: HostileKubeApi, tmp_path: Path, audit: Path) -> None:
    kube.misbehave(Reply(200, {"items": [{"spec": {"host": "web-app", "subsets": 5}, "metadata": 5}]}),
                   when=lambda m, p: m == "GET" and p.split("?")[0].endswith("/destinationrules"))  # fmt: skip
    weights = route_weights(kube.get("default", "web-app"))
    o = invoke(*kube_command("run", kube.kubeconfig(tmp_path / "kubeconfig"), audit))
    check_refused(o, codes=(0, 2))  # the preflight may ignore a list it cannot read; nothing may break
    if o.code == 2:
        check_kube_unchanged(kube, audit, weights)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["rollback"])
def test_an_api_server_dripping_one_byte_a_second(
    command: str, kube: HostileKubeApi, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    body = json.dumps(kube.get("default", "web-app")).encode() * 4
    kube.misbehave(Drip(body, 1.0), when=VS_GET)
    weights = route_weights(kube.get("default", "web-app"))
    audit = tmp_path / "audit.jsonl"
    ran = launcher.run(kube_command(command, kube.kubeconfig(tmp_path / "kubeconfig"), audit), cwd=tmp_path,
                       timeout_s=KUBE_DRIP_LIMIT_S + 2)  # fmt: skip
    check_refused(Outcome.of(ran))
    assert ran.seconds <= KUBE_DRIP_LIMIT_S, f"took {ran.seconds:.1f} s"
    check_kube_unchanged(kube, audit, weights)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(HUGE_MODES))
def test_an_api_server_sending_a_gigabyte(
    mode: str, kube: HostileKubeApi, tmp_path: Path, launcher: MemoryLimitedLauncher
) -> None:
    kube.misbehave(HUGE_MODES[mode](), when=VS_GET)
    audit = tmp_path / "audit.jsonl"
    weights = route_weights(kube.get("default", "web-app"))
    ran = launcher.run(kube_command("rollback", kube.kubeconfig(tmp_path / "kubeconfig"), audit), cwd=tmp_path,
                       timeout_s=30)  # fmt: skip
    check_refused(Outcome.of(ran))
    check_kube_unchanged(kube, audit, weights)


# ============================================================================ VirtualServices in manifests


def _manifest_vs(change: Callable[[dict[str, Any]], Any]) -> str:
    vs = yaml.safe_load(VS_FIXTURE.read_text())
    replaced = change(vs)
    return hs.manifest_text(vs if replaced is None else replaced)


MANIFEST_SHAPES = {
    **{k: v for k, v in KUBE_OBJECTS.items() if k not in ("resource-version-5",)},
    "weight-negative": _set(["spec", "http", 1, "route", 0, "weight"], -5),
    "weight-true": _set(["spec", "http", 1, "route", 0, "weight"], True),
    "weight-nan": _set(["spec", "http", 1, "route", 0, "weight"], math.nan),
    "host-5": _set(["spec", "http", 1, "route", 0, "destination", "host"], 5),
    "name-5": _set(["metadata", "name"], 5),
    "kind-list": _set(["kind"], ["VirtualService"]),
    "annotation-state-garbage": _set(["metadata", "annotations"], {"canary.dev/rollout-state": "{" * 50_000}),
}


@pytest.mark.parametrize("shape", params({k: k for k in MANIFEST_SHAPES}))
@pytest.mark.parametrize("command", ["status", "rollback", "run"])
def test_a_virtualservice_of_the_wrong_shape_in_a_manifest(
    command: str, shape: str, tmp_path: Path, audit: Path
) -> None:
    path = write(tmp_path / "manifest.yaml", _manifest_vs(MANIFEST_SHAPES[shape]))
    before = path.read_bytes()
    args: list[str | Path] = [command, POLICY, "--manifest", path]
    if command == "run":
        args += ["--simulate", "healthy", "--output", "json"]
    if command != "status":
        args += ["--audit", audit]
    o = invoke(*args)
    honest = shape in TOLERATED_SHAPES or (shape == "annotation-state-garbage" and command != "run")
    check_refused(o, codes=(0, 2) if honest else (2,))  # a damaged state is reported; a person may roll back past it
    if o.code == 2:
        assert path.read_bytes() == before and not applied_outcomes(audit)


DR_SHAPES = {
    "subsets-5": lambda dr: dr["spec"].update(subsets=5),
    "metadata-5": lambda dr: dr.update(metadata=5),
    "subset-names-lists": lambda dr: [s.update(name=[s["name"]]) for s in dr["spec"]["subsets"]] and None,
    "spec-null": lambda dr: dr.update(spec=None),
}


@pytest.mark.parametrize("shape", params({k: k for k in DR_SHAPES}))
def test_a_destinationrule_of_the_wrong_shape_in_a_manifest(shape: str, tmp_path: Path, audit: Path) -> None:
    dr = yaml.safe_load(DR_FIXTURE.read_text())
    DR_SHAPES[shape](dr)
    path = write(tmp_path / "manifest.yaml", hs.dump(dr) + "---\n" + VS_FIXTURE.read_text())
    before = path.read_bytes()
    o = invoke("run", POLICY, "--simulate", "healthy", "--manifest", path, "--audit", audit, "--output", "json")
    check_refused(o, codes=(0, 2) if shape == "metadata-5" else (2,))  # a nameless rule still defines subsets
    if o.code == 2:
        assert path.read_bytes() == before and not applied_outcomes(audit)


# ========================================================================================== properties

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same 200 cases every run: a strict xfail must not flip at random
    database=None,
    # Shrinking a failure can take a minute; HOSTILE_SHRINK=1 turns it on to see the smallest failing case.
    phases=list(Phase) if os.environ.get("HOSTILE_SHRINK") == "1" else [Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # no disk flushes for 200 throwaway cases
NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@PROPERTY
@given(text=hs.policy_texts)
def test_property_validate_answers_any_policy_in_one_clear_line(text: str) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:
        path = write(Path(folder) / "policy.yaml", text.encode("utf-8", "surrogatepass"))
        o = invoke("validate", path)
    check_clean(o, codes=(0, 2))
    if o.code == 2:
        assert str(path) in o.err


@PROPERTY
@given(text=hs.policy_texts)
def test_property_validate_accepts_no_name_kubernetes_would_refuse(text: str) -> None:
    """A policy validate accepts has names, namespaces, hosts and subsets free of control characters and space."""
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:
        path = write(Path(folder) / "policy.yaml", text.encode("utf-8", "surrogatepass"))
        o = invoke("validate", path)
        if o.code != 0:
            return
        from canary.policy import load_policy

        policy = load_policy(path)
    t = policy.target
    for value in (policy.name, t.namespace, t.virtual_service, t.host, t.baseline, t.canary, t.route or "ok"):
        assert NAME_OK.match(value), f"validate accepted {value!r}"


def _manifest_case(folder: Path, text: str) -> tuple[Path, Path, bytes]:
    path = write(folder / "manifest.yaml", text.encode("utf-8", "surrogatepass"))
    return path, folder / "audit.jsonl", path.read_bytes()


@PROPERTY
@given(text=hs.manifest_texts)
def test_property_status_answers_any_manifest_in_one_clear_line(text: str) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:
        path, _, before = _manifest_case(Path(folder), text)
        o = invoke("status", POLICY, "--manifest", path)
        assert path.read_bytes() == before, "status changed the manifest"
    check_clean(o, codes=(0, 2))


@PROPERTY
@given(text=hs.manifest_texts)
def test_property_rollback_on_any_manifest_changes_it_only_when_it_says_so(text: str) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:
        path, audit, before = _manifest_case(Path(folder), text)
        o = invoke("rollback", POLICY, "--manifest", path, "--audit", audit)
        check_clean(o, codes=(0, 2))
        if o.code == 2:
            assert path.read_bytes() == before, "a failed rollback changed the manifest"
            assert not applied_outcomes(audit), "a failed rollback recorded a change as applied"
        else:
            assert manifest_weights(path) == {"v1": 100, "v2": 0}
            assert applied_outcomes(audit)


@pytest.fixture(scope="module")
def shared_prom() -> Iterator[HostilePrometheus]:
    with HostilePrometheus() as server:
        yield server


@pytest.fixture(scope="module")
def shared_token() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:
        yield write(Path(folder) / "token", SECRET + "\n")


@PROPERTY
@given(answer=hs.prometheus_answers())
def test_property_analyze_answers_any_prometheus_answer_cleanly(
    answer: tuple[int, Any, bool], shared_prom: HostilePrometheus, shared_token: Path
) -> None:
    status, body, malformed = answer
    data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    shared_prom.misbehave(Reply(status, data))
    o = analyze(shared_prom, POLICY, "--start", "-1m", "--prometheus-token-file", shared_token)
    check_clean(o, codes=(2,) if malformed else (0, 1, 2, 3))


@pytest.fixture(scope="module")
def shared_kube() -> Iterator[HostileKubeApi]:
    with HostileKubeApi.with_fixtures() as server:
        yield server


@PROPERTY
@given(vs=hs.virtual_service_docs)
def test_property_status_answers_any_virtualservice_from_the_api_server_cleanly(
    vs: Any, shared_kube: HostileKubeApi
) -> None:
    served = shared_kube.get("default", "web-app")
    if isinstance(vs, dict):
        meta = vs.get("metadata")
        if isinstance(meta, dict):
            meta.setdefault("resourceVersion", served["metadata"]["resourceVersion"])
    shared_kube._rules.clear()
    shared_kube.serve_object(vs)
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as folder:
        kubeconfig = shared_kube.kubeconfig(Path(folder) / "kubeconfig")
        o = invoke("status", POLICY, "--kubeconfig", kubeconfig)
    check_clean(o, codes=(0, 2))


# ====================================================================================== outputs and edits
# What canary writes never replaces what it reads; an option that names a file names one; a hand-edited
# record is reported, never an internal error.


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole healthy rollout's audit log, from the simulated mesh."""
    path = tmp_path_factory.mktemp("demo") / "audit.jsonl"
    o = invoke("demo", "--scenario", "healthy", "--policy", POLICY, "--audit", path, "--output", "json")
    assert o.code == 0, o.err
    return path


@pytest.mark.parametrize(
    "command",
    [["report", "LOG", "-o", "LOG"], ["report", "LOG", "--policy", "POL", "-o", "POL"],
     ["audit", "export", "LOG", "-o", "./LOG"], ["dashboard", "POL", "-o", "POL"]],
    ids=["report-over-log", "report-over-policy", "export-over-log", "dashboard-over-policy"],
)  # fmt: skip
def test_an_output_naming_an_input_is_refused_and_the_input_left_whole(
    command: list[str], demo_log: Path, tmp_path: Path
) -> None:
    log = shutil.copy(demo_log, tmp_path / "audit.jsonl")
    pol = policy_file(tmp_path)
    names = {"LOG": "audit.jsonl", "./LOG": "./audit.jsonl", "POL": "policy.yaml"}
    before = {p: p.read_bytes() for p in (Path(log), pol)}
    o = invoke(*[names.get(a, a) for a in command], cwd=tmp_path)
    check_refused(o, mentions=["is an input of this command"])
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "policy.yaml"]


def test_an_output_is_written_whole_or_not_at_all(demo_log: Path, tmp_path: Path) -> None:
    out = write(tmp_path / "rows.csv", "old\n")
    folder_mode = tmp_path.stat().st_mode
    tmp_path.chmod(0o555)  # the folder refuses the new file: the old one stays as it was
    try:
        o = invoke("audit", "export", demo_log, "-o", out)
    finally:
        tmp_path.chmod(folder_mode)
    if os.geteuid() != 0:  # root writes through any mode
        check_refused(o, mentions=[str(out)])
        assert out.read_text() == "old\n"
    out.write_text("old\n")
    out.chmod(0o444)  # read-only: refused as `>` refuses it, even as root
    check_refused(invoke("audit", "export", demo_log, "-o", out), mentions=[f"{out}: the file is read-only"])
    assert out.read_text() == "old\n"
    out.chmod(0o644)
    o = invoke("audit", "export", demo_log, "-o", out)
    check_clean(o, codes=(0,))
    assert out.read_text().startswith("rollout,") and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


OUTPUT_COMMANDS = {
    "dashboard": ["dashboard", "POL", "-o", "OUT"],
    "export": ["audit", "export", "LOG", "-o", "OUT"],
    "report": ["report", "LOG", "-o", "OUT"],
}


def _output_command(name: str, out: Path | str, demo_log: Path) -> list[str]:
    names = {"POL": str(POLICY), "LOG": str(demo_log), "OUT": str(out)}
    return [names.get(a, a) for a in OUTPUT_COMMANDS[name]]


def _special_output(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> Path:
    """A FIFO, a device, a directory or a socket where -o points. The device is made in tmp_path when canary
    runs as root (which could replace /dev/full itself), /dev/full otherwise (which it cannot)."""
    if kind == "device":
        if os.geteuid() != 0:
            return Path("/dev/full")
        path = tmp_path / "full"
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        return path
    if kind == "socket":
        import socket

        path = tmp_path / "sock"
        server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        server.bind(str(path))
        return path
    return special_file(kind, tmp_path, stack)


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "socket"])
def test_an_output_that_is_not_a_regular_file_is_refused_and_left_as_it_is(
    kind: str, command: str, demo_log: Path, tmp_path: Path
) -> None:
    """A FIFO, a device or a directory at the -o path is refused by name and kind, nothing written, and stays
    what it was (never replaced by a regular file)."""
    words = {"fifo": "a FIFO", "device": "a device", "directory": "a directory", "socket": "a socket"}
    with contextlib.ExitStack() as stack:
        out = _special_output(kind, tmp_path, stack)
        mode = os.stat(out).st_mode
        before = snapshot(tmp_path)
        o = invoke(*_output_command(command, out, demo_log))
        check_refused(o, mentions=[f"canary: {out}: is {words[kind]}, not a regular file"])
        assert os.stat(out).st_mode == mode and not written(tmp_path, before)
        assert not [p for p in tmp_path.iterdir() if ".canary-" in p.name]


def _earlier_output(command: str) -> str:
    """What an earlier run of `command` left at its -o path (a report replaces only a page)."""
    return "<!DOCTYPE html>\n<p>an earlier report</p>\n" if command == "report" else "an earlier export\n"


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_a_read_only_output_is_refused_and_left_as_it_is(command: str, demo_log: Path, tmp_path: Path) -> None:
    """Someone made the file read-only; `>` refuses it, so does -o (even as root, which the rename would let
    through): one line, the file as it was."""
    out = tmp_path / "kept.out"
    earlier = _earlier_output(command)
    out.write_text(earlier)
    out.chmod(0o444)
    o = invoke(*_output_command(command, out, demo_log))
    check_refused(o, mentions=[f"canary: {out}: the file is read-only; canary does not replace it"])
    assert out.read_text() == earlier and stat.S_IMODE(out.stat().st_mode) == 0o444
    assert not [p for p in tmp_path.iterdir() if ".canary-" in p.name]


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_an_output_through_a_symbolic_link_replaces_its_target_keeping_its_mode(
    command: str, demo_log: Path, tmp_path: Path
) -> None:
    target = write(tmp_path / "real" / "doc", _earlier_output(command))
    target.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to(target)
    o = invoke(*_output_command(command, link, demo_log))
    check_clean(o, codes=(0,))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text() != _earlier_output(command) and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc"]


def test_an_output_is_not_written_through_a_link_planted_at_a_guessable_temporary_name(
    demo_log: Path, tmp_path: Path
) -> None:
    """The temporary file is made exclusively under a name no one can guess: a link waiting at the name an
    older canary used (`.NAME.canary-tmp`) redirects nothing."""
    victim = write(tmp_path / "victim", "keep\n")
    (tmp_path / ".doc.json.canary-tmp").symlink_to(victim)
    o = invoke("dashboard", POLICY, "-o", tmp_path / "doc.json")
    check_clean(o, codes=(0,))
    assert victim.read_text() == "keep\n" and json.loads((tmp_path / "doc.json").read_text())["title"]


def test_an_output_named_for_stdout_says_to_leave_out_the_option(demo_log: Path, tmp_path: Path) -> None:
    """`-o -` is no file name canary reads as stdout, and `/dev/stdout` (a pipe here) is no regular file: both
    refused, saying how to print; `report` (which always writes a file) asks for a file name."""
    o = invoke("dashboard", POLICY, "-o", "-", cwd=tmp_path)
    check_refused(o, mentions=["leave out -o to print it"])
    o = invoke("report", demo_log, "-o", "-", cwd=tmp_path)
    check_refused(o, mentions=["name a file"])
    assert not list(tmp_path.iterdir())
    ran = subprocess.run([str(Path(sys.executable).parent / "canary"), "audit", "export", str(demo_log), "-o",
                          "/dev/stdout"], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert (ran.returncode, ran.stdout) == (2, "")
    assert ran.stderr == "canary: /dev/stdout: is a FIFO, not a regular file; leave out -o to print it\n"


@pytest.mark.parametrize(
    "args",
    [["run", "POL", "--simulate", "healthy", "--manifest", ""], ["run", "POL", "--simulate", "healthy", "--audit", ""],
     ["run", "POL", "--simulate", "healthy", "--kubeconfig", " "], ["status", "POL", "--manifest", ""],
     ["rollback", "POL", "--manifest", "MANIFEST", "--audit", ""], ["audit", "show", ""], ["validate", ""],
     ["audit", "export", "LOG", "-o", ""]],
    ids=["run-manifest", "run-audit", "run-kubeconfig", "status-manifest", "rollback-audit", "show-log",
         "validate-policy", "export-out"],
)  # fmt: skip
def test_an_empty_file_name_names_no_file(args: list[str], demo_log: Path, manifest: Path, tmp_path: Path) -> None:
    """An unset shell variable (`--manifest "$VS"`) must not keep the weights in memory, pick the policy's
    default log, or read the current folder."""
    pol = policy_file(tmp_path)
    before, weights = snapshot(tmp_path), manifest_weights(manifest)
    names = {"POL": str(pol), "MANIFEST": str(manifest), "LOG": str(demo_log)}
    o = invoke(*[names.get(a, a) for a in args], cwd=tmp_path)
    check_refused(o, mentions=["empty"])
    assert not written(tmp_path, before) and manifest_weights(manifest) == weights


def test_audit_verify_with_a_policy_but_no_route_says_so(demo_log: Path) -> None:
    """--policy alone cannot check the route's head; a pipeline must not read exit 0 as 'checked'."""
    check_refused(invoke("audit", "verify", demo_log, "--policy", POLICY), mentions=["--manifest"])


def test_status_of_a_route_whose_state_is_unreadable_exits_2(manifest: Path) -> None:
    dr, vs = manifest.read_text().split("\n---\n")
    vs = vs.replace("metadata:\n", "metadata:\n  annotations:\n    canary.dev/rollout-state: '{not json'\n", 1)
    manifest.write_text(dr + "\n---\n" + vs)
    for output in ("text", "json"):
        o = invoke("status", POLICY, "--manifest", manifest, "--output", output)
        check_clean(o, codes=(2,))
        assert "not valid JSON" in (o.out + o.err) and "90" in o.out  # the weights are still shown


EDITED_RECORDS = {
    # id: a change to the first judged record's text (its hash no longer matches)
    "nan-estimate": lambda r: re.sub(r'"difference":-?[0-9.e-]+', '"difference":NaN', r, count=1),
    "infinite-e-value": lambda r: re.sub(r'"e_value":[0-9.e-]+', '"e_value":Infinity', r, count=1),
    "figures-a-string": lambda r: json.dumps(_edit(json.loads(r), ("judgement", "verdicts", 0, "figures"), "x")),
    "interval-a-string": lambda r: json.dumps(
        _edit(json.loads(r), ("judgement", "verdicts", 0, "figures", "difference_cs"), "x")
    ),
    "verdicts-a-number": lambda r: json.dumps(_edit(json.loads(r), ("judgement", "verdicts"), 5)),
    "counts-a-list": lambda r: json.dumps(_edit(json.loads(r), ("counts", "v1"), [1])),
    "observed-count-a-word": lambda r: json.dumps(_edit_pod(json.loads(r), "error-rate", "events", "many")),
    "observed-count-1e308": lambda r: json.dumps(_edit_pod(json.loads(r), "latency", "counts", [1e308] * 20)),
    "observed-pods-a-list": lambda r: json.dumps(
        _edit(json.loads(r), ("observation", "metrics", "latency", "canary"), [])
    ),
    "observation-without-start": lambda r: json.dumps(_edit(json.loads(r), ("observation",), {"end": 1})),
}


def _edit_pod(data: Any, metric: str, key: str, value: object) -> Any:
    """The recorded observation of the first baseline pod, one field changed (what `audit replay` reads)."""
    pods = data["observation"]["metrics"][metric]["baseline"]
    pods[next(iter(pods))][key] = value
    return data


def _edit(data: Any, path: tuple[str | int, ...], value: object) -> Any:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("edit", list(EDITED_RECORDS))
@pytest.mark.parametrize(
    "command",
    [["audit", "verify", "LOG"], ["audit", "show", "LOG"], ["audit", "list", "LOG"], ["audit", "export", "LOG"],
     ["audit", "replay", "LOG"], ["report", "LOG", "-o", "OUT"]],
    ids=["verify", "show", "list", "export", "replay", "report"],
)  # fmt: skip
def test_a_hand_edited_record_is_reported_not_an_internal_error(
    edit: str, command: list[str], demo_log: Path, tmp_path: Path
) -> None:
    lines = demo_log.read_text().splitlines()
    judged = next(i for i, line in enumerate(lines) if '"verdicts"' in line)
    lines[judged] = EDITED_RECORDS[edit](lines[judged])
    log = write(tmp_path / "edited.jsonl", "\n".join(lines) + "\n")
    names = {"LOG": str(log), "OUT": str(tmp_path / "page.html")}
    o = invoke(*[names.get(a, a) for a in command])
    check_clean(o, codes=(0, 1, 2))
    if command[1] == "verify":
        assert o.code == 1 and f":{judged + 1}:" in o.err, o.err  # the edited line, by number
