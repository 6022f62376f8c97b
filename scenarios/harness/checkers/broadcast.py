"""The checks of the broadcast scenarios (scenarios/test_broadcast.py; contract section 10).

Delivery is judged by ``broadcast.check_histories`` (the model: each session gets each message
of its channels exactly once, in each publisher's order, never before its join or after its
leave); its :class:`~..broadcast.Violations` is part of each history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..broadcast import Published, Violations
from ..evidence import Check
from ..figures import Answer, Figure, Mark, Series, Window, answers_figure, rel
from ..spec import named

SLOW_CODE = 4429


def _first(items: list[Any], n: int = 10) -> Any:
    return items[:n] or 0


# -- broadcast_fanout --------------------------------------------------------------------------------


@dataclass
class FanoutHistory:
    """What ``broadcast_fanout`` observed over two nodes."""

    verdict: Violations
    published: int = 0
    published_ok: int = 0
    #: subscribe/unsubscribe failures and churn errors (each names its request)
    failures: list[str] = field(default_factory=list)
    #: of those, the requests that got no answer in time (a busy machine can cause them)
    timeouts: int = 0
    #: bytes received by each half-open handshake that received any: (bytes, first bytes)
    stuck_bytes: list[Any] = field(default_factory=list)
    #: per node: dead_session_pushes and push_failed during the run
    push_errors: dict[str, dict[str, int]] = field(default_factory=dict)
    #: bc_deliveries counted by the nodes, and the most that could have been sent
    delivered: int = 0
    upper: int = 0
    figure: Figure | None = None


def check_fanout(h: FanoutHistory) -> list[Check]:
    v = h.verdict
    return [
        named(
            "every publish succeeds (Redis and the publish op)",
            h.published_ok == h.published and h.published > 0,
            expected=h.published,
            observed=h.published_ok,
        ),
        named(
            "every subscribe and unsubscribe is answered ok",
            not h.failures,
            timing=bool(h.failures) and h.timeouts == len(h.failures),  # only answers that came too late
            expected="no failure",
            observed=h.failures[:10] or "none",
        ),
        named(
            "each session receives each message of its channels exactly once (no duplicate)",
            not v.duplicates,
            expected=0,
            observed=_first(v.duplicates),
        ),
        named(
            "each session receives every message published while it was surely in the channel",
            not v.missing and v.required > 0,
            expected=f"{v.required} required deliveries",
            observed=v.missing[:10] or f"all {v.required}",
        ),
        named(
            "messages of one publisher arrive in the order published",
            not v.out_of_order,
            expected=0,
            observed=_first(v.out_of_order),
        ),
        named(
            "a message reaches only sessions in its channel (never before the join, never after the leave)",
            not v.forbidden,
            expected=0,
            observed=_first(v.forbidden),
        ),
        named(
            "sessions mid-handshake receive nothing",
            not h.stuck_bytes,
            expected="0 bytes on every half-open handshake",
            observed=h.stuck_bytes[:5] or "0 bytes",
        ),
        named(
            "no push to a closing, closed or handshaking session is attempted (no push error counted)",
            all(n == 0 for d in h.push_errors.values() for n in d.values()),
            expected=0,
            observed=h.push_errors,
        ),
        named(
            "stats agree with the histories (clients received <= deliveries counted <= what could have been sent)",
            v.received <= h.delivered <= h.upper,
            expected=f"{v.received}..{h.upper}",
            observed=h.delivered,
        ),
    ]


# -- broadcast_outage --------------------------------------------------------------------------------


@dataclass
class OutageHistory:
    """What ``broadcast_outage`` observed around a broker restart."""

    mode: str
    verdict: Violations
    down_at: float
    up_at: float
    #: the outage windows the target reported (start, end)
    windows: list[tuple[float, float]] = field(default_factory=list)
    published_ok: int = 0
    published_after_restart: int = 0
    #: messages published after the restart that a client is missing
    lost_after_restart: list[Any] = field(default_factory=list)
    clients: int = 0
    figure: Figure | None = None


def check_outage(h: OutageHistory) -> list[Check]:
    v = h.verdict
    covering = [w for w in h.windows if w[0] <= h.up_at and h.down_at <= w[1]]
    what = "published outside the reported window" if h.mode == "pubsub" else "published before, during and after the outage"
    checks = [
        named(
            "the target reports the outage window in /v1/stats broadcast.outages",
            bool(covering),
            expected=f"a window overlapping the restart {h.down_at:.3f}..{h.up_at:.3f}",
            observed=h.windows or "none",
        ),
        named(
            "the subscriber came back: messages published after the restart arrive",
            h.published_after_restart > 0 and not h.lost_after_restart,
            expected="every message published after the restart (and outside reported windows) delivered",
            observed={"published after": h.published_after_restart, "missing of them": h.lost_after_restart[:5]},
        ),
        named(
            f"every message {what} arrives exactly once, in order",
            not v.missing and not v.duplicates and not v.out_of_order and not v.forbidden,
            expected=0,
            observed={
                "missing": v.missing[:5],
                "duplicates": v.duplicates[:5],
                "out_of_order": v.out_of_order[:5],
                "forbidden": v.forbidden[:5],
            },
        ),
    ]
    if h.mode == "durable":
        checks.append(
            named(
                "durable mode loses nothing to the outage (no message excused)",
                v.excused == 0 and v.required >= h.published_ok * h.clients * 0.9,
                expected="every message published is required and delivered",
                observed=v.summary(),
            )
        )
    return checks


# -- broadcast_history --------------------------------------------------------------------------------


@dataclass
class HistoryHistory:
    """What ``broadcast_history`` observed: a late subscriber with ``since``, a live one, fresh channels."""

    reply: dict[str, Any]
    since_seq: int
    last_seq: int
    #: the late subscriber's sequence numbers and stream ids, as received
    seqs: list[int] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    #: the publisher's stream ids of the messages after ``since``
    published_ids: list[str | None] = field(default_factory=list)
    fresh_channels: int = 8
    fresh_missing: list[dict[str, Any]] = field(default_factory=list)
    live: Violations = field(default_factory=Violations)
    figure: Figure | None = None


def check_history(h: HistoryHistory) -> list[Check]:
    expected = list(range(h.since_seq + 1, h.last_seq + 1))
    return [
        named(
            "subscribe since an id is answered with the history it served",
            h.reply.get("ok") is True and h.reply.get("history", 0) >= 30 and h.reply.get("complete") is True,
            expected=">= 30 messages of history, complete",
            observed=h.reply,
        ),
        named(
            "history then live: every message after the id exactly once, in order, no gap",
            h.seqs == expected and bool(expected),
            expected=f"seq {h.since_seq + 1}..{h.last_seq}",
            observed={"count": len(h.seqs), "missing": sorted(set(expected) - set(h.seqs))[:10],
                      "repeated": len(h.seqs) - len(set(h.seqs))},
        ),
        named(
            "every broadcast in durable mode carries its stream id, increasing",
            all(h.ids) and h.ids == h.published_ids,
            expected="the publisher's stream ids",
            observed=h.ids[:3],
        ),
        named(
            "a message added right after the subscribe reply to a channel new to the worker arrives",
            not h.fresh_missing,
            expected=f"{h.fresh_channels} channels never used before: the message added after each reply arrives",
            observed=h.fresh_missing or "all arrived",
        ),
        named(
            "a plain subscribe (no since) gets nothing from before it and everything after it",
            not h.live.missing and not h.live.forbidden and not h.live.duplicates,
            expected=0,
            observed=h.live.summary(),
        ),
    ]


# -- broadcast_slow_consumer --------------------------------------------------------------------------


@dataclass
class SlowHistory:
    """What ``broadcast_slow_consumer`` observed: one client stops reading while others read."""

    sent: int
    #: the slow client's close code, whether it ended, how much it got
    slow_close_code: int | None = None
    slow_closed: bool = False
    slow_received: int = 0
    #: per reader: its sequence numbers as received
    readers: dict[str, list[int]] = field(default_factory=dict)
    #: messages whose publish overlapped a reported outage (pub/sub may lose them)
    excused: set[int] = field(default_factory=set)
    slow_closed_counted: int = 0
    figure: Figure | None = None


def check_slow(h: SlowHistory) -> list[Check]:
    problems = {}
    for name, got in h.readers.items():
        have = set(got)
        missing = [n for n in range(1, h.sent + 1) if n not in have and n not in h.excused]
        if got != sorted(have) or missing:
            problems[name] = {"missing": missing[:10], "in_order_once": got == sorted(have)}
    return [
        named(
            f"a client that stops reading is closed with {SLOW_CODE} (slow consumer)",
            h.slow_close_code == SLOW_CODE,
            expected=SLOW_CODE,
            observed={"close_code": h.slow_close_code, "closed": h.slow_closed, "received": h.slow_received},
        ),
        named(
            "the clients that keep reading get every message, once and in order (outside reported outages)",
            not problems and bool(h.readers) and all(h.readers.values()),
            expected=f"{h.sent} messages each, less those whose publish overlaps a reported outage ({len(h.excused)})",
            observed=problems or [len(g) for g in h.readers.values()],
        ),
        named(
            "the stats count the slow consumer closed (bc_slow_closed)",
            h.slow_closed_counted == 1,
            expected=1,
            observed=h.slow_closed_counted,
        ),
    ]


# -- broadcast_errors --------------------------------------------------------------------------------


@dataclass
class ErrorsHistory:
    """What ``broadcast_errors`` observed: each bad request's answer, then a good one."""

    #: per case: the code expected, and the answer's (ok, code, name)
    expected: dict[str, int] = field(default_factory=dict)
    seen: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)
    still: dict[str, Any] = field(default_factory=dict)


