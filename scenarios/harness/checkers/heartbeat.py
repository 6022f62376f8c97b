"""The checks of ``heartbeat`` (scenarios/test_heartbeat.py; contract 3.5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark, rel
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
    #: per client (by name): its group, the wall times of what it sent, pinged and received, its
    #: last message before the window, and its end (time, close code or None)
    timelines: dict[str, dict[str, Any]] = field(default_factory=dict)


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


SURVIVOR_CHECK = "chatty, ping-only and protected clients stay open"
IDLE_CHECKS = {
    "code": f"idle clients are closed with a {IDLE_CODE} close frame",
    "when": "idle sessions close within the tolerance of the idle time",
    "pushed": "server pushes do not count as activity: push-only clients are closed as idle",
}


def figure(h: HeartbeatHistory) -> Figure | None:
    """Each client's traffic (sent, pinged, received) and its end; for idle and push-only clients,
    the span in which the idle close must come (idle time to idle time + check + slack) as a bar."""
    if not h.timelines:
        return None
    origin = min(tl["last_sent"] for tl in h.timelines.values())
    fig = Figure("heartbeat", f"Each client's traffic and end; the bar: where an idle close must come "
                 f"({h.idle_ms} to {h.latest_ms} ms after its last message)", "lanes", y_label="client", origin=origin)
    for name, tl in h.timelines.items():
        lane = Lane(name)
        for kind in ("sent", "ping", "received"):
            lane.points += [(rel(t, origin), kind) for t in tl.get(kind, [])]
        judged = tl["group"] in ("idle", "pushed")
        if judged:
            lane.bars.append((rel(tl["last_sent"] + h.idle_ms / 1000, origin),
                              rel(tl["last_sent"] + h.latest_ms / 1000, origin), "idle close due"))
        fig.lanes.append(lane)
        end, code = tl.get("ended"), tl.get("code")
        if end is None:
            if tl["group"] == "pushed":
                fig.marks.append(Mark(rel(tl["last_sent"] + h.latest_ms / 1000, origin), "still open", name,
                                      check=IDLE_CHECKS["pushed"]))
            continue
        label = f"closed {code}" if code is not None else "ended, no close frame"
        after_ms = (end - tl["last_sent"]) * 1000
        check: str | None
        if not judged:
            check = SURVIVOR_CHECK if end <= tl.get("window_end", end) else None
        elif code != IDLE_CODE:
            check = IDLE_CHECKS["code"]
        elif not h.idle_ms <= after_ms <= h.latest_ms:
            check = IDLE_CHECKS["when"]
        else:
            check = None  # as it should be
        fig.marks.append(Mark(rel(end, origin), label, name, check=check))
    return fig
