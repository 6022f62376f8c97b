"""The PHP targets (targets/swoole, targets/workerman) pass what they declare, through `./run compare`.

Every installed PHP manifest (a target's own and its seed variants) runs in one
comparison, as CI and users run it (the scenarios each runs here: :func:`selection`): each cell is passed,
unsupported, or a known deviation that its manifest lists with the reason and
fails by the checks it names; every answer has the contract's shape; no target
had to be killed at stop. Where PHP or the engine is not installed, the
manifest's own `[install]` check says so and the test skips with the install
command.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.harness.conformance import CHECK_NAME
from scenarios.harness.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted(p for d in ("swoole", "workerman") for p in (REPO / "targets" / d).glob("*.toml"))
#: Scenarios about the engine (Swoole's, Workerman's), not the application.
ENGINE_LEVEL = ("scenarios/test_faults.py", "scenarios/test_fd_exhaustion.py", "scenarios/test_protocol.py")
NOT_ENGINE = [
    str(p.relative_to(REPO)) for p in sorted((REPO / "scenarios").glob("test_*.py"))
    if str(p.relative_to(REPO)) not in ENGINE_LEVEL
]
#: scenario id -> the test (pytest node id) that runs it
CASE_NODE = {
    m.group(1): f"{p.relative_to(REPO)}::{m.group(2)}"
    for p in (REPO / "scenarios").glob("test_*.py")
    for m in re.finditer(r'@pytest\.mark\.scenario\(\s*"([a-z_0-9]+)"[^\n]*\n(?:@[^\n]*\n)*def (test_[a-z_0-9]+)', p.read_text())
}
#: scenario id -> the file that defines it
CASE_FILE = {case: node.split("::")[0] for case, node in CASE_NODE.items()}


def selection(path: Path) -> list[str] | None:
    """The scenario files this test runs on a manifest (None: all of them).

    Each engine's own manifest (Swoole's PROCESS mode, its coroutine server, Workerman) runs the
    whole suite. A seed variant (``naive-*.toml``: the same engine with one application pattern
    changed) answers every other scenario as its engine's manifest does, so it runs the tests of
    the cases its seed adds to the engine's known failures, and the honesty probe. SWOOLE_BASE
    runs everything but the engine-level scenarios (its faults are PROCESS mode's). This keeps
    CI under its 30 minutes; ``./run compare`` still runs every scenario on every manifest.
    """
    if path.stem == "base" and path.parent.name == "swoole":
        return NOT_ENGINE
    if not path.stem.startswith("naive"):
        return None
    base, own = load_manifest(path.parent / "process.toml"), load_manifest(path)
    seed = {  # the cases the seed adds, or fails by other checks than the engine's manifest
        k for k in own.known_failures
        if k not in base.known_failures or own.known_failure_checks.get(k) != base.known_failure_checks.get(k)
    }
    tests = {CASE_NODE[case_id(k)] for k in seed if case_id(k) in CASE_NODE}
    return sorted(tests | {"scenarios/test_probe.py"}) if tests else NOT_ENGINE


def case_id(case: str) -> str:
    """``broadcast_fanout[pubsub]`` -> ``broadcast_fanout``."""
    return case.split("[", 1)[0]


def _spec(path: Path) -> str:
    files = selection(path)
    return str(path) if files is None else f"{path}@{','.join(files)}"


#: Written by targets/swoole/install.sh while it builds (its pid); CI runs the build beside the tests.
BUILDING = REPO / "targets" / "swoole" / "build" / "BUILDING"
BUILD_WAIT_S = 1200


def wait_for_the_swoole_build(bound_s: float = BUILD_WAIT_S) -> None:
    """Return once no Swoole build is running: its marker gone, or its builder's exit observed
    (a pidfd becomes readable when the process exits; the wait is bounded)."""
    try:
        pid = int(BUILDING.read_text().split()[0])
        pidfd = os.pidfd_open(pid)
    except (OSError, ValueError, IndexError):
        return  # no marker, an unreadable one, or its builder is gone
    try:
        ready, _, _ = select.select([pidfd], [], [], bound_s)
    finally:
        os.close(pidfd)
    if not ready:
        pytest.fail(f"the Swoole build ({BUILDING}) still runs after {bound_s:.0f} s")


@pytest.mark.late
@pytest.mark.timeout(1500 + BUILD_WAIT_S)
def test_php_targets_pass_what_they_declare_in_the_comparison(tmp_path: Path) -> None:
    wait_for_the_swoole_build()
    installed = [p for p in MANIFESTS if not load_manifest(p).install_problem()]
    if not installed:
        pytest.skip("; ".join(sorted({load_manifest(p).install_problem() or "" for p in MANIFESTS})))
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios.compare", *map(_spec, installed), "--out", str(tmp_path), "--jobs", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )
    doc = json.loads((tmp_path / "index.json").read_text())
    assert proc.returncode == 0 and doc["ok"], proc.stdout[-4000:] + proc.stderr[-2000:]
    targets = {t["name"]: t for t in doc["targets"]}
    assert len(targets) == len(installed), sorted(targets)
    chosen = {load_manifest(p).name: selection(p) for p in installed}

    def selected(name: str, case: str) -> bool:
        chosen_tests = chosen[name]
        if chosen_tests is None:
            return True
        node = CASE_NODE.get(case_id(case), "")
        return node in chosen_tests or node.split("::")[0] in chosen_tests

    for name, t in targets.items():
        assert t["group"] in ("swoole", "workerman"), t["group"]
        unmatched = {case for case in t["known_failures_unmatched"] if selected(name, case)}
        assert not unmatched and not t["forced_stops"] and not t["crashed"], (name, t)
    cells = [(row["case"], name, cell) for g in doc["groups"] for row in g["rows"] for name, cell in row["cells"].items()]
    for case, name, cell in cells:
        if not selected(name, case):
            assert cell["verdict"] == "not_run", (name, case, cell["verdict"])
            continue
        # inconclusive: the machine was too busy to judge timing (contract 11.4), said with the figures
        assert cell["verdict"] in {"passed", "unsupported", "known_deviation", "inconclusive"}, (
            name, case, cell["verdict"], cell["message"][:500],
        )
        assert CHECK_NAME not in cell["failed_checks"], (name, case)
        if case == "contract_probe[core]":
            assert cell["verdict"] == "passed", (name, cell)
    seeds = {name: files for name, files in chosen.items() if files is not None and files != NOT_ENGINE}
    assert all(len(files) >= 2 for files in seeds.values()), seeds  # each seed variant runs its seed's scenarios


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
