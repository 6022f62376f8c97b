"""The checks of ``reload_ticks``, ``reload_disconnects`` and ``reload_repeated``
(scenarios/test_reload.py; contract section 9).

The tick rules (``reloads.py``): per timer, sequence numbers 1, 2, ... n with none lost or
repeated; generations never go back in a session's stream; the longest silence around each
reload stays below ``max_wait_ms``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Figure, Lane, Mark, Window, rel
from ..reloads import ReloadWindow, gaps_around, generation_interleaving, summarize_ms, tick_order_problems
from ..spec import Leftovers, check_leftovers, named


@dataclass
class Ticking:
    """One ticking client: its own ticks (``{"seq", "gen", "_t", ...}`` in arrival order) and how it ended."""

    name: str
    ticks: list[dict[str, Any]] = field(default_factory=list)
    final: int | None = None  # the timer's last seq, from timer_stop (None: not stopped)
    closed: bool = False
    close_frame: Any = None
    tail: Any = None


def check_closed(clients: list[Ticking]) -> Check:
    closed = [{"client": c.name, "close_frame": c.close_frame, "tail": c.tail} for c in clients if c.closed]
    return named(
        "no session is closed by a reload",
        not closed and bool(clients),
        expected="every client still open",
        observed=f"{len(closed)} closed",
        clients=closed,
    )


def tick_gaps(clients: list[Ticking], windows: list[ReloadWindow]) -> dict[str, list[float]]:
    """Per reload (by label): each client's longest silence (s) around it."""
    return {w.label: [gaps_around(c.ticks, w.requested, w.done) for c in clients] for w in windows}


def check_ticks(clients: list[Ticking], windows: list[ReloadWindow], max_wait_ms: int) -> list[Check]:
    order_bad, interleaved = {}, {}
    for c in clients:
        problems = tick_order_problems(c.ticks, c.final)
        if problems:
            order_bad[c.name] = problems
        bad = generation_interleaving(c.ticks)
        if bad:
            interleaved[c.name] = bad[:5]
    per_window = tick_gaps(clients, windows)
    gap_report = {label: summarize_ms(v) for label, v in per_window.items()}
    worst = max((max(v) for v in per_window.values() if v), default=0.0)
    return [
        named(
            "per session, tick numbers strictly increase and none is lost",
            not order_bad and any(c.ticks for c in clients),
            expected="each timer's ticks arrive as 1, 2, ..., n (its final count)",
            observed=f"{len(order_bad)} sessions with problems" if order_bad else "all consecutive",
            problems=[{k: v} for k, v in list(order_bad.items())[:10]],
        ),
        named(
            "no tick from an old generation arrives after one from a newer generation",
            not interleaved,
            expected="generations never go back in a session's stream",
            observed=f"{len(interleaved)} sessions interleaved" if interleaved else "never",
            sessions=[{k: v} for k, v in list(interleaved.items())[:10]],
        ),
        named(
            "the longest silence in a session's ticks during a reload is below max_wait_ms",
            worst * 1000 < max_wait_ms,
            timing=True,
            expected=f"< {max_wait_ms} ms",
            observed=f"{worst * 1000:.1f} ms",
            per_reload=gap_report,
        ),
    ]


def check_retired(records: list[dict[str, Any]], expect_processes: bool = True) -> list[Check]:
    retired = [p for r in records for p in r.get("retired", [])]
    timers_left = [
        {k: p.get(k) for k in ("name", "pid", "reload", "timers_after_exit_hook", "timers_at_exit")}
        for p in retired
        if p.get("timers_at_exit", 0) or p.get("timers_after_exit_hook", 0)
    ]
    lost = [
        {k: r.get(k) for k in ("reload", "forced_kills", "sessions_lost")}
        for r in records
        if r.get("forced_kills") or r.get("sessions_lost")
    ]
    return [
        named(
            "old processes reach zero timers (the exit hook cleared them)",
            (bool(retired) or not expect_processes) and not timers_left,
            expected="every retired process: 0 timers after on_worker_exit and at exit",
            observed=timers_left or f"{len(retired)} processes at 0",
        ),
        named(
            "no old process had to be killed and no session was lost",
            not lost,
            timing=True,
            expected="forced_kills == 0 and sessions_lost == 0 in every reload",
            observed=lost or "none",
        ),
    ]


