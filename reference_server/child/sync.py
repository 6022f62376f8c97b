"""Sync rounds: make sure nothing another process sent us before now is still on its way.

A retiring process (``roles/retiring.py``) asks every other process that may address it
(not the quiet ones, ``core/proctable.QUIET_KINDS``) for a :class:`~reference_server.ipc.messages.Sync`;
each answers :class:`~reference_server.ipc.messages.SyncAck` on its own link to us, behind
everything it sent before, and links are FIFO. A process that exits counts as having
answered once what it sent has been handled. A silent one delays the round by at most its
timeout, and is logged (``sync.timeout``); one the master already found stalled
(``master/liveness.py``) is not asked at all, since it could only time out.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import TYPE_CHECKING

from ..core.proctable import QUIET_KINDS, ProcState
from ..ipc import messages as msg

if TYPE_CHECKING:
    from .context import ChildContext

#: How long a sync round waits for every process to answer.
SYNC_TIMEOUT = 2.0


class SyncRounds:
    """The sync rounds of one process."""

    def __init__(self, rt: ChildContext) -> None:
        self.rt = rt
        self._ids = itertools.count(1)
        self._rounds: dict[int, tuple[set[int], asyncio.Future]] = {}

    async def run(self, timeout: float = SYNC_TIMEOUT) -> list[int]:
        """One round; the pids that did not answer in time."""
        rt = self.rt
        token = next(self._ids)
        me = os.getpid()
        waiting: set[int] = set()
        for entry in rt.procs.entries():
            if entry.pid == me or entry.state is ProcState.EMPTY or entry.kind in QUIET_KINDS or entry.stalled:
                continue
            if rt.links.send(entry.pid, msg.Sync(token, me)):
                waiting.add(entry.pid)
        if not waiting:
            return []
        fut = rt.loop.create_future()
        self._rounds[token] = (waiting, fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            rt.log.warning("sync.timeout", silent_pids=sorted(waiting))
        finally:
            self._rounds.pop(token, None)
        return sorted(waiting)

    def ack(self, token: int, pid: int) -> None:
        entry = self._rounds.get(token)
        if entry is None:
            return
        waiting, fut = entry
        waiting.discard(pid)
        if not waiting and not fut.done():
            fut.set_result(None)

    def peer_gone(self, pid: int) -> None:
        """Process ``pid`` exited (and what it sent was handled): it has answered every round."""
        for token in list(self._rounds):
            self.ack(token, pid)
