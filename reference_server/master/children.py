"""What the master knows about its children: slots, running children, retirees, shared memory."""

from __future__ import annotations

import collections
import enum
import mmap
import socket
from dataclasses import dataclass, field

from ..app import ProcessSpec
from ..core.countertable import CounterTable, countertable_size
from ..core.proctable import MAX_PROCESSES, ProcKind, ProcTable, proctable_size
from ..core.registry import SessionTable, table_size

# The master stats block: eight aligned 8-byte slots, each written and read with one store or
# load (as the counter table's rows are), never packed: ``struct.pack_into`` zero-fills what it
# writes first, so a reader in another process could catch a counter at 0.
_ACCEPTED, _REFUSED, _RESPAWNS, _LOST, _STARTED, _READY, _HEARD = range(7)  # slot numbers
MSTATS_SIZE = 64
class SharedState:
    """The one shared mapping: process directory, master stats, counters, session table."""

    def __init__(self, capacity: int) -> None:
        p = proctable_size()
        c = countertable_size(MAX_PROCESSES)
        self.size = p + MSTATS_SIZE + c + table_size(capacity)
        self.mem = mmap.mmap(-1, self.size, flags=mmap.MAP_SHARED)
        view = memoryview(self.mem)
        self.procs = ProcTable(view[:p])
        self._mq = view[p : p + MSTATS_SIZE].cast("Q")  # the integer slots
        self._md = view[p : p + MSTATS_SIZE].cast("d")  # the same slots, as floats (times)
        self.counters = CounterTable(view[p + MSTATS_SIZE : p + MSTATS_SIZE + c], MAX_PROCESSES)
        self.table = SessionTable(view[p + MSTATS_SIZE + c :], capacity, create=True)

    def write_master_stats(self, accepted, refused, respawns, lost, started, ready) -> None:
        q = self._mq
        q[_ACCEPTED], q[_REFUSED], q[_RESPAWNS], q[_LOST] = accepted, refused, respawns, lost
        self._md[_STARTED] = started
        q[_READY] = 1 if ready else 0

    def write_heard(self, when: float) -> None:
        """The broadcaster: everything Redis published before ``when`` has reached the workers."""
        self._md[_HEARD] = when

    def heard_at(self) -> float:
        """The master: the broadcaster's last ``write_heard`` (0.0: never)."""
        return self._md[_HEARD]

    def master_stats(self) -> dict[str, object]:
        q = self._mq
        return {
            "connections_accepted": q[_ACCEPTED],
            "connections_refused": q[_REFUSED],
            "respawns": q[_RESPAWNS],
            "sessions_lost": q[_LOST],
            "started_at": self._md[_STARTED],
            "ready": bool(q[_READY]),
        }


@dataclass
class Child:
    """A running child process, as the master sees it."""

    pid: int
    kind: ProcKind
    index: int
    name: str
    ctl: socket.socket
    started: float
    spec: ProcessSpec | None = None
    ready: bool = False
    full: bool = False  # it said it holds all the connections its descriptors allow (Load)
    stalled: bool = False  # it did not answer a ping in time (master/liveness.py)
    ping_at: float = 0.0  # monotonic time of the ping it has not answered yet (0: none)
    next_ping: float = 0.0
    counter_row: int = 0  # its row of the shared counter table (0: none)
    # (message bytes, connection or None, session id or None) waiting for room
    pending: collections.deque = field(default_factory=collections.deque)


@dataclass(eq=False)
class Slot:
    """A place for one child; survives the child's respawns and reloads."""

    kind: ProcKind
    index: int
    name: str
    spec: ProcessSpec | None = None
    extra_socket: socket.socket | None = None
    quick_crashes: int = 0
    respawn_at: float = 0.0
    generation: int = 1

    @property
    def reloadable(self) -> bool:
        if self.kind in (ProcKind.WORKER, ProcKind.TASK):
            return True
        return self.kind is ProcKind.CUSTOM and self.spec is not None and self.spec.reloadable


class RetireePhase(enum.Enum):
    """Where an old-generation process stands during a reload."""

    WAITING = "waiting"  # for its successor to be ready; it still serves meanwhile
    RETIRED = "retired"  # told to retire: it takes nothing new, hands over, exits
    KILLED = "killed"  # still alive at its deadline: killed (its sessions are lost)


@dataclass(eq=False)
class Retiree:
    """An old-generation process on its way out during reload ``reload_id``."""

    child: Child
    slot: Slot
    reload_id: int
    phase: RetireePhase = RetireePhase.WAITING
    deadline: float = 0.0  # killed after this (monotonic), once retired
    successor_ready: bool = False  # its successor serves: it may retire (one worker at a time)
    retired_at: float = 0.0
