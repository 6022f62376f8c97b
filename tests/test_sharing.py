"""Runs sharing a machine (scenarios/harness/sharing.py): a heavy case runs alone, ordinary ones together.

Each holder is a thread with its own open files: flock(2) locks belong to open file
descriptions, so two threads conflict exactly as two harness processes do.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from scenarios.harness.sharing import ENV, share_dir, turn
from scenarios.harness.waiting import WaitTimeout

BOUND_S = 10.0


class Holder(threading.Thread):
    """Holds a turn until told to let go; ``has`` is set once it holds it."""

    def __init__(self, directory: Path, *, heavy: bool) -> None:
        super().__init__(daemon=True)
        self.directory, self.heavy = directory, heavy
        self.has = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        with turn(self.directory, heavy=self.heavy):
            self.has.set()
            self.release.wait(BOUND_S)

    def done(self) -> None:
        self.release.set()
        self.join(BOUND_S)
        assert not self.is_alive()


def locked(path: Path) -> bool:
    """Whether someone holds ``path`` exclusively (a non-blocking shared lock is refused)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait(condition, what: str) -> None:
    event = threading.Event()
    for _ in range(int(BOUND_S / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise WaitTimeout(f"timed out waiting for {what}")


def holding(directory: Path, *, heavy: bool) -> Holder:
    """A holder that has its turn."""
    h = Holder(directory, heavy=heavy)
    h.start()
    assert h.has.wait(BOUND_S), f"a {'heavy' if heavy else 'ordinary'} case did not get its turn"
    return h


def queued_heavy(directory: Path) -> Holder:
    """A heavy holder waiting for the room: it holds the turnstile, and has no turn yet."""
    h = Holder(directory, heavy=True)
    h.start()
    wait(lambda: locked(directory / "turnstile.lock"), "the heavy case at the turnstile")
    assert not h.has.is_set()
    return h


def test_ordinary_cases_share_the_machine(tmp_path: Path) -> None:
    a = holding(tmp_path, heavy=False)
    b = holding(tmp_path, heavy=False)  # while a holds its turn
    a.done()
    b.done()


def test_a_heavy_case_waits_for_the_running_ones_and_holds_new_ones_back(tmp_path: Path) -> None:
    running = holding(tmp_path, heavy=False)
    # The heavy case queues at the room holding the turnstile: it cannot have the room while the
    # ordinary case is in it.
    heavy = queued_heavy(tmp_path)
    later = Holder(tmp_path, heavy=False)
    later.start()
    running.done()
    assert heavy.has.wait(BOUND_S), "the heavy case did not get the machine once the running case ended"
    assert not later.has.is_set(), "an ordinary case that came after the heavy one ran beside it"
    heavy.done()
    assert later.has.wait(BOUND_S), "the ordinary case never ran after the heavy one"
    later.done()


def test_two_heavy_cases_take_turns(tmp_path: Path) -> None:
    first = holding(tmp_path, heavy=True)
    second = queued_heavy(tmp_path)
    first.done()
    assert second.has.wait(BOUND_S)
    second.done()


def test_a_run_that_dies_gives_its_turn_back(tmp_path: Path) -> None:
    """A killed harness never blocks the others: its descriptors close, its locks go."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child holds a heavy turn and dies holding it
        with turn(tmp_path, heavy=True):
            os._exit(0)
    os.waitpid(pid, 0)
    holding(tmp_path, heavy=True).done()


def test_without_a_directory_nothing_is_locked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert share_dir() is None
    with turn(None, heavy=True) as waited:
        assert waited == 0.0
    monkeypatch.setenv(ENV, str(tmp_path))
    assert share_dir() == tmp_path
