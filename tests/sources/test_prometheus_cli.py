"""`canary analyze`, `queries` and `alerts` against the real backfilled Prometheus."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from istio_history import BOUNDS, HOST, IstioHistory
from prometheus_server import PrometheusServer, free_port
from typer.testing import CliRunner

from canary.cli import app
from canary.promql import ERROR_CLASSES, format_le

pytestmark = pytest.mark.prometheus
REPO = Path(__file__).resolve().parents[2]
POLICY = str(REPO / "policies" / "web-app.yaml")
runner = CliRunner()


def cumulative(per_bucket: list[int]) -> dict[str, int]:
    out, running = {}, 0
    for bound, count in zip((*BOUNDS, math.inf), per_bucket, strict=True):
        running += count
        out[format_le(bound)] = running
    return out


def written_counts(history: IstioHistory, version: str, start: float, end: float) -> dict[str, object]:
    rows = history.requests(HOST, version, start, end, is_error=ERROR_CLASSES["5xx"].is_error)
    buckets = [sum(col) for col in zip(*history.buckets(HOST, version, start, end).values(), strict=True)]
    return {
        "requests": sum(r for _, r in rows.values()),
        "errors": sum(e for e, _ in rows.values()),
        "latency_buckets": cumulative(buckets),
    }


def analyze(url: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["analyze", POLICY, "--prometheus-url", url, *args])
    return result.exit_code, result.output


def test_analyze_reports_exactly_the_counts_written_across_the_reset(prometheus: PrometheusServer, history):
    """The window spans v2's pod restart; counts are per version, cumulative per `le` as Prometheus prints."""
    code, output = analyze(prometheus.url, "--start", str(history.start), "--end", str(history.end), "--output", "json")
    report = json.loads(output)
    for version in ("v1", "v2"):
        counts = report["counts"][version]
        expected = written_counts(history, version, history.start, history.end)
        assert {key: counts[key] for key in expected} == expected
    assert list(report["counts"]["v2"]["latency_buckets"])[-3:] == ["1.8e+06", "3.6e+06", "+Inf"]
    assert report["window"]["intervals"] == 20
    # The history's v2 is one latency bucket slower than v1: the analysis fails, exit code 1.
    assert (report["outcome"], report["exit_code"], code) == ("fail", 1, 1)


def test_analyze_with_no_canary_series_while_the_baseline_serves_is_exit_2_naming_the_label(
    prometheus: PrometheusServer, history, tmp_path: Path
):
    """orders has v1 traffic and no v2 series at all: no judge can compare it, and an inconclusive 3 would let
    the documented Argo mapping pass a canary nobody measured. It is a configuration error, exit 2."""
    policy = tmp_path / "orders.yaml"
    policy.write_text(Path(POLICY).read_text().replace(HOST, "orders.default.svc.cluster.local"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "canary"), "analyze", str(policy), "--prometheus-url", prometheus.url,
         "--start", str(history.start), "--end", str(history.end), "--output", "json"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    short = runner.invoke(app, ["analyze", str(policy), "--prometheus-url", prometheus.url, "--start",
                                str(history.start), "--end", str(history.start + 120), "--output", "json"])  # fmt: skip
    counted = json.loads(short.stdout)["counts"]["v1"]["requests"]
    assert (short.exit_code, counted < 300) == (3, True), "too few baseline requests to call it an error"
    line = result.stderr.strip()
    assert "\n" not in line
    assert "no series for the canary v2 (destination_version='v2') of orders.default.svc.cluster.local" in line
    assert "while v1 showed" in line and "spec.target.canary" in line


def test_analyze_text_output_names_window_counts_and_outcome(prometheus: PrometheusServer, history):
    code, output = analyze(prometheus.url, "--start", str(history.start), "--end", str(history.start + 600))
    assert code == 1
    assert "v2 against v1 of web-app.default.svc.cluster.local" in output and "(10 intervals)" in output
    assert output.rstrip().endswith("outcome: fail")


def test_analyze_against_an_unreachable_server_is_exit_2_with_one_line():
    code, output = analyze(f"http://127.0.0.1:{free_port()}", "--prometheus-retries", "0")
    assert code == 2
    assert output.strip().startswith("canary: cannot reach Prometheus at http://127.0.0.1:")
    assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "yesterday"], "cannot read time 'yesterday'"),
        (["--start", "-5m", "--end", "-10m"], "the window must end after it starts"),
        (["--prometheus-header", "no-separator"], "must look like 'Name: value'"),
        (["--prometheus-header", "Authorization Bearer s3cr3t"], "(starting 'Authorization'; the rest is not shown)"),
        (["--end", "inf"], "time 'inf' is out of range"),
        (["--end", "1e20"], "time '1e20' is out of range"),
        (["--end", "nan"], "time 'nan' is out of range"),
        (["--start", "1e20"], "time '1e20' is out of range"),
    ],
)
def test_analyze_rejects_bad_options_with_exit_2(args: list[str], message: str):
    code, output = analyze("http://127.0.0.1:9", *args)
    assert code == 2 and message in output
    assert output.startswith("canary: ") and len(output.strip().splitlines()) == 1 and "s3cr3t" not in output


def test_a_url_that_cannot_be_parsed_is_exit_2_with_one_line():
    code, output = analyze("http://[::1")
    assert code == 2 and output.strip() == (
        "canary: Prometheus URL must look like http://host:9090; this one cannot be parsed"
    )


@pytest.mark.parametrize("delay", ["nan", "inf", "-1"])
def test_run_refuses_a_delay_that_is_not_a_finite_number_of_seconds(delay: str):
    result = runner.invoke(app, ["run", POLICY, "--prometheus-url", "http://127.0.0.1:9", "--prometheus-delay", delay])
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"--prometheus-delay must be 0 to 3600 seconds, got {float(delay)!r}")
    assert len(result.output.strip().splitlines()) == 1


