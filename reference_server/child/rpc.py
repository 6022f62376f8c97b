"""Calls between child processes: one process asks another to run a method and waits.

``Rpc`` (peer message :class:`~reference_server.ipc.messages.Rpc`) carries a request id,
the pid to answer, the method and its arguments; the answer is
:class:`~reference_server.ipc.messages.RpcReply` (a value, or an error's code and
message). A call that cannot be sent, or gets no answer within its timeout, fails with
``OWNER_UNREACHABLE``; an unknown method answers ``NOT_FOUND``; a method that raises
something else answers ``INTERNAL`` and is logged with its traceback.

The methods a process serves (:data:`METHODS`): ``stats`` (its own figures, for
``/v1/stats``), ``migrate`` (move one of its sessions, ``session/mover.py``) and
``app_request`` (the application's ``on_request`` hook).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.proctable import ProcState
from ..errors import ErrorCode, ServerError
from ..ipc import messages as msg

if TYPE_CHECKING:
    from .context import ChildContext


class Rpc:
    """The calls this process made and waits for, and the methods it serves."""

    def __init__(self, rt: ChildContext, local_stats: Callable[[], dict[str, Any]]) -> None:
        self.rt = rt
        self.local_stats = local_stats
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.methods: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "stats": self._stats,
            "migrate": self._migrate,
            "app_request": self._app_request,
        }

    async def call(self, pid: int, method: str, args: Any, timeout: float) -> Any:
        """Run ``method`` in process ``pid``; its value, or ServerError."""
        rt = self.rt
        req_id = next(self._ids)
        fut = rt.loop.create_future()
        self._waiting[req_id] = fut
        if not rt.links.send(pid, msg.Rpc(req_id, os.getpid(), method, args)):
            self._waiting.pop(req_id, None)
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"process {pid} cannot be reached")
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"process {pid} did not answer {method}") from None
        finally:
            self._waiting.pop(req_id, None)

    def on_reply(self, reply: msg.RpcReply) -> None:
        fut = self._waiting.pop(reply.req_id, None)
        if fut is None or fut.done():
            return
        if reply.ok:
            fut.set_result(reply.value)
        else:
            fut.set_exception(ServerError(ErrorCode(reply.value[0]), reply.value[1]))

    async def serve(self, request: msg.Rpc) -> None:
        """Run a request from another process and answer it on our link to it."""
        method = self.methods.get(request.method)
        try:
            if method is None:
                raise ServerError(ErrorCode.NOT_FOUND, f"unknown RPC method {request.method!r}")
            reply = msg.RpcReply(request.req_id, True, await method(request.args))
        except ServerError as exc:
            reply = msg.RpcReply(request.req_id, False, (int(exc.code), exc.message))
        except Exception as exc:
            self.rt.log.error("rpc.failed", method=request.method, error=repr(exc), trace=traceback.format_exc())
            reply = msg.RpcReply(request.req_id, False, (int(ErrorCode.INTERNAL), repr(exc)))
        self.rt.links.send(request.reply_pid, reply)

    async def gather_stats(self, timeout: float) -> list[dict[str, Any]]:
        """Every running process's ``stats``, this one's included; an unreachable one says why."""
        me = os.getpid()
        entries = [e for e in self.rt.procs.entries() if e.state in (ProcState.READY, ProcState.STOPPING)]

        async def one(entry):
            if entry.pid == me:
                return self.local_stats()
            try:
                return await self.call(entry.pid, "stats", None, timeout)
            except ServerError as exc:
                return {"name": entry.name, "pid": entry.pid, "error": exc.message}

        return list(await asyncio.gather(*(one(e) for e in entries)))

    # -- the methods ---------------------------------------------------------------------------

    async def _stats(self, args: Any) -> dict[str, Any]:
        return self.local_stats()

    async def _migrate(self, args: Any) -> dict[str, Any]:
        sid, to_worker = args
        return await self.rt.mover.move_out(sid, to_worker)

    async def _app_request(self, args: Any) -> Any:
        src, data = args
        hook = getattr(self.rt.app, "on_request", None)
        if hook is None:
            raise ServerError(ErrorCode.UNSUPPORTED, "the application has no on_request hook")
        value = hook(self.rt.api, src, data)
        if inspect.isawaitable(value):
            value = await value
        return value
