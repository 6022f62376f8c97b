"""The harness's own conditions: was the machine quiet enough for a timing verdict?

A check with a time bound ("the longest tick gap is under 2 s") fails for one of two reasons:
the target was slow, or the machine was busy with something else and neither the target nor
the harness got the CPU. The second is not the target's failure. This module measures it, so
that such a failure is reported ``inconclusive`` (contract 11.4) instead of ``failed``.

Two measures, sampled throughout a run:

* **Noise**: CPU time spent by processes that are *not* the harness or its descendants (the
  target, its children, the embedded broker), plus the hypervisor's *steal*, in CPUs (1.0 is
  one whole core). A thread reads ``/proc/stat`` and the tree's ``/proc/<pid>/stat`` every
  :data:`SAMPLE_S`. What the target spends itself is never noise: a target that starves
  itself fails.
* **Loop lag**: how late the scenario's event loop wakes from a short sleep (``LoopLag``, a
  task inside the scenario's loop). The harness's clocks are only as good as its loop.

:func:`judge` is pure: given the samples of one case, it says whether the case was *starved*:
a window of :data:`WINDOW_S` with at least :data:`NOISE_BOUND_CPUS` of noise, steal of at
least :data:`STEAL_BOUND_CPUS` in a window, or a loop lag of :data:`LAG_BOUND_S` or more.

Where ``/proc`` is not readable (not Linux), noise is unknown and only the loop lag counts.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: How often the sampler thread reads /proc.
SAMPLE_S = 0.25
#: The length of the windows whose noise is compared with the bound.
WINDOW_S = 1.0
#: Noise (CPUs used by other processes, steal included) in one window that makes a case starved.
NOISE_BOUND_CPUS = 1.0
#: Steal alone (CPUs) in one window that makes a case starved.
STEAL_BOUND_CPUS = 0.25
#: A wake-up of the harness's loop this late makes a case starved.
LAG_BOUND_S = 0.5
#: How often the loop-lag task wakes.
LAG_TICK_S = 0.02
#: Samples kept (a long run keeps the last hour).
MAX_SAMPLES = int(3600 / SAMPLE_S)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Sample:
    """One reading: cumulative CPU seconds of the machine (busy), of the harness's tree, and steal."""

    t: float
    busy_s: float
    tree_s: float
    steal_s: float


@dataclass
class Conditions:
    """What one case ran under (kept in its result and evidence as ``conditions``)."""

    noise_cpus_max: float | None = None  # the busiest window's noise, in CPUs
    noise_cpus_avg: float | None = None
    steal_cpus_max: float | None = None
    loop_lag_max_s: float | None = None
    loop_lag_p99_s: float | None = None
    windows: list[dict[str, float]] = field(default_factory=list)  # starved windows [start, end] (wall time)
    starved: bool = False
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "noise_cpus_max": self.noise_cpus_max,
            "noise_cpus_avg": self.noise_cpus_avg,
            "steal_cpus_max": self.steal_cpus_max,
            "loop_lag_max_ms": None if self.loop_lag_max_s is None else round(self.loop_lag_max_s * 1000, 1),
            "loop_lag_p99_ms": None if self.loop_lag_p99_s is None else round(self.loop_lag_p99_s * 1000, 1),
            "starved_windows": self.windows,
            "starved": self.starved,
            "why": self.why,
            "bounds": {"noise_cpus": NOISE_BOUND_CPUS, "steal_cpus": STEAL_BOUND_CPUS, "loop_lag_ms": LAG_BOUND_S * 1000},
        }


