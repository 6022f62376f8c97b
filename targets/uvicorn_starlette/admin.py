"""The admin API (contract section 4): Starlette routes, served by the supervisor.

It runs in a thread of the master process, on a uvicorn server of its own
(:func:`serve_admin`), because the master is the one process a reload never
replaces: an admin request that waits for a reload is never cut by it. It
holds no session, so the cluster views are gathered over the bus
(``bus.py``): ``/v1/sessions`` asks every worker for its records,
``/v1/stats`` asks every process for its counters and adds those of the
processes that have exited. Routes of
capabilities this target does not declare (migrate, listeners, ports file)
do not exist: 404, like any unknown route.

Errors are ``{"error": {"code", "name", "message"}}`` with 400, 401, 404,
405, 411 or 413; none of them disturbs anything else.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from socket import socket
from typing import TYPE_CHECKING, Any

import uvicorn
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import kit
from ..kit import ContractError
from .bus import Unreachable
from .cluster import Cluster
from .node import ask_reload, fds_of

if TYPE_CHECKING:
    from .settings import Settings

MAX_BODY = 1 << 20
STATUS_OF = {1005: 404, 1004: 409, 8503: 409, 4400: 400, 4401: 401, 4404: 404, 4405: 405, 4411: 411, 4413: 413}


class HttpError(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


def error_response(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": kit.CODES.get(name, 4500), "name": name, "message": message}}, status_code=status)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in the contract's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.url.path}")
    if exc.status_code == 404:
        return error_response(404, "NOT_FOUND", f"no route {request.method} {request.url.path} (this server declares no such capability)")
    return error_response(exc.status_code, "BAD_REQUEST", str(exc.detail))


class Admin:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.settings = cluster.settings
        self.keys = cluster.keys

    def routes(self) -> list[Route]:
        v1 = self.v1
        return [
            Route("/ready", self.ready),
            Route("/metrics", self.metrics),
            Route("/v1/sessions", v1(self.sessions)),
            Route("/v1/sessions/{sid:int}", v1(self.session)),
            Route("/v1/sessions/{sid:int}/push", v1(self.push), methods=["POST"]),
            Route("/v1/sessions/{sid:int}/close", v1(self.close), methods=["POST"]),
            Route("/v1/stats", v1(self.stats)),
            Route("/v1/processes", v1(self.processes)),
            Route("/v1/sweep", v1(self.sweep), methods=["GET", "PUT", "DELETE"]),
            Route("/v1/reload", v1(self.reload), methods=["POST"]),
            Route("/v1/reloads", v1(self.reloads)),
        ]

    def v1(self, handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        """Token check, body limits and the error shape around one route."""

        async def endpoint(request: Request) -> Response:
            try:
                auth = request.headers.get("authorization", "")
                if not hmac.compare_digest(auth.encode(), f"Bearer {self.settings.admin_token}".encode()):
                    raise HttpError(401, "UNAUTHORIZED", "missing or wrong bearer token")
                return JSONResponse(await handler(request))
            except HttpError as exc:
                return error_response(exc.status, exc.name, exc.message)
            except ContractError as exc:
                return JSONResponse({"error": exc.as_dict()}, status_code=STATUS_OF.get(exc.code, 400))
            except (RedisError, OSError) as exc:  # the cluster lives in Redis: without it, no answer
                return error_response(503, "BROKER_UNAVAILABLE", f"Redis cannot be reached: {exc!r}")

        return endpoint

    @staticmethod
    async def body(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is None and "chunked" not in request.headers.get("transfer-encoding", ""):
            raise HttpError(411, "LENGTH_REQUIRED", f"{request.method} needs a Content-Length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise HttpError(413, "TOO_LARGE", f"the body is over {MAX_BODY} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise HttpError(413, "TOO_LARGE", f"the body is over {MAX_BODY} bytes")
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise HttpError(400, "BAD_REQUEST", "the body is not JSON") from None

    # -- cluster views ----------------------------------------------------------------------

    async def process_table(self) -> dict[str, dict[str, Any]]:
        procs = await self.cluster.redis.hgetall(self.keys.procs)
        return {name: json.loads(raw) for name, raw in procs.items()}

    async def ask_all(self, op: str, kinds: tuple[str, ...] = ("worker",)) -> list[Any]:
        """Call ``op`` on every running process of these kinds, over the bus; the ones gone meanwhile are skipped."""
        table = await self.process_table()
        names = sorted(n for n, p in table.items() if p["kind"] in kinds)

        async def one(name: str) -> Any:
            try:
                return await self.cluster.bus.call(name, op)
            except (Unreachable, TimeoutError):  # it exited meanwhile
                return None

        return [r for r in await asyncio.gather(*(one(n) for n in names)) if r is not None]

    async def ready(self, request: Request) -> Response:
        try:
            table = (await self.process_table()).values()
        except (RedisError, OSError):
            return JSONResponse({"ready": False, "why": "Redis cannot be reached"}, status_code=503)
        kinds = Counter(p["kind"] for p in table)
        ready = (
            kinds["master"] == 1
            and kinds["worker"] >= self.settings.workers
            and kinds["task_worker"] >= self.settings.task_workers
        )
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def sessions(self, request: Request) -> dict[str, Any]:
        records = [r for batch in await self.ask_all("records") for r in batch]
        return {"sessions": sorted(records, key=lambda r: r["session"])}

    async def session(self, request: Request) -> dict[str, Any]:
        sid = request.path_params["sid"]
        record = await self.cluster.record(sid)
        if record is None:
            raise ContractError("SESSION_NOT_EXIST", f"no session {sid}")
        return record

    async def push(self, request: Request) -> dict[str, Any]:
        sid = request.path_params["sid"]
        body = await self.body(request)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, str):
            raise HttpError(400, "BAD_REQUEST", 'body must be {"data": "text"}')
        code = await self.cluster.push(sid, data)
        if code is not None:
            raise ContractError(kit.NAMES[code], f"push to session {sid} failed")
        return {"ok": True}

    async def close(self, request: Request) -> dict[str, Any]:
        sid = request.path_params["sid"]
        body = await self.body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "BAD_REQUEST", "body must be a JSON object")
        code, reason = body.get("code", 4000), body.get("reason", "")
        if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999) or not isinstance(reason, str):
            raise HttpError(400, "BAD_REQUEST", "close code must be 1000 or 3000..4999, reason a string")
        failed = await self.cluster.close(sid, code, reason)
        if failed is not None:
            raise ContractError(kit.NAMES[failed], f"close of session {sid} failed")
        return {"ok": True}

    async def stats(self, request: Request) -> dict[str, Any]:
        parts = await self.ask_all("stats", ("worker", "task_worker"))
        counters: Counter = Counter({name: 0 for name in kit.STANDARD_COUNTERS})
        retired = await self.cluster.redis.hgetall(self.keys.counters_retired)
        counters.update({name: int(value) for name, value in retired.items()})
        counters.update(self.cluster.counters)  # what the admin API itself did (its pushes)
        for part in parts:
            counters.update(part["counters"])
        workers = [p["process"] for p in parts if p["process"]["kind"] == "worker"]
        reloads = await self.reload_doc()
        brokers = [p["broadcast"] for p in parts if p.get("broadcast")]
        outages = sorted((o for b in brokers for o in b["outages"]), key=lambda o: o["start"])
        master = [p for p in (await self.process_table()).values() if p["kind"] == "master"]
        return {
            "contract": 1,
            "sessions": {
                "open": sum(w["sessions"] for w in workers),
                "established": sum(w["established"] for w in workers),
                "by_worker": {str(w["id"]): w["sessions"] for w in workers},
            },
            "counters": dict(counters),
            "processes": [*({**m, **fds_of(m["pid"])} for m in master), *(p["process"] for p in parts)],
            "broadcast": {"mode": "pubsub", "connected": bool(brokers) and all(b["connected"] for b in brokers), "outages": outages},
            "reloads": reloads["counters"],
            "generation": reloads["generation"],
        }

    async def processes(self, request: Request) -> dict[str, Any]:
        order = {"master": 0, "worker": 1, "task_worker": 2}
        table = sorted((await self.process_table()).values(), key=lambda p: (order.get(p["kind"], 3), p["id"]))
        return {"processes": table}

    async def metrics(self, request: Request) -> Response:
        doc = await self.stats(request)
        lines = [f"uvs_{name}_total {value}" for name, value in sorted(doc["counters"].items())]
        lines.append(f"uvs_sessions_open {doc['sessions']['open']}")
        return PlainTextResponse("\n".join(lines) + "\n")

    # -- sweep ------------------------------------------------------------------------------

    async def sweep(self, request: Request) -> dict[str, Any]:
        redis = self.cluster.redis
        if request.method == "PUT":
            rule = kit.sweep_rule(await self.body(request))
            await redis.set(self.keys.sweep_rule, json.dumps(rule))
            await self.tell_sweeper(rule)
            return {"ok": True, "rule": rule}
        if request.method == "DELETE":
            await redis.delete(self.keys.sweep_rule)
            await self.tell_sweeper(None)
            return {"ok": True}
        raw = await redis.get(self.keys.sweep_rule)
        running = False
        for name in await self.sweepers():
            try:
                running = running or bool(await self.cluster.bus.call(name, "sweep_running"))
            except (Unreachable, TimeoutError):
                pass
        reports = [json.loads(r) for r in await redis.lrange(self.keys.sweep_reports, 0, -1)]
        return {"rule": json.loads(raw) if raw else None, "running": running, "reports": reports}

    async def sweepers(self) -> list[str]:
        """Task worker 0 (two of them for a moment during a reload)."""
        table = await self.process_table()
        return [name for name, p in table.items() if p["kind"] == "task_worker" and p["id"] == 0]

    async def tell_sweeper(self, rule: dict[str, Any] | None) -> None:
        for name in await self.sweepers():
            try:
                await self.cluster.bus.call(name, "sweep_rule", rule=rule)
            except (Unreachable, TimeoutError):  # it exited meanwhile
                pass

    # -- reload -----------------------------------------------------------------------------

    async def reload(self, request: Request) -> dict[str, Any]:
        body = await self.body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "BAD_REQUEST", "body must be a JSON object")
        scope, wait = body.get("scope", "all"), body.get("wait", False)
        if scope not in ("all", "task_workers") or not isinstance(wait, bool):
            raise HttpError(400, "BAD_REQUEST", "'scope' must be 'all' or 'task_workers', 'wait' a boolean")
        return await ask_reload(self.cluster.redis, self.keys, scope, "admin", wait=wait)

    async def reload_doc(self) -> dict[str, Any]:
        raw = await self.cluster.redis.get(self.keys.reloads)
        if raw:
            return json.loads(raw)
        empty = {"requested": 0, "merged": 0, "completed": 0, "forced_kills": 0}
        return {"running": None, "history": [], "counters": empty, "generation": 1}

    async def reloads(self, request: Request) -> dict[str, Any]:
        return await self.reload_doc()


class AdminThread(threading.Thread):
    """The admin API on ``sock``, in a thread of the master with its own event loop and uvicorn server."""

    def __init__(self, settings: Settings, sock: socket) -> None:
        super().__init__(name="admin-api", daemon=True)
        self.settings, self.sock = settings, sock
        self.server: uvicorn.Server | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self.main())

    async def main(self) -> None:
        cluster = Cluster(self.settings, pool_size=3)  # the bus, and two for the requests
        await cluster.join_bus(f"master-{os.getpid()}", {})
        app = Starlette(routes=Admin(cluster).routes(), exception_handlers={HTTPException: http_exception})
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level=self.settings.log_level, access_log=False))
        self.server.should_exit = self.stopping.is_set()
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            await cluster.leave()

    def stop(self) -> None:
        """Ask the server to stop (uvicorn checks the flag every 0.1 s); then ``join``."""
        self.stopping.set()
        if self.server is not None:
            self.server.should_exit = True
