"""The checks of the fault scenarios (scenarios/test_faults.py; contract section 13).

Pure: a history in, named checks out.

``fault_worker_kill`` (13.1). One worker is killed with SIGKILL while every session ticks.
Each session of the killed worker (a *victim*) must end in one of two legitimate outcomes:

* **kept**: its connection stays open and the echoes sent after the kill are answered (a
  target whose connections live in another process, like Swoole's PROCESS mode);
* **closed**: the client sees its connection end within ``VICTIM_BOUND_S`` of the kill, and
  the session is gone from ``/v1/sessions`` within the same bound (no ghost).

Anything in between (open but silent, closed but still listed) fails. The other sessions must
not notice: no tick gap over ``BYSTANDER_GAP_S``, every echo answered. A replacement worker of
the same id serves new connections within ``REPLACEMENT_BOUND_S``; no other process exits; no
standard counter decreases.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark, Window
from ..spec import Leftovers, check_leftovers, named

#: Longest tick gap of a session on another worker (ticks every 50 ms).
BYSTANDER_GAP_S = 2.0
#: A victim's connection ends (closed) or its echo is answered (kept) within this of the kill;
#: a closed victim is gone from /v1/sessions within it too.
VICTIM_BOUND_S = 5.0
#: A worker of the killed one's id, with a new pid, is listed within this of the kill.
REPLACEMENT_BOUND_S = 10.0
#: The counters contract 4.2 names; none may decrease.
STANDARD_COUNTERS = (
    "connections_accepted", "sessions_opened", "sessions_closed", "messages_received", "pushes", "push_failed",
    "dead_session_pushes", "closes_requested", "heartbeat_closes", "sweep_closes", "tasks_dispatched",
    "tasks_done", "tasks_finished", "timers_created", "timers_cleared",
)


class Outcome(enum.Enum):
    """What became of a session of the killed worker."""

    KEPT = "kept"  # open, and its echoes after the kill answered
    CLOSED = "closed"  # its connection ended in time and it left /v1/sessions in time
    GHOST = "ghost"  # its connection ended, but the target still lists it past the bound
    SILENT = "silent"  # still open, but an echo after the kill got no answer in time
    DROPPED_LATE = "dropped late"  # its echo was answered, then its connection ended anyway
    CLOSED_LATE = "closed late"  # its connection ended, but after the bound


@dataclass
class Victim:
    """One session of the killed worker, as the client and the admin API saw it after the kill."""

    session: int
    closed_after_s: float | None = None  # when the client saw its connection end (from the kill)
    close_code: int | None = None  # the close frame's code, None if the TCP connection just ended
    echo_after_s: float | None = None  # when the first echo after the kill was answered
    echo_again: bool | None = None  # a second echo, at the end, was answered (kept sessions)
    unlisted_after_s: float | None = None  # when /v1/sessions stopped listing it (from the kill)

    def outcome(self) -> Outcome:
        if self.closed_after_s is None:
            return Outcome.KEPT if self.echo_after_s is not None and self.echo_again else Outcome.SILENT
        if self.echo_after_s is not None:
            return Outcome.DROPPED_LATE
        if self.closed_after_s > VICTIM_BOUND_S:
            return Outcome.CLOSED_LATE
        if self.unlisted_after_s is None or self.unlisted_after_s > VICTIM_BOUND_S:
            return Outcome.GHOST
        return Outcome.CLOSED


@dataclass
class Bystander:
    """A session of another worker: its ticks around the kill, and its echoes."""

    session: int
    worker: int
    ticks: int = 0
    max_gap_s: float = 0.0
    echoes: int = 0
    echo_failures: list[str] = field(default_factory=list)


@dataclass
class WorkerKillHistory:
    workers: int = 0
    victim_worker: int | None = None
    victim_pid: int | None = None
    killed_at: float | None = None  # Unix seconds
    victims: list[Victim] = field(default_factory=list)
    bystanders: list[Bystander] = field(default_factory=list)
    replacement_pid: int | None = None
    replacement_after_s: float | None = None
    new_clients: int = 0
    new_served: int = 0  # new connections whose echo was answered
    new_on_replacement: int = 0  # of those, owned by the replacement (record's worker == its id)
    new_failures: list[str] = field(default_factory=list)
    others_before: list[Any] = field(default_factory=list)  # (name, pid) of every other process
    others_after: list[Any] = field(default_factory=list)
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)


def judge_victims(victims: list[Victim]) -> dict[str, list[int]]:
    """Session ids by outcome."""
    out: dict[str, list[int]] = {}
    for v in victims:
        out.setdefault(v.outcome().value, []).append(v.session)
    return out


def decreased(before: dict[str, int], after: dict[str, int]) -> dict[str, list[int | None]]:
    """Standard counters that went down (or vanished), with [before, after]."""
    return {
        name: [before[name], after.get(name)]
        for name in STANDARD_COUNTERS
        if name in before and (after.get(name) is None or after[name] < before[name])
    }


def check_bystanders(name: str, bystanders: list[Bystander], *, gap_bound: bool = True) -> Check:
    """Every watched session ticked, none with a gap over BYSTANDER_GAP_S (unless ``gap_bound`` is
    off: another check bounds it), and every echo answered."""
    gaps = {b.session: round(b.max_gap_s, 3) for b in bystanders}
    over = {s: g for s, g in gaps.items() if g > BYSTANDER_GAP_S}
    unanswered = {b.session: b.echo_failures[:3] for b in bystanders if b.echo_failures}
    return named(
        name,
        timing=True,
        passed=bool(bystanders) and all(b.ticks for b in bystanders) and (not gap_bound or not over) and not unanswered,
        expected=f"tick gaps <= {BYSTANDER_GAP_S} s" + ("" if gap_bound else " (with a reload: its own bound)")
        + ", echoes answered",
        observed={"longest_gap_s": max(gaps.values(), default=None), "over": over, "unanswered": unanswered},
    )


def check_others(before: list[Any], after: list[Any]) -> Check:
    """The processes the fault was not about kept their pids."""
    return named("no other process exits", bool(before) and before == after, expected=before, observed=after)


def check_counters(name: str, before: dict[str, int], after: dict[str, int]) -> Check:
    went_down = decreased(before, after)
    return named(
        name,
        bool(before) and not went_down,
        expected="after >= before for every standard counter",
        observed=went_down or "none decreased",
    )


def check_worker_kill(h: WorkerKillHistory) -> list[Check]:
    outcomes = judge_victims(h.victims)
    bad = {k: v for k, v in outcomes.items() if k not in (Outcome.KEPT.value, Outcome.CLOSED.value)}
    return [
        named(
            "the killed worker had sessions, and other workers had sessions too",
            bool(h.victims) and bool(h.bystanders) and h.killed_at is not None,
            expected=">= 1 of each",
            observed={"victims": len(h.victims), "others": len(h.bystanders), "killed": h.victim_pid},
        ),
        named(
            "each session of the killed worker is kept (still answered) or closed and gone within 5 s",
            bool(h.victims) and not bad,
            timing=True,
            expected="kept or closed",
            observed=outcomes,
            victims=[{"session": v.session, "outcome": v.outcome().value, "closed_after_s": v.closed_after_s,
                      "close_code": v.close_code, "echo_after_s": v.echo_after_s,
                      "unlisted_after_s": v.unlisted_after_s} for v in h.victims[:8]],
        ),
        check_bystanders("sessions on the other workers see no gap over 2 s and every echo answered", h.bystanders),
        named(
            "a replacement worker of the same id is listed within 10 s and serves new connections",
            h.replacement_pid is not None
            and h.replacement_pid != h.victim_pid
            and h.replacement_after_s is not None
            and h.replacement_after_s <= REPLACEMENT_BOUND_S
            and h.new_clients > 0
            and h.new_served == h.new_clients
            and h.new_on_replacement > 0,
            timing=True,
            expected="a new pid for the id; every new connection answered, at least one owned by the replacement",
            observed={"pid": h.replacement_pid, "after_s": h.replacement_after_s, "new": h.new_clients,
                      "served": h.new_served, "on_replacement": h.new_on_replacement,
                      "failures": h.new_failures[:3]},
        ),
        check_others(h.others_before, h.others_after),
        check_counters("no standard counter decreases (what the killed worker counted still counts)",
                       h.counters_before, h.counters_after),
        *check_leftovers(h.leftovers),
    ]


# -- fault_worker_stall (13.2) ------------------------------------------------------------------

#: New connections are made this long into the stall (the target had time to notice it).
STALL_NOTICE_S = 2.0
#: Each of them is served (handshake and echo) within this.
NEW_BOUND_S = 2.0
#: An admin answer during the stall comes within this.
ADMIN_BOUND_S = 2.0
#: A reload during the stall is done within max_wait_ms and this (its old processes must go by then).
RELOAD_SLACK_S = 3.0


@dataclass
class WorkerStallHistory:
    """A worker stopped (SIGSTOP) for ``stall_s``; victims' times are measured from its resume (SIGCONT)."""

    workers: int = 0
    victim_worker: int | None = None
    victim_pid: int | None = None
    stall_s: float = 0.0
    victims: list[Victim] = field(default_factory=list)
    bystanders: list[Bystander] = field(default_factory=list)
    admin: list[tuple[str, int, float]] = field(default_factory=list)  # (route, status, seconds) during the stall
    new_clients: int = 0
    new_served: int = 0
    new_failures: list[str] = field(default_factory=list)
    others_before: list[Any] = field(default_factory=list)
    others_after: list[Any] = field(default_factory=list)
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)
    #: With a reload during the stall (fault_worker_stall_reload): its record, how long the
    #: request took, max_wait_ms, and the sessions of running workers that the reload closed.
    reload: dict[str, Any] | None = None
    reload_s: float | None = None
    max_wait_ms: int = 0
    bystanders_closed: list[int] = field(default_factory=list)


