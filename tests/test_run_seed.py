"""One run seed: every random choice of a scenario follows from it, and results.json records it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scenarios.harness.evidence import Evidence

REPO = Path(__file__).resolve().parents[1]


def _stream(seed: int, scenario: str, label: str = "") -> list[int]:
    ev = Evidence(scenario, Path("unused.json"))
    ev.run_seed = seed
    rng = ev.rng(label)
    return [rng.randrange(1 << 30) for _ in range(5)]


def test_the_same_seed_gives_the_same_choices_and_another_seed_others() -> None:
    assert _stream(5, "port_churn") == _stream(5, "port_churn")
    assert _stream(5, "port_churn") != _stream(6, "port_churn")
    assert _stream(5, "port_churn") != _stream(5, "task_sweep")  # each case its own stream
    assert _stream(5, "port_churn", "a") != _stream(5, "port_churn", "b")


def test_results_json_records_the_run_seed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/test_probe.py", "-k", "core", "--run-seed", "4242",
         "--report-dir", str(tmp_path), "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "--run-seed 4242" in proc.stdout
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["run_seed"] == 4242
    evidence = json.loads(Path(results["scenarios"][0]["evidence"]).read_text())
    assert evidence["run_seed"] == 4242