# -- reload_ticks ------------------------------------------------------------------------------------


@dataclass
class TicksHistory:
    """What ``reload_ticks`` observed."""

    max_wait_ms: int
    task_ms: int
    clock_slack_ms: int = 2
    #: whether the target had reloaded before the scenario, and its processes' first generations
    reloaded_before: bool = False
    first_gens: dict[str, Any] = field(default_factory=dict)
    #: the three reload requests of the first reload (their replies, ``_t``: when received);
    #: the record of a reload the second or third started instead of joining the first
    merge: dict[str, Any] = field(default_factory=dict)
    merge_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the task in flight: its reply, its results, ms from its request to its result
    task: dict[str, Any] = field(default_factory=dict)
    task_results: list[dict[str, Any]] = field(default_factory=list)
    task_held_ms: float | None = None
    #: the task-worker-only reload: workers it replaced, task workers it kept
    workers_replaced: list[str] = field(default_factory=list)
    task_workers_kept: list[str] = field(default_factory=list)
    worker_reload_reply: dict[str, Any] = field(default_factory=dict)
    windows: list[ReloadWindow] = field(default_factory=list)
    clients: list[Ticking] = field(default_factory=list)
    dead_session_pushes: int = 0
    state_changes: list[dict[str, Any]] = field(default_factory=list)
    marked: bool = False
    counters_decreased: list[dict[str, Any]] = field(default_factory=list)
    snapshots: int = 0
    #: reload counters gained, the status's generation, the processes' and the last ticks' generations
    reload_counters: dict[str, int] = field(default_factory=dict)
    status_generation: Any = None
    process_generations: dict[str, Any] = field(default_factory=dict)
    last_tick_generations: list[Any] = field(default_factory=list)
    old_processes: int = 0
    old_left: dict[int, str] = field(default_factory=dict)
    leftovers: Leftovers = field(default_factory=Leftovers)


#: six requests: three for the first reload, then one each for three more reloads
REQUESTS = 6


#: What a request that got no reply records instead of one (the wait's message).
NO_REPLY = "no_reply"


def merge_outcome(h: TicksHistory) -> dict[str, Any]:
    """How the second and third requests went, judged by when each reached the target.

    A request that reached the target while the first reload ran must join it (contract 8:
    ``merged`` true, the same ``reload``). One that came after it was done starts a reload of
    its own: that is no fault (the first reload can be short: the task meant to hold it may
    still have been queued, and handed to the successor). It came after if it started its own
    reload no sooner than the first one's ``finished``, and its reply did not come before that.
    The other request may then join that late reload (it came while that one ran).

    ``merged``: the requests that joined the first reload; ``joined_late``: the ones that joined
    the reload the other late request started; ``late``: the ones that started their own;
    ``wrong``: the others, each with why. ``records_merged`` is what each reload's record
    counts as merged, ``expected_merged`` what it should count.
    """
    first = h.merge.get("first", {})
    first_id = first.get("reload")
    record = h.windows[0].record if h.windows else {}
    finished = record.get("finished")
    slack = h.clock_slack_ms / 1000
    replies = {key: h.merge.get(key, {}) for key in ("second", "third")}
    merged: list[str] = []
    joined_late: list[str] = []
    late: list[str] = []
    wrong: list[dict[str, Any]] = []
    for key, reply in replies.items():
        if reply.get("merged") is not False:
            continue
        started = h.merge_records.get(key, {}).get("started")
        if reply.get("reload") is None or reply.get("reload") == first_id:
            wrong.append({key: reply.get("reload"), "why": "merged false, but names no reload of its own"})
        elif started is None:
            wrong.append({key: reply.get("reload"), "why": "the reload it started has no record with `started`"})
        elif finished is None or started < finished - slack or (reply.get("_t") is not None and reply["_t"] < finished - slack):
            wrong.append({key: reply.get("reload"), "why": f"started a reload of its own while reload {first_id} ran",
                          "started": started, "first_finished": finished})
        else:
            late.append(key)
    late_reloads = {replies[key].get("reload"): key for key in late}
    for key, reply in replies.items():
        if reply.get("merged") is True and reply.get("reload") == first_id:
            merged.append(key)
        elif reply.get("merged") is True and reply.get("reload") in late_reloads:
            joined_late.append(key)
        elif reply.get("merged") is True:
            wrong.append({key: reply.get("reload"), "why": f"merged into {reply.get('reload')}: neither reload {first_id} "
                          "nor one the other request started"})
        elif reply.get("merged") is not False:
            wrong.append({key: {k: reply.get(k) for k in ("reload", "merged", "code", "name")}
                          | ({NO_REPLY: reply[NO_REPLY]} if NO_REPLY in reply else {}),
                          "why": "no reload joined or started"})
    if first.get("merged"):
        wrong.append({"first": first_id, "why": "the first request was merged: a reload ran before it"})
    records_merged = {first_id: record.get("merged_requests")}
    expected_merged = {first_id: len(merged)}
    for rid, key in late_reloads.items():
        records_merged[rid] = h.merge_records.get(key, {}).get("merged_requests")
        expected_merged[rid] = len(joined_late)
    return {"merged": merged, "joined_late": joined_late, "late": late, "wrong": wrong,
            "records_merged": records_merged, "expected_merged": expected_merged}