def check_stall_reload(h: WorkerStallHistory) -> list[Check]:
    """What a reload during the stall must do: finish, retire the running workers' sessions to the
    new generation (none closed, ticks paused at most max_wait_ms), and kill no more than the stopped one."""
    record = h.reload or {}
    bound_s = h.max_wait_ms / 1000.0 + RELOAD_SLACK_S
    gaps = {b.session: round(b.max_gap_s, 3) for b in h.bystanders}
    over = {s: g for s, g in gaps.items() if g > h.max_wait_ms / 1000.0}
    return [
        named(
            "a reload during the stall is done within max_wait_ms (and a little)",
            record.get("state") == "done" and h.reload_s is not None and h.reload_s <= bound_s,
            timing=True,
            expected=f"done within {bound_s} s",
            observed={"state": record.get("state"), "took_s": h.reload_s, "duration_ms": record.get("duration_ms")},
        ),
        named(
            "no session of a running worker is closed by the reload, and its ticks pause at most max_wait_ms",
            bool(h.bystanders) and not h.bystanders_closed and not over,
            timing=True,
            expected=f"none closed, tick gaps <= {h.max_wait_ms} ms",
            observed={"closed": h.bystanders_closed, "longest_gap_s": max(gaps.values(), default=None), "over": over},
        ),
        named(
            "the reload kills no process but the stopped one",
            int(record.get("forced_kills", 0) or 0) <= 1,
            expected="forced_kills <= 1",
            observed={"forced_kills": record.get("forced_kills"), "sessions_lost": record.get("sessions_lost")},
        ),
    ]


