"""The master's acceptor at its limits: out of descriptors it sheds and backs off, refusals are not a log storm."""

from __future__ import annotations

import errno
import json
import socket
from types import SimpleNamespace
from typing import Any

from reference_server.core.ports import RefusalReason
from reference_server.core.proctable import ProcKind
from reference_server.logs import Log
from reference_server.master import acceptor as acceptor_mod
from reference_server.master.acceptor import Acceptor


class Lines:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, text: str) -> None:
        self.lines += [json.loads(t) for t in text.splitlines() if t.strip()]

    def flush(self) -> None:
        pass


class Book:
    def __init__(self) -> None:
        self.refusals: list[str] = []

    def refused(self, port: int, reason: RefusalReason) -> None:
        self.refusals.append(reason.value)


class Ports:
    def __init__(self) -> None:
        self.book = Book()


class Host:
    def __init__(self, log: Log, children: dict) -> None:
        self.log = log
        self.children = children
        self.table = None

    def retired(self, pid: int) -> bool:
        return False


class EmfileListener:
    """accept() fails with EMFILE while ``full``; once the spare is closed it hands one connection over."""

    def __init__(self) -> None:
        self.calls = 0
        self.handed: list[socket.socket] = []

    def accept(self):
        self.calls += 1
        if self.calls == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        a, b = socket.socketpair()
        b.close()
        self.handed.append(a)
        return a, ("127.0.0.1", 1234)


def _acceptor(children: dict | None = None) -> tuple[Acceptor, Lines, Ports]:
    out = Lines()
    log = Log("master", stream=out)
    acc = Acceptor(Host(log, children or {}))
    ports = Ports()
    acc.attach(ports)  # type: ignore[arg-type]
    return acc, out, ports


def test_out_of_descriptors_the_master_sheds_one_and_backs_off() -> None:
    acc, out, ports = _acceptor()
    listener = EmfileListener()
    acc.accept(listener, 8080)  # type: ignore[arg-type]
    assert listener.calls == 2  # the failed accept, then one with the spare descriptor freed
    assert listener.handed[0].fileno() == -1  # that connection was closed at once
    assert acc.refused == 1 and ports.book.refusals == ["no_descriptor"]
    assert acc._spare is not None  # the spare is taken back
    assert acc.paused_until > 0
    acc.accept(listener, 8080)  # type: ignore[arg-type]
    assert listener.calls == 2  # paused: no busy loop on a listener that stays readable
    assert [line["reason"] for line in out.lines if line.get("event") == "accept.refused"] == ["no_descriptor"]


def test_refusals_are_logged_once_per_reason_then_summarised() -> None:
    worker = SimpleNamespace(kind=ProcKind.WORKER, ready=True, full=True, stalled=False, pid=10, index=0)
    acc, out, ports = _acceptor({10: worker})
    acc.tick(0.0)  # the master's loop flushes from its start on
    for _ in range(500):
        a, b = socket.socketpair()
        acc.dispatch(a, ("127.0.0.1", 1), 8080)
        assert a.fileno() == -1
        b.close()
    refused = [line for line in out.lines if line.get("event") == "accept.refused"]
    assert len(refused) == 1 and refused[0]["reason"] == "at_capacity"
    assert acc.refused == 500 and set(ports.book.refusals) == {"at_capacity"}
    acc.tick(60.0)  # a minute later: the summary is due
    summaries = [line for line in out.lines if line.get("event") == "accept.refused.summary"]
    assert len(summaries) == 1 and summaries[0]["suppressed"] == 499


def test_a_full_or_stalled_worker_gets_no_connection() -> None:
    full = SimpleNamespace(kind=ProcKind.WORKER, ready=True, full=True, stalled=False, pid=10, index=0)
    stalled = SimpleNamespace(kind=ProcKind.WORKER, ready=True, full=False, stalled=True, pid=11, index=1)
    good = SimpleNamespace(kind=ProcKind.WORKER, ready=True, full=False, stalled=False, pid=12, index=2)
    acc, _, _ = _acceptor({10: full, 11: stalled, 12: good})
    assert {acc.pick_worker().pid for _ in range(6)} == {12}
    del acc.host.children[12]
    assert acc.pick_worker() is None


def test_the_pause_is_short() -> None:
    assert 0 < acceptor_mod.EMFILE_PAUSE <= 0.1
