"""Named checks with what was expected and what was seen (Jepsen-style: check the record).

A scenario records facts (client histories, stats, reports) and then states
checks. Every check is kept, passing or not. Every scenario's evidence also
holds the check that the target's answers had the contract's shape
(:mod:`.conformance`), added when the verdict is asked for. :meth:`Evidence.verdict` raises
:class:`ScenarioFailed` listing each failed check with its evidence, and the
whole record is written as JSON next to the run's results.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import conformance
from .figures import Figure

MAX_EXCERPT = 40


class ScenarioFailed(AssertionError):
    pass


@dataclass
class Check:
    name: str
    passed: bool
    expected: Any = None
    observed: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    #: The check has a time bound: under CPU starvation its failure is ``inconclusive`` (contract 11.4).
    timing: bool = False

    def describe(self) -> str:
        text = f"[FAIL] {self.name}: expected {self.expected!r}, observed {self.observed!r}"
        for key, value in self.details.items():
            rendered = json.dumps(value, default=str)
            if len(rendered) > 600:
                rendered = rendered[:600] + "..."
            text += f"\n         {key}: {rendered}"
        return text


#: The run seed when ``--run-seed`` is not given: runs are reproducible by default.
DEFAULT_RUN_SEED = 20261121


class Evidence:
    def __init__(self, scenario: str, path: Path) -> None:
        self.scenario = scenario
        self.path = path
        self.checks: list[Check] = []
        self.facts: dict[str, Any] = {}
        #: Figures of the history (:mod:`.figures`), drawn on the case's evidence page.
        self.figures: list[dict[str, Any]] = []
        self.started = time.time()
        #: The log of the answers this case validated (the plugin sets it for scenarios).
        self.conformance: conformance.ConformanceLog | None = None
        #: The run's seed (``--run-seed``), from which every random choice of the case follows.
        self.run_seed: int = DEFAULT_RUN_SEED

    def rng(self, label: str = "") -> random.Random:
        """A random stream of this case (one per ``label``), from the run seed: same seed, same choices."""
        return random.Random(f"{self.run_seed}/{self.scenario}/{label}")

    def check(
        self, name: str, passed: bool, *, expected: Any = None, observed: Any = None, timing: bool = False, **details: Any
    ) -> bool:
        """Record one check; details should be small excerpts (lists are cut).

        ``timing``: the check has a time bound (see :attr:`Check.timing`).
        """
        trimmed = {k: (v[:MAX_EXCERPT] if isinstance(v, list) else v) for k, v in details.items()}
        self.checks.append(Check(name, bool(passed), expected, observed, trimmed, bool(timing)))
        return bool(passed)

    def record(self, checks: list[Check]) -> bool:
        """Record the checks a checker made (``scenarios/harness/checkers/``); whether all passed."""
        for c in checks:
            self.check(c.name, c.passed, expected=c.expected, observed=c.observed, timing=c.timing, **c.details)
        return all(c.passed for c in checks)

    def figure(self, *figures: Figure | None) -> None:
        """Keep figures of the history for the evidence page (``None`` is skipped)."""
        self.figures += [f.as_dict() for f in figures if f is not None]

    def fact(self, name: str, value: Any) -> None:
        self.facts[name] = value

    def add_facts(self, facts: dict[str, Any]) -> None:
        """Record every fact a history gathered (name -> value)."""
        self.facts.update(facts)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def verdict(self) -> None:
        if self.conformance is not None:
            conformance.check(self, self.conformance)
        if not self.checks:
            raise ScenarioFailed(f"{self.scenario}: no check was made")
        if self.failed:
            lines = [f"{self.scenario}: {len(self.failed)} of {len(self.checks)} checks failed"]
            lines += [c.describe() for c in self.failed]
            lines.append(f"evidence: {self.path}")
            raise ScenarioFailed("\n".join(lines))

    def write(self, extra: dict[str, Any] | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "scenario": self.scenario,
            "started": self.started,
            "checks": [asdict(c) for c in self.checks],
            "facts": self.facts,
            "figures": self.figures,
            **(extra or {}),
        }
        self.path.write_text(json.dumps(record, indent=1, default=str))
