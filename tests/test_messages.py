"""The inter-process messages (reference_server/ipc/messages.py) and the tables that dispatch them."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from reference_server.child.runtime import Runtime
from reference_server.core.proctable import ProcKind
from reference_server.ipc import links as ipc
from reference_server.ipc import messages as msg
from reference_server.master.arbiter import Master

ALL = (*msg.TO_CHILD, *msg.TO_MASTER, *msg.PEER)
BROADCASTER_ONLY = {msg.BcRegister, msg.BcSync, msg.BcUnregister}


def _sample(cls: type) -> Any:
    """An instance of record ``cls`` with a value of the right kind in each field."""
    values = {int: 7, float: 1.5, bool: True, str: "s", bytes: b"b"}
    args = []
    for name in cls._fields:  # type: ignore[attr-defined]
        hint = str(cls.__annotations__[name])
        base = next((t for t in values if hint.startswith(t.__name__)), None)
        args.append(values[base] if base is not None else {"field": name})
    return cls(*args)


def test_every_record_is_listed_once_and_says_who_sends_it_to_whom() -> None:
    assert len(set(ALL)) == len(ALL)
    defined = {v for v in vars(msg).values() if isinstance(v, type) and issubclass(v, tuple) and v.__module__ == msg.__name__}
    assert defined == set(ALL), defined ^ set(ALL)
    for cls in ALL:
        first = (cls.__doc__ or "").strip().splitlines()[0]
        assert "->" in first or cls is msg.RpcReply, f"{cls.__name__}: {first!r} names no sender and receiver"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_a_record_survives_the_wire(cls: type) -> None:
    message = _sample(cls)
    again = pickle.loads(ipc.ctl_encode(message))
    assert type(again) is cls and again == message


def test_a_record_crosses_a_peer_link_with_its_socket() -> None:
    """Through the real link: an Adopt arrives typed, with the fd that rode with it."""

    async def main() -> tuple[Any, list[int]]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future = loop.create_future()
        token = f"test-messages-{os.getpid()}"
        inbox = ipc.Inbox(token, loop, lambda m, fds: got.done() or got.set_result((m, fds)), lambda e, x: None)
        links = ipc.PeerLinks(token, loop, on_gone=lambda pid: None)
        a, b = socket.socketpair()
        try:
            sent = msg.Adopt(({"sid": 5},), 12.5, os.getpid(), 1)
            assert links.send(os.getpid(), sent, fds=[a.fileno()])
            return await asyncio.wait_for(got, 5)
        finally:
            links.close()
            inbox.close()
            a.close()
            b.close()

    message, fds = asyncio.run(main())
    try:
        assert isinstance(message, msg.Adopt) and message.snapshots == ({"sid": 5},) and message.src_worker == 1
        assert len(fds) == 1
    finally:
        for fd in fds:
            os.close(fd)


def test_the_master_handles_every_message_a_child_sends() -> None:
    assert set(Master._CHILD_MESSAGES) == set(msg.TO_MASTER)


def test_a_child_handles_every_message_the_master_sends() -> None:
    assert set(Runtime._ctl_table(SimpleNamespace())) == set(msg.TO_CHILD)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind", [ProcKind.WORKER, ProcKind.TASK, ProcKind.CUSTOM, ProcKind.BROADCASTER], ids=lambda k: k.label
)
def test_a_child_handles_every_peer_message_of_its_role(kind: ProcKind) -> None:
    """Broadcast frames are taken ahead of the table (the first ordering rule); the rest by the table."""
    table = Runtime._peer_table(SimpleNamespace(kind=kind))  # type: ignore[arg-type]
    expected = set(msg.PEER) if kind is ProcKind.BROADCASTER else set(msg.PEER) - BROADCASTER_ONLY
    assert set(table) | {msg.Broadcast} == expected


class _Recorder:
    """A stand-in for the runtime's collaborators that writes down what was called, in order."""

    def __init__(self, kind: ProcKind = ProcKind.WORKER) -> None:
        self.calls: list[str] = []
        self.kind = kind
        self.channels = SimpleNamespace(
            pending=True,
            flush=lambda: self._note("flush"),
            on_batch=lambda batch: self._note("batch"),
        )
        self.log = SimpleNamespace(warning=lambda event, **kw: self._note(event))
        self.deliver = lambda op, **kw: self._note(f"deliver {type(op).__name__}")

    def _note(self, what: str) -> None:
        self.calls.append(what)
        if what == "flush":
            self.channels.pending = False


def _dispatch(fake: _Recorder, message: Any, fds: list[int] | None = None) -> None:
    fake._peer_handlers = Runtime._peer_table(fake)  # type: ignore[arg-type, attr-defined]
    Runtime._on_peer_message(fake, message, fds or [])  # type: ignore[arg-type]


def test_buffered_broadcast_frames_are_written_before_any_other_message() -> None:
    fake = _Recorder()
    _dispatch(fake, msg.Push(3, "after the broadcast"))
    assert fake.calls == ["flush", "deliver Push"]


def test_a_broadcast_batch_is_buffered_not_flushed() -> None:
    fake = _Recorder()
    _dispatch(fake, msg.Broadcast([("news", 1, b"x")]))
    assert fake.calls == ["batch"]


def test_a_message_unknown_to_the_role_is_logged_and_its_fds_closed() -> None:
    fake = _Recorder(ProcKind.WORKER)
    r, w = os.pipe()
    try:
        _dispatch(fake, msg.BcSync(1, 2, "news"), [r])  # a worker is not the broadcaster
        assert fake.calls == ["flush", "ipc.unexpected_fds", "ipc.unknown_message"]
        with pytest.raises(OSError):
            os.fstat(r)  # closed by the dispatcher
    finally:
        os.close(w)
