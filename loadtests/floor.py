"""The kernel's floor for a broadcast: one ``send()`` per recipient, measured on this machine.

    python -m loadtests.floor [--clients 1000] [--messages 200] [--size 64]

A sender process holds ``--clients`` loopback TCP connections to a receiver process that
reads and drops everything; it writes one ``--size``-byte frame to each connection in turn,
``--messages`` times, and prints its own CPU time (user + system, from ``getrusage``) per
send. No WebSocket, no event loop, no serialisation: what any server pays at least for a
delivery that is one ``send()`` of its own. On loopback the sender's system time includes
the receiving side's TCP processing, which runs in the sending call. ``bench_broadcast``
prints it next to the servers' figures (:func:`measure`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import selectors
import socket
import time
from typing import Any


def _receiver(port: int, n: int, ready: Any, stop: Any) -> None:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    sel = selectors.DefaultSelector()
    for c in conns:
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
    ready.set()
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            try:
                key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
            except BlockingIOError:
                pass
    for c in conns:
        c.close()


def measure(clients: int = 1000, messages: int = 200, size: int = 64) -> dict[str, float]:
    """CPU µs per send and sends per second of one process writing ``size`` bytes to each of
    ``clients`` loopback connections, ``messages`` times."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(clients)
    port = lsock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_receiver, args=(port, clients, ready, stop), daemon=True)
    proc.start()
    conns = []
    try:
        for _ in range(clients):
            conn, _ = lsock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
        if not ready.wait(30):
            raise RuntimeError("the receiver did not connect")
        frame = b"\x81" + bytes([size - 2]) + b"x" * (size - 2)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(messages):
            for c in conns:
                c.send(frame)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        for c in conns:
            c.close()
        lsock.close()
    sends = clients * messages
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "clients": clients,
        "sends": sends,
        "cpu_us_per_send": round(cpu * 1e6 / sends, 3),
        "sends_per_s": round(sends / (t1 - t0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    r = measure(args.clients, args.messages, args.size)
    print(f"one send() of {args.size} bytes per recipient, {args.clients} loopback connections: "
          f"{r['cpu_us_per_send']} µs CPU per send, {r['sends_per_s']:.0f} sends/s")


if __name__ == "__main__":
    main()