def check_errors(h: ErrorsHistory) -> list[Check]:
    wrong = {w: s for w, s in h.seen.items() if s[0] is not False or s[1] != h.expected.get(w) or not s[2]}
    return [
        named(
            "each bad broadcast request is refused with its code and name",
            not wrong and bool(h.seen),
            expected=h.expected,
            observed=wrong or "all as expected",
        ),
        named("the session goes on after bad requests", h.still.get("ok") is True, expected=True, observed=h.still),
    ]


# -- figures ---------------------------------------------------------------------------------------

MISSING_CHECK = "each session receives every message published while it was surely in the channel"
DUPLICATE_CHECK = "each session receives each message of its channels exactly once (no duplicate)"


def latency_figure(
    clients: list[Any], published: list[Published], verdict: Violations, *,
    windows: Sequence[tuple[float, float, str]] = (), title: str = "",
) -> Figure | None:
    """Publish-to-receive latency of every delivery over time (by when it was published), per node;
    outage or fault windows shaded; messages a session missed, and duplicates, marked at the bottom."""
    by_key = {(p.publisher, p.seq): p for p in published}
    if not by_key:
        return None
    origin = min(p.start for p in published)
    series: dict[str, Series] = {}
    for c in clients:
        label = (f"node {c.node}" if len(c.node) == 1 else c.node) if c.node else "deliveries"
        s = series.setdefault(label, Series(label))
        for t, _channel, pub, seq, _id in c.received:
            p = by_key.get((pub, seq))
            if p is not None:
                s.points.append((rel(p.start, origin), round((t - p.start) * 1000, 2)))
    every = sorted(y for s in series.values() for _, y in s.points)
    p99 = every[min(len(every) - 1, int(0.99 * len(every)))] if every else None
    fig = Figure("latency", title or "Publish-to-receive latency of each delivery, by when it was published", "series",
                 headline=f"p99 {p99:.0f} ms" if p99 is not None else "",
                 y_label="latency (ms)", origin=origin, series=list(series.values()), log_y=True,
                 windows=[Window(rel(a, origin), rel(b, origin), label) for a, b, label in windows])
    lost = Series("missed by a member (at 0)", [(round(m["published"][0] - origin, 3), 0.0) for m in verdict.missing])
    if lost.points:
        fig.series.append(lost)
        first = verdict.missing[0]
        fig.marks.append(Mark(round(first["published"][0] - origin, 3), f"{len(verdict.missing)} missed", y=0.0,
                              check=MISSING_CHECK))
    dup_at = [rel(p.start, origin) for d in verdict.duplicates if (p := by_key.get((d["publisher"], d["seq"])))]
    if dup_at:
        fig.series.append(Series("received twice (at 0)", [(t, 0.0) for t in dup_at]))
        fig.marks.append(Mark(dup_at[0], f"{len(verdict.duplicates)} duplicates", y=0.0, check=DUPLICATE_CHECK))
    return fig