def check_replies(h: TicksHistory) -> Check:
    """Every reload op a worker was asked for is answered (contract 12.1: exactly one reply)."""
    unanswered = {key: reply[NO_REPLY] for key, reply in (("third", h.merge.get("third", {})),
                                                          ("from a worker", h.worker_reload_reply))
                  if NO_REPLY in reply}
    return named(
        "every reload request gets a reply",
        not unanswered,
        timing=True,  # a wait with a bound (10 s): on a starved machine, inconclusive
        expected="a reply to each reload op (merged, started, or refused with its code)",
        observed=unanswered or "all answered",
    )


def check_merges(h: TicksHistory) -> Check:
    """Requests that come while a reload runs join it. If both came after the first reload was
    done and neither joined the other's, nothing was judged: a timing failure (on a busy
    machine, inconclusive)."""
    out = merge_outcome(h)
    joins = len(out["merged"]) + len(out["joined_late"])
    consistent = bool(h.merge.get("first")) and not out["wrong"] and out["records_merged"] == out["expected_merged"]
    first = h.merge.get("first", {}).get("reload")
    duration = h.windows[0].record.get("duration_ms") if h.windows else None
    return named(
        "a reload requested while one runs is merged into it",
        consistent and joins > 0,
        timing=consistent and joins == 0,
        expected=f"each request that reaches the target while reload {first} (or one a later request started) "
        "runs joins it (at least one did); each record counts the requests that joined it",
        observed=out if joins or out["wrong"] or not consistent else
        {**out, "why": f"reload {first} was done ({duration} ms) before another request came: nothing to judge"},
    )


def expected_reload_counters(h: TicksHistory) -> dict[str, int]:
    """Six requests: each joined a running reload or completed one of its own."""
    out = merge_outcome(h)
    merged = len(out["merged"]) + len(out["joined_late"])
    return {"requested": REQUESTS, "merged": merged, "completed": REQUESTS - merged, "forced_kills": 0}


