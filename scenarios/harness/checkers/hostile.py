"""The checks of ``hostile_client`` (scenarios/test_hostile.py; contract section 12).

Pure: a :class:`HostileHistory` in, named checks out. The bounds are the contract's (12.2):
100 timers, 100 tasks outstanding, the manifest's ``output_bytes``. Task answers are judged in
counts, not order (a target may answer refusals before the acceptances it is still
completing): the first 100 requests find fewer than 100 outstanding, so at least 100 are
accepted; each acceptance past 100 needs a slot freed by a result, and a result is sent on the
same session before any reply that follows it, so at most 100 plus the results received before
the last reply are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, ticks_through_phases
from ..spec import Leftovers, check_leftovers, named

MAX_TIMERS = 100
MAX_TASKS = 100
LIMIT_REACHED = 4429
SLOW_CONSUMER = 4429
#: Memory a process may grow by while a client does not read: 2 x output_bytes + this.
RSS_SLACK = 48 << 20
#: Longest gap between two ticks of a bystander (ticks every 50 ms).
BYSTANDER_GAP_S = 2.0


@dataclass
class BadAnswer:
    """What one bad request got: its replies (strict JSON values), texts that were not strict JSON."""

    what: str
    answers: tuple[int | str, ...]
    re_null: bool
    replies: list[Any] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    open_after: bool = True  # the ping sent after it was answered ok

    def problem(self) -> str | None:
        if self.invalid:
            return f"not strict JSON: {self.invalid[0][:120]}"
        if len(self.replies) != 1:
            return f"{len(self.replies)} replies"
        reply = self.replies[0]
        if not isinstance(reply, dict):
            return f"a reply that is not an object: {str(reply)[:120]}"
        if self.re_null and reply.get("re") is not None:
            return f"re {reply.get('re')!r} (no id could be read: null)"
        if reply.get("ok") is True:
            return None if "ok" in self.answers else "answered ok"
        error = reply.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        return None if code in self.answers else f"code {code}"


@dataclass
class Storm:
    """Requests sent at once: each answer in arrival order ("ok", a code, or None: no answer)."""

    sent: int = 0
    answers: list[Any] = field(default_factory=list)
    #: per answer, the results (task_result events) that arrived before it
    results_before: list[int] = field(default_factory=list)
    results: int = 0  # task_result events received in all


@dataclass
class Bystander:
    name: str
    ticks: int = 0
    max_gap_s: float = 0.0
    echoes: int = 0
    echo_failures: list[str] = field(default_factory=list)


@dataclass
class HostileHistory:
    bad: list[BadAnswer] = field(default_factory=list)
    timers: Storm = field(default_factory=Storm)
    tasks: Storm = field(default_factory=Storm)
    output_bytes: int = 16 << 20
    pushed_bytes: int = 0
    push_failure: Any = None  # the first failed push's code
    nonreader_close: int | None = None
    nonreader_closed: bool = False
    growth: dict[str, int] = field(default_factory=dict)  # resident memory growth per process (bytes)
    rss_samples: int = 0
    slow_closed: int | None = None  # growth of the slow_closed counter, if the target has it
    bystanders: list[Bystander] = field(default_factory=list)
    processes_before: list[Any] = field(default_factory=list)
    processes_after: list[Any] = field(default_factory=list)
    leftovers: Leftovers = field(default_factory=Leftovers)
    #: for the figure: the attack's phases (name, start, end) and each bystander's tick times (wall clock)
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    tick_times: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def judge_tasks(storm: Storm) -> tuple[list[str], int]:
    """Task answers against the bound (module docstring): what is wrong, and how many were refused."""
    accepted = storm.answers.count("ok")
    refused = storm.answers.count(LIMIT_REACHED)
    freed = storm.results_before[-1] if storm.results_before else 0
    wrong = []
    others = [a for a in storm.answers if a not in ("ok", LIMIT_REACHED)]
    if others:
        wrong.append(f"answers other than ok and 4429: {others[:5]}")
    if accepted < min(storm.sent, MAX_TASKS):
        wrong.append(f"{accepted} accepted: fewer than {MAX_TASKS} (refused before the bound)")
    if accepted > MAX_TASKS + freed:
        wrong.append(f"{accepted} accepted: more than {MAX_TASKS} + {freed} results received meanwhile")
    return wrong, refused


def check_hostile(h: HostileHistory) -> list[Check]:
    bad = [{"request": b.what, "problem": p} for b in h.bad if (p := b.problem())]
    closed_by = [b.what for b in h.bad if not b.open_after]
    t = h.timers
    timer_ok = sum(a == "ok" for a in t.answers)
    timer_wrong = [a for a in t.answers if a not in ("ok", LIMIT_REACHED)]
    task_wrong, task_refused = judge_tasks(h.tasks)
    task_ok = sum(a == "ok" for a in h.tasks.answers)
    rss_bound = 2 * h.output_bytes + RSS_SLACK
    grown = {n: g for n, g in h.growth.items() if g > rss_bound}
    stalled = [
        {"name": b.name, "ticks": b.ticks, "max_gap_s": round(b.max_gap_s, 3), "echo_failures": b.echo_failures[:3]}
        for b in h.bystanders
        if b.ticks < 10 or b.max_gap_s > BYSTANDER_GAP_S or b.echo_failures or not b.echoes
    ]
    checks = [
        named(
            "every bad request gets exactly one reply, in strict JSON, with its code (4400 for a value out of range)",
            bool(h.bad) and not bad,
            expected={b.what: list(b.answers) for b in h.bad} or "at least one bad request",
            observed=bad or f"{len(h.bad)} answered as expected",
        ),
        named(
            "the session stays open and answers after each bad request",
            bool(h.bad) and not closed_by,
            expected="a ping answered after each",
            observed=closed_by or "always",
        ),
        named(
            f"a session holds at most {MAX_TIMERS} timers: the rest are refused with 4429 LIMIT_REACHED",
            t.sent > MAX_TIMERS and len(t.answers) == t.sent and timer_ok == MAX_TIMERS and not timer_wrong,
            expected={"ok": MAX_TIMERS, "4429": t.sent - MAX_TIMERS},
            observed={"ok": timer_ok, "4429": sum(a == LIMIT_REACHED for a in t.answers),
                      "other": timer_wrong[:5], "unanswered": t.sent - len(t.answers)},
        ),
        named(
            f"a session has at most {MAX_TASKS} tasks outstanding: the rest are refused with 4429, "
            "and every accepted task's result arrives",
            h.tasks.sent > MAX_TASKS and len(h.tasks.answers) == h.tasks.sent and not task_wrong and task_refused > 0
            and h.tasks.results == task_ok,
            expected=f"{MAX_TASKS} ok (more only as results came back), the rest 4429 (at least one); a result per ok",
            observed={"ok": task_ok, "refused": task_refused, "results": h.tasks.results,
                      "unanswered": h.tasks.sent - len(h.tasks.answers), "wrong": task_wrong[:5]},
        ),
        named(
            "a client that does not read is closed with 4429 once its waiting output passes the bound",
            h.nonreader_close == SLOW_CONSUMER and h.pushed_bytes > h.output_bytes,
            expected={"close": SLOW_CONSUMER, "pushed": f"> {h.output_bytes} bytes"},
            observed={"close": h.nonreader_close, "connection ended": h.nonreader_closed, "pushed": h.pushed_bytes,
                      "first failed push": h.push_failure, "slow_closed counted": h.slow_closed},
        ),
        named(
            "no process grows past 2 x output_bytes + 48 MiB while a client does not read",
            bool(h.growth) and h.rss_samples > 1 and not grown,
            expected=f"<= {rss_bound} bytes each",
            observed=grown or {n: g for n, g in sorted(h.growth.items(), key=lambda x: -x[1])[:3]},
        ),
        named(
            "the other sessions are served throughout (ticks without a gap over 2 s, every echo answered)",
            bool(h.bystanders) and not stalled,
            timing=True,
            expected=f"ticks every 50 ms (gap <= {BYSTANDER_GAP_S} s), echoes answered",
            observed=stalled or [{"name": b.name, "ticks": b.ticks, "max_gap_s": round(b.max_gap_s, 3)}
                                 for b in h.bystanders],
        ),
        named(
            "no process exits",
            bool(h.processes_before) and h.processes_before == h.processes_after,
            expected=h.processes_before,
            observed=h.processes_after,
        ),
    ]
    return [*checks, *check_leftovers(h.leftovers)]


BYSTANDER_CHECK = "the other sessions are served throughout (ticks without a gap over 2 s, every echo answered)"


def figure(h: HostileHistory) -> Figure | None:
    """The bystanders' ticks through each phase of the attack (shaded); a gap past the bound marked."""
    return ticks_through_phases(
        "bystanders", "Bystanders' ticks (every 50 ms) through each phase of the attack",
        x_label="seconds from the first bad request", y_label="bystander", phases=h.phases, tick_times=h.tick_times,
        gap_bound_s=BYSTANDER_GAP_S, check=BYSTANDER_CHECK,
    )
