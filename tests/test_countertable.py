"""The shared counter table: what a process counted outlives it (contract 4.2), reads are never torn."""

from __future__ import annotations

import mmap
import os
import signal

import pytest

from reference_server.core.countertable import (
    COUNTER_NAMES,
    CounterTable,
    SharedCounters,
    countertable_size,
    unkept,
)
from reference_server.core.metrics import STANDARD_COUNTERS


def _table(rows: int = 4) -> CounterTable:
    return CounterTable(memoryview(bytearray(countertable_size(rows))), rows)


def test_every_standard_counter_is_kept() -> None:
    assert set(STANDARD_COUNTERS) <= set(COUNTER_NAMES)
    assert len(COUNTER_NAMES) == len(set(COUNTER_NAMES))


def test_writes_go_through_and_survive_a_harvest() -> None:
    table = _table()
    a, b = table.allocate(), table.allocate()
    ca, cb = SharedCounters(table.row_view(a)), SharedCounters(table.row_view(b))
    ca["pushes"] += 3
    cb["pushes"] += 4
    cb["sessions_opened"] += 1
    assert table.totals()["pushes"] == 7
    table.harvest(a)  # a died: its 3 pushes still count
    assert table.totals()["pushes"] == 7 and table.totals()["sessions_opened"] == 1
    c = table.allocate()  # the freed row comes back zeroed
    assert c == a and all(v == 0 for v in table.row_view(c).tolist())
    SharedCounters(table.row_view(c))["pushes"] += 1
    assert table.totals()["pushes"] == 8


def test_an_unkept_name_stays_in_the_process() -> None:
    table = _table()
    counters = SharedCounters(table.row_view(table.allocate()))
    counters["my_app_counter"] += 5
    assert counters["my_app_counter"] == 5
    assert "my_app_counter" not in table.totals()
    assert unkept([counters.snapshot(), {"my_app_counter": 1, "pushes": 9}]) == {"my_app_counter": 6}


def test_rows_run_out_loudly_and_bad_rows_are_refused() -> None:
    table = _table(rows=2)
    table.allocate(), table.allocate()
    with pytest.raises(RuntimeError, match="no free counter row"):
        table.allocate()
    with pytest.raises(ValueError, match="out of range"):
        table.row_view(0)
    with pytest.raises(ValueError, match="too small"):
        CounterTable(memoryview(bytearray(10)), 2)


def test_a_process_killed_with_sigkill_keeps_its_counts() -> None:
    """The point of the table: a child that counted and was killed -9 still counts."""
    size = countertable_size(4)
    mem = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    table = CounterTable(memoryview(mem), 4)
    row = table.allocate()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: count, say so, wait to be killed
        counters = SharedCounters(table.row_view(row))
        for _ in range(41):
            counters["sessions_opened"] += 1
        os.write(w, b"x")
        signal.pause()
        os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        table.harvest(row)
        assert table.totals()["sessions_opened"] == 41
    finally:
        os.close(r)
        os.close(w)
        del table
        mem.close()
