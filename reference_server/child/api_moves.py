"""The server object's migration methods (``Server.move``, ``migrate``, ``affinity``, ``rebalance``).

Callable from any process: a move is run by the session's owner (an RPC when that is
another process, ``child/rpc.py``), by the protocol of ``session/mover.py``. Affinity and
rebalance plans are ``core/placement.py``; they are run with bounded concurrency and report
what moved and what failed, with codes.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from ..core.placement import affinity_target, rebalance_plan
from ..core.proctable import ProcKind, ProcState
from ..core.registry import SessionState
from ..errors import ErrorCode, ServerError

if TYPE_CHECKING:
    from .context import ChildContext


class SessionMoves:
    """Mixed into ``api.Server``."""

    _rt: ChildContext
    last_error: ErrorCode

    async def move(self, session: int, to_worker: int, *, timeout: float = 10.0) -> dict[str, Any]:
        """Move a live session to worker ``to_worker``; return ``{session, from, to, elapsed_ms}``.

        Callable from any process. It returns once the target owns the
        session; operations addressed to it on the way are applied there
        exactly once and in each sender's order, the last of them possibly
        just after this returns (``docs/architecture.md``, migration). Raises
        :class:`ServerError`: ``SESSION_NOT_EXIST`` (1005), ``SESSION_CLOSED``
        (1004, closing), ``NOT_ESTABLISHED`` (8503), ``UNKNOWN_PROCESS``
        (2003, no such running worker), ``ALREADY_THERE`` (2010),
        ``MIGRATION_IN_PROGRESS`` (2011), ``MIGRATION_FAILED`` (2012, the
        session goes on where it was).
        """
        rt = self._rt
        for _ in range(8):
            info = rt.table.lookup(session)
            if info is None:
                raise ServerError(ErrorCode.SESSION_NOT_EXIST, f"session {session} does not exist")
            if info.state is SessionState.CONNECTING:
                raise ServerError(ErrorCode.NOT_ESTABLISHED, f"session {session} has not completed its handshake")
            if info.state is not SessionState.ESTABLISHED:
                raise ServerError(ErrorCode.SESSION_CLOSED, f"session {session} is closing")
            target = rt.find_worker(to_worker)
            if target is None:
                raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no running worker {to_worker}")
            if info.owner_pid == target.pid and not info.migrating:
                raise ServerError(ErrorCode.ALREADY_THERE, f"session {session} is already in worker {to_worker}")
            try:
                if info.owner_pid == os.getpid():
                    return await rt.mover.move_out(session, to_worker)
                return await rt.call(info.owner_pid, "migrate", (session, to_worker), timeout)
            except ServerError as exc:
                if exc.code is not ErrorCode.MOVED:
                    raise
        raise ServerError(ErrorCode.MIGRATION_FAILED, f"session {session} kept moving; try again")

    async def migrate(self, session: int, to_worker: int) -> bool:
        """Swoole-style :meth:`move`: True, or False with :attr:`last_error` set."""
        try:
            await self.move(session, to_worker)
        except ServerError as exc:
            self.last_error = exc.code
            return False
        self.last_error = ErrorCode.OK
        return True

    async def affinity(
        self,
        *,
        group: int | None = None,
        sessions: list[int] | None = None,
        to_worker: int | None = None,
        concurrency: int = 16,
    ) -> dict[str, Any]:
        """Move every session of a group (or the given sessions) into one worker.

        Without ``to_worker``, the worker that already holds most of them is
        chosen (the lowest id on a tie), so the fewest move. Returns what was
        moved, what was already there, and what failed (with codes).
        """
        rt = self._rt
        if (group is None) == (sessions is None):
            raise ServerError(ErrorCode.BAD_REQUEST, "give either a group or a list of sessions")
        live = {info.session: info for info in rt.table.sessions(established_only=True)}
        if group is not None:
            members = [info for info in live.values() if info.group == group]
            missing: list[int] = []
        else:
            wanted = list(dict.fromkeys(sessions or []))
            members = [live[s] for s in wanted if s in live]
            missing = [s for s in wanted if s not in live]
        workers = self._running_workers()
        if to_worker is None:
            to_worker = affinity_target((info.worker for info in members), workers)
            if to_worker is None:
                raise ServerError(ErrorCode.UNKNOWN_PROCESS, "no running worker")
        elif to_worker not in workers:
            raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no running worker {to_worker}")
        plan = [(info.session, info.worker, to_worker) for info in members if info.worker != to_worker]
        moved, failed = await self._run_moves(plan, concurrency)
        failed += [self._failure(s, None, to_worker, ServerError(ErrorCode.SESSION_NOT_EXIST, "not live")) for s in missing]
        return {
            "group": group,
            "worker": to_worker,
            "members": len(members),
            "already_there": len(members) - len(plan),
            "moved": moved,
            "failed": failed,
        }

    async def rebalance(self, *, concurrency: int = 16) -> dict[str, Any]:
        """Even out established sessions across running workers (counts differ by at most one).

        Moves as few sessions as possible, from the fullest workers to the
        emptiest; returns the counts before, the moves made, and failures.
        """
        workers = self._running_workers()
        if not workers:
            raise ServerError(ErrorCode.UNKNOWN_PROCESS, "no running worker")
        by_worker: dict[int, list[int]] = {w: [] for w in workers}
        for info in self._rt.table.sessions(established_only=True):
            if info.worker in by_worker and not info.migrating:
                by_worker[info.worker].append(info.session)
        before = {w: len(s) for w, s in by_worker.items()}
        plan, counts = rebalance_plan(by_worker)
        moved, failed = await self._run_moves(plan, concurrency)
        return {"before": before, "planned": counts, "moved": moved, "failed": failed}

    def _running_workers(self) -> list[int]:
        return sorted(
            {e.index for e in self._rt.procs.entries() if e.kind is ProcKind.WORKER and e.state is ProcState.READY}
        )

    async def _run_moves(
        self, plan: list[tuple[int, int, int]], concurrency: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        moved: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(sid: int, src: int, dst: int) -> None:
            async with gate:
                try:
                    moved.append(await self.move(sid, dst))
                except ServerError as exc:
                    failed.append(self._failure(sid, src, dst, exc))

        await asyncio.gather(*(one(*step) for step in plan))
        return moved, failed

    @staticmethod
    def _failure(sid: int, src: int | None, dst: int, exc: ServerError) -> dict[str, Any]:
        return {"session": sid, "from": src, "to": dst, "code": int(exc.code), "name": exc.code.name, "message": exc.message}
