"""The checks of ``closing_session`` (scenarios/test_closing.py; contract 3.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
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
