"""Helpers for tests/test_resilience.py: launching canary commands as real processes, and reading what they left.

**Launching.** Every command a resilience test runs is a real process of its own: it can be SIGKILLed at any
moment, sent SIGTERM, given a file size limit or another user, and it takes the audit log's `flock` like any
other process. Starting the installed console script costs 1.5-3 s of imports (scipy.stats alone takes
about 2 s), which would put the hundred-odd processes these tests need far past their time budget. So by
default a *fork server* (`python resilience_helpers.py --serve SOCKET`, one per test module) imports
`canary.cli` once and forks one fresh process per command: the child sets its argv, environment, working
directory, limits and user, then calls `canary.cli.main()`, exactly what the console script does, and exits
with its code. Only the interpreter's start-up is shared; the command itself (reading, locking, recording,
writing, dying) is a process like any other. `ScriptLauncher` runs the installed console script instead (some
tests use it, to show both behave alike; `CANARY_RESILIENCE_SCRIPT=1` makes every test use it, slowly).

**Reading.** The audit log is re-checked here without canary's code: every line's SHA-256 chain recomputed
from the raw JSON, every change followed by exactly one outcome, and the weights read from the raw YAML.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "web-app.yaml"
FIXTURES = REPO / "fixtures" / "istio"
CANARY = Path(sys.executable).parent / "canary"  # the installed console script
ANNOTATION = "canary.dev/rollout-state"
GENESIS = "0" * 64
STEPS = (10, 50, 100)  # policies/web-app.yaml
NOBODY = 65534


def base_env(**extra: str) -> dict[str, str]:
    """A small, fixed environment: no Prometheus URL, no kubeconfig, no failpoint unless asked."""
    env = {
        "PATH": f"{CANARY.parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "USER": "resilience-test",
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ launching


@dataclass(frozen=True)
class Limits:
    """What the process is started with, beyond its argv and environment."""

    fsize: int | None = None  # RLIMIT_FSIZE in bytes (soft and hard)
    user: int | None = None  # run as this uid (and the same gid), e.g. NOBODY
    start_at: float | None = None  # time.time() at which the command begins (a start barrier for races)


class Handle(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float) -> int: ...

    def kill(self) -> None: ...

    def signal(self, signum: int) -> None: ...

    def stdout(self) -> str: ...

    def stderr(self) -> str: ...


class Launcher(Protocol):
    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, limits: Limits = ...) -> Handle: ...

    def close(self) -> None: ...


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class _Outputs:
    """stdout and stderr go to files, so a command never blocks on a full pipe and a test can read lines as
    they come (`wait_for_line`)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="canary-out-"))
        os.chmod(self.dir, 0o755)
        self.out, self.err = self.dir / "stdout", self.dir / "stderr"

    def open(self) -> tuple[int, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        return os.open(self.out, flags, 0o666), os.open(self.err, flags, 0o666)

    def remove(self) -> None:
        for p in (self.out, self.err):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


class ScriptHandle:
    def __init__(self, process: subprocess.Popen[bytes], outputs: _Outputs) -> None:
        self.process, self.outputs, self.pid = process, outputs, process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(10)
            raise

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stdout(self) -> str:
        return _read(self.outputs.out)

    def stderr(self) -> str:
        return _read(self.outputs.err)


def _limit(limits: Limits) -> None:
    """In the new process, before canary runs: the limits and the user, then the start barrier."""
    if limits.fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize, limits.fsize))
    if limits.user is not None:
        os.setgroups([])
        os.setgid(limits.user)
        os.setuid(limits.user)
    if limits.start_at is not None:
        delay = limits.start_at - time.time()
        if delay > 0:
            time.sleep(delay)


class ScriptLauncher:
    """The installed console script, one `subprocess.Popen` per command (the slow, literal way)."""

    def __init__(self) -> None:
        self._handles: list[ScriptHandle] = []

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, limits: Limits = Limits()) -> Handle:
        outputs = _Outputs()
        out, err = outputs.open()
        try:
            process = subprocess.Popen(
                [str(CANARY), *argv], env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=lambda: _limit(limits),
            )  # fmt: skip
        except BaseException:
            outputs.remove()
            raise
        finally:
            os.close(out)
            os.close(err)
        handle = ScriptHandle(process, outputs)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._handles:
            handle.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                handle.process.wait(10)
            handle.outputs.remove()


