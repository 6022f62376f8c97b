"""The checks of ``heartbeat`` (scenarios/test_heartbeat.py; contract 3.5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..spec import named

IDLE_CODE = 4408


@dataclass
class IdleClient:
    """An idle or push-only client: how and when its session ended."""

    name: str
    close_frame: tuple[int, str] | None
    closed: bool
    #: ms from its last message to the end of its session (None: it did not end, or the client aborted)
    ended_after_ms: int | None
    #: still open, or ended by the client, when the window was over
    kept_open: bool = False
    tail: Any = None


@dataclass
class HeartbeatHistory:
    """What ``heartbeat`` observed."""

    idle_ms: int
    check_ms: int
    latest_ms: int  # the latest an idle close may come, after the last message
    window_s: float
    idle: list[IdleClient] = field(default_factory=list)
    pushed: list[IdleClient] = field(default_factory=list)
    #: chatty, ping-only and protected clients that were closed during the window
    survivors_closed: list[dict[str, Any]] = field(default_factory=list)
    #: pings each ping-only client sent
    pings: dict[str, int] = field(default_factory=dict)
    ping_every_s: float = 0.15
    heartbeat_closes_counted: int = 0


def check(h: HeartbeatHistory) -> list[Check]:
    judged = h.idle + h.pushed
    wrong_code = [
        {"client": c.name, "close_frame": c.close_frame, "closed": c.closed}
        for c in judged
        if c.close_frame is None or c.close_frame[0] != IDLE_CODE
    ]
    # Judged on when the session ended, however it ended: a close without a frame is no excuse.
    early_late = [
        {"client": c.name, "closed_after_ms": c.ended_after_ms}
        for c in judged
        if c.ended_after_ms is None or not h.idle_ms <= c.ended_after_ms <= h.latest_ms
    ]
    kept_open = [{"client": c.name, "tail": c.tail} for c in h.pushed if c.kept_open]
    min_pings = h.window_s / h.ping_every_s / 2
    return [
        named(
            f"idle clients are closed with a {IDLE_CODE} close frame",
            not wrong_code and bool(judged),
            expected=f"a close frame with code {IDLE_CODE} for every idle and push-only client",
            observed=wrong_code or f"all {IDLE_CODE}",
        ),
        named(
            "server pushes do not count as activity: push-only clients are closed as idle",
            not kept_open and bool(h.pushed),
            expected="every push-only client's session ended by the server",
            observed=kept_open or f"all {len(h.pushed)} ended",
        ),
        named(
            "idle sessions close within the tolerance of the idle time",
            not early_late and bool(judged),
            timing=True,
            expected=f"every idle client ended {h.idle_ms}..{h.latest_ms} ms after its last message",
            observed=early_late or f"all {len(judged)} within",
        ),
        named(
            "ping-only clients did ping through the whole window",
            bool(h.pings) and all(n >= min_pings for n in h.pings.values()),
            timing=True,
            expected=f">= {int(min_pings)} pings each",
            observed=h.pings,
        ),
        named(
            "chatty, ping-only and protected clients stay open",
            not h.survivors_closed,
            timing=True,
            expected="open for the whole window",
            observed=h.survivors_closed or "all open",
        ),
        named(
            "stats count the heartbeat closes",
            h.heartbeat_closes_counted == len(judged),
            expected=len(judged),
            observed=h.heartbeat_closes_counted,
        ),
    ]
