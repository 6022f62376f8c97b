"""The faults the harness applies to a target's processes (Jepsen's nemesis), and what it sees of them.

A fault names a process by the pid ``/v1/processes`` lists (contract 4), is applied with a
signal, and is recorded as a :class:`Window` (what, which process, from when to when) that
the scenario puts in its evidence, so the picture of a run shows when the fault was on.

Only processes of the target the harness started are ever signalled, and a process the
harness stopped (SIGSTOP) is always continued before the scenario ends (:func:`stopped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from .waiting import settle


@dataclass
class Window:
    """A fault as it happened: ``end`` is None for one that has no end (a kill)."""

    fault: str  # "kill", "stop"
    process: str  # the entry's name
    pid: int
    start: float  # Unix seconds
    end: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def proc_state(pid: int) -> str | None:
    """The process's state letter from ``/proc/<pid>/stat`` (``R``, ``S``, ``T``, ``Z``...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] or None


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent: it runs no more and holds no socket."""
    return proc_state(pid) in (None, "Z", "X")


async def kill(name: str, pid: int, *, timeout: float = 5.0) -> Window:
    """SIGKILL one process and wait (bounded) until it no longer runs; its window starts at the signal."""
    window = Window("kill", name, pid, time.time())
    os.kill(pid, signal.SIGKILL)
    await settle(lambda: is_dead(pid), timeout=timeout, interval=0.005)
    return window


async def hold_until(when: float) -> None:
    """Keep a fault on until ``when`` (Unix seconds). The fault's length is a parameter of the
    scenario, like Jepsen's nemesis schedule: this waits for no event, so it is not a stand-in
    for synchronisation (what the scenario observes meanwhile is waited for on its own)."""
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


@contextlib.asynccontextmanager
async def stopped(name: str, pid: int, *, timeout: float = 5.0) -> AsyncIterator[Window]:
    """SIGSTOP one process for the body of the ``async with``; SIGCONT on the way out, whatever happens."""
    window = Window("stop", name, pid, time.time())
    os.kill(pid, signal.SIGSTOP)
    try:
        await settle(lambda: proc_state(pid) in ("T", "t", None), timeout=timeout, interval=0.005)
        yield window
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        window.end = time.time()
