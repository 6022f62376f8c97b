"""Harness runs that share one machine: a case that loads it runs alone among them.

``./run compare --jobs N`` and the bite tests run several pytest processes at once. Most
cases spend their time waiting on their target, and share two cores well. A few keep the
harness itself busy reading: ``reload_ticks`` has 200 clients ticking every 10 ms, 20,000
messages a second for the harness to parse. Two of those at once overload two cores: each
harness falls behind its sockets, one turn of its event loop drains 200 backlogs and lasts
tens of seconds, and both cases end inconclusive or past their bound (seen in CI: a Swoole
``reload_ticks`` took 330 s beside the naive-reload variant's, its loop late by 87 s; alone,
4 s).

Such a case is marked ``@pytest.mark.heavy(reason)``. Every harness process given the same
directory (``$SCENARIO_SHARE_DIR``) takes a lock in it around each scenario case: shared for
an ordinary case, exclusive for a heavy one, so a heavy case runs while no other case of
those processes does. A heavy case that waits holds the turnstile, so no new ordinary case
starts meanwhile (it does not wait behind a stream of them). Without the variable nothing is
locked: a single run owns its machine.

The locks are ``flock(2)`` locks on two files: the kernel releases them when a process exits,
however it exits, so a killed run never blocks the others.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The environment variable naming the directory that the runs sharing a machine share.
ENV = "SCENARIO_SHARE_DIR"


def share_dir() -> Path | None:
    """The directory named by ``$SCENARIO_SHARE_DIR``, or None (this run does not share)."""
    value = os.environ.get(ENV, "")
    return Path(value) if value else None


@contextmanager
def turn(directory: Path | None, *, heavy: bool) -> Iterator[float]:
    """Hold the machine for one case: alone if ``heavy``, else beside other ordinary cases.

    Yields how long it waited, in seconds. With ``directory`` None it neither waits nor locks.
    The wait has no bound of its own: each case it waits for ends within its own scenario bound,
    and the case that waits is ended by pytest-timeout's backstop (it covers setup) if one did not.
    """
    if directory is None:
        yield 0.0
        return
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    turnstile = os.open(directory / "turnstile.lock", os.O_RDWR | os.O_CREAT, 0o600)
    room = os.open(directory / "room.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            # A heavy case holds the turnstile until it has the room: ordinary cases queue behind it.
            fcntl.flock(room, fcntl.LOCK_EX if heavy else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield time.monotonic() - started
    finally:
        os.close(room)  # closing the last descriptor of the file description releases its lock
        os.close(turnstile)