class ForkHandle:
    """A command forked by the fork server; its exit status comes back over the server's socket."""

    def __init__(self, conn: socket.socket, outputs: _Outputs) -> None:
        self.conn, self.outputs = conn, outputs
        self._buffer = b""
        self.returncode: int | None = None
        self.pid = int(self._message(30.0)["pid"])

    def _message(self, timeout: float | None) -> dict[str, Any]:
        self.conn.settimeout(timeout)
        while b"\n" not in self._buffer:
            chunk = self.conn.recv(4096)
            if not chunk:
                raise RuntimeError("the fork server closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = int(self._message(0.0)["rc"])
            except (BlockingIOError, TimeoutError):
                return None
        return self.returncode

    def wait(self, timeout: float) -> int:
        if self.returncode is None:
            try:
                self.returncode = int(self._message(timeout)["rc"])
            except TimeoutError:
                self.kill()
                self.returncode = int(self._message(10.0)["rc"])
                raise subprocess.TimeoutExpired("canary", timeout) from None
        return self.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stdout(self) -> str:
        return _read(self.outputs.out)

    def stderr(self) -> str:
        return _read(self.outputs.err)


class ForkServer:
    """`canary.cli` imported once in a server process, which forks one process per command (see the top)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="canary-fork-"))
        self.socket_path = self.dir / "socket"
        self._handles: list[ForkHandle] = []
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.socket_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=REPO, env=base_env(),
        )  # fmt: skip
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready.strip() != b"ready":
            self.process.kill()
            raise RuntimeError(f"the fork server did not start: {ready!r}")

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, limits: Limits = Limits()) -> Handle:
        outputs = _Outputs()
        out, err = outputs.open()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.socket_path))
            request = {
                "argv": list(argv), "env": dict(env), "cwd": str(cwd),
                "fsize": limits.fsize, "user": limits.user, "start_at": limits.start_at,
            }  # fmt: skip
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [out, err])
        except BaseException:
            conn.close()
            outputs.remove()
            raise
        finally:
            os.close(out)
            os.close(err)
        handle = ForkHandle(conn, outputs)
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._handles:
            if handle.returncode is None:
                handle.kill()
                with contextlib.suppress(Exception):
                    handle.wait(10)
            handle.conn.close()
            handle.outputs.remove()
        self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.socket_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def launcher() -> Launcher:
    return ScriptLauncher() if os.environ.get("CANARY_RESILIENCE_SCRIPT") == "1" else ForkServer()


# ---------------------------------------------------------------------------- the fork server's side


def _serve(path: str) -> None:
    """Import everything a command may need, then fork a monitor per request; the monitor forks the command,
    tells the client its pid, waits for it and sends its exit status (negative: killed by that signal)."""
    import canary.cli
    import canary.judges.flagger
    import canary.judges.kayenta
    import canary.judges.sequential
    import canary.routers.istio
    import canary.scenario

    # One command in process loads what typer and click import only when a command runs, so a forked command
    # needs no file of the installation (a command run as nobody may not read a checkout under a 0700 folder).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        canary.cli.app(["validate", str(REPO / "policies" / "web-app.yaml")], standalone_mode=False)
    for name in canary.scenario.BUILTIN_SCENARIOS:  # read once per process: the forks inherit them
        canary.scenario.builtin_scenario(name)

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the monitors are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = server.accept()
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
        while not data.endswith(b"\n"):
            data += conn.recv(1 << 20)
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _monitor(conn, json.loads(data), fds)
        conn.close()
        for fd in fds:
            os.close(fd)


def _monitor(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    try:
        pid = os.fork()
        if pid == 0:
            conn.close()
            _command(request, fds)
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        conn.sendall(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    finally:
        os._exit(0)


def _command(request: dict[str, Any], fds: list[int]) -> None:
    code = 2
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in (null, *fds):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _limit(Limits(request["fsize"], request["user"], request["start_at"]))
        sys.argv = [str(CANARY), *request["argv"]]
        from canary.cli import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # the server's own failure, not canary's: make it loud
        with contextlib.suppress(Exception):
            sys.stderr.write(f"fork server: {type(exc).__name__}: {exc}\n")
        code = 99
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# ------------------------------------------------------------------------------------------ commands


class Canary:
    """Run canary commands on one route (a manifest or a kubeconfig) and one audit log."""

    def __init__(
        self, launch: Launcher, *, audit: Path, manifest: Path | None = None, api: Any = None,
        folder: Path | None = None, policy: Path = POLICY, cwd: Path = REPO,
    ) -> None:  # fmt: skip
        """The route is a manifest file, or the VirtualService default/web-app of a KubeApiServer `api` (its
        kubeconfig written into `folder`)."""
        assert (manifest is None) != (api is None)
        self.launch, self.audit, self.manifest, self.api = launch, audit, manifest, api
        self.kubeconfig = api.kubeconfig((folder or audit.parent) / "kubeconfig") if api is not None else None
        self.policy, self.cwd = policy, cwd

    def route(self) -> Route:
        """What the route holds now, read raw (the manifest's YAML, or the API server's stored object)."""
        if self.manifest is not None:
            return manifest_route(self.manifest)
        return route_of(self.api.get("default", "web-app"))

    def route_bytes(self) -> bytes:
        if self.manifest is not None:
            return self.manifest.read_bytes()
        return json.dumps(self.api.get("default", "web-app"), sort_keys=True).encode()

    @property
    def where(self) -> list[str]:
        return ["--manifest", str(self.manifest)] if self.manifest else ["--kubeconfig", str(self.kubeconfig)]

    def run_args(self, scenario: str = "healthy", *flags: str) -> list[str]:
        return ["run", str(self.policy), "--simulate", scenario, *self.where, "--audit", str(self.audit), *flags]

    def manual_args(self, verb: str, *flags: str) -> list[str]:
        return [verb, str(self.policy), *self.where, "--audit", str(self.audit), "--output", "json", *flags]

    def start(self, args: Sequence[str], *, failpoint: str | None = None, limits: Limits = Limits()) -> Handle:
        env = base_env(**({"CANARY_FAILPOINT": failpoint} if failpoint else {}))
        return self.launch.start(args, env=env, cwd=self.cwd, limits=limits)

    def call(self, args: Sequence[str], *, failpoint: str | None = None, limits: Limits = Limits()) -> Result:
        handle = self.start(args, failpoint=failpoint, limits=limits)
        code = handle.wait(120)
        return Result(code, handle.stdout(), handle.stderr())

    def verify(self, *, head: str | None = None) -> Result:
        """`canary audit verify` against the route's head, or against a head a command printed."""
        against = ["--head", head] if head else ["--policy", str(self.policy), *self.where]
        return self.call(["audit", "verify", str(self.audit), *against])


def wait_for_line(handle: Handle, prefix: str, timeout: float) -> bool:
    """Wait until the command printed a line starting with `prefix` (True), or ended first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(prefix) for line in handle.stdout().splitlines()):
            return True
        if handle.poll() is not None:
            return any(line.startswith(prefix) for line in handle.stdout().splitlines())
        time.sleep(0.002)
    raise TimeoutError(f"no line starting {prefix!r} within {timeout}s")


def one_line_error(result: Result) -> str:
    """The command's error, asserted to be one line on stderr starting `canary:` and no traceback."""
    lines = result.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.err!r}"
    assert lines[0].startswith("canary: "), lines[0]
    assert "Traceback" not in result.err + result.out
    return lines[0]