def judge(samples: list[Sample], lags: list[tuple[float, float]], start: float, end: float) -> Conditions:
    """The conditions of the case that ran from ``start`` to ``end`` (wall clock).

    ``samples`` are cumulative readings in time order; ``lags`` are (wall time, lag in s).
    Windows are consecutive spans of at least :data:`WINDOW_S` between samples.
    """
    out = Conditions()
    inside = [s for s in samples if start - SAMPLE_S <= s.t <= end + SAMPLE_S]
    why: list[str] = []
    if len(inside) >= 2:
        noise: list[float] = []
        steal: list[float] = []
        i = 0
        for j in range(1, len(inside)):
            a, b = inside[i], inside[j]
            span = b.t - a.t
            if span < WINDOW_S and j < len(inside) - 1:
                continue
            if span <= 0:
                continue
            n = max(0.0, (b.busy_s - a.busy_s) - (b.tree_s - a.tree_s)) / span
            st = max(0.0, b.steal_s - a.steal_s) / span
            noise.append(n)
            steal.append(st)
            if n >= NOISE_BOUND_CPUS or st >= STEAL_BOUND_CPUS:
                out.windows.append({"start": round(a.t, 3), "end": round(b.t, 3), "noise_cpus": round(n, 2), "steal_cpus": round(st, 2)})
            i = j
        if noise:
            first, last = inside[0], inside[-1]
            total = last.t - first.t
            out.noise_cpus_max = round(max(noise), 2)
            out.steal_cpus_max = round(max(steal), 2)
            if total > 0:
                out.noise_cpus_avg = round(max(0.0, (last.busy_s - first.busy_s) - (last.tree_s - first.tree_s)) / total, 2)
            if out.noise_cpus_max >= NOISE_BOUND_CPUS:
                why.append(f"other processes used {out.noise_cpus_max} CPUs in a {WINDOW_S:g} s window (bound {NOISE_BOUND_CPUS})")
            if out.steal_cpus_max >= STEAL_BOUND_CPUS:
                why.append(f"the hypervisor stole {out.steal_cpus_max} CPUs in a window (bound {STEAL_BOUND_CPUS})")
    mine = sorted(lag for t, lag in lags if start <= t <= end)
    if mine:
        out.loop_lag_max_s = round(mine[-1], 4)
        out.loop_lag_p99_s = round(mine[min(len(mine) - 1, int(0.99 * len(mine)))], 4)
        if mine[-1] >= LAG_BOUND_S:
            why.append(f"the harness's event loop woke {mine[-1] * 1000:.0f} ms late (bound {LAG_BOUND_S * 1000:.0f} ms)")
    out.starved = bool(why)
    out.why = "; ".join(why)
    return out


# -- reading /proc ------------------------------------------------------------------------


def _machine() -> tuple[float, float] | None:
    """(busy CPU seconds, steal seconds) of the whole machine since boot, or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    vals = [int(x) for x in fields[1:]]
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + (vals[7] if len(vals) > 7 else 0)
    steal = vals[7] if len(vals) > 7 else 0
    return busy / _TICKS, steal / _TICKS


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and its reaped children) for every process."""
    out: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2 :].split()
        # fields after comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17) (1-based in proc(5))
        try:
            ppid = int(rest[1])
            cpu = (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / _TICKS
        except (IndexError, ValueError):
            continue
        out[int(name)] = (ppid, cpu)
    return out


def tree_cpu(root: int, stats: dict[int, tuple[int, float]]) -> float:
    """CPU seconds of ``root`` and all its descendants (reaped ones through their parents' totals)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


class Sampler:
    """A daemon thread that reads the machine's and the harness tree's CPU every :data:`SAMPLE_S`."""

    def __init__(self, root: int | None = None) -> None:
        self.root = root or os.getpid()
        self.samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self.lags: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES * 4)
        self.available = _machine() is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or not self.available:
            return
        self._thread = threading.Thread(target=self._loop, name="starvation-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def sample(self) -> None:
        machine = _machine()
        if machine is None:
            return
        tree = tree_cpu(self.root, _proc_stats())
        self.samples.append(Sample(time.time(), machine[0], tree, machine[1]))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_S)

    def conditions(self, start: float, end: float) -> Conditions:
        """The conditions between ``start`` and ``end`` (takes a last sample first)."""
        self.sample()
        return judge(list(self.samples), list(self.lags), start, end)


class LoopLag:
    """A task in the scenario's event loop that records how late each short sleep wakes."""

    def __init__(self, into: deque[tuple[float, float]]) -> None:
        self.into = into
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            late = loop.time() - before - LAG_TICK_S
            self.into.append((time.time(), max(0.0, late)))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