def check_worker_stall(h: WorkerStallHistory) -> list[Check]:
    outcomes = judge_victims(h.victims)
    bad = {k: v for k, v in outcomes.items() if k not in (Outcome.KEPT.value, Outcome.CLOSED.value)}
    slow_admin = [a for a in h.admin if a[1] != 200 or a[2] > ADMIN_BOUND_S]
    return [
        named(
            "the stalled worker had sessions, other workers had sessions too, and the stall lasted",
            bool(h.victims) and bool(h.bystanders) and h.stall_s >= STALL_NOTICE_S + 0.5,
            expected=f">= 1 of each, a stall of >= {STALL_NOTICE_S + 0.5} s",
            observed={"victims": len(h.victims), "others": len(h.bystanders), "stall_s": round(h.stall_s, 3)},
        ),
        named(
            "each session of the stalled worker is kept (answered once it runs again) or closed and gone",
            bool(h.victims) and not bad,
            timing=True,
            expected="kept or closed, within 5 s of the resume",
            observed=outcomes,
            victims=[{"session": v.session, "outcome": v.outcome().value, "echo_after_resume_s": v.echo_after_s,
                      "closed_after_resume_s": v.closed_after_s, "unlisted_after_resume_s": v.unlisted_after_s}
                     for v in h.victims[:8]],
        ),
        check_bystanders("sessions on the other workers see no gap over 2 s and every echo answered", h.bystanders,
                         gap_bound=h.reload is None),
        named(
            "the admin API answers within 2 s during the stall",
            bool(h.admin) and not slow_admin,
            timing=True,
            expected=f"200 within {ADMIN_BOUND_S} s",
            observed={"answers": len(h.admin), "slowest_s": max((a[2] for a in h.admin), default=None),
                      "failed": slow_admin[:5]},
        ),
        named(
            "new connections made during the stall are served (none is sent to the stalled worker)",
            h.new_clients > 0 and h.new_served == h.new_clients,
            timing=True,
            expected=f"{h.new_clients} served within {NEW_BOUND_S} s each",
            observed={"served": h.new_served, "failures": h.new_failures[:3]},
        ),
        check_others(h.others_before, h.others_after),
        check_counters("no standard counter decreases", h.counters_before, h.counters_after),
        *(check_stall_reload(h) if h.reload is not None else []),
        *check_leftovers(h.leftovers),
    ]