def check_ticks_history(h: TicksHistory) -> list[Check]:
    wrong_gen: list[Any] = [
        {"reload": r.get("reload"), "generation": r.get("generation")}
        for r in (w.record for w in h.windows)
        if r.get("generation") != (r.get("reload") or 0) + 1
    ]
    final_gen = h.windows[-1].record.get("generation") if h.windows else None
    expected_counters = expected_reload_counters(h)
    return [
        named(
            "the first processes are generation 1",
            h.reloaded_before or set(h.first_gens.values()) == {1},
            expected="generation 1 for every worker and task worker before any reload",
            observed=h.first_gens,
        ),
        check_replies(h),
        check_merges(h),
        named(
            "a task in flight during the reload completes and its result arrives once",
            bool(h.task.get("ok"))
            and len(h.task_results) == 1
            and (h.task_results[0].get("result") or {}).get("data") == "in flight",
            expected="one task_result with the task's data",
            observed=[r.get("result") for r in h.task_results],
        ),
        named(
            "the task in flight ran its full sleep_ms (the reload did not cut it short)",
            h.task_held_ms is not None and h.task_held_ms >= h.task_ms - h.clock_slack_ms,
            expected=f"task_result >= {h.task_ms} ms after the task's request",
            observed=h.task_held_ms,
        ),
        named(
            "a task-worker-only reload replaces the task workers and nothing else",
            not h.workers_replaced and not h.task_workers_kept,
            expected="same worker pids, new task worker pids",
            observed={"workers replaced": h.workers_replaced, "task workers kept": h.task_workers_kept},
        ),
        named(
            "a worker can ask for a reload (app op reload)",
            h.worker_reload_reply.get("ok") is True,
            expected="ok",
            observed=h.worker_reload_reply,
        ),
        check_closed(h.clients),
        *check_ticks(h.clients, h.windows, h.max_wait_ms),
        named("no push reaches a dead session", h.dead_session_pushes == 0, expected=0, observed=h.dead_session_pushes),
        named(
            "uid, protection, group and handler set survive every reload",
            not h.state_changes and h.marked,
            expected="each session's uid, protected, group and handler as before the reloads",
            observed=h.state_changes or "all kept",
        ),
        named(
            "no standard counter ever decreases across a reload",
            not h.counters_decreased and h.snapshots == 1 + len(h.windows),
            expected="each standard counter of /v1/stats >= its value before each reload",
            observed=h.counters_decreased or f"{h.snapshots} snapshots, none lower than the one before",
        ),
        named(
            "reload n starts generation n + 1",
            not wrong_gen and bool(h.windows),
            expected="each record's generation = its reload id + 1",
            observed=wrong_gen or [[w.record.get("reload"), w.record.get("generation")] for w in h.windows],
        ),
        named(
            "reload counters and generations are as expected",
            h.reload_counters == expected_counters
            and h.status_generation == final_gen
            and set(h.process_generations.values()) == {final_gen}
            and set(h.last_tick_generations) == {final_gen},
            expected={**expected_counters, "generation": final_gen, "every worker and tick": final_gen},
            observed={
                **h.reload_counters,
                "generation": h.status_generation,
                "processes": h.process_generations,
                "last tick gens": sorted(set(h.last_tick_generations), key=str),
            },
        ),
        *check_retired([w.record for w in h.windows]),
        named(
            "every old process has exited",
            not h.old_left,
            expected="no replaced pid listed in /v1/processes or alive",
            observed=h.old_left or f"{h.old_processes} gone",
        ),
        *check_leftovers(h.leftovers),
    ]


# -- reload_disconnects ------------------------------------------------------------------------------


@dataclass
class DisconnectsHistory:
    """What ``reload_disconnects`` observed."""

    max_wait_ms: int
    arrivals: int
    window: ReloadWindow
    #: late clients: connected, closed by the reload, refused; the generations of their ticks
    late_connected: int = 0
    late_closed: int = 0
    late_open: int = 0
    refused: list[str] = field(default_factory=list)
    late_generations: list[Any] = field(default_factory=list)
    stay: list[Ticking] = field(default_factory=list)
    late: list[Ticking] = field(default_factory=list)
    dead_session_pushes: int = 0
    leftovers: Leftovers = field(default_factory=Leftovers)


def check_disconnects(h: DisconnectsHistory) -> list[Check]:
    gen = h.window.record.get("generation")
    return [
        named(
            "clients that arrive during a reload are served, by the new generation",
            h.late_open == h.arrivals and set(h.late_generations) == {gen},
            expected={"clients": h.arrivals, "generation": gen},
            observed={"clients": h.late_connected, "closed": h.late_closed, "refused": h.refused[:5],
                      "generations": sorted(set(h.late_generations), key=str)},
        ),
        check_closed(h.stay + h.late),
        *check_ticks(h.stay, [h.window], h.max_wait_ms),
        named(
            "no push is made to a session after its close is known",
            h.dead_session_pushes == 0,
            expected=0,
            observed=h.dead_session_pushes,
            hint="dead_session_pushes counts pushes to a closed or closing session, in old and new processes",
        ),
        *check_retired([h.window.record]),
        *check_leftovers(h.leftovers),
    ]


# -- reload_repeated ---------------------------------------------------------------------------------


@dataclass
class RepeatedHistory:
    """What ``reload_repeated`` observed."""

    reloads: int
    max_wait_ms: int
    fd_slack: int
    rss_slack: int
    windows: list[ReloadWindow] = field(default_factory=list)
    #: the reload after which the series stopped (it killed a process or lost a session), if any
    stopped: int | None = None
    #: fds and rss per process (master, workers) after the first reload, and at the end
    baseline: dict[str, Any] = field(default_factory=dict)
    now: dict[str, Any] = field(default_factory=dict)
    clients: list[Ticking] = field(default_factory=list)


