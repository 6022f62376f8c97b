"""The checks of ``closing_session`` (scenarios/test_closing.py; contract 3.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark, rel
from ..spec import Leftovers, check_leftovers, named

CLOSED, GONE = 1004, 1005


@dataclass
class ClosingHistory:
    """What ``closing_session`` observed."""

    #: The code of each push made while the session was closing (0: it succeeded).
    closing_codes: list[int | None] = field(default_factory=list)
    #: The code of each push made once the session was gone.
    gone_codes: list[int | None] = field(default_factory=list)
    #: ``dead_session_pushes`` growth from before the close to the end of the closing window.
    dead_while_closing: int = 0
    #: ``dead_session_pushes`` growth from before the close to the end.
    dead_total: int = 0
    #: Ticks of the session's own timer received after the server's close frame.
    late_ticks: int = 0
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)
    #: for the figure: the victim's ticks (wall times), each push (time, code), the story's moments
    tick_times: list[float] = field(default_factory=list)
    pushes: list[tuple[float, int | None]] = field(default_factory=list)
    moments: dict[str, float] = field(default_factory=dict)


def check(h: ClosingHistory) -> list[Check]:
    # The pushes the target answered as dead: what dead_session_pushes must count, and nothing else.
    dead_closing = sum(1 for c in h.closing_codes if c in (CLOSED, GONE))
    own = h.dead_while_closing - dead_closing
    made = dead_closing + sum(1 for c in h.gone_codes if c in (CLOSED, GONE))
    return [
        named(
            "a push to a session that is closing fails with 1004 (SESSION_CLOSED)",
            bool(h.closing_codes) and set(h.closing_codes) == {CLOSED},
            expected="at least one push while the close reply is withheld, each 1004",
            observed=h.closing_codes or "no push while closing (the server dropped the session at once)",
        ),
        named(
            "a push to a session that is gone fails with 1005 (SESSION_NOT_EXIST)",
            bool(h.gone_codes) and set(h.gone_codes) == {GONE},
            expected=[GONE] * max(1, len(h.gone_codes)),
            observed=h.gone_codes,
        ),
        named(
            "a session's own timer never pushes once its close is known",
            own == 0 and not h.late_ticks,
            expected="no dead-session push but the pusher's, and no tick after the close frame",
            observed={"pushes not made by the pusher": own, "ticks after the close frame": h.late_ticks},
        ),
        named(
            "dead_session_pushes grows by exactly the number of dead pushes",
            h.dead_total == made,
            expected=made,
            observed=h.dead_total,
        ),
        *check_leftovers(h.leftovers),
    ]


LATE_CHECK = "a session's own timer never pushes once its close is known"
CODE_CHECKS = {
    "closing": "a push to a session that is closing fails with 1004 (SESSION_CLOSED)",
    "gone": "a push to a session that is gone fails with 1005 (SESSION_NOT_EXIST)",
}


def figure(h: ClosingHistory) -> Figure | None:
    """The victim's own ticks and the pushes to it, each by its answer, with the moments of its end
    (the server's close frame, the client's abort, the session counted gone)."""
    if not h.tick_times and not h.pushes:
        return None
    origin = min(h.tick_times[:1] + [t for t, _ in h.pushes[:1]])
    fig = Figure("closing", "The victim's own ticks and the pushes to it (by answer) while it closes and once gone",
                 "lanes", origin=origin)
    fig.lanes.append(Lane("victim's ticks", [(rel(t, origin), "tick") for t in h.tick_times]))
    answers = {0: "push ok", CLOSED: "1004 closed", GONE: "1005 gone"}
    fig.lanes.append(Lane("pushes to it", [(rel(t, origin), answers.get(code or 0, f"code {code}")) for t, code in h.pushes]))
    for label, t in h.moments.items():
        fig.marks.append(Mark(rel(t, origin), label))
    close_at = h.moments.get("server's close frame")
    if close_at is not None:
        late = [t for t in h.tick_times if t > close_at]
        if late:
            fig.marks.append(Mark(rel(late[0], origin), f"{len(late)} ticks after the close frame", "victim's ticks", check=LATE_CHECK))
    gone_at = h.moments.get("counted gone")
    for t, code in h.pushes:
        phase = "gone" if gone_at is not None and t >= gone_at else "closing"
        if code != (GONE if phase == "gone" else CLOSED):
            fig.marks.append(Mark(rel(t, origin), f"answered {code}", "pushes to it", check=CODE_CHECKS[phase]))
            break
    return fig