# -- fault_task_worker_kill (13.4) -----------------------------------------------------------------

#: Every task accepted before the kill has its outcome (task_result or task_failed) within this of the kill.
TASK_OUTCOME_BOUND_S = 5.0
TASK_LOST = 2004


@dataclass
class TaskFate:
    """One task accepted before the kill: what came for it (kind, error code, seconds after the kill)."""

    request: Any
    sleep_ms: int
    outcomes: list[tuple[str, int | None, float]] = field(default_factory=list)


@dataclass
class TaskKillHistory:
    task_workers: int = 0
    victim_pid: int | None = None
    in_flight_at_kill: bool = False  # the long task had no outcome yet when its task worker was killed
    tasks: list[TaskFate] = field(default_factory=list)
    replacement_pid: int | None = None
    replacement_after_s: float | None = None
    after: list[str] = field(default_factory=list)  # outcomes of tasks submitted once the replacement runs
    bystanders: list[Bystander] = field(default_factory=list)
    others_before: list[Any] = field(default_factory=list)
    others_after: list[Any] = field(default_factory=list)
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    leftovers: Leftovers = field(default_factory=Leftovers)
    facts: dict[str, Any] = field(default_factory=dict)


def judge_tasks_after_kill(tasks: list[TaskFate]) -> dict[str, list[Any]]:
    """Problems by kind: no outcome, several, late, a failure with another code than TASK_LOST."""
    problems: dict[str, list[Any]] = {}
    for t in tasks:
        if not t.outcomes:
            problems.setdefault("no outcome", []).append(t.request)
        elif len(t.outcomes) > 1:
            problems.setdefault("more than one outcome", []).append([t.request, [o[0] for o in t.outcomes]])
        else:
            kind, code, after = t.outcomes[0]
            if after > TASK_OUTCOME_BOUND_S:
                problems.setdefault("late", []).append([t.request, after])
            if kind == "task_failed" and code != TASK_LOST:
                problems.setdefault("wrong code", []).append([t.request, code])
    return problems


def check_task_worker_kill(h: TaskKillHistory) -> list[Check]:
    problems = judge_tasks_after_kill(h.tasks)
    return [
        named(
            "a task was running when its task worker was killed, with more queued behind it",
            h.in_flight_at_kill and len(h.tasks) >= 2,
            expected="the long task without an outcome at the kill, >= 1 task queued",
            observed={"in_flight": h.in_flight_at_kill, "tasks": len(h.tasks)},
        ),
        named(
            "every task accepted before the kill gets exactly one task_result or task_failed (2004) within 5 s",
            bool(h.tasks) and not problems,
            timing=True,
            expected="one outcome each, task_failed with TASK_LOST",
            observed=problems or {"outcomes": [[t.request, t.outcomes[0][0]] for t in h.tasks]},
        ),
        named(
            "a replacement task worker of the same id runs new tasks",
            h.replacement_pid is not None
            and h.replacement_pid != h.victim_pid
            and h.replacement_after_s is not None
            and h.replacement_after_s <= REPLACEMENT_BOUND_S
            and bool(h.after)
            and all(a == "task_result" for a in h.after),
            timing=True,
            expected="a new pid within 10 s; new tasks answered with task_result",
            observed={"pid": h.replacement_pid, "after_s": h.replacement_after_s, "new_tasks": h.after},
        ),
        check_bystanders("sessions see no gap over 2 s and every echo answered", h.bystanders),
        check_others(h.others_before, h.others_after),
        check_counters("no standard counter decreases", h.counters_before, h.counters_after),
        *check_leftovers(h.leftovers),
    ]


