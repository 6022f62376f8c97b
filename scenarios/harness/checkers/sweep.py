"""The checks of ``task_sweep`` and ``task_sweep_handshaking`` (scenarios/test_task_sweep.py; contract 4.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark, Window, rel
from ..spec import Leftovers, check_leftovers, named

SWEPT_CODE = 4001


@dataclass
class SweptClient:
    """One client of ``task_sweep``: who it was and what it got."""

    name: str
    group: str  # "keep" (not matched by the rule), "doomed" (matched), "churn" (matched, leaves on its own)
    session: int
    worker: int | None
    opened_at: float
    closed_at: float | None  # from when the server may count it closing: the client's close frame or RST
    close_frame: tuple[int, str] | None = None
    kinds: list[str] = field(default_factory=list)  # the "ev" of each event it received, in order
    tick_seqs: list[int] = field(default_factory=list)  # the sequence numbers of its own ticks
    tail: Any = None


@dataclass
class SweepHistory:
    """What ``task_sweep`` observed."""

    workers_used: list[int] = field(default_factory=list)
    workers_running: int = 0
    clients: list[SweptClient] = field(default_factory=list)
    #: the sweep reports from the rule's start on (``GET /v1/sweep``)
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: untouched clients that were closed or got a notice; those that stopped getting ticks
    disturbed: list[dict[str, Any]] = field(default_factory=list)
    starved: list[str] = field(default_factory=list)
    sweep_closes_counted: int = 0
    leftovers: Leftovers = field(default_factory=Leftovers)


def closed_by_sweep(reports: list[dict[str, Any]]) -> dict[int, float]:
    """session -> when the sweep that closed it started (the server closed it then or after)."""
    out: dict[int, float] = {}
    for rep in sorted(reports, key=lambda r: r["started"]):
        for sid in rep["closed"]:
            out.setdefault(sid, rep["started"])
    return out


def live_through(client: SweptClient, rep: dict[str, Any], closed_by: dict[int, float]) -> bool:
    """Whether the session was open from before the sweep to after it. The client's view of its end
    comes late when the harness is busy (a close frame read after the next sweep began): a session
    that an earlier sweep closed is not live for a later one, whatever the client saw when."""
    if client.session in closed_by and closed_by[client.session] < rep["started"]:
        return False
    return client.opened_at < rep["started"] and (client.closed_at is None or client.closed_at > rep["ended"])


def check(h: SweepHistory) -> list[Check]:
    by_session = {c.session: c for c in h.clients}
    closed_by = closed_by_sweep(h.reports)
    missed, bad_missing, errors = [], [], []
    for rep in h.reports:
        seen = set(rep["seen"])
        for sid, client in by_session.items():
            if live_through(client, rep, closed_by) and sid not in seen:
                missed.append({"sweep": rep["sweep"], "session": sid, "client": client.name, "worker": client.worker})
        for sid in rep["info_missing"]:
            found = by_session.get(sid)
            if found is not None and (found.closed_at is None or found.closed_at > rep["ended"]):
                bad_missing.append({"sweep": rep["sweep"], "session": sid, "client": found.name})
        errors += [{"sweep": rep["sweep"], "error": e} for e in rep["errors"]]
    doomed = [c for c in h.clients if c.group == "doomed"]
    wrong_close, wrong_order = [], []
    for c in doomed:
        if c.close_frame is None or c.close_frame[0] != SWEPT_CODE:
            wrong_close.append({"client": c.name, "session": c.session, "close_frame": c.close_frame, "tail": c.tail})
            continue
        notices = c.kinds.count("notice")
        if not (notices == 1 and c.kinds[-1] == "notice" and c.tick_seqs == list(range(1, len(c.tick_seqs) + 1))):
            wrong_order.append({"client": c.name, "notices": notices, "last": c.kinds[-3:], "ticks": c.tick_seqs[-5:], "tail": c.tail})
    closed_by_sweeps = sum(len(r["closed"]) for r in h.reports)
    want_workers = min(2, h.workers_running)
    return [
        named(
            "clients are spread over several workers (if the target runs several)",
            len(h.workers_used) >= want_workers,
            expected=f">= {want_workers} workers ({h.workers_running} running)",
            observed=h.workers_used,
        ),
        named("sweeps ran", len(h.reports) >= 2, expected=">= 2 sweep reports", observed=len(h.reports)),
        named(
            "each sweep saw every session that was live throughout it, on every worker",
            not missed,
            expected="no live session missed",
            observed=f"{len(missed)} missed",
            missed=missed,
        ),
        named(
            "get_client_info failed only for sessions that were closing",
            not bad_missing,
            expected="info for every live session",
            observed=bad_missing or "none failed for a live session",
        ),
        named("sweeps reported no error while sessions closed under them", not errors, expected=[], observed=errors),
        named(
            f"every swept client got a close frame {SWEPT_CODE}",
            not wrong_close and bool(doomed),
            expected=f"close frame {SWEPT_CODE} for {len(doomed)} clients",
            observed=f"{len(wrong_close)} without it",
            clients=wrong_close,
        ),
        named(
            "every swept client got all its ticks, then the notice last, then the close frame",
            not wrong_order,
            expected="ticks 1..k without gap, one notice, nothing after it",
            observed=f"{len(wrong_order)} clients out of order",
            clients=wrong_order,
        ),
        named(
            "clients the rule does not match stay open, get no notice, keep getting ticks",
            not h.disturbed and not h.starved,
            expected="untouched",
            observed={"disturbed": h.disturbed, "starved": h.starved},
        ),
        named(
            "stats count the sweep's closes",
            h.sweep_closes_counted == closed_by_sweeps,
            expected=closed_by_sweeps,
            observed=h.sweep_closes_counted,
        ),
        *check_leftovers(h.leftovers),
    ]


@dataclass
class HandshakingHistory:
    """What ``task_sweep_handshaking`` observed."""

    half_open: int
    #: sessions listed as connecting before the rule, and still after the sweeps
    listed: set[int] = field(default_factory=set)
    still: set[int] = field(default_factory=set)
    reports: list[dict[str, Any]] = field(default_factory=list)
    leftovers: Leftovers = field(default_factory=Leftovers)


def check_handshaking(h: HandshakingHistory) -> list[Check]:
    watched = h.listed & h.still  # mid-handshake from before the rule to after the sweeps
    unseen = [
        {"sweep": r["sweep"], "sessions": sorted(watched - set(r["seen"]))} for r in h.reports if watched - set(r["seen"])
    ]
    return [
        named(
            "sessions whose handshake is not complete exist (listed as connecting)",
            len(h.listed) >= h.half_open,
            expected=f">= {h.half_open} sessions in state connecting",
            observed=sorted(h.listed),
        ),
        named("sweeps ran", len(h.reports) >= 2, expected=">= 2 sweep reports", observed=len(h.reports)),
        named(
            "each sweep saw the sessions whose handshake is not complete",
            bool(watched) and bool(h.reports) and not unseen,
            expected=f"the {h.half_open} connecting sessions in every report's 'seen'",
            observed=unseen or (f"all {len(watched)} seen by {len(h.reports)} sweeps" if watched else "none listed"),
        ),
        *check_leftovers(h.leftovers),
    ]


# -- figures ---------------------------------------------------------------------------------------

MISSED_CHECK = "each sweep saw every session that was live throughout it, on every worker"
CLOSE_CHECK = f"every swept client got a close frame {SWEPT_CODE}"
UNTOUCHED_CHECK = "clients the rule does not match stay open, get no notice, keep getting ticks"
MAX_MARKS = 12


def _sweep_windows(reports: list[dict[str, Any]], origin: float) -> list[Window]:
    return [Window(rel(r["started"], origin), rel(r["ended"], origin), "sweeps" if i == 0 else "")
            for i, r in enumerate(reports) if r.get("started") and r.get("ended")]


def figure(h: SweepHistory) -> Figure | None:
    """Each client's life (a bar by group: kept, swept, leaving on its own) under the sweeps (shaded);
    sessions a sweep missed, swept clients without the close frame and disturbed ones marked."""
    if not h.clients:
        return None
    origin = min(c.opened_at for c in h.clients)
    end = max([c.closed_at or 0.0 for c in h.clients] + [r.get("ended", 0.0) for r in h.reports])
    fig = Figure("sweep", "Each client's session (bar, by what the rule does to it) under the sweeps (shaded)", "lanes",
                 y_label="client", origin=origin, windows=_sweep_windows(h.reports, origin))
    by_session = {c.session: c for c in h.clients}
    for c in h.clients:
        lane = Lane(c.name, bars=[(rel(c.opened_at, origin), rel(c.closed_at or end, origin), c.group)])
        if c.closed_at:
            lane.points.append((rel(c.closed_at, origin), f"closed {c.close_frame[0] if c.close_frame else '(no frame)'}"))
        fig.lanes.append(lane)
        if c.group == "doomed" and (c.close_frame is None or c.close_frame[0] != SWEPT_CODE):
            fig.marks.append(Mark(rel(c.closed_at or end, origin), "no 4001", c.name, check=CLOSE_CHECK))
    missed = 0
    closed_by = closed_by_sweep(h.reports)
    for rep in h.reports:
        seen = set(rep["seen"])
        for sid, c in by_session.items():
            if live_through(c, rep, closed_by) and sid not in seen and missed < MAX_MARKS:
                missed += 1
                fig.marks.append(Mark(rel(rep["started"], origin), f"missed by sweep {rep['sweep']}", c.name, check=MISSED_CHECK))
    for d in h.disturbed[:MAX_MARKS]:
        who = next((x for x in h.clients if x.name == d.get("client")), None)
        if who is not None:
            fig.marks.append(Mark(rel(who.closed_at or end, origin), "disturbed", who.name, check=UNTOUCHED_CHECK))
    return fig


HANDSHAKE_CHECK = "each sweep saw the sessions whose handshake is not complete"


def handshaking_figure(h: HandshakingHistory) -> Figure | None:
    """Each session held mid-handshake: a dot per sweep, seen or missed by it."""
    timed = [r for r in h.reports if r.get("started")]
    if not timed or not h.listed:
        return None
    origin = min(r["started"] for r in timed)
    fig = Figure("handshaking", "Each session held in its handshake: seen or missed by each sweep (shaded)", "lanes",
                 y_label="session", origin=origin, windows=_sweep_windows(timed, origin))
    for sid in sorted(h.listed):
        lane = Lane(f"s{sid}")
        for r in timed:
            seen = sid in set(r["seen"])
            lane.points.append((rel(r["started"], origin), "seen" if seen else "missed"))
            if not seen and sid in h.still and len(fig.marks) < MAX_MARKS:
                fig.marks.append(Mark(rel(r["started"], origin), "missed", lane.name, check=HANDSHAKE_CHECK))
        fig.lanes.append(lane)
    return fig