SINCE_CHECK = "history then live: every message after the id exactly once, in order, no gap"


def sequence_figure(clients: list[Any], published: list[Published], since_seq: int) -> Figure | None:
    """The sequence number of each message over time: as published, and as each client received it
    (the late subscriber first gets the history, then joins the live stream); its first gap marked."""
    if not published:
        return None
    origin = min(p.start for p in published)
    fig = Figure("sequence", "Sequence numbers over time: published, and received by each client", "series",
                 y_label="sequence number", origin=origin,
                 series=[Series("published", [(rel(p.start, origin), float(p.seq)) for p in published], "line")])
    for c in clients:
        fig.series.append(Series(f"received by {c.name}", [(rel(r[0], origin), float(r[3])) for r in c.received]))
    late = clients[0] if clients else None
    if late is not None:
        seqs = [r[3] for r in late.received]
        expected = since_seq + 1
        for (t, *_rest), seq in zip(late.received, seqs, strict=True):
            if seq != expected:
                fig.marks.append(Mark(rel(t, origin), f"{late.name}: {seq} where {expected} was due", y=float(seq),
                                      check=SINCE_CHECK))
                break
            expected += 1
    return fig


def errors_figure(h: ErrorsHistory) -> Figure | None:
    """Each bad broadcast request: refused with its code and name, or not (what came back)."""
    answers = []
    for what, (ok, code, name) in h.seen.items():
        good = ok is False and code == h.expected.get(what) and bool(name)
        answers.append(Answer(what, good, f"ok={ok} code={code} (want {h.expected.get(what)})",
                              "each bad broadcast request is refused with its code and name"))
    return answers_figure("refusals", "Each bad broadcast request: refused with its code and name?", answers)