# ------------------------------------------------------------------------------------------ the route


def write_manifest(path: Path) -> Path:
    """The seed's DestinationRule and VirtualService (header-match route first, 90/10 split second) in one file."""
    dr = (FIXTURES / "web-app-destinationrule.yaml").read_text()
    vs = (FIXTURES / "web-app-virtualservice.yaml").read_text()
    path.write_text(dr + "---\n" + vs)
    return path


def split_weights(vs: dict[str, Any]) -> tuple[int, int]:
    """(v1, v2) of the unnamed split, from the raw object; asserts the header-match route is untouched."""
    http = vs["spec"]["http"]
    assert http[0]["match"] == [{"headers": {"canary": {"exact": "true"}}}]
    assert http[0]["route"] == [{"destination": {"host": "web-app", "subset": "v2"}}]
    by_subset = {d["destination"]["subset"]: d.get("weight") for d in http[1]["route"]}
    assert set(by_subset) == {"v1", "v2"}, by_subset
    v1, v2 = by_subset["v1"], by_subset["v2"]
    assert isinstance(v1, int) and isinstance(v2, int), by_subset
    assert min(v1, v2) >= 0 and v1 + v2 == 100, f"the route's weights sum to {v1 + v2}"
    return v1, v2


def manifest_vs(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    vss = [d for d in docs if d.get("kind") == "VirtualService"]
    assert len(vss) == 1 and any(d.get("kind") == "DestinationRule" for d in docs), docs
    return vss[0]


@dataclass(frozen=True)
class Route:
    """What the route holds: the split's weights and the rollout state's fields the tests look at."""

    v1: int
    v2: int
    state: dict[str, Any] | None

    @property
    def canary(self) -> int:
        return self.v2

    @property
    def phase(self) -> str | None:
        return self.state["phase"] if self.state else None

    @property
    def head(self) -> str | None:
        return self.state["audit_head"] if self.state else None


def route_of(vs: dict[str, Any]) -> Route:
    v1, v2 = split_weights(vs)
    text = ((vs.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    state = json.loads(text) if text is not None else None
    if state is not None:
        assert state["weights"] == {"baseline": v1, "canary": v2}, "the state's weights are the route's"
    return Route(v1, v2, state)


def manifest_route(path: Path) -> Route:
    return route_of(manifest_vs(path))


# ------------------------------------------------------------------------------------------ the log


@dataclass(frozen=True)
class Line:
    number: int
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def hash(self) -> str:
        return str(self.data["hash"])

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def canonical_hash(prev: str, data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256((prev + text).encode()).hexdigest()


def log_lines(path: Path) -> list[Line]:
    """Every record of the log as raw JSON, the chain checked from scratch: whole lines, each one's hash
    recomputed, each linked to the one before, none earlier than the one before; every change (a decision
    that writes) followed at once by exactly one outcome of it, and no outcome elsewhere."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the log ends with a whole line"
    lines, prev, open_change, then = [], GENESIS, None, 0.0
    for number, text in enumerate(raw.split(b"\n")[:-1], start=1):
        data = json.loads(text)
        assert data["schema"] == 1 and data["prev_hash"] == prev, f"line {number} does not follow the one before"
        assert canonical_hash(prev, data) == data["hash"], f"line {number}: its hash does not check out"
        assert data["time"] >= then, f"line {number} is earlier than the one before ({data['time']} < {then})"
        then = data["time"]
        line = Line(number, data)
        if line.kind == "outcome":
            assert open_change is not None and data["of"] == open_change, f"line {number}: an outcome of no change"
            assert data["result"] in ("applied", "failed")
            open_change = None
        else:
            assert open_change is None, f"line {number}: the change before has no outcome"
            if line.kind == "decision" and data["writes"]:
                open_change = line.hash
        lines.append(line)
        prev = line.hash
    return lines


def changes(lines: Sequence[Line]) -> list[tuple[Line, Line | None]]:
    """Each change (a decision that writes) with its outcome (None: the last change, not yet settled)."""
    out: list[tuple[Line, Line | None]] = []
    for i, line in enumerate(lines):
        if line.kind == "decision" and line["writes"]:
            following = lines[i + 1] if i + 1 < len(lines) else None
            out.append((line, following))
    return out


def applied(lines: Sequence[Line]) -> list[tuple[Line, Line]]:
    """The changes whose outcome says they were made, with that outcome."""
    return [(d, o) for d, o in changes(lines) if o is not None and o["result"] == "applied"]


def weights_pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    assert set(value) == {"baseline", "canary"}, value
    return int(value["baseline"]), int(value["canary"])


def assert_weights_sum_to_100(lines: Sequence[Line]) -> int:
    """Every weight pair any record names (before, after, an outcome's) sums to 100; returns how many."""
    seen = 0
    for line in lines:
        for field in ("weights_before", "weights_after", "weights"):
            pair = weights_pair(line.data.get(field))
            if pair is not None:
                assert min(pair) >= 0 and sum(pair) == 100, f"line {line.number}: {field} {pair}"
                seen += 1
    return seen


def assert_route_agrees_with_log(route: Route, lines: Sequence[Line]) -> tuple[Line, Line]:
    """The route's state names the last applied outcome as its head, and holds that outcome's weights; the
    records after it claim no change. Returns the last applied change."""
    made = applied(lines)
    assert made, "the log records a change that was made"
    decision, outcome = made[-1]
    assert route.head == outcome.hash, "the route's head is the log's last applied outcome"
    assert (route.v1, route.v2) == weights_pair(outcome["weights"]) == weights_pair(decision["weights_after"])
    assert route.phase == decision["phase"], "the route's phase is the last applied decision's"
    return decision, outcome


@contextlib.contextmanager
def world_readable_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder another user can reach (pytest's tmp_path is root's, mode 0700), removed afterwards."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o755)
            for sub in path.rglob("*"):
                if sub.is_dir():
                    os.chmod(sub, 0o755)
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(sys.argv[2])
