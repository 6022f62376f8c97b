"""A uvicorn worker's share of the server: its sessions, the contract ops, timers, heartbeat.

One :class:`Node` per worker process, created by the application's lifespan.
What crosses processes goes through Redis (names in ``settings.Keys``):

* session ids come from ``INCR`` (never reused while the server runs), and
  ``owner`` maps each live session to the worker that holds it;
* ``registry`` holds the record of each established session, written by its
  worker when it changes (``bind``, ``protect``) and removed when the session
  is gone: what a task process reads (the record's ``last_recv_time`` there
  is the time of the handshake; the owner has the live one);
* a push, close or record request for a session of another worker is a bus
  call to its owner (``bus.py``), which answers with the contract's code:
  the owner is the only one that knows whether the session is closing;
* tasks go to the list ``tasks``, which the task workers pop; results come
  back as a bus cast to the worker that sent the task;
* reload requests go to the supervisor (``supervisor.py``) through the list
  ``reload_inbox``.

Counters are kept per process and summed by ``/v1/stats``; a process that
exits adds its own to ``counters_retired`` first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from .. import kit
from ..kit import ContractError, Timer
from .broadcast import Broadcast
from .cluster import CODE_NAMES, ELSEWHERE, Cluster
from .session import Session
from .settings import Settings

log = logging.getLogger("uvs.node")


def fds_of(pid: int) -> dict[str, int]:
    """``{"fds": n}`` for a process's stats entry; empty when it cannot be read (at the open-file
    limit the read itself needs a descriptor): the contract's ``fds`` is optional, never -1."""
    try:
        return {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except OSError:
        return {}


class Node(Cluster):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.pid = os.getpid()
        self.worker = -1
        self.generation = 1
        self.sessions: dict[int, Session] = {}
        self.lost_to_shutdown = 0
        self.slow_logged = 0.0
        self.broadcast: Broadcast | None = None
        self.background: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.worker = int(await self.redis.incr(self.keys.worker_ids)) - 1
        self.generation = int(await self.redis.get(self.keys.generation) or 1)
        ops = ("push", "close", "record", "records", "stats", "task_result")
        await self.join_bus(f"worker-{self.worker}", {op: getattr(self, f"bus_{op}") for op in ops})
        self.broadcast = Broadcast(self)
        await self.broadcast.start()
        if self.settings.heartbeat_idle_ms > 0 and self.settings.heartbeat_check_ms > 0:
            self.spawn(self.heartbeat())
        await self.redis.hset(self.keys.procs, self.name, json.dumps({
            "kind": "worker", "id": self.worker, "pid": self.pid, "name": self.name,
            "generation": self.generation, "started": time.time(),
        }))
        log.info("%s ready pid=%d generation=%d", self.name, self.pid, self.generation)

    async def stop(self) -> None:
        """The exit hook (uvicorn's lifespan shutdown, after it closed every connection)."""
        timers_at_exit = sum(len(s.timers) for s in self.sessions.values())
        for session in list(self.sessions.values()):
            self.release(session)
        for task in list(self.background):
            task.cancel()
        # Each step is bounded and named: a shutdown that hangs (seen once in a compare run, in
        # "Waiting for application shutdown") says where, and the worker still exits.
        await self._bounded("background tasks", asyncio.gather(*self.background, return_exceptions=True))
        if self.broadcast is not None:
            await self._bounded("broadcast", self.broadcast.stop())
        if self.bus is not None:
            await self._bounded("bus", self.bus.stop())
        retired = {
            "name": self.name, "pid": self.pid, "generation": self.generation, "timers_at_exit": timers_at_exit,
            "timers_after_exit_hook": sum(len(s.timers) for s in self.sessions.values()),
            "sessions_lost": self.lost_to_shutdown, "exited": time.time(),
        }
        try:
            await asyncio.wait_for(self.retire(retired), 3.0)
        except (RedisError, OSError, TimeoutError) as exc:  # Redis is gone: exit all the same
            log.warning("%s: could not record its exit in Redis: %r", self.name, exc)
        await self._bounded("leave", self.leave())
        log.info("%s stopped: %d sessions lost to the shutdown", self.name, self.lost_to_shutdown)

    async def _bounded(self, step: str, aw: Awaitable[Any], timeout: float = 3.0) -> None:
        await kit.bounded(log, self.name, step, aw, timeout)

    async def retire(self, retired: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.procs, self.name)
            pipe.hset(self.keys.retired, str(self.pid), json.dumps(retired))
            for name, value in self.counters.items():
                if value:
                    pipe.hincrby(self.keys.counters_retired, name, value)
            await pipe.execute()

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    # -- one connection -----------------------------------------------------------------

    async def serve(self, ws: WebSocket) -> None:
        """The whole life of one session (the Starlette WebSocket endpoint)."""
        self.counters["connections_accepted"] += 1
        sid = int(await self.redis.incr(self.keys.session_ids))
        session = Session(sid, ws, self.worker, time.time())
        self.sessions[sid] = session
        await self.redis.hset(self.keys.owner, str(sid), self.name)
        code = 1006
        try:
            await ws.accept()
            session.established = True
            session.last_recv = time.time()
            await self.list_record(session)
            self.counters["sessions_opened"] += 1
            session.sender = asyncio.create_task(session.send_forever())
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code", 1005)
                    break
                session.last_recv = time.time()
                self.counters["messages_received"] += 1
                text = message.get("text")
                await self.dispatch(session, text if text is not None else message.get("bytes", b""))
        except Exception as exc:  # the socket went away under a send, or a bug in an op
            log.debug("session %d ended: %r", sid, exc)
        finally:
            if code == 1012 and not session.closing:  # uvicorn's shutdown closed it (a reload or a stop)
                self.lost_to_shutdown += 1
            session.closing = True
            self.release(session)
            if self.sessions.pop(sid, None) is not None:
                self.counters["sessions_closed"] += 1
            if session.sender is not None:
                session.sender.cancel()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self.keys.owner, str(sid))
                pipe.hdel(self.keys.registry, str(sid))
                await pipe.execute()

    async def list_record(self, session: Session) -> None:
        if not session.closing:
            await self.redis.hset(self.keys.registry, str(session.id), json.dumps(session.record(self.pid)))

    def release(self, session: Session) -> None:
        """Its close is known: stop its own timers, take it out of every channel.

        It stays in the registry until it is gone (``serve`` unlists it): a
        sweep that reads it meanwhile asks its owner, who answers 1004.
        """
        for timer in list(session.timers.values()):
            self.drop_timer(session, timer)
        if self.broadcast is not None:
            self.broadcast.leave_all(session)

    # -- writing, pushing, closing ------------------------------------------------------------

    def write(self, session: Session, text: str) -> bool:
        if not session.write(text):
            return False
        if session.over(self.settings.broadcast_buffer_bytes) and session.shut(kit.SLOW_CONSUMER, "slow consumer", drop_queued=True):
            self.counters["bc_slow_closed"] += 1
            self.counters["closes_requested"] += 1
            self.release(session)
            log.warning("session %d closed as a slow consumer (over %d bytes queued)", session.id, self.settings.broadcast_buffer_bytes)
        return True

    def local_push(self, sid: int, text: str) -> int | None:
        """Write to one of this worker's sessions: None, 1004 or 8503; ELSEWHERE if not ours."""
        session = self.sessions.get(sid)
        if session is None:
            return ELSEWHERE
        if session.closing:
            return 1004
        if not session.established:
            return 8503
        self.write(session, text)
        return None

    def local_close(self, sid: int, code: int, reason: str, last_message: str | None = None) -> int | None:
        session = self.sessions.get(sid)
        if session is None:
            return ELSEWHERE
        if session.closing:
            return 1004
        if last_message is not None:
            self.write(session, last_message)
        if not session.shut(code, reason):
            return 1004
        self.counters["closes_requested"] += 1
        self.release(session)
        return None

    async def record(self, sid: int) -> dict[str, Any] | None:
        if sid in self.sessions:
            return self.bus_record(sid)
        return await super().record(sid)

    # -- bus handlers (calls from other processes) --------------------------------------------

    def bus_push(self, sid: int, text: str) -> int | None:
        code = self.local_push(sid, text)
        return 1005 if code == ELSEWHERE else code  # gone for good: ids are never reused

    def bus_close(self, sid: int, code: int, reason: str, notice: str | None = None) -> int | None:
        result = self.local_close(sid, code, reason, last_message=notice)
        if result == ELSEWHERE:
            return 1005
        if result is None and code == kit.SWEPT:
            self.counters["sweep_closes"] += 1
        return result

    def bus_record(self, sid: int) -> dict[str, Any] | None:
        session = self.sessions.get(sid)
        return None if session is None or session.closing else session.record(self.pid)

    def bus_records(self) -> list[dict[str, Any]]:
        return [s.record(self.pid) for s in self.sessions.values() if not s.closing]

    def bus_stats(self) -> dict[str, Any]:
        live = [s for s in self.sessions.values() if not s.closing]
        return {
            "counters": dict(self.counters),
            "process": {
                "kind": "worker", "id": self.worker, "name": self.name, "pid": self.pid, "generation": self.generation,
                "sessions": len(live), "established": sum(1 for s in live if s.established),
                "timers": sum(len(s.timers) for s in self.sessions.values()), **fds_of(self.pid),
            },
            "broadcast": self.broadcast.status() if self.broadcast is not None else None,
        }

    def bus_task_result(self, sid: int, task: int, re: Any, result: Any) -> None:
        self.counters["tasks_finished"] += 1
        session = self.sessions.get(sid)
        if session is not None:
            session.tasks_out -= 1
        if session is not None and not session.closing:  # never a result to a gone session
            self.write(session, json.dumps({"ev": "task_result", "task": task, "re": re, "result": result}))

    # -- requests -----------------------------------------------------------------------

    async def dispatch(self, session: Session, text: str | bytes) -> None:
        req_id: Any = None
        started = time.monotonic()
        try:
            req_id, op, msg = kit.parse_request(text)
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise ContractError("UNSUPPORTED", f"unsupported op {op!r}")
            result = handler(session, msg)
            if asyncio.iscoroutine(result):
                result = await result
            if result is not None:
                self.write(session, kit.ok(req_id, **result))
        except ContractError as exc:
            req_id = getattr(exc, "req_id", req_id)
            self.write(session, kit.fail(req_id, exc.code, exc.message))
        except Exception as exc:  # a bug: answered and logged, the session goes on
            log.exception("op failed")
            self.write(session, kit.fail(req_id, kit.CODES["INTERNAL"], f"internal error: {exc!r}"))
        took = time.monotonic() - started
        if took > 1.0 and time.monotonic() - self.slow_logged > 10.0:  # at most one line per 10 s
            self.slow_logged = time.monotonic()
            op = text[:60] if isinstance(text, str) else "(binary)"
            log.warning("session %d: request %s took %.0f ms (outbox: %d frames, %d bytes); logged at most every 10 s",
                        session.id, op, took * 1000, len(session.outbox), session.out_bytes)

    def op_whoami(self, s: Session, msg: dict) -> dict:
        return {"session": s.id, "worker": self.worker, "pid": self.pid}

    def op_echo(self, s: Session, msg: dict) -> dict:
        return {"seq": msg.get("seq"), "data": msg.get("data"), "worker": self.worker}

    def op_ping(self, s: Session, msg: dict) -> dict:
        return {"pong": True}

    async def op_bind(self, s: Session, msg: dict) -> dict:
        s.uid = kit.int_field(msg, "uid", low=0)
        await self.list_record(s)  # a task process sees the uid once the reply is sent
        return {}

    async def op_protect(self, s: Session, msg: dict) -> dict:
        on = msg.get("on", True)
        if not isinstance(on, bool):
            raise ContractError("BAD_REQUEST", "'on' must be true or false")
        s.protected = on
        await self.list_record(s)
        return {}

    async def op_push(self, s: Session, msg: dict) -> dict:
        to = kit.int_field(msg, "to")
        code = await self.push(to, json.dumps({"ev": "push", "from": s.id, "to": to, "data": msg.get("data")}))
        if code is not None:
            raise ContractError(CODE_NAMES[code], f"push to session {to} failed")
        return {}

    def op_close(self, s: Session, msg: dict) -> None:
        code, reason = kit.close_args(msg)
        self.write(s, kit.ok(msg.get("id")))
        self.local_close(s.id, code, reason)

    # timers: one asyncio task each, in the worker that owns the session that started it

    def op_timer_start(self, s: Session, msg: dict) -> dict:
        interval = kit.int_field(msg, "interval_ms", low=1, high=kit.MAX_INTERVAL_MS)
        to = kit.int_field(msg, "to", s.id)
        count = msg.get("count")
        if count is not None:
            count = kit.int_field(msg, "count", low=1)
        if len(s.timers) >= kit.MAX_TIMERS:
            raise kit.limit("timers", kit.MAX_TIMERS)
        timer = Timer(s.next_timer, s.id, to, interval, count)
        s.next_timer += 1
        s.timers[timer.id] = timer
        self.counters["timers_created"] += 1
        timer.handle = asyncio.create_task(self.tick_forever(s, timer))
        return {"timer": timer.id}

    async def tick_forever(self, s: Session, timer: Timer) -> None:
        next_at = time.monotonic()
        while timer.id in s.timers:
            next_at += timer.interval_ms / 1000.0
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if timer.id not in s.timers or (timer.to == s.id and s.closing):
                return  # a session's own timer never pushes once its close is known
            timer.seq += 1
            tick = json.dumps({
                "ev": "tick", "timer": timer.id, "seq": timer.seq, "to": timer.to, "from": s.id,
                "gen": self.generation, "pid": self.pid, "ts": time.time(),
            })
            code = await self.push(timer.to, tick)
            if code is None:
                timer.sent += 1
            else:
                timer.failed[code] += 1
                timer.last_error = CODE_NAMES.get(code, str(code))
            if timer.remaining is not None:
                timer.remaining -= 1
                if timer.remaining <= 0:
                    self.drop_timer(s, timer, cancel=False)
                    return

    def drop_timer(self, s: Session, timer: Timer, *, cancel: bool = True) -> None:
        if s.timers.pop(timer.id, None) is not None:
            self.counters["timers_cleared"] += 1
        if cancel and timer.handle is not None and timer.handle is not asyncio.current_task():
            timer.handle.cancel()

    def _own_timer(self, s: Session, msg: dict) -> Timer:
        tid = kit.int_field(msg, "timer")
        timer = s.timers.get(tid)
        if timer is None:
            raise ContractError("BAD_REQUEST", f"no timer {tid} started by this session")
        return timer

    def op_timer_stop(self, s: Session, msg: dict) -> dict:
        timer = self._own_timer(s, msg)
        self.drop_timer(s, timer)
        return timer.status()

    def op_timer_status(self, s: Session, msg: dict) -> dict:
        return self._own_timer(s, msg).status()

    async def op_task(self, s: Session, msg: dict) -> dict:
        sleep_ms = kit.int_field(msg, "sleep_ms", 0, low=0, high=kit.MAX_SLEEP_MS)
        if s.tasks_out >= kit.MAX_TASKS:
            raise kit.limit("tasks outstanding", kit.MAX_TASKS)
        s.tasks_out += 1
        task_id = int(await self.redis.incr(self.keys.task_ids))
        job = {"task": task_id, "worker": self.name, "session": s.id, "re": msg.get("id"), "data": msg.get("data"), "sleep_ms": sleep_ms}
        await self.redis.lpush(self.keys.tasks, json.dumps(job))
        self.counters["tasks_dispatched"] += 1
        return {"task": task_id}

    async def op_reload(self, s: Session, msg: dict) -> dict:
        scope = msg.get("scope", "all")
        if scope not in ("all", "task_workers"):
            raise ContractError("BAD_REQUEST", "'scope' must be 'all' or 'task_workers'")
        record = await ask_reload(self.redis, self.keys, scope, f"worker:{self.worker}", wait=False)
        return {"reload": record["reload"], "merged": record["merged"], "generation": record["generation"]}

    # broadcast ops (redis_broadcast): see broadcast.py
    async def op_subscribe(self, s: Session, msg: dict) -> dict:
        return await self.broadcast.subscribe(s, msg)

    async def op_unsubscribe(self, s: Session, msg: dict) -> dict:
        return await self.broadcast.unsubscribe(s, msg)

    def op_channels(self, s: Session, msg: dict) -> dict:
        return {"channels": sorted(s.channels)}

    async def op_publish(self, s: Session, msg: dict) -> dict:
        return await self.broadcast.publish(msg)

    # -- heartbeat ------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Close sessions that sent nothing for ``heartbeat_idle_ms`` (4408).

        ASGI hands the application messages only: uvicorn answers WebSocket
        pings itself, so a client that only pings looks idle here.
        """
        idle = self.settings.heartbeat_idle_ms / 1000.0
        while True:
            await asyncio.sleep(self.settings.heartbeat_check_ms / 1000.0)
            now = time.time()
            for session in list(self.sessions.values()):
                if session.established and not session.protected and not session.closing and now - session.last_recv > idle:
                    if self.local_close(session.id, kit.HEARTBEAT, "idle") is None:
                        self.counters["heartbeat_closes"] += 1


async def ask_reload(redis: aioredis.Redis, keys: Any, scope: str, source: str, *, wait: bool, timeout: float = 60.0) -> dict[str, Any]:
    """Ask the supervisor for a reload; its answer is the record it started or joined, with ``merged``."""
    request = uuid.uuid4().hex
    await redis.lpush(keys.reload_inbox, json.dumps({"request": request, "scope": scope, "source": source, "wait": wait}))
    answer = await redis.blpop([keys.answer(request)], timeout=timeout)
    if answer is None:
        raise ContractError("INTERNAL", "the supervisor did not answer the reload request")
    return json.loads(answer[1])