# -- figures ---------------------------------------------------------------------------------------

VICTIM_CHECKS = {
    "kill": "each session of the killed worker is kept (still answered) or closed and gone within 5 s",
    "stop": "each session of the stalled worker is kept (answered once it runs again) or closed and gone",
}
BYSTANDER_CHECK = "sessions on the other workers see no gap over 2 s and every echo answered"


def fault_figure(timeline: dict[str, Any], outcomes: dict[str, str], victim_worker: int | None) -> Figure | None:
    """Each session's ticks around the fault (times from the fault's start), the fault window shaded,
    the stopped or killed worker's sessions marked with what became of them."""
    windows = timeline.get("windows") or []
    sessions = timeline.get("sessions") or {}
    if not windows or not sessions:
        return None
    w = windows[0]
    end = (w["end"] - w["start"]) if w.get("end") else 0.0
    fig = Figure(
        "fault", f"Each session's ticks around the {w['fault']} of {w['process']} (time 0), by the worker that owns it",
        "lanes", x_label="seconds from the fault", y_label="session",
        windows=[Window(0.0, end, f"{w['fault']} {w['process']}" + ("" if w.get("end") else " (no end: a kill)"))],
    )
    victims = [s for s, rec in sessions.items() if rec.get("worker") == victim_worker]
    worst = 0.0
    ordered = victims + [s for s in sessions if s not in victims]
    for sid in ordered:
        rec = sessions[sid]
        who = "stopped/killed worker" if sid in victims else f"worker {rec.get('worker')}"
        name = f"s{sid} ({'victim' if sid in victims else 'w' + str(rec.get('worker'))})"
        fig.lanes.append(Lane(name, [(t / 1000, who) for t in rec.get("ticks_ms", [])]))
        if rec.get("closed_ms") is not None:
            fig.marks.append(Mark(rec["closed_ms"] / 1000, "closed", name,
                                  check=VICTIM_CHECKS.get(w["fault"]) if sid in victims else BYSTANDER_CHECK))
        if sid in victims and outcomes.get(sid) not in (None, "kept", "closed"):
            last = (rec.get("ticks_ms") or [0])[-1] / 1000
            fig.marks.append(Mark(max(last, end), outcomes[sid], name, check=VICTIM_CHECKS.get(w["fault"])))
        ticks = rec.get("ticks_ms") or []
        gaps = [(b - a, b) for a, b in itertools.pairwise(ticks) if a >= -1000]
        if sid not in victims and gaps:
            gap, at = max(gaps)
            worst = max(worst, gap)
            if gap > BYSTANDER_GAP_S * 1000:
                fig.marks.append(Mark(at / 1000, f"gap {gap / 1000:.1f} s", name, check=BYSTANDER_CHECK))
    fig.headline = f"others' longest gap {worst:.0f} ms"
    return fig


TASK_CHECK = "every task accepted before the kill gets exactly one task_result or task_failed (2004) within 5 s"


def task_kill_figure(h: TaskKillHistory) -> Figure | None:
    """Each task accepted before the kill: what came for it, and when (from the kill at 0)."""
    if not h.tasks:
        return None
    fig = Figure("tasks", "Each task accepted before its task worker was killed (time 0): its outcomes", "lanes",
                 x_label="seconds from the kill", y_label="task",
                 windows=[Window(0.0, 0.0, "kill")], marks=[Mark(TASK_OUTCOME_BOUND_S, f"bound {TASK_OUTCOME_BOUND_S:g} s")])
    for t in h.tasks:
        name = f"task {t.request} ({t.sleep_ms} ms)"
        pts = [(s, f"{kind}" + (f" {code}" if code else "")) for kind, code, s in t.outcomes]
        fig.lanes.append(Lane(name, pts))
        if len(t.outcomes) != 1 or any(s > TASK_OUTCOME_BOUND_S for _, _, s in t.outcomes):
            at = t.outcomes[-1][2] if t.outcomes else TASK_OUTCOME_BOUND_S
            label = "no outcome" if not t.outcomes else f"{len(t.outcomes)} outcomes"
            fig.marks.append(Mark(at, label, name, check=TASK_CHECK))
    return fig
