"""The comparison matrix, built from the results of several runs (pure: no I/O).

Input: one :class:`RunResult` per target, the ``results.json`` a harness run
wrote (or nothing, if the run crashed). Output: the document written as
``reports/index.json``, from which ``reports/index.html`` is rendered:

* ``targets``: one column per target, with what it declared, its known
  failures, how its run went and its counts;
* ``groups``: rows grouped by seed, in the order the cases were first seen;
  each row holds one cell per target;
* a cell: ``verdict`` (one of :data:`VERDICTS`), ``duration_s``, the failed
  checks, a short message, and the evidence it links to;
* ``ok``: whether the comparison as a whole passed, and ``problems``, why not.

Verdicts: ``passed``; ``failed`` (including a stale known failure: a case the
manifest lists that passed); ``known_deviation`` (a listed case that
failed); ``unsupported`` (the target does not declare what the case needs);
``error`` (the case broke before its checks); ``inconclusive`` (only checks
with a time bound failed, while the harness measured CPU starvation: the
machine was too busy to judge; the cell carries the measured ``conditions``);
``skipped``; ``not_run`` (the case was not selected for that target, e.g. a
broken variant runs only the scenario it is about).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("passed", "failed", "known_deviation", "inconclusive", "unsupported", "error", "skipped", "not_run")
#: Verdicts that make the comparison fail.
BAD = frozenset({"failed", "error"})


@dataclass
class RunResult:
    """One target's run: its name and manifest, and the results document (None if the run crashed)."""

    name: str
    manifest: str
    results: dict[str, Any] | None
    exit_code: int | None = None
    selection: list[str] = field(default_factory=list)
    output_tail: str = ""
    #: What the cells link to, by case key: relative paths of the evidence pages.
    links: dict[str, str] = field(default_factory=dict)
    #: Extra facts about the target (e.g. a broken variant's bug), shown in its column header.
    note: str = ""


def build(runs: list[RunResult], *, contract: int = 1, generated: float = 0.0) -> dict[str, Any]:
    """The matrix document of ``runs`` (see the module docstring)."""
    order: list[str] = []  # case keys, in first-seen order
    seeds: dict[str, str] = {}
    scenario_ids: dict[str, str] = {}
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    problems: list[str] = []
    targets = []
    for run in runs:
        records = (run.results or {}).get("scenarios", [])
        counts = {v: 0 for v in VERDICTS}
        for record in records:
            key = record.get("case") or record["id"]
            if key not in seeds:
                order.append(key)
                seeds[key] = record.get("seed", "")
                scenario_ids[key] = record["id"]
            cell = _cell(record, run.links.get(key, ""))
            cells.setdefault(key, {})[run.name] = cell
            counts[cell["verdict"]] += 1
            if cell["verdict"] in BAD:
                by = f"; failed checks: {cell['failed_checks']}" if cell["failed_checks"] else ""
                problems.append(
                    f"{run.name}: {key} {cell['verdict']}" + (f" ({cell['message'][:120]})" if cell["message"] else "") + by
                )
        crashed = run.results is None
        if crashed:
            problems.append(f"{run.name}: the run wrote no results (exit code {run.exit_code})")
        elif run.exit_code not in (0, 1, 5, None):  # pytest: 1 = failures (counted above), 5 = nothing collected
            problems.append(f"{run.name}: the run ended with exit code {run.exit_code}")
        info = (run.results or {}).get("target", {})
        stops = (run.results or {}).get("target_stops", [])
        forced = [s["label"] for s in stops if s.get("forced") or s.get("leftover_pids")]
        if forced:
            problems.append(f"{run.name}: target instance(s) {forced} had to be killed at stop")
        targets.append(
            {
                "name": run.name,
                "manifest": run.manifest,
                "description": info.get("description", ""),
                "note": run.note,
                "declared": info.get("declared_capabilities", []),
                "group": _group(run.manifest, run.note),
                "known_failures": info.get("known_failures", {}),
                "known_failure_checks": info.get("known_failure_checks", {}),
                "known_failures_unmatched": info.get("known_failures_unmatched", []),
                "broker": (run.results or {}).get("broker"),
                "duration_s": (run.results or {}).get("duration_s"),
                "exit_code": run.exit_code,
                "crashed": crashed,
                "selection": run.selection,
                "counts": {k: v for k, v in counts.items() if v},
                "forced_stops": forced,
                "output_tail": run.output_tail if crashed else "",
            }
        )
    names = [run.name for run in runs]
    groups: list[dict[str, Any]] = []
    by_seed: dict[str, dict[str, Any]] = {}
    for key in order:
        seed = seeds[key]
        if seed not in by_seed:
            by_seed[seed] = {"seed": seed, "rows": []}
            groups.append(by_seed[seed])
        row_cells = {name: cells[key].get(name) or _not_run() for name in names}
        by_seed[seed]["rows"].append({"case": key, "scenario": scenario_ids[key], "cells": row_cells})
    return {
        "kind": "scenario-comparison",
        "contract": contract,
        "generated": generated,
        "verdicts": list(VERDICTS),
        "targets": targets,
        "groups": groups,
        "ok": not problems,
        "problems": problems,
    }


def _cell(record: dict[str, Any], link: str) -> dict[str, Any]:
    verdict = record.get("verdict", "error")
    if verdict not in VERDICTS:
        verdict = "error"
    return {
        "verdict": verdict,
        "duration_s": record.get("duration_s"),
        "checks": record.get("checks", 0),
        "failed_checks": record.get("failed_checks", []),
        "message": _first_line(record.get("message", "")),
        "stale": "stale known failure" in record.get("message", ""),
        "link": link,
        "headline": record.get("headline", ""),
        **({"conditions": record.get("conditions")} if verdict == "inconclusive" else {}),
    }


def _not_run() -> dict[str, Any]:
    return {"verdict": "not_run", "duration_s": None, "checks": 0, "failed_checks": [], "message": "", "stale": False, "link": ""}


def _first_line(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""


def exit_status(matrix: dict[str, Any]) -> int:
    """0 when the comparison passed, 1 otherwise (a failed case, a crashed run, a stale known failure)."""
    return 0 if matrix["ok"] else 1


#: The group of the broken variants (tests/variants): the page shows them apart, folded.
VARIANTS_GROUP = "broken on purpose (tests/variants)"


def _group(manifest: str, note: str) -> str:
    """The column group of a target: its folder (a target's variants sit together), or the broken variants."""
    if note.startswith("broken on purpose"):
        return VARIANTS_GROUP
    return Path(manifest).parent.name or manifest
