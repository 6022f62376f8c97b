"""Reload observations: requesting reloads, waiting for them, and reading tick histories.

A tick (contract section 3, ``timer_start``) carries the timer's own ``seq``
and the ``gen``eration of the process that sent it. From a client's history
of ticks this module derives what the reload scenarios check: order, loss,
generation interleaving, and the longest silence around each reload.
"""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .admin import AdminClient
from .client import ScenarioClient
from .waiting import until


@dataclass
class ReloadWindow:
    """One reload as the scenario saw it: when it was asked for, when it was done."""

    label: str
    requested: float  # wall clock, before the request left
    done: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "reload": self.record.get("reload"),
            "generation": self.record.get("generation"),
            "scope": self.record.get("scope"),
            "requested": round(self.requested, 6),
            "done": round(self.done, 6),
            "server_duration_ms": self.record.get("duration_ms"),
            "forced_kills": self.record.get("forced_kills"),
            "sessions_lost": self.record.get("sessions_lost"),
        }


async def reload_status(admin: AdminClient) -> dict[str, Any]:
    return await admin.get("/v1/reloads")


async def wait_done(admin: AdminClient, reload_id: int, *, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until reload ``reload_id`` is in the history; return its record."""

    async def finished() -> dict[str, Any] | None:
        status = await reload_status(admin)
        return next((r for r in status["history"] if r["reload"] == reload_id), None)

    return await until(finished, timeout=timeout, what=f"reload {reload_id} to finish", interval=0.02)


async def wait_completed(admin: AdminClient, count: int, *, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until ``count`` reloads have completed and none runs; return the newest record."""

    async def finished() -> dict[str, Any] | None:
        status = await reload_status(admin)
        if status["counters"]["completed"] >= count and status["running"] is None:
            return status["history"][-1]
        return None

    return await until(finished, timeout=timeout, what=f"{count} reloads to complete", interval=0.02)


async def reload_by_signal(target: Any, admin: AdminClient, signum: int, label: str) -> ReloadWindow:
    """Send SIGUSR1/SIGUSR2 to the target's started process and wait for that reload."""
    completed = (await reload_status(admin))["counters"]["completed"]
    window = ReloadWindow(label, time.time())
    target.signal(signum)
    window.record = await wait_completed(admin, completed + 1)
    window.done = time.time()
    return window


async def reload_by_admin(admin: AdminClient, label: str, scope: str = "all") -> ReloadWindow:
    window = ReloadWindow(label, time.time())
    window.record = await admin.call("POST", "/v1/reload", {"scope": scope, "wait": True})
    window.done = time.time()
    return window


SIGNALS = {"all": signal.SIGUSR1, "task_workers": signal.SIGUSR2}


# -- tick histories ---------------------------------------------------------------------


def own_ticks(client: ScenarioClient) -> list[dict[str, Any]]:
    """The ticks of the client's own timer(s), in arrival order."""
    return [e for e in client.evs("tick") if e.get("to") == client.session]


def tick_order_problems(ticks: list[dict[str, Any]], final_seq: int | None = None) -> dict[str, Any]:
    """Per timer: repeats or reordering, lost ticks (gaps, or missing up to ``final_seq``)."""
    problems: dict[str, Any] = {}
    by_timer: dict[Any, list[int]] = {}
    for t in ticks:
        by_timer.setdefault(t.get("timer"), []).append(int(t["seq"]))
    for timer, seqs in by_timer.items():
        back = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
        if back:
            problems[f"timer {timer}: not increasing"] = back[:5]
        gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b > a + 1]
        if gaps:
            problems[f"timer {timer}: lost"] = gaps[:5]
        if seqs and seqs[0] != 1:
            problems[f"timer {timer}: first"] = seqs[0]
        if final_seq is not None and (not seqs or max(seqs) < final_seq):
            problems[f"timer {timer}: missing tail"] = [max(seqs) if seqs else 0, final_seq]
    return problems


def generation_interleaving(ticks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ticks from an older generation that arrived after one from a newer generation."""
    newest = 0
    bad = []
    for t in ticks:
        gen = int(t.get("gen", 0))
        if gen < newest:
            bad.append({"seq": t["seq"], "gen": gen, "after_gen": newest, "pid": t.get("pid")})
        newest = max(newest, gen)
    return bad


def gaps_around(ticks: list[dict[str, Any]], start: float, end: float) -> float:
    """The longest silence (s) between consecutive ticks that overlaps [start, end]."""
    times = [t["_t"] for t in ticks]
    longest = 0.0
    for a, b in itertools.pairwise(times):
        if b >= start and a <= end:
            longest = max(longest, b - a)
    return longest


def summarize_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered) * 1000, 1),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


# -- process usage (local targets) ----------------------------------------------------------


def usage(pid: int) -> dict[str, int] | None:
    """Open fds and resident bytes of a local process, from /proc; None if it is gone."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
    return {"fds": fds, "rss": rss}


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
