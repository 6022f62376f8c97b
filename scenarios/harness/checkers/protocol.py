"""The checks of ``protocol_conformance`` (scenarios/test_protocol.py; contract 12.4).

Pure: a :class:`ProtocolHistory` in (each case's verdict from ``wsprotocol.judge``), named
checks out, one per group of cases (framing, control frames, fragmentation, UTF-8, closing,
limits), each listing the cases that failed and why. A case passed "non-strictly" (the server
failed the connection by ending TCP without a close frame, which the RFC allows) is counted in
the facts, not failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark
from ..spec import Leftovers, check_leftovers, named

GROUPS = {
    "framing": "framing: lengths, masking, reserved bits and opcodes as RFC 6455 5.2 says",
    "control": "control frames: pings answered with their payload, oversized or fragmented ones refused",
    "fragmentation": "fragmentation: fragments reassembled, control frames between them, bad sequences refused",
    "utf-8": "UTF-8: valid text taken whole, invalid text failed with 1007",
    "close": "closing: the closing handshake answered, invalid close codes refused with 1002",
    "limits": "limits: a message over the target's limit failed with 1009",
}


@dataclass
class CaseResult:
    id: str
    group: str
    what: str
    problem: str | None
    non_strict: bool = False
    seconds: float = 0.0


@dataclass
class ProtocolHistory:
    results: list[CaseResult] = field(default_factory=list)
    processes_before: list[Any] = field(default_factory=list)
    processes_after: list[Any] = field(default_factory=list)
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)


def check_protocol(h: ProtocolHistory) -> list[Check]:
    checks = []
    for group, name in GROUPS.items():
        mine = [r for r in h.results if r.group == group]
        failed = {f"{r.id} {r.what}": r.problem for r in mine if r.problem}
        checks.append(
            named(
                name,
                bool(mine) and not failed,
                expected=f"{len(mine)} cases as the RFC says",
                observed=failed or f"{len(mine)} passed ({sum(r.non_strict for r in mine)} non-strictly)",
            )
        )
    checks.append(
        named(
            "no process exits",
            bool(h.processes_before) and h.processes_before == h.processes_after,
            expected=h.processes_before,
            observed=h.processes_after,
        )
    )
    return [*checks, *check_leftovers(h.leftovers)]


MAX_MARKS = 12


def figure(h: ProtocolHistory) -> Figure | None:
    """Each case of each group by how long it took and how it ended (a case that waits out its bound
    shows far right); the failed ones marked with their id."""
    if not h.results:
        return None
    fig = Figure("cases", "RFC 6455 cases by group: how long each took, and how it ended", "lanes",
                 x_label="seconds the case took", y_label="group")
    for group in GROUPS:
        mine = [r for r in h.results if r.group == group]
        outcome = {r.id: "failed" if r.problem else "passed (TCP ended, no close frame)" if r.non_strict else "passed"
                   for r in mine}
        fig.lanes.append(Lane(group, [(round(r.seconds, 3), outcome[r.id]) for r in mine]))
        for r in [r for r in mine if r.problem][: MAX_MARKS // 2]:
            fig.marks.append(Mark(round(r.seconds, 3), r.id, group, check=GROUPS[group]))
    return fig
