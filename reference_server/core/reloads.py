"""Reload bookkeeping (pure): requests, merging, generations, history.

The master owns one :class:`ReloadBook`. A reload replaces a *scope* of
processes by a new generation: ``all`` (workers, task workers, and custom
processes declared reloadable) or ``task_workers``. At most one reload runs
at a time:

* A request while none runs **starts** one. It gets the next reload id, and
  the processes it starts get generation ``id + 1`` (the first processes are
  generation 1; a process keeps the generation of the reload that started it,
  so after a task-worker-only reload the workers keep theirs).
* A request while one runs is **merged** into it: the caller is told the id
  it joined. If it asks for more than the running reload covers (``all``
  while ``task_workers`` runs), the running reload is **widened** to cover
  it; the master then replaces the extra processes in the same generation.
  Nothing is lost, nothing runs twice at once.

Every reload keeps a record (who asked, when, what each old process reported
on its way out, forced kills, duration); the last :data:`HISTORY` are kept.
"""

from __future__ import annotations

import enum
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: How many finished reloads the book remembers.
HISTORY = 32
#: How many retired processes are remembered by pid (their last report came: no more listed).
RECENT_PIDS = 256


class ReloadScope(enum.Enum):
    ALL = "all"
    TASK_WORKERS = "task_workers"

    @property
    def kinds(self) -> frozenset[str]:
        """Process kinds (``ProcKind.label``) the scope replaces."""
        if self is ReloadScope.ALL:
            return frozenset({"worker", "task_worker", "custom"})
        return frozenset({"task_worker"})

    @classmethod
    def parse(cls, value: Any) -> ReloadScope:
        for scope in cls:
            if value == scope.value:
                return scope
        raise ValueError(f"reload scope must be one of {[s.value for s in cls]}, got {value!r}")


class ReloadState(enum.Enum):
    RUNNING = "running"
    DONE = "done"


@dataclass
class Reload:
    id: int
    generation: int
    kinds: set[str]
    started: float  # wall clock
    started_mono: float
    requests: list[dict[str, Any]] = field(default_factory=list)
    state: ReloadState = ReloadState.RUNNING
    replaced: list[dict[str, Any]] = field(default_factory=list)  # old process -> new one
    retired: list[dict[str, Any]] = field(default_factory=list)  # each old process's own report
    forced_kills: int = 0
    sessions_lost: int = 0
    finished: float = 0.0
    duration_ms: float = 0.0

    @property
    def merged(self) -> int:
        return sum(1 for r in self.requests if r["merged"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "reload": self.id,
            "generation": self.generation,
            "scope": sorted(self.kinds),
            "state": self.state.value,
            "started": self.started,
            "finished": self.finished or None,
            "duration_ms": round(self.duration_ms, 3) if self.state is ReloadState.DONE else None,
            "requests": list(self.requests),
            "merged_requests": self.merged,
            "replaced": list(self.replaced),
            "retired": list(self.retired),
            "forced_kills": self.forced_kills,
            "sessions_lost": self.sessions_lost,
        }


@dataclass
class Ticket:
    """What a requester is told: the reload it started or joined."""

    reload: Reload
    merged: bool
    widened: frozenset[str]  # kinds added to a running reload by this request


class ReloadBook:
    def __init__(self) -> None:
        self.current: Reload | None = None
        self.history: deque[Reload] = deque(maxlen=HISTORY)
        self.counters: Counter[str] = Counter()
        self.generation = 1  # of the newest processes started by any reload
        self._next_id = 1
        self.retired_pids: deque[int] = deque(maxlen=RECENT_PIDS)

    def request(self, scope: ReloadScope, source: str, *, now: float | None = None, mono: float | None = None) -> Ticket:
        """Start a reload, or merge the request into the one running."""
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        self.counters["requested"] += 1
        wanted = set(scope.kinds)
        current = self.current
        if current is None:
            current = Reload(self._next_id, self._next_id + 1, wanted, now, mono)
            self._next_id += 1
            self.generation = current.generation
            self.current = current
            current.requests.append({"source": source, "scope": scope.value, "at": now, "merged": False})
            return Ticket(current, False, frozenset(wanted))
        widened = frozenset(wanted - current.kinds)
        current.kinds |= wanted
        current.requests.append({"source": source, "scope": scope.value, "at": now, "merged": True})
        self.counters["merged"] += 1
        return Ticket(current, True, widened)

    def note_forced_kill(self) -> None:
        self.counters["forced_kills"] += 1
        if self.current is not None:
            self.current.forced_kills += 1

    def note_retired(self, pid: int, report: dict[str, Any]) -> None:
        """An old process's last report (its counters are kept by the shared counter table)."""
        if self.current is not None:
            self.current.retired.append(report)
        self.retired_pids.append(pid)

    def finish(self, *, now: float | None = None, mono: float | None = None) -> Reload:
        current = self.current
        if current is None:
            raise RuntimeError("no reload is running")
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        current.state = ReloadState.DONE
        current.finished = now
        current.duration_ms = (mono - current.started_mono) * 1000.0
        self.counters["completed"] += 1
        self.history.append(current)
        self.current = None
        return current

    def find(self, reload_id: int) -> Reload | None:
        if self.current is not None and self.current.id == reload_id:
            return self.current
        return next((r for r in self.history if r.id == reload_id), None)

    def status(self) -> dict[str, Any]:
        return {
            "running": self.current.as_dict() if self.current is not None else None,
            "history": [r.as_dict() for r in self.history],
            "counters": {k: self.counters.get(k, 0) for k in ("requested", "merged", "completed", "forced_kills")},
            "generation": self.generation,
        }

    def retired_totals(self) -> dict[str, Any]:
        """The pids of processes that have sent their last report (no more listed as running)."""
        return {"pids": list(self.retired_pids)}
