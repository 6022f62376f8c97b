"""The checks of ``dead_session_push`` (scenarios/test_dead_session_push.py; contract 3.4, 6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Mark, Series, rel
from ..spec import Leftovers, check_leftovers, named

DEAD_CODES = {1004, 1005}


@dataclass
class DeadPushHistory:
    """What ``dead_session_push`` observed."""

    victims: int
    min_fails_per_timer: int
    #: the server stopped listing every victim in time
    victims_gone: bool = False
    #: per timer (named after its victim): failed pushes by code, from ``timer_stop``
    failed_by_timer: dict[str, dict[int, int]] = field(default_factory=dict)
    #: the answer to one push op to a dead session
    one_off: dict[str, Any] = field(default_factory=dict)
    dead_session_pushes_counted: int = 0
    #: the target's log lines written from the victims' leaving to the end
    log_lines: list[str] = field(default_factory=list)
    #: messages a newcomer received that were addressed to another session
    foreign: list[dict[str, Any]] = field(default_factory=list)
    #: with fd_reuse_info: newcomers on a victim's (worker, OS fd); None without the capability
    reused: list[dict[str, Any]] | None = None
    leftovers: Leftovers = field(default_factory=Leftovers)
    #: (wall time, failed pushes so far over every timer, log lines since the victims left), at each poll
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    #: moments of the story (label -> wall time): the victims leave, the newcomers connect
    moments: dict[str, float] = field(default_factory=dict)

    @property
    def total_failed(self) -> int:
        return sum(sum(f.values()) for f in self.failed_by_timer.values())

    @property
    def log_budget(self) -> int:
        """At most five lines per session (open, close, one warning, ...) and 20 more."""
        return 5 * (2 * self.victims) + 20


def check(h: DeadPushHistory) -> list[Check]:
    wrong_codes = [{"timer_to": n, "failed": f} for n, f in h.failed_by_timer.items() if set(f) - DEAD_CODES]
    never_1005 = [{"timer_to": n, "failed": f} for n, f in h.failed_by_timer.items() if not f.get(1005)]
    error = h.one_off.get("error") or {}
    total = h.total_failed
    checks = [
        named("the server notices every victim is gone", h.victims_gone, expected=True, observed=h.victims_gone),
        named(
            "failed pushes to dead sessions report 1004 or 1005 only",
            not wrong_codes,
            expected=sorted(DEAD_CODES),
            observed=wrong_codes or "only 1004/1005",
        ),
        named(
            "once a session is gone for good, pushes report 1005 SESSION_NOT_EXIST",
            not never_1005 and bool(h.failed_by_timer),
            expected="1005 for every timer",
            observed=never_1005 or "all saw 1005",
        ),
        named(
            "a one-off push to a dead session fails with 1005 SESSION_NOT_EXIST",
            h.one_off.get("ok") is False and error.get("code") == 1005 and error.get("name") == "SESSION_NOT_EXIST",
            expected={"ok": False, "code": 1005, "name": "SESSION_NOT_EXIST"},
            observed=h.one_off,
        ),
        named(
            "stats count every dead-session push the clients saw",
            h.dead_session_pushes_counted >= total + 1,
            expected=f">= {total + 1}",
            observed=h.dead_session_pushes_counted,
        ),
        named(
            "enough dead pushes happened for the log check to mean something",
            total >= h.victims * h.min_fails_per_timer,
            expected=f">= {h.victims * h.min_fails_per_timer}",
            observed=total,
        ),
        named(
            "no warning storm: the log does not grow with the number of dead pushes",
            len(h.log_lines) <= h.log_budget,
            expected=f"<= {h.log_budget} lines for {2 * h.victims} sessions and {total} dead pushes",
            observed=len(h.log_lines),
            sample=h.log_lines[:15],
        ),
        named(
            "a new client never receives what was meant for another session",
            not h.foreign,
            expected="nothing addressed elsewhere",
            observed=f"{len(h.foreign)} foreign messages",
            messages=h.foreign,
        ),
    ]
    if h.reused is not None:
        checks.append(
            named(
                "the scenario reproduced OS fd reuse (a newcomer got a victim's fd)",
                bool(h.reused),
                expected=">= 1 newcomer on a victim's (worker, fd)",
                observed=len(h.reused),
            )
        )
    return [*checks, *check_leftovers(h.leftovers)]


STORM_CHECK = "no warning storm: the log does not grow with the number of dead pushes"


def figure(h: DeadPushHistory) -> Figure | None:
    """Failed pushes per second and log lines per second after the victims left; the log budget
    crossed is marked (a warning per failed push shows as two lines that rise together)."""
    if len(h.samples) < 2:
        return None
    origin = h.moments.get("victims leave", h.samples[0][0])
    pushes, lines = Series("pushes failed per second", style="line"), Series("log lines per second", style="line")
    for (t0, f0, l0), (t1, f1, l1) in zip(h.samples, h.samples[1:], strict=False):
        if t1 - t0 > 0.01:
            pushes.points.append((rel(t1, origin), round((f1 - f0) / (t1 - t0), 1)))
            lines.points.append((rel(t1, origin), round((l1 - l0) / (t1 - t0), 1)))
    fig = Figure("dead_pushes", "Pushes to dead sessions that failed, and the target's log lines, per second", "series",
                 x_label="seconds from the victims' leaving", y_label="per second", origin=origin,
                 series=[pushes, lines], log_y=True)
    for label, t in h.moments.items():
        fig.marks.append(Mark(rel(t, origin), label))
    over = next(((t, n) for t, _, n in h.samples if n > h.log_budget), None)
    if over is not None:
        fig.marks.append(Mark(rel(over[0], origin), f"log past its budget of {h.log_budget} lines", check=STORM_CHECK))
    return fig
