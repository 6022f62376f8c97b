"""Client for the contract's admin API (section 4).

Every answer is handed to :mod:`.conformance`, which records in the current
case's log whether it has the shape ``docs/contract/admin.openapi.json`` gives
its route and status. A request without a JSON body still carries
``Content-Length: 0`` when its method may have a body (contract 1.1: a POST,
PUT or DELETE without Content-Length is answered 411).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from . import conformance


class AdminError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"admin API answered {status}: {body}")
        self.status = status
        self.body = body


class AdminClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def request_sync(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method in ("POST", "PUT", "DELETE"):
            data = b""
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, (answer, is_json) = resp.status, _decode(resp.read(), resp.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            status, (answer, is_json) = exc.code, _decode(exc.read(), exc.headers.get("Content-Type", ""))
        conformance.observe_admin(method, path, status, answer, is_json=is_json)
        return status, answer

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await asyncio.to_thread(self.request_sync, method, path, body, **kw)

    async def raw(self, request: bytes, *, timeout: float = 5.0) -> tuple[int, Any]:
        """Send ``request`` as it is (it asks for ``Connection: close``); the status and the decoded body.

        For what a client library would not send (no Content-Length, a body
        announced but never sent). The answer is validated like any other.
        """
        url = urllib.parse.urlsplit(self.base_url)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port), timeout)
        try:
            writer.write(request)
            await writer.drain()
            raw = await asyncio.wait_for(_read_answer(reader), timeout)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/1.") and " " in lines[0] else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in headers and headers["content-length"].isdigit():
            body = body[: int(headers["content-length"])]
        answer, is_json = _decode(body, headers.get("content-type", ""))
        method, path = request.split(b" ", 2)[:2]
        conformance.observe_admin(method.decode(), path.decode(), status, answer, is_json=is_json)
        return status, answer

    async def get(self, path: str) -> Any:
        status, body = await self.request("GET", path)
        if status != 200:
            raise AdminError(status, body)
        return body

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = await self.request(method, path, body)
        if status != 200:
            raise AdminError(status, payload)
        return payload

    async def stats(self) -> dict[str, Any]:
        return await self.get("/v1/stats")

    async def sessions(self) -> list[dict[str, Any]]:
        return (await self.get("/v1/sessions"))["sessions"]

    async def processes(self) -> list[dict[str, Any]]:
        return (await self.get("/v1/processes"))["processes"]


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer: the head, then Content-Length bytes (or up to EOF without one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(v) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
         if k.strip().lower() == b"content-length" and v.strip().isdigit()),
        None,
    )
    body = await (reader.readexactly(length) if length is not None else reader.read())
    return head + body


def _decode(raw: bytes, ctype: str) -> tuple[Any, bool]:
    """The answer (parsed JSON, or text) and whether it was JSON."""
    if "json" in ctype:
        try:
            return json.loads(raw), True
        except ValueError:
            pass
    return raw.decode(errors="replace"), False
