"""One asyncio process on python-websockets that serves the contract application.

How it is built, as a python-websockets user would build it:

* ``websockets.asyncio.server.serve`` with a connection class that stamps the
  time of every byte received (the heartbeat counts only what the client sends,
  WebSocket pings included);
* a dict of sessions by id (ids from a counter, never reused), holding each
  connection, its uid, its timers and its channels;
* every write goes through ``websockets.broadcast([conn], text)``: it writes
  at once, in call order, and skips a connection that is not OPEN, so replies,
  pushes, ticks and broadcasts of one session keep their order and never wait
  on a slow peer;
* tasks run on a thread pool (the "task workers"), the sweep and the heartbeat
  are asyncio tasks of the one process, and Redis pub/sub is read by a task
  (``PSUBSCRIBE prefix*``).

It has one worker (index 0): it cannot migrate or reload, and declares
neither. Its whole process list is itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .. import kit
from ..kit import ContractError, Timer
from .pubsub import PubSub

log = logging.getLogger("wssingle")


class StampedConnection(ServerConnection):
    """A server connection that remembers when the client last sent anything."""

    last_recv: float = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_recv = time.time()
        super().data_received(data)


@dataclass(eq=False)  # hashed by identity: sessions are members of channel sets
class Session:
    id: int
    conn: StampedConnection
    connect_time: float
    uid: int = 0
    protected: bool = False
    closing: bool = False
    timers: dict[int, Timer] = field(default_factory=dict)
    next_timer: int = 1
    channels: set[str] = field(default_factory=set)
    warned_dead: bool = False
    tasks_out: int = 0  # tasks submitted whose result has not been sent

    def record(self) -> dict[str, Any]:
        sock = self.conn.transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        peer = self.conn.remote_address or ("", 0)
        local = self.conn.local_address or ("", 0)
        # A session whose closing handshake has begun is listed as closing; once its
        # socket is closed, fileno() is -1, which the contract refuses: null then.
        open_ = not self.closing and self.conn.state is State.OPEN
        return {
            "session": self.id, "state": "established" if open_ else "closing", "established": open_,
            "worker": 0, "pid": os.getpid(),
            "remote_addr": peer[0], "remote_port": peer[1], "local_port": local[1],
            "connect_time": self.connect_time, "last_recv_time": self.conn.last_recv, "uid": self.uid,
            "protected": self.protected, "os_fd": fd if fd >= 0 else None,
        }


@dataclass
class Options:
    host: str
    port: int
    heartbeat_idle_ms: int = 0
    heartbeat_check_ms: int = 0
    task_threads: int = 2
    redis_url: str = ""
    broadcast_mode: str = "pubsub"
    broadcast_prefix: str = "bc:"
    broadcast_buffer_bytes: int = 1 << 20
    max_message_bytes: int = 1 << 20


class SingleServer:
    """The server: sessions, the contract ops, tasks, sweep, heartbeat and broadcast."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.sessions: dict[int, Session] = {}
        self.ids = itertools.count(1)
        self.task_ids = itertools.count(1)
        self.counters: Counter = Counter({name: 0 for name in kit.STANDARD_COUNTERS})
        self.pool = ThreadPoolExecutor(opts.task_threads, thread_name_prefix="task")
        self.rule: dict[str, Any] | None = None
        self.rule_task: asyncio.Task | None = None
        self.sweeping = False
        self.sweep_no = 0
        self.reports: deque[dict[str, Any]] = deque(maxlen=200)
        self.ready = False
        self.started = time.time()
        self.pubsub = PubSub(self, opts.redis_url, opts.broadcast_prefix) if opts.redis_url else None
        self._background: set[asyncio.Task] = set()
        self.all_gone = asyncio.Event()  # set when the last session is forgotten

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Future) -> None:
        server = await serve(
            self.handler,
            self.opts.host,
            self.opts.port,
            create_connection=StampedConnection,
            compression=None,
            max_size=self.opts.max_message_bytes,
            ping_interval=None,
            close_timeout=2,
        )
        if self.pubsub is not None:
            self.pubsub.start()
        if self.opts.heartbeat_idle_ms > 0 and self.opts.heartbeat_check_ms > 0:
            self.spawn(self.heartbeat())
        self.ready = True
        log.info("ready port=%d", self.opts.port)
        await stop
        log.info("stopping: %d sessions", len(self.sessions))
        self.ready = False
        for session in list(self.sessions.values()):
            self.close(session, 1001, "server shutting down")
        await self.cut_after(2.0)
        # Each step is bounded and named: a stop that hung once in CI (killed after 10 s, the
        # log silent after the sessions closed) says where next time, and the process exits.
        if self.pubsub is not None:
            await kit.bounded(log, "wssingle", "pub/sub", self.pubsub.stop())
        for task in list(self._background):
            task.cancel()
        server.close()
        await kit.bounded(log, "wssingle", "server close", server.wait_closed())
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    async def cut_after(self, grace: float) -> None:
        """Give the closing sessions ``grace`` seconds, then abort the connections still there.

        A client that does not read cannot take a close frame: websockets waits
        for its write buffer to drain before it sends one, and would wait for
        ever. A server that is asked to stop must stop.
        """
        if self.sessions:
            self.all_gone.clear()
            try:
                await asyncio.wait_for(self.all_gone.wait(), grace)
            except TimeoutError:
                stuck = list(self.sessions.values())
                log.warning("%d session(s) did not take their close frame in %.1f s: connections aborted", len(stuck), grace)
                for session in stuck:
                    session.conn.transport.abort()

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def handler(self, conn: StampedConnection) -> None:
        self.counters["connections_accepted"] += 1
        session = Session(next(self.ids), conn, time.time())
        conn.last_recv = time.time()
        self.sessions[session.id] = session
        self.counters["sessions_opened"] += 1
        try:
            async for message in conn:
                self.counters["messages_received"] += 1
                await self.dispatch(session, message)
        except ConnectionClosed:
            pass
        finally:
            self.forget(session)

    def forget(self, session: Session) -> None:
        session.closing = True
        if self.sessions.pop(session.id, None) is not None:
            self.counters["sessions_closed"] += 1
            if not self.sessions:
                self.all_gone.set()
        self.release(session)

    def release(self, session: Session) -> None:
        """Its close is known: stop the session's timers and take it out of every channel."""
        for timer in list(session.timers.values()):
            self.drop_timer(session, timer)
        if self.pubsub is not None:
            self.pubsub.leave_all(session)

    # -- writing ------------------------------------------------------------------------

    def write(self, session: Session, text: str) -> None:
        """Write one text frame now (in call order); a non-OPEN connection is skipped.

        A session whose write buffer already holds more than ``broadcast_buffer_bytes`` (the one
        output bound of this target, contract 12.2) is closed with 4429 instead: the close frame
        follows what is queued, so the buffer stays within the bound and one message.
        """
        transport = session.conn.transport
        if transport is not None and transport.get_write_buffer_size() > self.opts.broadcast_buffer_bytes:
            if self.close(session, kit.SLOW_CONSUMER, "slow consumer"):
                self.counters["slow_closed"] += 1
                log.warning("session %d closed as a slow consumer (over %d bytes queued)", session.id,
                            self.opts.broadcast_buffer_bytes)
            return
        broadcast([session.conn], text)

    def push(self, to: int, text: str) -> int | None:
        """Push to session ``to``: None on success, else the contract's error code."""
        target = self.sessions.get(to)
        if target is None:
            code = 1005
        elif target.closing or target.conn.state is not State.OPEN:
            code = 1004
        else:
            self.write(target, text)
            self.counters["pushes"] += 1
            return None
        self.counters["push_failed"] += 1
        self.counters["dead_session_pushes"] += 1
        if target is None or not target.warned_dead:  # one line per dead session, never a storm
            if target is not None:
                target.warned_dead = True
                log.warning("push to closing session %d refused (%d)", to, code)
            elif self.counters["dead_session_pushes"] % 1000 == 1:
                log.warning("push to gone session(s), %d so far", self.counters["dead_session_pushes"])
        return code

    def close(self, session: Session, code: int, reason: str, last_message: str | None = None) -> bool:
        if session.closing or session.conn.state is not State.OPEN:
            return False
        if last_message is not None:
            self.write(session, last_message)
        session.closing = True
        self.counters["closes_requested"] += 1
        self.release(session)
        self.spawn(session.conn.close(code, reason))
        return True

    # -- requests -----------------------------------------------------------------------

    async def dispatch(self, session: Session, text: str | bytes) -> None:
        req_id: Any = None
        try:
            req_id, op, msg = kit.parse_request(text)
            handler = getattr(self, f"op_{op}", None)
            if handler is None or (op in PubSub.OPS and self.pubsub is None):
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

    def op_whoami(self, s: Session, msg: dict) -> dict:
        return {"session": s.id, "worker": 0, "pid": os.getpid()}

    def op_echo(self, s: Session, msg: dict) -> dict:
        return {"seq": msg.get("seq"), "data": msg.get("data"), "worker": 0}

    def op_ping(self, s: Session, msg: dict) -> dict:
        return {"pong": True}

    def op_bind(self, s: Session, msg: dict) -> dict:
        s.uid = kit.int_field(msg, "uid", low=0)
        return {}

    def op_protect(self, s: Session, msg: dict) -> dict:
        on = msg.get("on", True)
        if not isinstance(on, bool):
            raise ContractError("BAD_REQUEST", "'on' must be true or false")
        s.protected = on
        return {}

    def op_push(self, s: Session, msg: dict) -> dict:
        to = kit.int_field(msg, "to")
        code = self.push(to, json.dumps({"ev": "push", "from": s.id, "to": to, "data": msg.get("data")}))
        if code is not None:
            raise ContractError(kit.NAMES[code], f"push to session {to} failed")
        return {}

    def op_close(self, s: Session, msg: dict) -> None:
        code, reason = kit.close_args(msg)
        self.write(s, kit.ok(msg.get("id")))
        self.close(s, code, reason)

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
        self.arm(s, timer)
        return {"timer": timer.id}

    def arm(self, s: Session, timer: Timer) -> None:
        loop = asyncio.get_running_loop()
        timer.handle = loop.call_later(timer.interval_ms / 1000.0, self.fire, s, timer)

    def fire(self, s: Session, timer: Timer) -> None:
        if timer.id not in s.timers:
            return
        if timer.to == s.id and (s.closing or s.id not in self.sessions):
            return  # a session's own timer never pushes once its close is known
        timer.seq += 1
        tick = json.dumps({"ev": "tick", "timer": timer.id, "seq": timer.seq, "to": timer.to, "from": s.id, "ts": time.time()})
        code = self.push(timer.to, tick)
        if code is None:
            timer.sent += 1
        else:
            timer.failed[code] += 1
            timer.last_error = kit.NAMES[code]
        if timer.remaining is not None:
            timer.remaining -= 1
            if timer.remaining <= 0:
                self.drop_timer(s, timer)
                return
        self.arm(s, timer)

    def drop_timer(self, s: Session, timer: Timer) -> None:
        if s.timers.pop(timer.id, None) is not None:
            self.counters["timers_cleared"] += 1
        if timer.handle is not None:
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

    def op_task(self, s: Session, msg: dict) -> dict:
        sleep_ms = kit.int_field(msg, "sleep_ms", 0, low=0, high=kit.MAX_SLEEP_MS)
        if s.tasks_out >= kit.MAX_TASKS:
            raise kit.limit("tasks outstanding", kit.MAX_TASKS)
        s.tasks_out += 1
        task_id = next(self.task_ids)
        self.counters["tasks_dispatched"] += 1
        future = asyncio.get_running_loop().run_in_executor(self.pool, run_task, msg.get("data"), sleep_ms)
        self.spawn(self.finish_task(s.id, task_id, msg.get("id"), future))
        return {"task": task_id}

    async def finish_task(self, sid: int, task_id: int, req_id: Any, future: asyncio.Future) -> None:
        result = await future
        self.counters["tasks_done"] += 1
        self.counters["tasks_finished"] += 1
        session = self.sessions.get(sid)
        if session is not None:
            session.tasks_out -= 1
        if session is not None and not session.closing:  # never push a result to a gone session
            self.write(session, json.dumps({"ev": "task_result", "task": task_id, "re": req_id, "result": result}))

    # broadcast ops (redis_broadcast): see pubsub.py
    async def op_subscribe(self, s: Session, msg: dict) -> dict:
        assert self.pubsub is not None
        return await self.pubsub.subscribe(s, msg)

    async def op_unsubscribe(self, s: Session, msg: dict) -> dict:
        assert self.pubsub is not None
        return await self.pubsub.unsubscribe(s, msg)

    def op_channels(self, s: Session, msg: dict) -> dict:
        return {"channels": sorted(s.channels)}

    async def op_publish(self, s: Session, msg: dict) -> dict:
        assert self.pubsub is not None
        return await self.pubsub.publish(msg)

    # -- heartbeat and sweep --------------------------------------------------------------

    async def heartbeat(self) -> None:
        idle = self.opts.heartbeat_idle_ms / 1000.0
        while True:
            await asyncio.sleep(self.opts.heartbeat_check_ms / 1000.0)
            now = time.time()
            for session in list(self.sessions.values()):
                if not session.protected and not session.closing and now - session.conn.last_recv > idle:
                    if self.close(session, kit.HEARTBEAT, "idle"):
                        self.counters["heartbeat_closes"] += 1

    def set_rule(self, body: Any) -> dict[str, Any]:
        rule = kit.sweep_rule(body)
        self.clear_rule()
        self.rule = rule
        self.rule_task = self.spawn(self.sweep_loop(rule))
        return {"ok": True, "rule": rule}

    def clear_rule(self) -> None:
        if self.rule_task is not None:
            self.rule_task.cancel()
        self.rule, self.rule_task = None, None

    async def sweep_loop(self, rule: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(rule["interval_ms"] / 1000.0)
            await self.sweep(rule)

    async def sweep(self, rule: dict[str, Any]) -> None:
        self.sweeping = True
        self.sweep_no += 1
        report = kit.new_sweep_report(self.sweep_no, "server", time.time())
        uids, idle, pace = set(rule["uids"]), rule.get("idle_ms"), rule["pace_ms"] / 1000.0
        try:
            for sid in list(self.sessions):
                report["seen"].append(sid)
                session = self.sessions.get(sid)
                if session is None:
                    report["info_missing"].append(sid)
                else:
                    idle_for = (time.time() - session.conn.last_recv) * 1000.0
                    if (session.uid and session.uid in uids) or (idle is not None and idle_for > idle):
                        report["matched"].append(sid)
                        notice = json.dumps({"ev": "notice", "reason": rule["notice"], "session": sid, "sweep": self.sweep_no})
                        if self.close(session, kit.SWEPT, rule["notice"], last_message=notice):
                            report["closed"].append(sid)
                            self.counters["sweep_closes"] += 1
                        else:
                            report["close_failed"].append([sid, "SESSION_CLOSED"])
                if pace:
                    await asyncio.sleep(pace)
        finally:
            report["ended"] = time.time()
            self.reports.append(report)
            self.sweeping = False

    def sweep_status(self) -> dict[str, Any]:
        return {"rule": self.rule, "running": self.sweeping, "reports": list(self.reports)}

    # -- views for the admin API ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        n = len(self.sessions)
        doc: dict[str, Any] = {
            "contract": 1,
            "sessions": {"open": n, "established": n, "by_worker": {"0": n}},
            "counters": dict(self.counters),
            "processes": self.processes(),
        }
        if self.pubsub is not None:
            doc["broadcast"] = self.pubsub.status()
        return doc

    def processes(self) -> list[dict[str, Any]]:
        fds: dict[str, int] = {}
        try:  # at the open-file limit this read fails: the optional figure is left out, never -1
            fds["fds"] = len(os.listdir(f"/proc/{os.getpid()}/fd"))
        except OSError:
            pass
        timers = sum(len(s.timers) for s in self.sessions.values())
        return [{"kind": "worker", "id": 0, "pid": os.getpid(), "name": "server", "sessions": len(self.sessions), "timers": timers, **fds}]


def run_task(data: Any, sleep_ms: int) -> dict[str, Any]:
    """A task, on a pool thread: it may block (that is what task workers are for)."""
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    return {"data": data, "task_worker": 0}