def check_repeated(h: RepeatedHistory) -> list[Check]:
    grown = {
        name: {"fds": [b["fds"], h.now[name]["fds"]], "rss_mib": [round(b["rss"] / 2**20, 1), round(h.now[name]["rss"] / 2**20, 1)]}
        for name, b in h.baseline.items()
        if b and h.now.get(name)
        and (h.now[name]["fds"] > b["fds"] + h.fd_slack or h.now[name]["rss"] > b["rss"] + h.rss_slack)
    }
    gens = {w.record.get("generation") for w in h.windows}
    return [
        named(
            f"after {h.reloads} reloads, fds and memory of the master and each worker stay near their baseline",
            h.stopped is None and not grown and bool(h.baseline) and all(h.now.get(n) for n in h.baseline),
            expected=f"fds <= baseline + {h.fd_slack}, rss <= baseline + {h.rss_slack // 2**20} MiB",
            observed=(
                f"not judged: stopped after reload {h.stopped}, which killed a process or lost a session"
                if h.stopped is not None else grown or "within bounds"
            ),
        ),
        named(
            f"{h.reloads + 1} reloads ran one after the other, each with a new generation",
            len(gens) == h.reloads + 1,
            expected=h.reloads + 1,
            observed=len(gens),
        ),
        check_closed(h.clients),
        *check_ticks(h.clients, h.windows, h.max_wait_ms),
        *check_retired([w.record for w in h.windows]),
    ]


# -- figures ---------------------------------------------------------------------------------------

GAP_CHECK = "the longest silence in a session's ticks during a reload is below max_wait_ms"
ORDER_CHECK = "per session, tick numbers strictly increase and none is lost"
GENERATION_CHECK = "no tick from an old generation arrives after one from a newer generation"


def tick_figure(clients: list[Ticking], windows: list[ReloadWindow], title: str = "") -> Figure:
    """Each session's ticks over time, coloured by generation, with each reload shaded; the longest
    silence during a reload, the first tick out of order and the first of an old generation marked."""
    starts = [t["_t"] for c in clients for t in c.ticks[:1]] + [w.requested for w in windows]
    origin = min(starts) if starts else 0.0
    fig = Figure(
        "ticks", title or "Each session's ticks (a dot per tick, coloured by the generation that sent it)",
        "lanes", y_label="session", origin=origin,
        windows=[Window(rel(w.requested, origin), rel(w.done or w.requested, origin), w.label) for w in windows],
    )
    worst: tuple[float, str, float, float] | None = None  # (gap, lane, from, to)
    for c in clients:
        fig.lanes.append(Lane(c.name, [(rel(t["_t"], origin), f"gen {t.get('gen', '?')}") for t in c.ticks]))
        times = [t["_t"] for t in c.ticks]
        for w in windows:
            for a, b in itertools.pairwise(times):
                if b >= w.requested and a <= (w.done or w.requested) and (worst is None or b - a > worst[0]):
                    worst = (b - a, c.name, a, b)
        back = next(((a, b) for a, b in zip(c.ticks, c.ticks[1:], strict=False) if int(b["seq"]) != int(a["seq"]) + 1
                     and a.get("timer") == b.get("timer")), None)
        if back is not None:
            fig.marks.append(Mark(rel(back[1]["_t"], origin), f"seq {back[0]['seq']} -> {back[1]['seq']}", c.name,
                                  check=ORDER_CHECK))
        bad = generation_interleaving(c.ticks)
        if bad:
            first = next(t for t in c.ticks if t["seq"] == bad[0]["seq"] and int(t.get("gen", 0)) == bad[0]["gen"])
            fig.marks.append(Mark(rel(first["_t"], origin), f"gen {bad[0]['gen']} after gen {bad[0]['after_gen']}",
                                  c.name, check=GENERATION_CHECK))
        if c.closed and c.ticks:
            fig.marks.append(Mark(rel(c.ticks[-1]["_t"], origin), "closed", c.name, check="no session is closed by a reload"))
    if worst is not None:
        fig.marks.append(Mark(rel(worst[3], origin), f"longest gap {worst[0] * 1000:.0f} ms", worst[1], check=GAP_CHECK))
        fig.headline = f"longest gap {worst[0] * 1000:.0f} ms"
    return fig
