"""The PHP targets (targets/swoole, targets/workerman) pass what they declare, through the real harness.

Each manifest's whole suite runs in a subprocess, as `./run compare` runs it:
every case is passed, unsupported or a known deviation its manifest lists with
the reason, the honesty probe included, and every answer has the contract's
shape. Where PHP or the engine is not installed, the manifest's own
`[install]` check says so and the test skips with the install command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.harness.conformance import CHECK_NAME
from scenarios.harness.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted(p for d in ("swoole", "workerman") for p in (REPO / "targets" / d).glob("*.toml"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", MANIFESTS, ids=[f"{p.parent.name}-{p.stem}" for p in MANIFESTS])
def test_php_target_passes_what_it_declares(path: Path, tmp_path: Path) -> None:
    manifest = load_manifest(path)
    problem = manifest.install_problem()
    if problem:
        pytest.skip(problem)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/", "--target", str(path), "--report-dir", str(tmp_path), "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    verdicts = {r["case"]: r["verdict"] for r in results["scenarios"]}
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert set(verdicts.values()) <= {"passed", "unsupported", "known_deviation"}, verdicts
    assert verdicts["contract_probe[core]"] == "passed"
    malformed = [r["case"] for r in results["scenarios"] if CHECK_NAME in r.get("failed_checks", [])]
    assert not malformed, malformed
    assert not results.get("known_failures_unmatched"), results.get("known_failures_unmatched")
    assert not any(s["forced"] or s["leftover_pids"] for s in results["target_stops"]), results["target_stops"]


def test_a_manifest_that_is_not_installed_skips_every_case_with_the_install_command(tmp_path: Path) -> None:
    """The `[install]` check of a manifest: a target that cannot start here is skipped, not failed."""
    text = (REPO / "targets" / "swoole" / "process.toml").read_text()
    text = text.replace('check = ["./serve", "--check"]', 'check = ["sh", "-c", "echo no engine here >&2; exit 3"]')
    manifest = tmp_path / "absent.toml"
    manifest.write_text(text.replace('cwd = "."', f'cwd = "{REPO / "targets" / "swoole"}"'))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/test_probe.py", "--target", str(manifest), "--report-dir", str(tmp_path), "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["scenarios"] and {r["verdict"] for r in results["scenarios"]} == {"skipped"}
    message = results["scenarios"][0]["message"]
    assert "no engine here" in message and "targets/swoole/install.sh" in message, message
    assert results["target_stops"] == []
