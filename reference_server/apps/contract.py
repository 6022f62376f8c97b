"""The scenario application: the contract's application protocol (v1) on the reference API.

Clients send JSON text messages ``{"op": ..., "id": ...}``; every request gets
exactly one reply ``{"re": id, "ok": true, ...}`` or
``{"re": id, "ok": false, "error": {"code": n, "name": "..."}}``. Messages the
server sends on its own carry ``"ev"`` instead of ``"re"``. The full protocol
is ``docs/contract-v1.md`` section 3; this module is its reference.

Timers started by a session belong to the worker that owns that session, and
are cleared when that session closes. When the session migrates, they move
with it (``on_migrate_out`` stops them and exports their state,
``on_migrate_in`` re-arms them): their ids and sequence numbers go on. On a
reload, ``on_worker_exit`` clears every timer of the old worker but keeps the
subscriptions; each session's then travel with it to the new generation,
which re-arms them, so a client sees one stream of ticks (each tick names the
generation that sent it). A timer pushing to *another* session
keeps pushing after the target is gone (that is the seed situation), counting
each failure by error code so the client can ask.

The sweep (contract section 4.3) is ``apps/sweep.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from ..app import Application, HandlerSet
from ..child.api import Server
from ..core.limits import close_problem
from ..core.ports import SPEC_KEYS
from ..errors import CloseCode, ErrorCode, ServerError
from .sweep import Sweeper


@dataclass
class AppTimer:
    id: int  # numbered per session: stable when the session migrates
    owner: int  # session that started it
    to: int  # session it pushes to
    interval_ms: int
    remaining: int | None
    tid: int = 0  # this process's timer id (changes when the session moves)
    seq: int = 0
    sent: int = 0
    failed: Counter = field(default_factory=Counter)
    last_error: str = ""
    #: When its next tick was due (time.monotonic()) as it was disarmed: the next owner keeps the phase.
    due: float | None = None

    def status(self) -> dict[str, Any]:
        return {
            "timer": self.id,
            "to": self.to,
            "seq": self.seq,
            "sent": self.sent,
            "failed": {str(code): n for code, n in sorted(self.failed.items())},
            "last_error": self.last_error,
        }

    def export(self) -> dict[str, Any]:
        return {
            "id": self.id, "owner": self.owner, "to": self.to, "interval_ms": self.interval_ms,
            "remaining": self.remaining, "seq": self.seq, "sent": self.sent,
            "failed": dict(self.failed), "last_error": self.last_error, "due": self.due,
        }


@dataclass
class SessionTimers:
    """The timers a session started: they live in the worker that owns the session."""

    next_id: int = 1
    timers: dict[int, AppTimer] = field(default_factory=dict)


class BadRequest(Exception):
    pass


class EchoHandlers(HandlerSet):
    """Handler set ``echo`` (contract section 9): every message comes back as it was sent.

    A port listened with ``handler="echo"`` serves this instead of the
    contract protocol: ``{"op": "whoami", "id": 1}`` comes back verbatim,
    which is how a client tells which set its port serves.
    """

    def on_message(self, server: Server, session: int, data: str | bytes) -> None:
        server.push(session, data)


#: Contract 12.1: the bounds of the application protocol's values.
MAX_INT = 2**53 - 1  # the largest integer every JSON implementation keeps exact
MAX_INTERVAL_MS = 3_600_000
MAX_SLEEP_MS = 60_000
#: Ops that let any client change the server itself: refused unless ``--app-admin-ops``.
ADMIN_OPS = frozenset({"listen", "unlisten", "reload", "block"})
#: Contract 12.2: what one session may hold.
MAX_TIMERS = 100  # timers it started that are still running
MAX_TASKS = 100  # tasks it submitted whose result it has not had


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"the number {text[:40]} is past a double's range")
    return value


def parse_request(data: str) -> dict[str, Any]:
    """A request as contract 3 and 12.1 define it: strict JSON, an object with a string ``op``.

    Raises :class:`BadRequest` naming what is wrong: not JSON, ``NaN``/``Infinity``, a number
    past a double's range (``1e400``, which would make the reply unencodable), nesting too deep
    for the parser, not an object.
    """
    try:
        msg = json.loads(data, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest("nested too deep") from None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise BadRequest("expected a JSON object with a string 'op'")
    return msg


def _int(msg: dict, key: str, default: int | None = None, *, low: int | None = None, high: int = MAX_INT) -> int:
    value = msg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{key!r} must be an integer")
    if low is not None and value < low:
        raise BadRequest(f"{key!r} must be >= {low}")
    if value > high:
        raise BadRequest(f"{key!r} must be <= {high}")
    return value


class ContractApp(Sweeper, Application):
    handler_sets = {"echo": EchoHandlers()}

    def __init__(self) -> None:
        self.by_owner: dict[int, SessionTimers] = {}
        self.by_tid: dict[int, AppTimer] = {}
        self.pending_tasks: dict[int, tuple[int, Any]] = {}
        self.tasks_of: Counter[int] = Counter()  # session -> tasks outstanding
        self.init_sweeper()
        self.exiting = False  # on_worker_exit ran: keep subscriptions, arm nothing

    # -- sessions ------------------------------------------------------------------

    def on_message(self, server: Server, session: int, data: str | bytes) -> Any:
        if isinstance(data, bytes):
            self._reply(server, session, None, error=(ErrorCode.BAD_REQUEST, "binary messages carry no op"))
            return
        try:
            msg = parse_request(data)
        except BadRequest as exc:
            self._reply(server, session, None, error=(ErrorCode.BAD_REQUEST, f"malformed request: {exc}"))
            return
        req_id = msg.get("id")
        handler = getattr(self, "op_" + msg["op"], None)
        if handler is not None and msg["op"] in ADMIN_OPS and not server.config.app_admin_ops:
            self._reply(server, session, req_id, error=(
                ErrorCode.UNSUPPORTED, f"op {msg['op']!r} is off: the server runs without --app-admin-ops"))
            return
        if handler is None:
            self._reply(server, session, req_id, error=(ErrorCode.UNSUPPORTED, f"unsupported op {msg['op'][:64]!r}"))
            return
        try:
            result = handler(server, session, msg)
        except BadRequest as exc:
            self._reply(server, session, req_id, error=(ErrorCode.BAD_REQUEST, str(exc)))
            return None
        except ServerError as exc:
            self._reply(server, session, req_id, error=(exc.code, exc.message))
            return None
        except Exception as exc:  # a bug: still exactly one reply (contract 12.1), and a rate-limited log
            self._internal(server, session, req_id, msg["op"], exc)
            return None
        if inspect.isawaitable(result):
            return self._finish_async(server, session, req_id, result)
        if result is not None:
            self._reply(server, session, req_id, **result)
        return None

    async def _finish_async(self, server: Server, session: int, req_id: Any, pending: Any) -> None:
        try:
            result = await pending
        except BadRequest as exc:
            self._reply(server, session, req_id, error=(ErrorCode.BAD_REQUEST, str(exc)))
            return
        except ServerError as exc:
            self._reply(server, session, req_id, error=(exc.code, exc.message))
            return
        except Exception as exc:  # a bug: still exactly one reply (contract 12.1)
            self._internal(server, session, req_id, "async op", exc)
            return
        if result is not None:
            self._reply(server, session, req_id, **result)

    def _internal(self, server: Server, session: int, req_id: Any, op: str, exc: Exception) -> None:
        server.log_failure("app.op_failed", exc, op=op[:64], sid=session)
        self._reply(server, session, req_id, error=(ErrorCode.INTERNAL, f"op {op[:64]!r} failed: {type(exc).__name__}"))

    def _disarm(self, server: Server, mine: SessionTimers) -> None:
        for timer in mine.timers.values():
            if timer.tid:
                timer.due = server.timer_due(timer.tid)
                server.clear(timer.tid)
                self.by_tid.pop(timer.tid, None)
                timer.tid = 0

    def on_close(self, server: Server, session: int, code: int, reason: str) -> None:
        mine = self.by_owner.pop(session, None)
        if mine is not None:
            self._disarm(server, mine)

    def on_migrate_out(self, server: Server, session: int) -> Any:
        """Stop the session's timers here and hand their state to the next worker."""
        mine = self.by_owner.pop(session, None)
        if mine is None:
            return None
        self._disarm(server, mine)
        return self._export(mine)

    @staticmethod
    def _export(mine: SessionTimers) -> dict[str, Any]:
        return {"next_id": mine.next_id, "timers": [t.export() for t in mine.timers.values()]}

    def on_migrate_in(self, server: Server, session: int, state: Any) -> None:
        """Re-arm the timers the session brought along; ids and sequence numbers go on."""
        if not state:
            return
        mine = self.by_owner.setdefault(session, SessionTimers())
        mine.next_id = max(mine.next_id, state["next_id"])
        for raw in state["timers"]:
            timer = AppTimer(
                raw["id"], raw["owner"], raw["to"], raw["interval_ms"], raw["remaining"],
                seq=raw["seq"], sent=raw["sent"], failed=Counter(raw["failed"]), last_error=raw["last_error"],
                due=raw.get("due"),
            )
            self._arm(server, mine, timer)

    def _arm(self, server: Server, mine: SessionTimers, timer: AppTimer) -> None:
        mine.timers[timer.id] = timer
        if self.exiting:  # this worker is on its way out: the session's next owner arms it
            timer.tid = 0
            return
        first_ms = None if timer.due is None else max(0.0, (timer.due - time.monotonic()) * 1000.0)
        timer.due = None
        timer.tid = server.tick(
            timer.interval_ms, self._fire, label=f"session {timer.owner} -> {timer.to}", first_ms=first_ms
        )
        self.by_tid[timer.tid] = timer

    def on_worker_exit(self, server: Server) -> None:
        """The fix the seed's users are given: clear this process's timers on exit.

        The subscriptions stay (timers disarmed): on a reload each session's
        travel with it to its new worker (``on_migrate_out``).
        """
        self.exiting = True
        for mine in self.by_owner.values():  # each session's next owner keeps its ticks' phase
            for timer in mine.timers.values():
                if timer.tid:
                    timer.due = server.timer_due(timer.tid)
        server.clear_all()
        self.by_tid.clear()
        for mine in self.by_owner.values():
            for timer in mine.timers.values():
                timer.tid = 0

    def _reply(self, server: Server, to: int, req_id: Any, /, *, error=None, **fields: Any) -> None:
        if error is not None:
            code, message = error
            payload = {"re": req_id, "ok": False, "error": {"code": int(code), "name": code.name, "message": message}}
        else:
            payload = {"re": req_id, "ok": True, **fields}
        server.push(to, json.dumps(payload, allow_nan=False))

    # -- operations (contract section 3) ----------------------------------------------

    def op_whoami(self, server: Server, session: int, msg: dict) -> dict:
        info = server.get_client_info(session)
        return {
            "session": session, "worker": server.worker_id, "pid": server.pid, "generation": server.generation,
            "port": info.local_port if info else None, "handler": server.handler_name(session),
        }

    def op_echo(self, server: Server, session: int, msg: dict) -> dict:
        return {"seq": msg.get("seq"), "data": msg.get("data"), "worker": server.worker_id}

    def op_ping(self, server: Server, session: int, msg: dict) -> dict:
        return {"pong": time.time()}

    def op_timer_start(self, server: Server, session: int, msg: dict) -> dict:
        interval = _int(msg, "interval_ms", low=1, high=MAX_INTERVAL_MS)
        to = _int(msg, "to", session, low=1)
        count = msg.get("count")
        if count is not None:
            count = _int(msg, "count", low=1)
        mine = self.by_owner.setdefault(session, SessionTimers())
        if len(mine.timers) >= MAX_TIMERS:
            raise ServerError(ErrorCode.LIMIT_REACHED, f"a session holds at most {MAX_TIMERS} timers")
        timer = AppTimer(mine.next_id, session, to, interval, count)
        mine.next_id += 1
        self._arm(server, mine, timer)
        return {"timer": timer.id}

    def _fire(self, tid: int) -> None:
        timer = self.by_tid.get(tid)
        server = self._server
        if timer is None:
            server.clear(tid)
            return
        if not self._may_push(server, timer):
            return
        timer.seq += 1
        payload = json.dumps(
            {
                "ev": "tick", "timer": timer.id, "seq": timer.seq, "to": timer.to, "from": timer.owner,
                "ts": time.time(), "gen": server.generation, "pid": server.pid,
            }
        )
        if server.push(timer.to, payload):
            timer.sent += 1
        else:
            timer.failed[int(server.last_error)] += 1
            timer.last_error = server.last_error.name
        if timer.remaining is not None:
            timer.remaining -= 1
            if timer.remaining <= 0:
                self._drop_timer(server, timer)

    def _may_push(self, server: Server, timer: AppTimer) -> bool:
        """False when the timer's own session is closing (on_close clears the timer).

        Checking ``exists()`` first is the seed's fix: never push to a session
        whose close is known. A timer aimed at *another* session keeps pushing
        (the seed situation the dead-session scenario counts).
        """
        return timer.to != timer.owner or server.exists(timer.to)

    def _drop_timer(self, server: Server, timer: AppTimer) -> None:
        server.clear(timer.tid)
        self.by_tid.pop(timer.tid, None)
        mine = self.by_owner.get(timer.owner)
        if mine is not None:
            mine.timers.pop(timer.id, None)

    def _own_timer(self, session: int, msg: dict) -> AppTimer:
        tid = _int(msg, "timer")
        mine = self.by_owner.get(session)
        timer = mine.timers.get(tid) if mine is not None else None
        if timer is None:
            raise BadRequest(f"no timer {tid} started by this session")
        return timer

    def op_timer_stop(self, server: Server, session: int, msg: dict) -> dict:
        timer = self._own_timer(session, msg)
        self._drop_timer(server, timer)
        return timer.status()

    def op_timer_status(self, server: Server, session: int, msg: dict) -> dict:
        return self._own_timer(session, msg).status()

    def op_push(self, server: Server, session: int, msg: dict) -> dict | None:
        to = _int(msg, "to")
        data = msg.get("data")
        payload = json.dumps({"ev": "push", "from": session, "to": to, "data": data})
        if server.push(to, payload):
            return {}
        code = server.last_error
        self._reply(server, session, msg.get("id"), error=(code, f"push to session {to} failed"))
        return None

    def op_bind(self, server: Server, session: int, msg: dict) -> dict:
        server.bind(session, _int(msg, "uid", low=0))
        return {}

    def op_join(self, server: Server, session: int, msg: dict) -> dict:
        server.set_group(session, _int(msg, "group", low=0))
        return {}

    async def op_subscribe(self, server: Server, session: int, msg: dict) -> dict:
        """Join a broadcast channel (contract section 10); ``since``: a stream id (durable mode)."""
        since = msg.get("since")
        if since is not None and not isinstance(since, str):
            raise BadRequest("'since' must be a stream id string such as '1700000000000-0'")
        return {"channel": msg.get("channel"), **await server.subscribe(session, _channel(msg), since=since)}

    async def op_unsubscribe(self, server: Server, session: int, msg: dict) -> dict:
        return {"channel": msg.get("channel"), "was_member": await server.unsubscribe(session, _channel(msg))}

    async def op_channels(self, server: Server, session: int, msg: dict) -> dict:
        return {"channels": server.channels(session)}

    async def op_publish(self, server: Server, session: int, msg: dict) -> dict:
        """Publish ``data`` to ``channel`` through Redis (every node's sessions in it get it)."""
        if "data" not in msg:
            raise BadRequest("'data' is required")
        return {"channel": msg.get("channel"), "msg_id": await server.publish(_channel(msg), msg["data"])}

    async def op_migrate(self, server: Server, session: int, msg: dict) -> dict:
        """Move me to worker W; the reply comes from W, after the move."""
        to = _int(msg, "worker", low=0)
        moved = await server.move(session, to)
        return {"from": moved["from"], "to": moved["to"], "elapsed_ms": moved["elapsed_ms"]}

    async def op_reload(self, server: Server, session: int, msg: dict) -> dict:
        """Ask for a reload from this worker (contract section 8): which one it started or joined."""
        scope = msg.get("scope", "all")
        if scope not in ("all", "task_workers"):
            raise BadRequest("'scope' must be 'all' or 'task_workers'")
        answer = await server.reload_async(task_workers_only=scope == "task_workers")
        return {"reload": answer["reload"], "merged": answer["merged"], "generation": answer["generation"]}

    async def op_listen(self, server: Server, session: int, msg: dict) -> dict:
        """Listen on a port from this worker (contract section 9); the reply is the listener."""
        spec = {k: v for k, v in msg.items() if k not in ("op", "id")}
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown or "port" not in spec:
            what = f"unknown key {unknown[0]!r}" if unknown else "'port' is required"
            raise BadRequest(f"port {spec.get('port')!r}: {what} (known: {', '.join(SPEC_KEYS)})")
        return {"listener": await server.listen(**spec)}

    async def op_unlisten(self, server: Server, session: int, msg: dict) -> dict:
        port = _int(msg, "port", low=0)
        on_remove = msg.get("on_remove")
        if on_remove is not None and on_remove not in ("keep", "close"):
            raise BadRequest("'on_remove' must be 'keep' or 'close'")
        return {"listener": await server.unlisten(port, on_remove=on_remove)}

    async def op_listeners(self, server: Server, session: int, msg: dict) -> dict:
        return await server.listeners()

    def op_block(self, server: Server, session: int, msg: dict) -> dict:
        """Block this worker's event loop for ``ms`` (a slow synchronous hook, on purpose)."""
        ms = _int(msg, "ms", low=0)
        if ms > 5000:
            raise BadRequest("'ms' must be at most 5000")
        time.sleep(ms / 1000.0)
        return {"blocked_ms": ms, "worker": server.worker_id}

    def op_protect(self, server: Server, session: int, msg: dict) -> dict:
        on = msg.get("on", True)
        if not isinstance(on, bool):
            raise BadRequest("'on' must be true or false")
        server.protect(session, on)
        return {}

    def op_close(self, server: Server, session: int, msg: dict) -> None:
        code = msg.get("code", int(CloseCode.NORMAL))
        reason = msg.get("reason", "")
        problem = close_problem(code, reason)
        if problem is not None:
            raise BadRequest(problem)
        self._reply(server, session, msg.get("id"))
        server.close(session, code, reason)
        return None

    def op_task(self, server: Server, session: int, msg: dict) -> dict | None:
        sleep_ms = _int(msg, "sleep_ms", 0, low=0, high=MAX_SLEEP_MS)
        if self.tasks_of[session] >= MAX_TASKS:
            raise ServerError(ErrorCode.LIMIT_REACHED, f"a session has at most {MAX_TASKS} tasks outstanding")
        task_id = server.task({"data": msg.get("data"), "sleep_ms": sleep_ms, "session": session})
        if task_id < 0:
            self._reply(server, session, msg.get("id"), error=(server.last_error, "no task worker"))
            return None
        self.pending_tasks[task_id] = (session, msg.get("id"))
        self.tasks_of[session] += 1
        return {"task": task_id}

    def on_worker_start(self, server: Server) -> None:
        self._server = server

    async def on_task(self, server: Server, task_id: int, src_worker: int, data: Any) -> Any:
        if data.get("sleep_ms"):
            await asyncio.sleep(data["sleep_ms"] / 1000.0)
        return {"data": data.get("data"), "task_worker": server.worker_id}

    def _settled(self, task_id: int) -> tuple[int, Any] | None:
        """The task's (session, request id), once: it no longer counts against the session's bound."""
        pending = self.pending_tasks.pop(task_id, None)
        if pending is None:
            return None
        session = pending[0]
        self.tasks_of[session] -= 1
        if self.tasks_of[session] <= 0:
            del self.tasks_of[session]
        return pending

    def on_finish(self, server: Server, task_id: int, data: Any) -> None:
        pending = self._settled(task_id)
        if pending is not None:
            session, req_id = pending
            server.push(session, json.dumps({"ev": "task_result", "task": task_id, "re": req_id, "result": data}))

    def on_task_lost(self, server: Server, task_id: int, code: int, message: str) -> None:
        """Contract 13.4: the submitter learns that its task will never finish."""
        pending = self._settled(task_id)
        if pending is not None:
            session, req_id = pending
            error = {"code": code, "name": ErrorCode(code).name, "message": message}
            server.push(session, json.dumps({"ev": "task_failed", "task": task_id, "re": req_id, "error": error}))


app = ContractApp()


def _channel(msg: dict) -> str:
    """The request's ``channel`` as sent: the server API answers BAD_CHANNEL for anything not a channel name."""
    return cast(str, msg.get("channel"))
