"""A real Prometheus on 127.0.0.1 for tests and benchmarks, with history backfilled before it starts.

Backfill goes through `promtool tsdb create-blocks-from openmetrics` (see shared REAL-PARTS.md): the text
ends with `# EOF`, timestamps are seconds, counters carry their `_total` name, and every sample lies in the
past. `PrometheusServer` always stops the process and removes its directory, even when startup fails.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------ OpenMetrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def format_le(bound: float) -> str:
    """`le` as Istio's exporter and Go print it (`0.5`, `600000`, `1.8e+06`, `+Inf`)."""
    from canary.promql import format_le as fmt

    return fmt(bound)


@dataclass
class OpenMetrics:
    """Accumulates counter and histogram samples and renders OpenMetrics text for promtool."""

    families: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def _family(self, name: str, kind: str) -> list[str]:
        if name not in self.families:
            self.families[name] = (kind, [])
        return self.families[name][1]

    def counter(self, name: str, labels: Mapping[str, str], samples: Sequence[tuple[int, float]]) -> None:
        """`name` without `_total`; samples as (unix seconds, value), ascending."""
        lines = self._family(name, "counter")
        text = _labels(labels)
        lines.extend(f"{name}_total{text} {_number(v)} {t}" for t, v in samples)

    def histogram(
        self,
        name: str,
        labels: Mapping[str, str],
        bounds: Sequence[float],
        samples: Sequence[tuple[int, Sequence[float], float]],
    ) -> None:
        """Samples as (unix seconds, cumulative counts per bound with +Inf last, sum)."""
        lines = self._family(name, "histogram")
        for t, cumulative, total in samples:
            for bound, count in zip((*bounds, math.inf), cumulative, strict=True):
                lines.append(f"{name}_bucket{_labels({**labels, 'le': format_le(bound)})} {_number(count)} {t}")
            lines.append(f"{name}_count{_labels(labels)} {_number(cumulative[-1])} {t}")
            lines.append(f"{name}_sum{_labels(labels)} {_number(total)} {t}")

    def render(self) -> str:
        out: list[str] = []
        for name, (kind, lines) in self.families.items():
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        out.append("# EOF")
        return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def backfill(openmetrics: str, tsdb: Path) -> None:
    """Write blocks for the given OpenMetrics text into `tsdb` (before the server starts)."""
    assert PROMTOOL, "promtool is not installed"
    tsdb.mkdir(parents=True, exist_ok=True)
    source = tsdb.parent / "backfill.om"
    source.write_text(openmetrics, encoding="utf-8")
    run = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"promtool backfill failed: {run.stderr.strip() or run.stdout.strip()}")


# --------------------------------------------------------------------------------------------- server


def write_config(path: Path, *, scrape_targets: Sequence[str] = (), scrape_interval: str = "1s") -> Path:
    """A prometheus.yml scraping `host:port` targets (job `mesh`), or nothing."""
    lines = ["global:", f"  scrape_interval: {scrape_interval}", f"  evaluation_interval: {scrape_interval}"]
    if scrape_targets:
        targets = ", ".join(f'"{t}"' for t in scrape_targets)
        lines += [
            "scrape_configs:",
            "  - job_name: mesh",
            f"    scrape_interval: {scrape_interval}",
            "    honor_labels: true",
            f"    static_configs: [{{targets: [{targets}]}}]",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class PrometheusServer:
    """One prometheus process on 127.0.0.1:PORT with a temporary TSDB; use as a context manager."""

    def __init__(
        self,
        *,
        openmetrics: str | None = None,
        scrape_targets: Sequence[str] = (),
        scrape_interval: str = "1s",
        web_config: str | None = None,
        scheme: str = "http",
    ) -> None:
        assert PROMETHEUS, "prometheus is not installed"
        self.workdir = Path(tempfile.mkdtemp(prefix="canary-prom-"))
        self.port = free_port()
        self.scheme = scheme
        self.openmetrics = openmetrics
        self.scrape_targets = tuple(scrape_targets)
        self.scrape_interval = scrape_interval
        self.web_config = web_config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, ready_timeout_s: float = 20.0) -> PrometheusServer:
        try:
            tsdb = self.workdir / "data"
            if self.openmetrics is not None:
                backfill(self.openmetrics, tsdb)
            config = write_config(
                self.workdir / "prometheus.yml",
                scrape_targets=self.scrape_targets,
                scrape_interval=self.scrape_interval,
            )
            args = [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tsdb}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=30d",
                "--log.level=warn",
            ]
            if self.web_config is not None:
                web = self.workdir / "web.yml"
                web.write_text(self.web_config, encoding="utf-8")
                args.append(f"--web.config.file={web}")
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited at startup: {self.log_path.read_text()[-2000:]}")
            try:
                if self.scheme != "http":  # TLS: a listening socket is ready enough
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                if self._get("/-/ready", timeout=1.0).startswith(b"Prometheus"):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # basic auth is on: the server is up
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"prometheus not ready within {timeout_s} s: {self.log_path.read_text()[-2000:]}")

    def _get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:
            body: bytes = answer.read()
            return body

    def query_api_calls(self) -> float:
        """How many /api/v1/query calls the server has answered, from its own /metrics."""
        text = self._get("/metrics").decode()
        pattern = re.compile(r"^prometheus_http_requests_total\{([^}]*)\} (\S+)$", re.MULTILINE)
        return sum(float(v) for labels, v in pattern.findall(text) if 'handler="/api/v1/query"' in labels)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_prometheus(**kwargs: object) -> Iterator[PrometheusServer]:
    server = PrometheusServer(**kwargs)  # type: ignore[arg-type]
    with server:
        yield server
