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
  itself fails. Work at a lower priority (``nice`` above 0: the ``nice`` column of
  ``/proc/stat``) is not noise either: the scheduler gives the harness and the target the CPU
  first (weight 1024 at nice 0 against 15 at nice 19), so it cannot starve them. CI builds
  Swoole that way beside the tests. (A harness that itself runs niced counts that column in,
  since its own time is there.)
Reported with them, for the reader of the evidence, and not judged:

* **waiting for a CPU**: how long the harness process itself was ready to run but not running
  (the kernel's run-queue delay, ``/proc/self/task/*/schedstat``), per window. A target that
  keeps both cores busy makes the harness wait too: that is the target's doing, so it never
  excuses a failure;
* **loop lag**: how late the scenario's event loop woke from a short sleep (``LoopLag``, a
  task inside the scenario's loop). A long step of the harness's own makes it late too.

:func:`judge` is pure: given the samples of one case, it says whether the case was *starved*:
a window of :data:`WINDOW_S` with at least :data:`NOISE_BOUND_CPUS` of noise, or steal of at
least :data:`STEAL_BOUND_CPUS`.

Where ``/proc`` is not readable (not Linux), nothing is known and no case is starved.
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
#: The shortest window judged (a case's last one may be shorter than WINDOW_S): CPU time comes in
#: 10 ms ticks, so a shorter one would read a single tick as a whole CPU.
MIN_WINDOW_S = 0.5
#: Noise (CPUs used by other processes, steal included) in one window that makes a case starved.
NOISE_BOUND_CPUS = 1.0
#: Steal alone (CPUs) in one window that makes a case starved.
STEAL_BOUND_CPUS = 0.25
#: How often the loop-lag task wakes.
LAG_TICK_S = 0.02
#: Samples kept (a long run keeps the last hour).
MAX_SAMPLES = int(3600 / SAMPLE_S)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Whether the harness runs at a lower priority itself (then its time is in /proc/stat's nice column).
_HARNESS_NICED = hasattr(os, "getpriority") and os.getpriority(os.PRIO_PROCESS, 0) > 0


@dataclass(frozen=True)
class Sample:
    """One reading: cumulative CPU seconds of the machine (busy), of the harness's tree (see
    :func:`tree_cpu`), and steal."""

    t: float
    busy_s: float
    tree_s: float
    steal_s: float
    wait_s: float = 0.0  # the harness process's run-queue delay, cumulative


@dataclass
class Conditions:
    """What one case ran under (kept in its result and evidence as ``conditions``)."""

    noise_cpus_max: float | None = None  # the busiest window's noise, in CPUs
    noise_cpus_avg: float | None = None
    steal_cpus_max: float | None = None
    wait_share_max: float | None = None  # the largest share of a window the harness waited for a CPU
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
            "harness_cpu_wait_max": self.wait_share_max,
            "loop_lag_max_ms": None if self.loop_lag_max_s is None else round(self.loop_lag_max_s * 1000, 1),
            "loop_lag_p99_ms": None if self.loop_lag_p99_s is None else round(self.loop_lag_p99_s * 1000, 1),
            "starved_windows": self.windows,
            "starved": self.starved,
            "why": self.why,
            "bounds": {"noise_cpus": NOISE_BOUND_CPUS, "steal_cpus": STEAL_BOUND_CPUS},
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
        wait: list[float] = []
        i = 0
        for j in range(1, len(inside)):
            a, b = inside[i], inside[j]
            span = b.t - a.t
            if span < WINDOW_S and j < len(inside) - 1:
                continue
            if span < MIN_WINDOW_S:  # too short to measure (counts come in 10 ms ticks): left out
                continue
            n = max(0.0, (b.busy_s - a.busy_s) - max(0.0, b.tree_s - a.tree_s)) / span
            st = max(0.0, b.steal_s - a.steal_s) / span
            w = max(0.0, b.wait_s - a.wait_s) / span
            noise.append(n)
            steal.append(st)
            wait.append(w)
            if n >= NOISE_BOUND_CPUS or st >= STEAL_BOUND_CPUS:
                out.windows.append({
                    "start": round(a.t, 3), "end": round(b.t, 3), "noise_cpus": round(n, 2),
                    "steal_cpus": round(st, 2), "harness_cpu_wait": round(w, 2),
                })
            i = j
        if noise:
            first, last = inside[0], inside[-1]
            total = last.t - first.t
            out.noise_cpus_max = round(max(noise), 2)
            out.steal_cpus_max = round(max(steal), 2)
            out.wait_share_max = round(max(wait), 2)
            if total > 0:
                out.noise_cpus_avg = round(
                    max(0.0, (last.busy_s - first.busy_s) - max(0.0, last.tree_s - first.tree_s)) / total, 2
                )
            if out.noise_cpus_max >= NOISE_BOUND_CPUS:
                why.append(f"other processes used {out.noise_cpus_max} CPUs in a {WINDOW_S:g} s window (bound {NOISE_BOUND_CPUS})")
            if out.steal_cpus_max >= STEAL_BOUND_CPUS:
                why.append(f"the hypervisor stole {out.steal_cpus_max} CPUs in a window (bound {STEAL_BOUND_CPUS})")
    mine = sorted(lag for t, lag in lags if start <= t <= end)
    if mine:
        out.loop_lag_max_s = round(mine[-1], 4)
        out.loop_lag_p99_s = round(mine[min(len(mine) - 1, int(0.99 * len(mine)))], 4)
    out.starved = bool(why)
    out.why = "; ".join(why)
    return out


# -- reading /proc ------------------------------------------------------------------------


def _machine() -> tuple[float, float] | None:
    """(busy CPU seconds, steal seconds) of the whole machine since boot, or None.

    Busy leaves out the time of niced processes (module docstring) unless the harness is niced.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    vals = [int(x) for x in fields[1:]]
    busy = vals[0] + vals[2] + vals[5] + vals[6] + (vals[7] if len(vals) > 7 else 0)
    if _HARNESS_NICED:
        busy += vals[1]
    steal = vals[7] if len(vals) > 7 else 0
    return busy / _TICKS, steal / _TICKS


def _run_queue_wait() -> float:
    """Seconds this process's threads have spent ready to run but not running (since they began)."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        return 0.0
    return total / 1e9


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and of its children it has reaped) for every process."""
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
    """CPU seconds of ``root`` and all its descendants, living or reaped.

    The sum is continuous: when a process reaps a child, the child leaves the tree and its whole
    time enters the parent's ``cutime``. Only a descendant whose parent exits first (adopted by
    init) takes its time out of the tree; :func:`judge` never counts a decrease as noise's own.
    """
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
        self._lock = threading.Lock()
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
        with self._lock:  # the thread and a case's last reading
            machine = _machine()
            if machine is None:
                return
            tree = tree_cpu(self.root, _proc_stats())
            self.samples.append(Sample(time.time(), machine[0], tree, machine[1], _run_queue_wait()))

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
