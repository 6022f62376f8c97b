"""The PHP targets (targets/swoole, targets/workerman) pass what they declare, through `./run compare`.

Every installed PHP manifest (a target's own and its seed variants) runs its
whole suite in one comparison, as CI and users run it: each cell is passed,
unsupported, or a known deviation that its manifest lists with the reason and
fails by the checks it names; every answer has the contract's shape; no target
had to be killed at stop. Where PHP or the engine is not installed, the
manifest's own `[install]` check says so and the test skips with the install
command.
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
#: Scenarios about the engine (Swoole's, Workerman's), not the application: a seed variant
#: (``naive-*.toml``, the same engine with one application pattern changed) answers them as its
#: target's own manifest does, so this test runs them once per engine (Swoole's PROCESS mode, its
#: coroutine server, Workerman), not for each seed variant nor for SWOOLE_BASE (about nine minutes
#: of CI, which has 30). ``./run compare`` still runs every scenario on every manifest.
ENGINE_LEVEL = ("scenarios/test_faults.py", "scenarios/test_fd_exhaustion.py", "scenarios/test_protocol.py")
ENGINE_CASES = {
    "fault_worker_kill", "fault_worker_stall", "fault_worker_stall_reload", "fault_task_worker_kill",
    "fd_exhaustion", "protocol_conformance",
}
SEED_SELECTION = ",".join(
    str(p.relative_to(REPO)) for p in sorted((REPO / "scenarios").glob("test_*.py"))
    if str(p.relative_to(REPO)) not in ENGINE_LEVEL
)


def _engine_once(path: Path) -> bool:
    """Whether this manifest runs the engine-level scenarios in this test."""
    return not (path.stem.startswith("naive") or (path.parent.name == "swoole" and path.stem == "base"))


def _spec(path: Path) -> str:
    return str(path) if _engine_once(path) else f"{path}@{SEED_SELECTION}"


@pytest.mark.timeout(1500)
def test_php_targets_pass_what_they_declare_in_the_comparison(tmp_path: Path) -> None:
    installed = [p for p in MANIFESTS if not load_manifest(p).install_problem()]
    if not installed:
        pytest.skip("; ".join(sorted({load_manifest(p).install_problem() or "" for p in MANIFESTS})))
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios.compare", *map(_spec, installed), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )
    doc = json.loads((tmp_path / "index.json").read_text())
    assert proc.returncode == 0 and doc["ok"], proc.stdout[-4000:] + proc.stderr[-2000:]
    targets = {t["name"]: t for t in doc["targets"]}
    assert len(targets) == len(installed), sorted(targets)
    selected = {load_manifest(p).name for p in installed if not _engine_once(p)}
    for name, t in targets.items():
        assert t["group"] in ("swoole", "workerman"), t["group"]
        unmatched = set(t["known_failures_unmatched"])
        if name in selected:  # the engine-level cases were not selected for it
            unmatched -= ENGINE_CASES
        assert not unmatched and not t["forced_stops"] and not t["crashed"], (name, t)
    cells = [(row["case"], name, cell) for g in doc["groups"] for row in g["rows"] for name, cell in row["cells"].items()]
    for case, name, cell in cells:
        if name in selected and case in ENGINE_CASES:  # not selected for it (above)
            assert cell["verdict"] == "not_run", (name, case, cell["verdict"])
            continue
        assert cell["verdict"] in {"passed", "unsupported", "known_deviation"}, (name, case, cell["verdict"], cell["message"][:500])
        assert CHECK_NAME not in cell["failed_checks"], (name, case)
        if case == "contract_probe[core]":
            assert cell["verdict"] == "passed", (name, cell)


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
