"""Calls between the processes of the uvicorn target, over Redis pub/sub.

Each process (``worker-3``, ``task-0``) listens on its own channel. A
message is a JSON object:

* ``{"kind": "call", "id", "from", "op", "args"}``: run handler ``op`` and
  publish ``{"kind": "reply", "id", "result"}`` (or ``"error"``) to the
  caller's channel;
* ``{"kind": "cast", "op", "args"}``: run it, answer nothing.

Contract of :meth:`Bus.call`: it raises :class:`Unreachable` at once when no
process listens on the destination channel (``PUBLISH`` counted no
receiver: the process is gone), :class:`ContractError` when the handler
refused, and ``TimeoutError`` when no reply came in time.

Order: the messages one coroutine sends one after the other reach the
destination in that order (one Redis connection delivers a channel's messages
in the order it received them), and the reader runs synchronous handlers in
arrival order. Coroutine handlers run as tasks, so that a handler that calls
another process never blocks the replies it waits for.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..kit import ContractError
from .outage import OutageLog

log = logging.getLogger("uvs.bus")

Handler = Callable[..., Any]


class Unreachable(Exception):
    """No process listens on the destination channel."""


class Bus:
    def __init__(self, redis: aioredis.Redis, channel_of: Callable[[str], str], name: str) -> None:
        self.redis = redis
        self.channel_of = channel_of
        self.name = name
        self.handlers: dict[str, Handler] = {}
        self.waiting: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.pubsub: Any = None
        self.reader: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    def handle(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    async def start(self) -> None:
        """Subscribe; when this returns, calls to this process are heard."""
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe(self.channel_of(self.name))
        self.reader = asyncio.create_task(self._read(), name=f"bus-{self.name}")

    async def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.pubsub is not None:
            try:
                await self.pubsub.aclose()
            except (RedisError, OSError):
                pass
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(Unreachable("bus stopped"))

    async def call(self, dest: str, op: str, timeout: float = 3.0, **args: Any) -> Any:
        call_id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = fut
        try:
            body = {"kind": "call", "id": call_id, "from": self.name, "op": op, "args": args}
            if not await self.redis.publish(self.channel_of(dest), json.dumps(body)):
                raise Unreachable(f"process {dest} is not running")
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiting.pop(call_id, None)

    async def cast(self, dest: str, op: str, **args: Any) -> bool:
        """Send without waiting for an answer; False if nobody listens on ``dest``."""
        body = {"kind": "cast", "op": op, "args": args}
        return bool(await self.redis.publish(self.channel_of(dest), json.dumps(body)))

    async def _read(self) -> None:
        outage = OutageLog(log, f"bus {self.name}")
        while True:
            try:
                msg = await self.pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:  # Redis went away: the subscription comes back with it
                outage.failed(exc)
                await asyncio.sleep(0.2)
                continue
            outage.ok()
            if msg is None or msg.get("type") != "message":
                continue
            try:
                body = json.loads(msg["data"])
            except ValueError:
                log.warning("bus %s: dropped a message that is not JSON", self.name)
                continue
            kind = body.get("kind")
            if kind == "reply":
                fut = self.waiting.get(body.get("id"))
                if fut is not None and not fut.done():
                    if "error" in body:
                        err = body["error"]
                        fut.set_exception(ContractError(err["name"], err["message"]))
                    else:
                        fut.set_result(body.get("result"))
            elif kind in ("call", "cast"):
                self._run(body)

    def _run(self, body: dict[str, Any]) -> None:
        handler = self.handlers.get(body.get("op", ""))
        if handler is None:
            self._answer(body, error=ContractError("UNSUPPORTED", f"process {self.name} has no bus op {body.get('op')!r}"))
            return
        try:
            result = handler(**body.get("args", {}))
        except ContractError as exc:
            self._answer(body, error=exc)
            return
        except Exception as exc:
            log.exception("bus op %s failed", body.get("op"))
            self._answer(body, error=ContractError("INTERNAL", f"{body.get('op')} failed: {exc!r}"))
            return
        if asyncio.iscoroutine(result):
            task = asyncio.create_task(self._finish(body, result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self._answer(body, result=result)

    async def _finish(self, body: dict[str, Any], coro: Any) -> None:
        try:
            result = await coro
        except ContractError as exc:
            await self._reply(body, {"error": exc.as_dict()})
        except Exception as exc:
            log.exception("bus op %s failed", body.get("op"))
            await self._reply(body, {"error": ContractError("INTERNAL", repr(exc)).as_dict()})
        else:
            await self._reply(body, {"result": result})

    def _answer(self, body: dict[str, Any], *, result: Any = None, error: ContractError | None = None) -> None:
        if body.get("kind") != "call":
            if error is not None:
                log.warning("bus cast %s refused: %s", body.get("op"), error.message)
            return
        payload = {"error": error.as_dict()} if error is not None else {"result": result}
        task = asyncio.create_task(self._reply(body, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, body: dict[str, Any], payload: dict[str, Any]) -> None:
        try:
            await self.redis.publish(self.channel_of(body["from"]), json.dumps({"kind": "reply", "id": body["id"], **payload}))
        except (RedisError, OSError) as exc:
            log.warning("bus %s could not answer %s: %r", self.name, body.get("from"), exc)
