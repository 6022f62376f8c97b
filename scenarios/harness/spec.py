"""The shape of a scenario: drive, record a history, check it.

Every scenario file reads the same way (``scenarios/test_closing.py`` is the shortest):

1. the module docstring states the promise, with the contract section, and what is checked;
2. the parameters (sizes, rates, timeouts) as module constants;
3. ``drive(...)``: talks to the target through the contract only and returns a *history*,
   a dataclass of what was observed (answers, codes, counters before and after, ...);
4. ``check(history)``: a pure function, in ``scenarios/harness/checkers/``, that returns
   the named :class:`~.evidence.Check` list; it has unit tests on synthetic histories
   (``tests/test_checkers.py``), so each check is shown to pass and to fail;
5. the test: drive, record the history's facts and the checks, verdict.

A check that could not fail on the bug it names (vacuous, because nothing happened) must
say so by failing: a checker asks for the evidence that the situation arose (at least one
push while closing, at least one idle client, ...).

This module holds what every history has: what is left once every client is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .admin import AdminClient
from .evidence import Check
from .target import count_fds
from .waiting import settle


def named(
    name: str, passed: bool, *, expected: Any = None, observed: Any = None, timing: bool = False, **details: Any
) -> Check:
    """One named check (details are small excerpts; the evidence cuts long lists).

    ``timing=True`` marks a check whose bound is a time (a gap, a deadline, a latency): if it
    fails while the harness measured CPU starvation, the case is ``inconclusive``, not failed.
    """
    return Check(name, bool(passed), expected, observed, details, bool(timing))


async def fd_snapshot(admin: AdminClient) -> dict[str, int]:
    """Open fds per process of the target (by name), read from /proc (local targets)."""
    out = {}
    for proc in await admin.processes():
        n = count_fds(int(proc["pid"]))
        if n is not None:
            out[str(proc.get("name") or proc["pid"])] = n
    return out


@dataclass
class Leftovers:
    """After every client of a scenario is gone: the sessions still listed, and the fds per process."""

    sessions: list[Any] = field(default_factory=list)
    baseline_fds: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)


async def observe_leftovers(admin: AdminClient, baseline_fds: dict[str, int], *, timeout: float = 10.0) -> Leftovers:
    """Wait (bounded) for no session and every process back to its fd baseline; what was seen last."""
    seen = Leftovers(baseline_fds=dict(baseline_fds))

    async def no_sessions() -> bool:
        seen.sessions = await admin.sessions()
        return not seen.sessions

    await settle(no_sessions, timeout=timeout, interval=0.05)

    async def fds_back() -> bool:
        seen.fds = await fd_snapshot(admin)
        return all(seen.fds.get(name, n) <= n for name, n in baseline_fds.items())

    await settle(fds_back, timeout=timeout, interval=0.05)
    return seen


def check_leftovers(left: Leftovers) -> list[Check]:
    """No session left, and no process above its fd baseline.

    Both are waits with a bound (:func:`observe_leftovers`, 10 s): timing checks (contract 11.4).
    On a starved machine a process's cleanup can come late; on a quiet one they fail as ever.
    """
    grown = {name: [left.baseline_fds[name], n] for name, n in left.fds.items() if n > left.baseline_fds.get(name, n)}
    return [
        named(
            "no sessions left after every client is gone",
            not left.sessions,
            timing=True,
            expected=0,
            observed=len(left.sessions),
            sessions=left.sessions,
        ),
        named(
            "every process is back to its fd count (no fd leak)",
            not grown,
            timing=True,
            expected="fds <= baseline",
            observed=grown or "all at baseline",
            baseline=left.baseline_fds,
        ),
    ]
