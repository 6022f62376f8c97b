"""The embedded broker: a fakeredis server over TCP, shared by every process.

Used when no ``--redis-url`` is given. The master binds its socket before
anything forks, so the URL (``redis://127.0.0.1:PORT/0``) is known to every
process from the start; this process only serves it. It speaks the Redis
protocol, so the same client code talks to it and to a real Redis.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..child.context import ChildContext


async def serve_broker(rt: ChildContext, sock: socket.socket | None) -> None:
    from fakeredis import TcpFakeServer

    assert sock is not None, "the broker process needs its listening socket"
    server = TcpFakeServer(sock.getsockname(), bind_and_activate=False)
    server.socket.close()
    sock.setblocking(True)
    server.socket = sock
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    rt.log.info("broker.listening", url=f"redis://127.0.0.1:{sock.getsockname()[1]}/0", kind="fakeredis")
    try:
        await rt.stopping.wait()
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
