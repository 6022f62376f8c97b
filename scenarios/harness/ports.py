"""Dynamic ports (contract section 9): connection attempts, the history of changes, the model.

Jepsen-style: the scenario records every change it asked for (with the time
the request left and the time its answer came) and every connection attempt
(with its start, end and outcome), then checks the attempts against the
model of which port was listed when.

The grace window of a change is ``[request sent, answer received +
grace_ms]`` (``grace_ms`` from the manifest's ``[ports]``, 0 for the
reference). An attempt that overlaps a grace window of its port may go either
way; any other attempt must succeed if its port is listed and be refused
(``ECONNREFUSED``) if it is not. No attempt may hang: each has a bound.
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from .admin import AdminClient, AdminError

#: No connection attempt may take longer than this (TCP connect, handshake, one echo).
ATTEMPT_BOUND_S = 2.0


class Outcome:
    OK = "ok"  # handshake done and a message came back
    REFUSED = "refused"  # ECONNREFUSED at connect
    RESET = "reset"  # the connection was reset or closed during the handshake
    LIMITED = "limited"  # HTTP 503 PORT_LIMIT
    REJECTED = "rejected"  # another non-101 answer
    HANG = "hang"  # nothing conclusive within ATTEMPT_BOUND_S
    ERROR = "error"  # anything else (named in the detail)


@dataclass
class Attempt:
    port: int
    start: float
    end: float
    outcome: str
    detail: str = ""

    def as_dict(self, t0: float) -> dict[str, Any]:
        return {"port": self.port, "start_ms": round((self.start - t0) * 1000, 2),
                "end_ms": round((self.end - t0) * 1000, 2), "outcome": self.outcome, "detail": self.detail}


async def attempt(port: int, *, bound: float = ATTEMPT_BOUND_S, message: str | None = None) -> Attempt:
    """One connection attempt: connect, handshake, one message and its answer, close."""
    start = time.monotonic()
    outcome, detail = Outcome.OK, ""
    ws = None
    try:
        async with asyncio.timeout(bound):
            ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=None, close_timeout=0.5, compression=None)
            await ws.send(message or json.dumps({"op": "echo", "id": 1, "seq": 1}))
            await ws.recv()
    except TimeoutError:
        outcome, detail = Outcome.HANG, f"nothing within {bound}s"
    except ConnectionRefusedError:
        outcome = Outcome.REFUSED
    except InvalidStatus as exc:
        code = exc.response.headers.get("X-Error-Code", "")
        outcome = Outcome.LIMITED if code == "3006" else Outcome.REJECTED
        detail = f"HTTP {exc.response.status_code} {exc.response.headers.get('X-Error-Name', '')}".strip()
    except (ConnectionResetError, InvalidMessage, ConnectionClosed, EOFError) as exc:
        outcome, detail = Outcome.RESET, type(exc).__name__
    except OSError as exc:
        outcome, detail = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        if ws is not None:
            try:
                async with asyncio.timeout(1.0):
                    await ws.close()
            except (TimeoutError, OSError, ConnectionClosed):
                pass
    return Attempt(port, start, time.monotonic(), outcome, detail)


@dataclass
class Change:
    """One listen or unlisten the scenario asked for, and what came of it."""

    port: int
    listed: bool  # the state it asks for
    sent: float
    done: float
    how: str  # admin | app | file
    options: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    error: Any = None


class PortHistory:
    """Changes per port; answers 'was this port listed throughout [a, b]?'."""

    def __init__(self, grace_ms: float) -> None:
        self.grace = grace_ms / 1000.0
        self.changes: dict[int, list[Change]] = {}

    def record(self, change: Change) -> None:
        self.changes.setdefault(change.port, []).append(change)

    def state(self, port: int, start: float, end: float) -> bool | None:
        """True/False: listed/not listed throughout; None: a change's grace window overlaps."""
        listed = False
        for c in self.changes.get(port, []):
            if not c.ok:
                if c.sent <= end and c.done + self.grace >= start:
                    return None  # a failed change is still a window of doubt
                continue
            if c.sent <= end and c.done + self.grace >= start:
                return None
            if c.done + self.grace < start:
                listed = c.listed
        return listed

    def violations(self, attempts: list[Attempt]) -> tuple[list[Attempt], int, int]:
        """Attempts whose outcome contradicts the model; and how many were decided / in grace."""
        bad, decided, doubtful = [], 0, 0
        for a in attempts:
            state = self.state(a.port, a.start, a.end)
            if state is None:
                doubtful += 1
                continue
            decided += 1
            expected = Outcome.OK if state else Outcome.REFUSED
            if a.outcome != expected:
                bad.append(a)
        return bad, decided, doubtful


def pick_free_ports(n: int, *, low: int = 20000, high: int = 32000, seed: int | None = None) -> list[int]:
    """``n`` ports that nobody holds now, outside the ephemeral range.

    Outside ``ip_local_port_range`` (32768-60999 by default), so that no
    client connection of the harness is ever given one as its source port
    (that would make a later listen on it fail with EADDRINUSE for reasons
    that have nothing to do with the target).
    """
    rng = random.Random(seed)
    found: list[int] = []
    while len(found) < n:
        port = rng.randint(low, high)
        if port in found:
            continue
        if bind_probe(port) is None:
            found.append(port)
    return found


def bind_probe(port: int, *, reuse_port: bool = False, reuse_addr: bool = True) -> str | None:
    """Can a fresh socket bind 127.0.0.1:port? None if yes, else the errno name.

    Bind only, never listen: a listening probe could take connection attempts
    meant for the target. Binding alone conflicts with any listener.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        return None
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        sock.close()


def privileged_port_free() -> int | None:
    """A port below 1024 that this process may NOT bind (EACCES), or None (root, or lowered limit)."""
    for port in (81, 82, 83, 1000, 1001):
        result = bind_probe(port)
        if result in ("EACCES", "EPERM"):
            return port
        if result is None:
            return None
    return None


async def listeners(admin: AdminClient) -> dict[int, dict[str, Any]]:
    doc = await admin.get("/v1/listeners")
    return {int(entry["port"]): entry for entry in doc["listeners"]}


async def admin_listen(admin: AdminClient, spec: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return True, await admin.call("POST", "/v1/listeners", spec)
    except AdminError as exc:
        return False, exc.body


async def admin_unlisten(admin: AdminClient, port: int, on_remove: str | None = None) -> tuple[bool, Any]:
    try:
        body = {"on_remove": on_remove} if on_remove else None
        return True, await admin.call("DELETE", f"/v1/listeners/{port}", body)
    except AdminError as exc:
        return False, exc.body


def error_code(answer: Any) -> int | None:
    """The contract error code in an admin error body or an app-op reply."""
    if isinstance(answer, dict):
        err = answer.get("error")
        if isinstance(err, dict) and isinstance(err.get("code"), int):
            return err["code"]
    return None


SETTINGS = ("host", "reuse_port", "on_remove", "max_connections", "handler")


def settings(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in SETTINGS}
