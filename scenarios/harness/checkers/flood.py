"""The checks of ``fd_exhaustion`` (scenarios/test_fd_exhaustion.py; contract 12.3).

Pure: a :class:`FloodHistory` in, named checks out. The target runs under ``ulimit -n
open_files`` and is flooded with bare TCP connects and unfinished handshakes, more than all its
processes together could hold. What it does with the excess is its choice (close it, or leave it
in the kernel's backlog); what it must not do is fall over: no process exits, the sessions it
has keep working, its admin API answers, a client that comes during the flood gets an answer
(served or refused) instead of hanging, it serves again once the flood is gone, and its log does
not grow by more than a few lines per connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark, rel, ticks_through_phases
from ..spec import Leftovers, check_leftovers, named
from .faults import BYSTANDER_GAP_S, Bystander, check_bystanders

#: The flood is this many times the target's open-file limit (more than all its processes hold).
FLOOD_FACTOR = 4
#: An admin answer during the flood, a newcomer's answer: within this.
ANSWER_BOUND_S = 5.0
#: Log lines the flood may cost: a few per connection, and this many more.
LOG_PER_CONNECTION = 4
LOG_SLACK = 200


@dataclass
class FloodHistory:
    open_files: int = 0
    bare: dict[str, Any] = field(default_factory=dict)  # attempted, connected, refused, timed_out, errors
    half_open: dict[str, Any] = field(default_factory=dict)
    held_during: dict[str, int] = field(default_factory=dict)  # shed / held, just before the release
    newcomer: str = ""  # "served", "refused" or "hung": a WebSocket client during the flood
    newcomer_detail: str = ""
    admin: list[tuple[str, int, float]] = field(default_factory=list)  # (route, status, seconds) during the flood
    bystanders: list[Bystander] = field(default_factory=list)
    recovery_wanted: int = 0
    recovery_served: int = 0
    recovery_failures: list[str] = field(default_factory=list)
    processes_before: list[Any] = field(default_factory=list)
    processes_after: list[Any] = field(default_factory=list)
    log_lines: int = 0
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)
    #: for the figure: the phases (name, start, end), each bystander's tick times, the newcomer's try
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    tick_times: dict[str, list[float]] = field(default_factory=dict)
    newcomer_at: tuple[float, float] | None = None

    @property
    def attempted(self) -> int:
        return int(self.bare.get("attempted", 0)) + int(self.half_open.get("attempted", 0))

    @property
    def log_budget(self) -> int:
        return LOG_PER_CONNECTION * self.attempted + LOG_SLACK


def check_flood(h: FloodHistory) -> list[Check]:
    slow_admin = [a for a in h.admin if a[1] != 200 or a[2] > ANSWER_BOUND_S]
    return [
        named(
            "the flood passed the target's open-file limit",
            h.open_files > 0 and int(h.bare.get("attempted", 0)) >= FLOOD_FACTOR * h.open_files,
            expected=f">= {FLOOD_FACTOR} x {h.open_files} bare connects",
            observed={"bare": h.bare, "half_open": h.half_open, "just before the release": h.held_during},
        ),
        named("no process exits", bool(h.processes_before) and h.processes_before == h.processes_after,
              expected=h.processes_before, observed=h.processes_after),
        check_bystanders("established sessions see no gap over 2 s and every echo answered", h.bystanders),
        named(
            "the admin API answers during the flood",
            bool(h.admin) and not slow_admin,
            timing=True,
            expected=f"200 within {ANSWER_BOUND_S} s",
            observed={"answers": len(h.admin), "slowest_s": max((a[2] for a in h.admin), default=None),
                      "failed": slow_admin[:5]},
        ),
        named(
            "a client that connects during the flood is served or refused within 5 s, not left hanging",
            h.newcomer in ("served", "refused"),
            timing=True,
            expected="served or refused",
            observed=h.newcomer or "not tried",
            detail=h.newcomer_detail,
        ),
        named(
            "once the flood is gone, new connections are served",
            h.recovery_wanted > 0 and h.recovery_served == h.recovery_wanted,
            expected=h.recovery_wanted,
            observed=h.recovery_served,
            failures=h.recovery_failures[:5],
        ),
        named(
            "the log stays bounded (a few lines per connection, no storm)",
            h.log_lines <= h.log_budget,
            expected=f"<= {h.log_budget} lines for {h.attempted} connections",
            observed=h.log_lines,
        ),
        *check_leftovers(h.leftovers),
    ]


BYSTANDER_CHECK = "established sessions see no gap over 2 s and every echo answered"
NEWCOMER_CHECK = "a client that connects during the flood is served or refused within 5 s, not left hanging"


def figure(h: FloodHistory) -> Figure | None:
    """The established sessions' ticks through the flood, the hold and the recovery (shaded); the
    newcomer's try and a bystander's gap past the bound marked."""
    fig = ticks_through_phases(
        "flood", "Established sessions' ticks through the flood of connections, the hold and the recovery",
        x_label="seconds from the start of the flood", y_label="session", phases=h.phases, tick_times=h.tick_times,
        gap_bound_s=BYSTANDER_GAP_S, check=BYSTANDER_CHECK, gaps_from_first_phase=True,
    )
    if fig is None:
        return None
    origin = fig.origin
    if h.newcomer_at is not None:
        a, b = h.newcomer_at
        fig.lanes.append(Lane("newcomer", bars=[(rel(a, origin), rel(b, origin), h.newcomer or "not tried")]))
        fig.marks.append(Mark(rel(b, origin), h.newcomer, "newcomer",
                              check=NEWCOMER_CHECK if h.newcomer not in ("served", "refused") else None))
    return fig
