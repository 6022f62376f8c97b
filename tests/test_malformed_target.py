"""The harness judges malformed answers as named failed checks, never with a traceback.

The malformed target (``tests/malformed_target.py``) answers in each shape an
outside implementer once guessed wrong. Run through the real harness in a
subprocess, every scenario that meets such an answer must be ``failed`` (not
``error``) by the check :data:`~scenarios.harness.conformance.CHECK_NAME`,
whose evidence names the route or op and the JSON pointer of each shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scenarios.harness.conformance import CHECK_NAME
from tests.malformed_target import EXPECTED, write_manifest
from tests.test_scenarios_bite import run_suite

SCENARIOS = [
    "scenarios/test_probe.py::test_contract_probe[core]",
    "scenarios/test_task_sweep.py::test_task_sweep",
    "scenarios/test_dead_session_push.py",
    "scenarios/test_reload.py::test_reload_ticks",
]
#: Listed as a known failure in the manifest: its malformed answers must fail it all the same.
EXCUSED = "task_sweep"


def _matches(pattern: str, pointer: str) -> bool:
    regex = re.escape(pattern).replace(r"\{i\}", r"\d+").replace(r"\{name\}", r"[^/]+")
    return re.fullmatch(regex, pointer) is not None


def test_malformed_answers_are_named_failed_checks(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, known_failure=EXCUSED)
    code, results, output = run_suite(SCENARIOS, manifest, tmp_path / "reports")
    assert code == 1, output
    records = results["scenarios"]
    assert len(records) == len(SCENARIOS), output
    seen: list[dict] = []
    for record in records:
        assert record["verdict"] == "failed", record
        assert CHECK_NAME in record["failed_checks"], record
        assert "Traceback" not in record["message"] and "harness" not in record["message"].split("\n")[0], record
        evidence = json.loads(Path(record["evidence"]).read_text())
        (check,) = [c for c in evidence["checks"] if c["name"] == CHECK_NAME]
        assert check["details"]["violations"] > 0
        seen += check["observed"]
        if record["case"] == EXCUSED:
            assert record["message"].startswith("known failure"), record["message"]
    for where, pointer in EXPECTED:
        assert any(v["where"].startswith(where) and _matches(pointer, v["pointer"]) for v in seen), (
            f"no violation at {where} {pointer}; seen: {sorted({(v['where'], v['pointer']) for v in seen})}"
        )
    assert all(s["exit_code"] == 0 and not s["forced"] for s in results["target_stops"]), results["target_stops"]
