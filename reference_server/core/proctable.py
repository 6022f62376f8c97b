"""The process directory: which processes a server runs, readable from all of them.

Like the session table it lives in the shared mapping and is only interpreted
here. The master is its single writer; every process reads it to find a
worker's or task worker's pid (to route a push, a task or a pipe message) and
to list the server's processes (admin API, stats).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

_ENTRY = struct.Struct("<IBBhiId32s")
ENTRY_SIZE = 64
#: One byte after the entry, outside its seqlock: 1 while the master finds the process stalled
#: (``master/liveness.py``). A single byte is written and read whole.
_STALLED_AT = _ENTRY.size
assert _ENTRY.size < ENTRY_SIZE
_SEQ = struct.Struct("<I")
_HWM = struct.Struct("<I")  # header: one past the highest slot ever used
HEADER_SIZE = 64
MAX_PROCESSES = 256


class ProcKind(enum.IntEnum):
    WORKER = 1
    TASK = 2
    CUSTOM = 3
    ADMIN = 4
    BROKER = 5
    BROADCASTER = 6

    @property
    def label(self) -> str:
        return {1: "worker", 2: "task_worker", 3: "custom", 4: "admin", 5: "broker", 6: "broadcaster"}[int(self)]


#: Processes that never address sessions: sync and barrier rounds do not wait for them.
QUIET_KINDS = frozenset({ProcKind.BROKER, ProcKind.BROADCASTER})


class ProcState(enum.IntEnum):
    EMPTY = 0
    STARTING = 1
    READY = 2
    STOPPING = 3


_STATES = {int(s): s for s in ProcState}  # dict lookups: cheaper than Enum(value) on hot paths
_KINDS = {int(k): k for k in ProcKind}


@dataclass(frozen=True, slots=True)
class ProcEntry:
    slot: int
    state: ProcState
    kind: ProcKind
    index: int  # worker id / task worker id / custom process index
    pid: int
    generation: int
    started: float
    name: str
    stalled: bool = False  # the master found it not answering (it is not waited for)

    def as_dict(self) -> dict[str, object]:
        """The entry of ``GET /v1/processes``. A process that is stopping (its successor of a
        reload may run already, under the same slot name) is listed as ``<name>.retiring-<pid>``,
        so that names stay unique (contract section 4)."""
        stopping = self.state is ProcState.STOPPING
        return {
            "kind": self.kind.label,
            "id": self.index,
            "pid": self.pid,
            "state": self.state.name.lower(),
            "generation": self.generation,
            "started": self.started,
            "name": f"{self.name}.retiring-{self.pid}" if stopping else self.name,
        }


def proctable_size() -> int:
    return HEADER_SIZE + MAX_PROCESSES * ENTRY_SIZE


class ProcTable:
    """Interpret ``buf`` as the process directory."""

    def __init__(self, buf: bytearray | memoryview) -> None:
        if len(buf) < proctable_size():
            raise ValueError("buffer too small for the process table")
        self._buf = buf
        # The sequence numbers and the high-water mark are written with one aligned 4-byte
        # store each: ``struct.pack_into`` zero-fills before it writes, and a reader that caught
        # a zero there would take a half-written entry for a settled one (or see no process).
        self._u32 = memoryview(buf)[: proctable_size()].cast("B").cast("I")

    @property
    def high_water(self) -> int:
        return _HWM.unpack_from(self._buf, 0)[0]

    def _read(self, slot: int) -> tuple:
        off = HEADER_SIZE + slot * ENTRY_SIZE
        while True:
            (s1,) = _SEQ.unpack_from(self._buf, off)
            if s1 & 1:
                continue
            f = _ENTRY.unpack_from(self._buf, off)
            (s2,) = _SEQ.unpack_from(self._buf, off)
            if s1 == s2:
                return f

    def entries(self) -> Iterator[ProcEntry]:
        for slot in range(self.high_water):
            f = self._read(slot)
            if f[1] != ProcState.EMPTY:
                yield ProcEntry(
                    slot=slot,
                    state=_STATES[f[1]],
                    kind=_KINDS[f[2]],
                    index=f[3],
                    pid=f[4],
                    generation=f[5],
                    started=f[6],
                    name=f[7].rstrip(b"\0").decode(),
                    stalled=bool(self._buf[HEADER_SIZE + slot * ENTRY_SIZE + _STALLED_AT]),
                )

    def find(self, kind: ProcKind, index: int | None = None) -> list[ProcEntry]:
        return [
            e for e in self.entries() if e.kind is kind and (index is None or e.index == index)
        ]

    def by_pid(self, pid: int) -> ProcEntry | None:
        for e in self.entries():
            if e.pid == pid:
                return e
        return None

    # -- master only --------------------------------------------------------

    def put(
        self,
        *,
        kind: ProcKind,
        index: int,
        pid: int,
        generation: int,
        started: float,
        name: str,
        state: ProcState = ProcState.STARTING,
    ) -> int:
        for slot in range(MAX_PROCESSES):
            if self._read(slot)[1] == ProcState.EMPTY:
                self._write(slot, state, kind, index, pid, generation, started, name)
                if slot >= self.high_water:
                    self._u32[0] = slot + 1
                return slot
        raise RuntimeError(f"more than {MAX_PROCESSES} processes")

    def set_state(self, pid: int, state: ProcState) -> None:
        e = self.by_pid(pid)
        if e is not None:
            self._write(e.slot, state, e.kind, e.index, e.pid, e.generation, e.started, e.name)

    def set_stalled(self, pid: int, stalled: bool) -> None:
        e = self.by_pid(pid)
        if e is not None:
            self._buf[HEADER_SIZE + e.slot * ENTRY_SIZE + _STALLED_AT] = int(stalled)

    def remove(self, pid: int) -> None:
        e = self.by_pid(pid)
        if e is not None:
            self._write(e.slot, ProcState.EMPTY, e.kind, 0, 0, 0, 0.0, "")

    def _write(self, slot, state, kind, index, pid, generation, started, name) -> None:
        off = HEADER_SIZE + slot * ENTRY_SIZE
        i = off // 4
        seq = self._u32[i]
        packed = _ENTRY.pack(seq + 1, int(state), int(kind), index, pid, generation, started, name.encode()[:32])
        self._u32[i] = seq + 1  # odd: readers wait
        self._buf[off + _SEQ.size : off + _ENTRY.size] = packed[_SEQ.size :]
        if state is ProcState.EMPTY or state is ProcState.STARTING:
            self._buf[off + _STALLED_AT] = 0
        self._u32[i] = seq + 2
