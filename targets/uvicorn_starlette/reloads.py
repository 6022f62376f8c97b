"""The supervisor's book of reloads (contract section 8): pure state, no I/O.

A request starts a reload, or joins (and may widen) the one that runs: two
reloads never run at once. Reload *n* starts processes of generation
*n + 1*; the first processes are generation 1. The supervisor's main thread
does the work (``supervisor.py``) and closes the record with :meth:`finish`.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

KINDS = {"all": ("task_workers", "workers"), "task_workers": ("task_workers",)}
#: The record's ``scope`` names process kinds as /v1/processes does (contract 8).
PROCESS_KIND = {"workers": "worker", "task_workers": "task_worker"}
HISTORY = 50


@dataclass
class Reload:
    id: int
    generation: int
    kinds: set[str]
    started: float
    requests: list[dict[str, Any]] = field(default_factory=list)
    retired: list[dict[str, Any]] = field(default_factory=list)
    forced_kills: int = 0
    sessions_lost: int = 0
    finished: float | None = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        done = self.finished is not None
        return {
            "reload": self.id, "generation": self.generation, "scope": sorted(PROCESS_KIND[k] for k in self.kinds),
            "state": "done" if done else "running", "started": self.started, "finished": self.finished,
            "duration_ms": round((self.finished - self.started) * 1000, 3) if done else None,
            "requests": list(self.requests), "merged_requests": sum(1 for r in self.requests if r["merged"]),
            "retired": list(self.retired), "forced_kills": self.forced_kills, "sessions_lost": self.sessions_lost,
            "error": self.error or None,
        }


class ReloadBook:
    def __init__(self) -> None:
        self.running: Reload | None = None
        self.history: deque[Reload] = deque(maxlen=HISTORY)
        self.counters: Counter[str] = Counter({"requested": 0, "merged": 0, "completed": 0, "forced_kills": 0})
        self.generation = 1
        self.next_id = 1

    def request(self, scope: str, source: str, now: float | None = None) -> tuple[Reload, bool]:
        """The reload this request started (merged False) or joined (merged True)."""
        if scope not in KINDS:
            raise ValueError(f"scope {scope!r} is not 'all' or 'task_workers'")
        now = time.time() if now is None else now
        self.counters["requested"] += 1
        if self.running is None:
            self.running = Reload(self.next_id, self.next_id + 1, set(KINDS[scope]), now)
            self.next_id += 1
            self.generation = self.running.generation
            merged = False
        else:
            self.running.kinds |= set(KINDS[scope])
            self.counters["merged"] += 1
            merged = True
        self.running.requests.append({"source": source, "scope": scope, "at": now, "merged": merged})
        return self.running, merged

    def finish(self, now: float | None = None) -> Reload:
        record = self.running
        assert record is not None, "no reload runs"
        record.finished = time.time() if now is None else now
        self.counters["completed"] += 1
        self.counters["forced_kills"] += record.forced_kills
        self.history.append(record)
        self.running = None
        return record

    def doc(self) -> dict[str, Any]:
        """``GET /v1/reloads``."""
        return {
            "running": self.running.as_dict() if self.running else None,
            "history": [r.as_dict() for r in self.history],
            "counters": dict(self.counters),
            "generation": self.generation,
        }
