"""Dynamic ports (contract section 9): connection attempts, probes and the admin calls.

Each :func:`attempt` connects, completes the handshake and exchanges one message, within
a bound, and returns an :class:`~.checkers.ports.Attempt`; the model the attempts are
judged by (:class:`~.checkers.ports.PortHistory`) is pure, in ``checkers/ports.py``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
import socket
import time
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from .admin import AdminClient, AdminError
from .checkers.ports import Attempt, Outcome

#: No connection attempt may take longer than this (TCP connect, handshake, one echo).
ATTEMPT_BOUND_S = 2.0


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