def test_analyze_needs_a_prometheus_url():
    result = runner.invoke(app, ["analyze", POLICY], env={"CANARY_PROMETHEUS_URL": ""})
    assert result.exit_code == 2 and "give --prometheus-url URL" in result.output


def test_analyze_runs_as_a_subprocess_with_the_url_from_the_environment(prometheus: PrometheusServer, history):
    run = subprocess.run(
        [str(Path(sys.executable).parent / "canary"), "analyze", POLICY, "--start", str(history.start), "--end",
         str(history.end), "--output", "json"],
        env={"CANARY_PROMETHEUS_URL": prometheus.url, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    counts = json.loads(run.stdout)["counts"]["v2"]
    expected = written_counts(history, "v2", history.start, history.end)
    assert {key: counts[key] for key in expected} == expected


def test_run_needs_a_source():
    result = runner.invoke(app, ["run", POLICY], env={"CANARY_PROMETHEUS_URL": ""})
    assert result.exit_code == 2 and "--prometheus-url URL, or --simulate SCENARIO" in result.output


def test_run_refuses_two_sources():
    result = runner.invoke(app, ["run", POLICY, "--simulate", "healthy", "--prometheus-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "not both" in result.output


def test_queries_prints_each_query_once_with_its_name(prometheus: PrometheusServer):
    result = runner.invoke(app, ["queries", POLICY, "--output", "json"])
    names = [q["name"] for q in json.loads(result.output)]
    assert result.exit_code == 0
    assert names == [
        "request rate", "error rate (5xx)", "success rate (5xx)", "p50 latency", "p95 latency", "p99 latency",
        "incoming dependencies", "outgoing dependencies",
    ]  # fmt: skip
    text = runner.invoke(app, ["queries", POLICY, "--window", "5m"]).output
    assert "# p99 latency:" in text and "[5m]" in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_alerts_command_output_passes_promtool(tmp_path: Path):
    result = runner.invoke(app, ["alerts", POLICY])
    assert result.exit_code == 0
    (tmp_path / "rules.yml").write_text(result.output)
    check = subprocess.run(
        ["promtool", "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_run_against_an_unreachable_server_stops_before_any_weight_moves(tmp_path: Path):
    """A wrong URL is a configuration error (exit 2) found at once, not a step held until the deadline."""
    port = free_port()
    audit = tmp_path / "a.jsonl"
    result = CliRunner().invoke(
        app,
        ["run", str(POLICY), "--prometheus-url", f"http://127.0.0.1:{port}", "--prometheus-retries", "0",
         "--audit", str(audit)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert not audit.exists() or not audit.read_text()


def test_another_reporter_counts_per_workload_and_says_why(prometheus: PrometheusServer, history):
    """With reporter="source" the `pod` label is the caller's pod: grouped by it, the between-pod check would
    compare callers. canary counts per destination_workload instead and says so on stderr."""
    result = runner.invoke(
        app,
        ["analyze", POLICY, "--prometheus-url", prometheus.url, "--prometheus-reporter", "source",
         "--start", str(history.start), "--end", str(history.end)],
    )  # fmt: skip
    note, *rest = result.stderr.splitlines()
    assert note.startswith("canary: with --prometheus-reporter source the `pod` label names the reporting proxy's")
    assert "counting per destination_workload, so the between-pod check is off" in note
    # the history's source-side view holds v1 only: a canary nobody measured is exit 2, not inconclusive
    assert result.exit_code == 2 and "no series for the canary v2" in rest[0]


def test_a_custom_metrics_only_policy_with_no_canary_series_is_exit_2_too(
    prometheus: PrometheusServer, history, tmp_path: Path
):
    """No error-rate or latency metric to count requests by: the custom metric's totals say the baseline is
    seen and the canary (v3, which nothing labels) is not; exit 3 here would pass the Argo mapping."""
    policy = tmp_path / "checkouts.yaml"
    policy.write_text(
        "apiVersion: canary.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {name: checkouts}\nspec:\n"
        f"  target: {{namespace: default, virtualService: web-app, host: {HOST}, baseline: v1, canary: v3}}\n"
        "  metrics:\n    - name: checkouts\n      kind: custom\n"
        '      events: app_checkout_failures_total{app="web-app",namespace="{namespace}",version="{version}"}\n'
        '      total: app_checkouts_total{app="web-app",namespace="{namespace}",version="{version}"}\n'
        "      maxIncrease: 0.01\n"
    )
    result = runner.invoke(
        app,
        ["analyze", str(policy), "--prometheus-url", prometheus.url, "--start", str(history.start),
         "--end", str(history.end)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no series for the canary v3 (destination_version='v3')" in result.stderr
    assert "while v1 showed" in result.stderr and "in the total of checkouts" in result.stderr


@pytest.mark.parametrize(
    ("flags", "lines"),
    [(["--prometheus-pod-label", "pod"], None), (["--prometheus-reporter", 'x"y'], 1)],
    ids=["a pod label given is kept", "a reporter that is none is one line"],
)
def test_the_per_workload_count_is_only_a_default_for_a_real_reporter(
    prometheus: PrometheusServer, history, flags, lines
):
    args = ["analyze", POLICY, "--prometheus-url", prometheus.url, "--start", str(history.start),
            "--end", str(history.end), "--output", "json"]  # fmt: skip
    result = runner.invoke(app, [*args, "--prometheus-reporter", "source", *flags])
    assert "counting per destination_workload" not in result.stderr
    if lines is not None:
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == lines
        assert "must be one of destination, source, waypoint" in result.stderr
