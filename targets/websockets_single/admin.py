"""The admin API of the single-process server (contract section 4), on h11 over asyncio streams.

python-websockets serves WebSocket handshakes, not general HTTP (no request
bodies), so the admin port speaks HTTP/1.1 through h11, the same Sans-I/O
parser websockets' authors recommend. Routes of capabilities this server
does not declare answer 404, like any unknown route.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from typing import Any

import h11

from ..kit import ContractError
from .server import SingleServer

log = logging.getLogger("wssingle.admin")
MAX_BODY = 1 << 20
_SESSION = re.compile(r"^/v1/sessions/(\d+)(/push|/close)?$")


class HttpError(Exception):
    def __init__(self, status: int, name: str, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.code, self.message = status, name, code, message


def _length_problem(request: h11.Request) -> HttpError | None:
    """411 for a POST, PUT or DELETE that does not say how long its body is; 413 for a body over 1 MiB."""
    headers = {k.lower(): v for k, v in request.headers}
    length = headers.get(b"content-length")
    if length is None:
        if request.method in (b"POST", b"PUT", b"DELETE"):
            return HttpError(411, "LENGTH_REQUIRED", 4411, f"{request.method.decode()} needs a Content-Length header")
        return None
    if int(length) > MAX_BODY:  # h11 has already refused a Content-Length that is not a number
        return HttpError(413, "TOO_LARGE", 4413, f"a body of {int(length)} bytes is over {MAX_BODY}")
    return None


class Admin:
    def __init__(self, server: SingleServer, token: str) -> None:
        self.server = server
        self.token = token

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.connection, host, port)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                if isinstance(body, HttpError):
                    doc = {"error": {"code": body.code, "name": body.name, "message": body.message}}
                    payload = json.dumps(doc).encode()
                    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (body.status, body.name.encode(), len(payload), payload))
                    await writer.drain()
                    return
                status, doc = self.route(request, body)
                payload = json.dumps(doc).encode() if not isinstance(doc, str) else doc.encode()
                ctype = "application/json" if not isinstance(doc, str) else "text/plain; version=0.0.4"
                headers = [("content-type", ctype), ("content-length", str(len(payload)))]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=payload)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError) as exc:
            try:
                body = json.dumps({"error": {"code": 4400, "name": "BAD_REQUEST", "message": f"malformed HTTP: {exc}"}}).encode()
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            except Exception:  # the peer is gone: nothing to answer
                pass
        finally:
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[Any, bytes | HttpError]:
        request = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
                refused = _length_problem(event)
                if refused is not None:  # answered without reading the body; the connection then closes
                    return request, refused
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("body over 1 MiB")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    def route(self, request: h11.Request, raw: bytes) -> tuple[int, Any]:
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0]
        try:
            if path == "/ready":
                return (200, {"ready": True}) if self.server.ready else (503, {"ready": False})
            if path == "/metrics":
                lines = [f"ws_{name}_total {value}" for name, value in sorted(self.server.counters.items())]
                return 200, "\n".join(lines) + "\n"
            auth = dict(request.headers).get(b"authorization", b"").decode()
            if not hmac.compare_digest(auth, f"Bearer {self.token}"):
                raise HttpError(401, "UNAUTHORIZED", 4401, "missing or wrong bearer token")
            body = self._json(raw) if method in ("POST", "PUT") else None
            return 200, self.dispatch(method, path, body)
        except HttpError as exc:
            return exc.status, {"error": {"code": exc.code, "name": exc.name, "message": exc.message}}
        except ContractError as exc:
            status = {1005: 404, 1004: 409, 8503: 409}.get(exc.code, 400)
            return status, {"error": exc.as_dict()}

    @staticmethod
    def _json(raw: bytes) -> Any:
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise HttpError(400, "BAD_REQUEST", 4400, "the body is not JSON") from None

    def dispatch(self, method: str, path: str, body: Any) -> Any:
        server = self.server
        routes: dict[tuple[str, str], Any] = {
            ("GET", "/v1/sessions"): lambda: {"sessions": [s.record() for s in server.sessions.values()]},
            ("GET", "/v1/stats"): server.stats,
            ("GET", "/v1/processes"): lambda: {"processes": server.processes()},
            ("GET", "/v1/sweep"): server.sweep_status,
            ("PUT", "/v1/sweep"): lambda: server.set_rule(body),
            ("DELETE", "/v1/sweep"): lambda: (server.clear_rule(), {"ok": True})[1],
        }
        if (method, path) in routes:
            return routes[(method, path)]()
        if any(p == path for _, p in routes):
            raise HttpError(405, "METHOD_NOT_ALLOWED", 4405, f"{method} is not allowed on {path}")
        match = _SESSION.match(path)
        if match:
            sid, action = int(match.group(1)), match.group(2)
            session = server.sessions.get(sid)
            if action is None and method == "GET":
                if session is None:
                    raise ContractError("SESSION_NOT_EXIST", f"no session {sid}")
                return session.record()
            if action == "/push" and method == "POST":
                data = body.get("data") if isinstance(body, dict) else None
                if not isinstance(data, str):
                    raise HttpError(400, "BAD_REQUEST", 4400, "body must be {\"data\": \"text\"}")
                code = server.push(sid, data)
                if code is not None:
                    raise ContractError({1004: "SESSION_CLOSED", 1005: "SESSION_NOT_EXIST"}[code], f"push to {sid} failed")
                return {"ok": True}
            if action == "/close" and method == "POST":
                if session is None:
                    raise ContractError("SESSION_NOT_EXIST", f"no session {sid}")
                code, reason = (4000, "")
                if isinstance(body, dict):
                    code = body.get("code", 4000)
                    reason = body.get("reason", "")
                if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999) or not isinstance(reason, str):
                    raise HttpError(400, "BAD_REQUEST", 4400, "close code must be 1000 or 3000..4999, reason a string")
                if not server.close(session, code, reason):
                    raise ContractError("SESSION_CLOSED", f"session {sid} is already closing")
                return {"ok": True}
            raise HttpError(405, "METHOD_NOT_ALLOWED", 4405, f"{method} is not allowed on {path}")
        raise HttpError(404, "NOT_FOUND", 4404, f"no route {method} {path} (this server declares no such capability)")
