"""Per-process timers (Swoole's ``tick``/``after``/``clear``/``clearAll``).

Timers belong to the process that created them: ``clear_all`` clears only the
calling process's timers, exactly as in Swoole. Each timer is logged when
created and when cleared, with its id and an optional label, so that a timer
that outlives its session can be traced.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.metrics import Counters
from ..logs import Log


@dataclass
class Timer:
    id: int
    interval: float
    repeat: bool
    callback: Callable[..., Any]
    args: tuple
    label: str
    handle: asyncio.TimerHandle | None = None
    fired: int = 0


class Timers:
    def __init__(self, loop: asyncio.AbstractEventLoop, log: Log, counters: Counters) -> None:
        self._loop = loop
        self._log = log
        self._counters = counters
        self._timers: dict[int, Timer] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._timers)

    def describe(self) -> list[dict[str, object]]:
        return [
            {"id": t.id, "interval_ms": t.interval * 1000, "repeat": t.repeat, "label": t.label}
            for t in self._timers.values()
        ]

    def tick(
        self, ms: float, callback: Callable[..., Any], *args: Any, label: str = "", first_ms: float | None = None
    ) -> int:
        """Every ``ms``; the first call after ``first_ms`` (>= 0) if given, else after ``ms``."""
        return self._add(ms, True, callback, args, label, first_ms)

    def after(self, ms: float, callback: Callable[..., Any], *args: Any, label: str = "") -> int:
        return self._add(ms, False, callback, args, label)

    def due(self, tid: int) -> float | None:
        """When timer ``tid`` fires next, on ``time.monotonic()``'s clock (shared by every process
        of the machine); None if there is no such timer."""
        timer = self._timers.get(tid)
        if timer is None or timer.handle is None:
            return None
        return timer.handle.when()

    def _add(self, ms: float, repeat: bool, callback, args, label: str, first_ms: float | None = None) -> int:
        if ms <= 0:
            raise ValueError(f"timer interval must be > 0 ms, got {ms}")
        if first_ms is not None and first_ms < 0:
            raise ValueError(f"first_ms must be >= 0, got {first_ms}")
        tid = self._next_id
        self._next_id += 1
        timer = Timer(tid, ms / 1000.0, repeat, callback, args, label)
        self._timers[tid] = timer
        first = timer.interval if first_ms is None else first_ms / 1000.0
        timer.handle = self._loop.call_later(first, self._fire, timer)
        self._counters["timers_created"] += 1
        self._log.debug("timer.create", timer=tid, interval_ms=ms, repeat=repeat, label=label)
        return tid

    def _fire(self, timer: Timer) -> None:
        if timer.id not in self._timers:
            return
        timer.fired += 1
        if timer.repeat:
            # Schedule the next run first: a callback that clears its own timer wins.
            timer.handle = self._loop.call_later(timer.interval, self._fire, timer)
        else:
            del self._timers[timer.id]
        try:
            result = timer.callback(timer.id, *timer.args)
            if inspect.iscoroutine(result):
                self._loop.create_task(result)
        except Exception as exc:
            self._log.error("timer.callback_failed", timer=timer.id, label=timer.label, error=repr(exc))

    def clear(self, tid: int, *, reason: str = "clear") -> bool:
        timer = self._timers.pop(tid, None)
        if timer is None:
            return False
        if timer.handle is not None:
            timer.handle.cancel()
        self._counters["timers_cleared"] += 1
        self._log.debug("timer.clear", timer=tid, label=timer.label, reason=reason, fired=timer.fired)
        return True

    def clear_all(self, *, reason: str = "clear_all") -> int:
        ids = list(self._timers)
        for tid in ids:
            self.clear(tid, reason=reason)
        return len(ids)
