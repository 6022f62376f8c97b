"""The admin API: HTTP/1.1 + JSON on loopback, in its own process.

The admin process is an ordinary child using the same public API as any other
process (it is itself a proof that the API works from outside the workers).
Routes are in ``docs/contract-v1.md`` section 4. Every ``/v1`` route needs
``Authorization: Bearer <token>``; ``/ready`` and ``/metrics`` do not.

Bad requests never crash anything: a wrong token is 401, an unknown route
404, a wrong method 405, a malformed or oversized body 400/413, each with a
JSON body ``{"error": {"code": ..., "name": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import socket
import time
from typing import TYPE_CHECKING, Any

from ..core.countertable import unkept
from ..core.limits import close_problem
from ..core.metrics import merge, render_prometheus
from ..core.proctable import ProcKind, ProcState
from ..errors import CloseCode, ErrorCode, ServerError

if TYPE_CHECKING:
    from ..child.context import ChildContext

CONTRACT_VERSION = "1.2"
#: Counters /v1/stats always lists, at 0 until something counts (contract 4.2).
STANDARD_COUNTERS = dict.fromkeys(
    (
        "connections_accepted", "sessions_opened", "sessions_closed", "messages_received", "pushes", "push_failed",
        "dead_session_pushes", "closes_requested", "heartbeat_closes", "sweep_closes", "tasks_dispatched",
        "tasks_done", "tasks_finished", "timers_created", "timers_cleared", "slow_closed",
    ),
    0,
)
MAX_HEADER = 16 * 1024
MAX_BODY = 1024 * 1024
#: Methods whose requests must say how long their body is (contract 4: 411 otherwise).
BODY_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})

_HTTP_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.LENGTH_REQUIRED: 411,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.NO_TASK_WORKER: 503,
    ErrorCode.SESSION_NOT_EXIST: 404,
    ErrorCode.SESSION_CLOSED: 409,
    ErrorCode.NOT_ESTABLISHED: 409,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.UNKNOWN_PROCESS: 404,
    ErrorCode.ALREADY_THERE: 409,
    ErrorCode.MIGRATION_IN_PROGRESS: 409,
    ErrorCode.MIGRATION_FAILED: 503,
    ErrorCode.NOT_MOVABLE: 409,
    ErrorCode.OWNER_UNREACHABLE: 503,
    ErrorCode.PORT_IN_USE: 409,
    ErrorCode.PORT_PRIVILEGED: 403,
    ErrorCode.BAD_ADDRESS: 400,
    ErrorCode.ALREADY_LISTENING: 409,
    ErrorCode.NOT_LISTENING: 404,
    ErrorCode.HANDLER_UNKNOWN: 400,
    ErrorCode.LISTEN_FAILED: 503,
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_body(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"error": {"code": int(code), "name": code.name, "message": message}}


async def serve_admin(rt: ChildContext, sock: socket.socket | None) -> None:
    assert sock is not None, "the admin process needs its listening socket"
    sock.setblocking(False)
    admin = AdminApi(rt)
    server = await asyncio.start_server(admin.handle_connection, sock=sock, limit=MAX_HEADER)
    rt.log.info("admin.listening", port=sock.getsockname()[1])
    try:
        await rt.stopping.wait()
    finally:
        server.close()


class AdminApi:
    def __init__(self, rt: ChildContext) -> None:
        self.rt = rt
        self.api = rt.api
        self.token = rt.config.admin_token.encode()
        self.open_connections = 0
        self.routes: list[tuple[str, re.Pattern[str], Any, bool]] = [
            ("GET", re.compile(r"/ready"), self.ready, False),
            ("GET", re.compile(r"/metrics"), self.metrics, False),
            ("GET", re.compile(r"/v1/info"), self.info, True),
            ("GET", re.compile(r"/v1/sessions"), self.sessions, True),
            ("GET", re.compile(r"/v1/sessions/(\d+)"), self.session, True),
            ("POST", re.compile(r"/v1/sessions/(\d+)/push"), self.push, True),
            ("POST", re.compile(r"/v1/sessions/(\d+)/close"), self.close, True),
            ("POST", re.compile(r"/v1/sessions/(\d+)/migrate"), self.migrate, True),
            ("POST", re.compile(r"/v1/migrations"), self.migrations, True),
            ("POST", re.compile(r"/v1/affinity"), self.affinity, True),
            ("POST", re.compile(r"/v1/rebalance"), self.rebalance, True),
            ("GET", re.compile(r"/v1/stats"), self.stats, True),
            ("GET", re.compile(r"/v1/processes"), self.processes, True),
            ("POST", re.compile(r"/v1/shutdown"), self.shutdown, True),
            ("POST", re.compile(r"/v1/reload"), self.reload, True),
            ("GET", re.compile(r"/v1/reloads"), self.reloads, True),
            ("GET", re.compile(r"/v1/listeners"), self.listeners, True),
            ("POST", re.compile(r"/v1/listeners"), self.listen, True),
            ("DELETE", re.compile(r"/v1/listeners/([^/]+)"), self.unlisten, True),
            ("GET", re.compile(r"/v1/ports-file"), self.ports_file, True),
            ("POST", re.compile(r"/v1/ports-file/apply"), self.ports_file_apply, True),
            ("GET", re.compile(r"/v1/sweep"), self.app_op("sweep.reports"), True),
            ("PUT", re.compile(r"/v1/sweep"), self.app_op("sweep.set"), True),
            ("DELETE", re.compile(r"/v1/sweep"), self.app_op("sweep.clear"), True),
        ]

    # -- HTTP plumbing ------------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection's requests; bounded: ``admin_max_connections`` at once, each closed
        when it sends no complete request (head and body) within ``admin_idle_ms``."""
        if self.open_connections >= self.rt.config.admin_max_connections:
            self.rt.counters["admin_refused"] += 1
            writer.close()
            return
        self.open_connections += 1
        try:
            while True:
                keep_alive = await self._one_request(reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        idle = self.rt.config.admin_idle_ms / 1000.0
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                await self._send(writer, 400, error_body(ErrorCode.BAD_REQUEST, "incomplete request"), False)
            return False
        except asyncio.LimitOverrunError:
            await self._send(writer, 400, error_body(ErrorCode.BAD_REQUEST, "request header too large"), False)
            return False
        try:
            method, path, headers = parse_head(head)
        except HttpError as exc:
            await self._send(writer, exc.status, error_body(exc.code, exc.message), False)
            return False
        keep_alive = headers.get("connection", "").lower() != "close"
        try:
            body = await asyncio.wait_for(self._read_body(reader, method, headers), idle)
        except TimeoutError:
            return False  # the body never came: closed, as an idle connection is
        except HttpError as exc:
            await self._send(writer, exc.status, error_body(exc.code, exc.message), False)
            return False
        try:
            status, payload = await self.dispatch(method, path, headers, body)
        except HttpError as exc:
            status, payload = exc.status, error_body(exc.code, exc.message)
        except ServerError as exc:
            status, payload = _HTTP_STATUS.get(exc.code, 400), error_body(exc.code, exc.message)
        except Exception as exc:
            self.rt.log_failure("admin.failed", exc, path=path[:200])
            status, payload = 500, error_body(ErrorCode.INTERNAL, "internal error (logged)")
        await self._send(writer, status, payload, keep_alive)
        return keep_alive

    async def _read_body(self, reader: asyncio.StreamReader, method: str, headers: dict[str, str]) -> bytes:
        if "transfer-encoding" in headers:
            raise HttpError(411, ErrorCode.LENGTH_REQUIRED, "chunked bodies are not supported: send Content-Length")
        if "content-length" not in headers and method in BODY_METHODS:
            raise HttpError(411, ErrorCode.LENGTH_REQUIRED, f"{method} needs a Content-Length header (0 for no body)")
        raw = headers.get("content-length", "0")
        if not raw.isdigit():
            raise HttpError(400, ErrorCode.BAD_REQUEST, f"bad Content-Length {raw!r}")
        length = int(raw)
        if length > MAX_BODY:
            raise HttpError(413, ErrorCode.TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY}")
        return await reader.readexactly(length) if length else b""

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: Any, keep_alive: bool) -> None:
        if isinstance(payload, str):
            body, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, ctype = json.dumps(payload, default=str).encode(), "application/json"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    async def dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        allowed = []
        for route_method, pattern, handler, auth in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if auth:
                self._check_token(headers)
            return await handler(parse_json(body), *match.groups())
        if allowed:
            raise HttpError(405, ErrorCode.METHOD_NOT_ALLOWED, f"{method} not allowed on {path}; use {', '.join(allowed)}")
        raise HttpError(404, ErrorCode.NOT_FOUND, f"no route {method} {path}")

    def _check_token(self, headers: dict[str, str]) -> None:
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
            raise HttpError(401, ErrorCode.UNAUTHORIZED, "missing or wrong admin token (Authorization: Bearer ...)")

    # -- routes ------------------------------------------------------------------------

    async def ready(self, body: Any) -> tuple[int, Any]:
        entries = list(self.rt.procs.entries())
        wanted = [e for e in entries if e.kind in (ProcKind.WORKER, ProcKind.TASK)]
        counts = {ProcKind.WORKER: self.rt.config.workers, ProcKind.TASK: self.rt.config.task_workers}
        ready = all(
            sum(1 for e in wanted if e.kind is kind and e.state is ProcState.READY) >= n
            for kind, n in counts.items()
        )
        return (200 if ready else 503), {"ready": ready}

    async def info(self, body: Any) -> tuple[int, Any]:
        return 200, {
            "contract": CONTRACT_VERSION,
            "implementation": "reference_server",
            "workers": self.rt.config.workers,
            "task_workers": self.rt.config.task_workers,
        }

    async def sessions(self, body: Any) -> tuple[int, Any]:
        return 200, {"sessions": [self._record(info) for info in self.api.sessions()]}

    async def session(self, body: Any, sid: str) -> tuple[int, Any]:
        info = self.api.get_client_info(int(sid))
        if info is None:
            raise ServerError(ErrorCode.SESSION_NOT_EXIST, f"session {sid} does not exist")
        return 200, self._record(info)

    def _record(self, info: Any) -> dict[str, Any]:
        """A session record (contract 4.1): the table's record, its handler set by name."""
        return info.as_dict(self.rt.handler_names)

    async def push(self, body: Any, sid: str) -> tuple[int, Any]:
        data = require(body, "data", str)
        if not self.api.push(int(sid), data):
            code = self.api.last_error
            raise ServerError(code, f"push to session {sid} failed")
        return 200, {"ok": True}

    async def close(self, body: Any, sid: str) -> tuple[int, Any]:
        code = optional(body, "code", int, int(CloseCode.NORMAL))
        reason = optional(body, "reason", str, "")
        problem = close_problem(code, reason)
        if problem is not None:
            raise ServerError(ErrorCode.BAD_REQUEST, problem)
        if not self.api.close(int(sid), code, reason):
            raise ServerError(self.api.last_error, f"close of session {sid} failed")
        return 200, {"ok": True}

    async def migrate(self, body: Any, sid: str) -> tuple[int, Any]:
        worker = require(body, "worker", int)
        return 200, await self.api.move(int(sid), worker)

    async def migrations(self, body: Any) -> tuple[int, Any]:
        """Several moves in one request, one after the other; each one's outcome and time."""
        moves = require(body, "moves", list)
        if len(moves) > 10_000 or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in m)
            for m in moves
        ):
            raise ServerError(ErrorCode.BAD_REQUEST, "'moves' must be a list of at most 10000 [session, worker] pairs")
        results = []
        for sid, worker in moves:
            started = time.perf_counter()
            try:
                moved = await self.api.move(sid, worker)
                results.append({**moved, "ok": True, "total_ms": round((time.perf_counter() - started) * 1000, 3)})
            except ServerError as exc:
                results.append({"session": sid, "to": worker, "ok": False, **error_body(exc.code, exc.message)})
        return 200, {"results": results}

    async def affinity(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ServerError(ErrorCode.BAD_REQUEST, "body must be an object with 'group' or 'sessions'")
        group = optional(body, "group", int, None)
        sessions = optional(body, "sessions", list, None)
        if sessions is not None and not all(isinstance(s, int) and not isinstance(s, bool) for s in sessions):
            raise ServerError(ErrorCode.BAD_REQUEST, "'sessions' must be a list of session ids")
        worker = optional(body, "worker", int, None)
        return 200, await self.api.affinity(group=group, sessions=sessions, to_worker=worker)

    async def rebalance(self, body: Any) -> tuple[int, Any]:
        return 200, await self.api.rebalance()

    async def stats(self, body: Any) -> tuple[int, Any]:
        return 200, await self.collect_stats()

    async def collect_stats(self) -> dict[str, Any]:
        per_process, reloads, ports, deaths = await asyncio.gather(
            self.api.gather_stats(), self.api.reload_status(), self.api.listeners(), self.api.broadcaster_outages()
        )
        retired = reloads.pop("retired")
        # A process that retired has sent its last report: list it no more.
        gone = set(retired["pids"])
        live = [p for p in per_process if p.get("pid") not in gone]
        sessions = self.api.sessions()
        by_worker: dict[str, int] = {}
        for info in sessions:
            by_worker[str(info.worker)] = by_worker.get(str(info.worker), 0) + 1
        # Counters come from the shared table, which keeps those of processes that died or do
        # not answer (contract 4.2: none decreases); an application's own, from the running ones.
        table = self.rt.boot.counters
        kept = table.totals() if table is not None else merge(p.get("counters", {}) for p in per_process)
        counters = merge([STANDARD_COUNTERS, kept, unkept(p.get("counters", {}) for p in per_process)])
        counters = {k: v for k, v in counters.items() if v or k in STANDARD_COUNTERS}  # the others once they count
        master = self.rt.boot.extras.get("master_stats", lambda: {})()
        # The master accepts every connection: its count is the standard counter (section 4.2).
        counters["connections_accepted"] = counters.get("connections_accepted", 0) + int(master.get("connections_accepted", 0))
        return {
            "contract": CONTRACT_VERSION,
            "sessions": {
                "open": len(sessions),
                "established": sum(1 for s in sessions if s.established),
                "by_worker": by_worker,
            },
            "counters": counters,
            "timers": {p["name"]: p.get("timers", 0) for p in live if "name" in p and not p.get("retiring")},
            "master": master,
            "reloads": {**reloads["counters"], "running": reloads["running"] is not None},
            "generation": reloads["generation"],
            "ports": {
                str(p["port"]): {k: p[k] for k in ("connections", "accepted", "refused", "refused_by_reason")}
                for p in ports["listeners"]
            },
            "broadcast": self._broadcast(live, deaths),
            "processes": live,
        }

    def _broadcast(self, live: list[dict[str, Any]], deaths: list[dict[str, Any]]) -> dict[str, Any]:
        """``broadcast`` of /v1/stats (contract 10.5): the broadcaster's own status, with the outages of
        broadcasters that died (kept by the master); while none runs, not connected."""
        mode = self.rt.config.broadcast_mode
        status = next((p["broadcast"] for p in live if "broadcast" in p), None)
        if status is None:
            if mode == "off" or not self.rt.boot.broker_url:
                return {"mode": "off"}
            status = {"mode": mode, "connected": False, "outages": []}
        outages = sorted([*deaths, *status.get("outages", [])], key=lambda o: o["start"])
        open_death = any(o.get("end") is None for o in deaths)
        return {**status, "connected": bool(status.get("connected")) and not open_death, "outages": outages}

    async def metrics(self, body: Any) -> tuple[int, Any]:
        stats = await self.collect_stats()
        gauges = {
            "sessions_open": stats["sessions"]["open"],
            "sessions_established": stats["sessions"]["established"],
        }
        labelled = {
            "worker_sessions": [
                ({"worker": w}, n) for w, n in sorted(stats["sessions"]["by_worker"].items())
            ],
            "process_timers": [({"process": name}, n) for name, n in sorted(stats["timers"].items())],
            "process_fds": [
                ({"process": p["name"]}, p["fds"]) for p in stats["processes"] if "fds" in p
            ],
        }
        master = stats["master"]
        counters = dict(stats["counters"])
        for key in ("connections_refused", "respawns", "sessions_lost"):
            if key in master:
                counters[key] = int(master[key])
        for key in ("requested", "merged", "completed", "forced_kills"):
            counters[f"reloads_{key}"] = int(stats["reloads"][key])
        gauges["generation"] = stats["generation"]
        ports = stats["ports"]
        labelled["port_connections"] = [({"port": p}, f["connections"]) for p, f in ports.items()]
        labelled_counters = {
            "port_accepted": [({"port": p}, f["accepted"]) for p, f in ports.items()],
            "port_refused": [
                ({"port": p, "reason": reason}, n) for p, f in ports.items() for reason, n in f["refused_by_reason"].items()
            ],
        }
        return 200, render_prometheus(counters, gauges, labelled, labelled_counters=labelled_counters)

    async def processes(self, body: Any) -> tuple[int, Any]:
        entries = [e.as_dict() for e in self.rt.procs.entries()]
        entries.append({"kind": "master", "id": 0, "pid": os.getppid(), "state": "ready", "name": "master"})
        return 200, {"processes": entries}

    async def reload(self, body: Any) -> tuple[int, Any]:
        """Start a reload or join the running one; with ``"wait": true``, answer when it is done."""
        if body is not None and not isinstance(body, dict):
            raise ServerError(ErrorCode.BAD_REQUEST, "body must be an object: {scope, wait}")
        scope = optional(body, "scope", str, "all")
        if scope not in ("all", "task_workers"):
            raise ServerError(ErrorCode.BAD_REQUEST, f"'scope' must be 'all' or 'task_workers', got {scope!r}")
        wait = body.get("wait", False) if body else False
        if not isinstance(wait, bool):
            raise ServerError(ErrorCode.BAD_REQUEST, "'wait' must be true or false")
        timeout = optional(body, "timeout_ms", int, 60_000)
        if not 1 <= timeout <= 600_000:
            raise ServerError(ErrorCode.BAD_REQUEST, "'timeout_ms' must be 1..600000")
        args = {"scope": scope, "source": "admin", "wait": wait}
        return 200, await self.rt.master_call("reload", args, timeout / 1000.0)

    async def reloads(self, body: Any) -> tuple[int, Any]:
        status = await self.api.reload_status()
        status.pop("retired", None)
        return 200, status

    async def listeners(self, body: Any) -> tuple[int, Any]:
        return 200, await self.api.listeners()

    async def listen(self, body: Any) -> tuple[int, Any]:
        """Body: ``{port, host?, reuse_port?, on_remove?, max_connections?, handler?, backlog?}``."""
        return 200, await self.rt.master_call("listen", body, 5.0)

    async def unlisten(self, body: Any, port: str) -> tuple[int, Any]:
        """``DELETE /v1/listeners/{port}``, body ``{on_remove?}`` to override the port's policy."""
        if not port.isdigit() or len(port) > 5:
            raise ServerError(ErrorCode.BAD_REQUEST, f"port {port[:20]!r}: must be an integer 0..65535")
        if body is not None and not isinstance(body, dict):
            raise ServerError(ErrorCode.BAD_REQUEST, "body must be an object: {on_remove}")
        return 200, await self.rt.master_call("unlisten", {**(body or {}), "port": int(port)}, 5.0)

    async def ports_file(self, body: Any) -> tuple[int, Any]:
        return 200, await self.api.ports_file()

    async def ports_file_apply(self, body: Any) -> tuple[int, Any]:
        """Apply the file now; the answer is the status ``GET /v1/ports-file`` then gives."""
        await self.api.ports_file(apply=True)
        return 200, await self.api.ports_file()

    async def shutdown(self, body: Any) -> tuple[int, Any]:
        self.api.shutdown()
        return 200, {"ok": True}

    def app_op(self, op: str):
        async def handler(body: Any) -> tuple[int, Any]:
            result = self.rt.app.on_admin(self.api, op, body or {})
            if asyncio.iscoroutine(result):
                result = await result
            return 200, result

        return handler


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HttpError(400, ErrorCode.BAD_REQUEST, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, ErrorCode.BAD_REQUEST, f"bad request line {lines[0][:80]!r}")
    method, path, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(400, ErrorCode.BAD_REQUEST, f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers


def parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None


def require(body: Any, key: str, kind: type) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(key), kind) or isinstance(body.get(key), bool):
        raise ServerError(ErrorCode.BAD_REQUEST, f"body must be an object with {key!r} of type {kind.__name__}")
    return body[key]


def optional(body: Any, key: str, kind: type, default: Any) -> Any:
    if body is None or (isinstance(body, dict) and key not in body):
        return default
    return require(body, key, kind)
