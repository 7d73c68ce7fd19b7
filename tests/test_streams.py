"""Standard streams that cannot be written: a reader gone (`| head -1`), a closed descriptor, a full device.

A rollout goes on to its end and its exit code stays its outcome's; a command whose output was lost says so
in one line and never exits 0; no traceback, no "internal error". Run as the installed console script, since
only a real process has descriptors to close.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "web-app.yaml"
CANARY = str(Path(sys.executable).parent / "canary")
FIXTURES = REPO / "fixtures" / "istio"


def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "web-app.yaml"
    vs = (FIXTURES / "web-app-virtualservice.yaml").read_text()
    path.write_text(f"{vs}---\n{(FIXTURES / 'web-app-destinationrule.yaml').read_text()}")
    return path


def _route(manifest: Path, audit: Path) -> dict[str, object]:
    status = subprocess.run(
        [CANARY, "status", str(POLICY), "--manifest", str(manifest), "--audit", str(audit), "--output", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(status.stdout)  # type: ignore[no-any-return]


def _verified(audit: Path) -> bool:
    verify = subprocess.run([CANARY, "audit", "verify", str(audit)], capture_output=True, timeout=60, check=False)
    return verify.returncode == 0


def test_a_rollout_whose_reader_goes_away_runs_to_its_end_with_its_own_exit_code(tmp_path: Path) -> None:
    """`canary run ... | head -1`: the rollout used to stop at its next line of progress with exit 1, which a
    pipeline reads as rolled back, and left the canary at 10%."""
    manifest, audit = _manifest(tmp_path), tmp_path / "audit.jsonl"
    command = [CANARY, "run", str(POLICY), "--simulate", "healthy", "--manifest", str(manifest), "--audit", str(audit)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith("canary run")
        process.stdout.close()  # the reader leaves
        err = process.stderr.read()
        code = process.wait(timeout=120)
    assert code == 0, err
    assert err == "", "a reader that left on purpose gets no message"
    route = _route(manifest, audit)
    assert (route["v1"], route["v2"], route["rollout"]["phase"]) == (0, 100, "promoted")  # type: ignore[index]
    assert _verified(audit)


def test_a_closed_standard_output_is_one_line_and_an_error(tmp_path: Path) -> None:
    ran = subprocess.run(
        ["bash", "-c", f'exec "{CANARY}" validate "{POLICY}" >&-'],
        capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 2
    assert ran.stderr == "canary: could not write to standard output: the stream is closed\n"


def test_a_rollout_writing_its_json_to_a_full_device_ends_true_and_says_so(tmp_path: Path) -> None:
    """The rollout is promoted (the route and the log say so); its JSON is lost, so it does not exit 0."""
    manifest, audit = _manifest(tmp_path), tmp_path / "audit.jsonl"
    with open("/dev/full", "w") as full:
        ran = subprocess.run(
            [CANARY, "run", str(POLICY), "--simulate", "healthy", "--manifest", str(manifest), "--audit", str(audit),
             "--output", "json"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert ran.returncode == 2
    assert ran.stderr == "canary: could not write to standard output: No space left on device\n"
    assert _route(manifest, audit)["rollout"]["phase"] == "promoted" and _verified(audit)  # type: ignore[index]


def test_help_and_version_to_a_full_device_are_one_line(tmp_path: Path) -> None:
    for args in (["--help"], ["--version"], ["queries", str(POLICY)]):
        with open("/dev/full", "w") as full:
            ran = subprocess.run(
                [CANARY, *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False
            )
        assert ran.returncode == 2, args
        assert ran.stderr == "canary: could not write to standard output: No space left on device\n", args


def test_a_mistake_reported_to_a_full_standard_error_keeps_its_exit_code(tmp_path: Path) -> None:
    """Nowhere to say it, but the exit code is still the mistake's (2), not 1 (rolled back, or fail)."""
    with open("/dev/full", "w") as full:
        for args in (["validate", str(tmp_path / "missing.yaml")], ["run", str(tmp_path / "missing.yaml")]):
            ran = subprocess.run([CANARY, *args], stdout=subprocess.PIPE, stderr=full, timeout=60, check=False)
            assert ran.returncode == 2, args
            assert ran.stdout == b"", args


def test_a_command_whose_output_was_delivered_exits_as_before(tmp_path: Path) -> None:
    ran = subprocess.run([CANARY, "validate", str(POLICY)], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and ran.stderr == "" and "valid" in ran.stdout
