"""Every process's counters in the shared mapping, so that none is lost when a process dies.

Contract 4.2: no counter ever decreases while the server runs. A process killed with
SIGKILL cannot report anything on its way out, and one that is stopped (SIGSTOP) cannot
answer a stats request; so each child writes its counters *through* to a row of this
table as it counts (:class:`SharedCounters`), and the admin process sums the table
(:meth:`CounterTable.totals`) instead of asking every process.

Layout (all little-endian unsigned 64-bit integers, aligned):

* a header: the harvest sequence number (even at rest, odd while the master moves a row);
* row 0: the totals of every process that has exited (the *harvested* row);
* rows 1..``rows``: one per running child, handed out by the master before the fork.

Writers: a child writes only its own row, one aligned 8-byte store per increment (a reader
may see an increment early or late, never a torn value on the platforms this server runs
on). The master is the only writer of row 0 and the only one that frees a row: when it has
reaped a child it adds the child's row to row 0 and zeroes the row, inside the sequence
number, so a reader retries instead of counting the row twice or not at all.

Counter names outside :data:`COUNTER_NAMES` (an application's own) stay in the process
and are reported by it while it runs; they are not kept across its death.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from .metrics import STANDARD_COUNTERS, Counters

#: Counters the reference keeps besides the standard ones, also kept across a process's death.
EXTRA_COUNTERS: tuple[str, ...] = (
    "slow_closed", "handshakes_refused", "admin_refused", "connections_shed",
    "bc_batches", "bc_catchup_incomplete", "bc_deliveries", "bc_forwarded", "bc_outages", "bc_received",
    "bc_reconnect_attempts", "bc_reconnects", "bc_register_timeouts", "bc_rejected", "bc_slow_closed",
    "bc_sync_timeouts", "bc_unrouted", "bc_writes",
)
#: The names the table keeps, in row order.
COUNTER_NAMES: tuple[str, ...] = tuple(dict.fromkeys((*STANDARD_COUNTERS, *EXTRA_COUNTERS)))
_INDEX: dict[str, int] = {name: i for i, name in enumerate(COUNTER_NAMES)}
_WIDTH = len(COUNTER_NAMES)
_HEADER = 64
_SEQ = struct.Struct("<Q")
#: Tries of a read before it gives up waiting for a harvest (which takes microseconds).
_READ_TRIES = 10_000


def countertable_size(rows: int) -> int:
    return _HEADER + (rows + 1) * _WIDTH * 8


class CounterTable:
    """The counters of every process (see the module docstring); ``rows`` children at most at once."""

    def __init__(self, buf: memoryview, rows: int) -> None:
        if len(buf) < countertable_size(rows):
            raise ValueError("counter table buffer too small")
        self.rows = rows
        self._head = buf[:_HEADER]
        self._cells = buf[_HEADER : countertable_size(rows)].cast("Q")
        self._free = list(range(rows, 0, -1))  # the master's view; children never allocate

    # -- the master --------------------------------------------------------------------

    def allocate(self) -> int:
        """A zeroed row for a child about to be forked (RuntimeError when none is free)."""
        if not self._free:
            raise RuntimeError(f"no free counter row: more than {self.rows} processes at once")
        row = self._free.pop()
        self._cells[row * _WIDTH : (row + 1) * _WIDTH] = memoryview(bytes(_WIDTH * 8)).cast("Q")
        return row

    def harvest(self, row: int) -> None:
        """A reaped child's counters join the totals of exited processes; its row is free again."""
        seq = _SEQ.unpack_from(self._head, 0)[0]
        _SEQ.pack_into(self._head, 0, seq + 1)
        cells, base = self._cells, row * _WIDTH
        for i in range(_WIDTH):
            if cells[base + i]:
                cells[i] += cells[base + i]
                cells[base + i] = 0
        _SEQ.pack_into(self._head, 0, seq + 2)
        self._free.append(row)

    # -- a child -----------------------------------------------------------------------

    def row_view(self, row: int) -> memoryview:
        """The cells of one row, for :class:`SharedCounters`."""
        if not 1 <= row <= self.rows:
            raise ValueError(f"counter row {row} out of range 1..{self.rows}")
        return self._cells[row * _WIDTH : (row + 1) * _WIDTH]

    # -- readers (the admin process) ---------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Every kept counter summed over exited and running processes (never torn by a harvest)."""
        values: list[int] = []
        for _ in range(_READ_TRIES):
            before = _SEQ.unpack_from(self._head, 0)[0]
            if before % 2:
                continue
            values = self._cells.tolist()
            if _SEQ.unpack_from(self._head, 0)[0] == before:
                break
            values = []
        if not values:  # a master that died mid-harvest: read what is there
            values = self._cells.tolist()
        sums = [sum(values[i::_WIDTH]) for i in range(_WIDTH)]
        return dict(zip(COUNTER_NAMES, sums, strict=True))


class SharedCounters(Counters):
    """A process's :class:`Counters`, each kept name also written through to its table row."""

    def __init__(self, row: memoryview | None = None) -> None:
        super().__init__()
        self._row = row

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        i = _INDEX.get(key)
        if i is not None and self._row is not None:
            self._row[i] = int(value) if value > 0 else 0


def unkept(snapshots: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The counters of running processes' snapshots that the table does not keep, summed."""
    total: dict[str, int] = {}
    for snap in snapshots:
        for name, value in snap.items():
            if name not in _INDEX:
                total[name] = total.get(name, 0) + int(value)
    return total
