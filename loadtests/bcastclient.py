"""Broadcast receivers for the benchmark: one process holding many lean WebSocket clients.

    python -m loadtests.bcastclient --port P --clients N --channel C

Protocol on stdin/stdout (one JSON object per line): it prints
``{"ready": n}`` once its N clients are connected and subscribed; on the line
``report`` it prints, for the messages received since ``reset``, how many
arrived, how many were duplicates or out of order (by the publisher's ``s``),
how many clients closed, and a sample of publish-to-receive latencies in µs
(from the publisher's ``t``, ``time.time_ns()``; same machine, same clock).
On ``quit`` it closes its clients and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from loadtests.tickclient import TickClient

SAMPLE_EVERY = 7  # latencies kept: one in this many


class Receiver(TickClient):
    def __init__(self, host: str, port: int, name: str = "") -> None:
        super().__init__(host, port, name)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.bad_order = 0
        self.last = -1
        self.lat: list[float] = []

    def on_broadcast(self, payload: bytes, now_ns: int) -> bool:
        """The publisher's ``{"t":NS,"s":SEQ}``, read without a JSON parse (the client's CPU is shared)."""
        i = payload.find(b'"data":{"t":')
        if i < 0:
            return False
        j = payload.find(b',"s":', i)
        t = int(payload[i + 12 : j])
        s = int(payload[j + 5 : payload.find(b"}", j)])
        if s <= self.last:
            self.bad_order += 1
        else:
            self.last = s
        self.count += 1
        if self.count % SAMPLE_EVERY == 0:
            self.lat.append((now_ns - t) / 1000.0)
        return True


async def main(port: int, n: int, channel: str) -> None:
    clients: list[Receiver] = []
    for start in range(0, n, 100):
        clients += await asyncio.gather(*(Receiver.connect("127.0.0.1", port) for _ in range(start, min(n, start + 100))))
    await asyncio.gather(*(c.request("subscribe", channel=channel) for c in clients))
    print(json.dumps({"ready": len(clients)}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "reset":
            for c in clients:
                c.reset()
            print(json.dumps({"reset": True}), flush=True)
        elif line == "report":
            lat = [x for c in clients for x in c.lat]
            print(json.dumps({
                "received": sum(c.count for c in clients),
                "bad_order": sum(c.bad_order for c in clients),
                "closed": sum(1 for c in clients if c.closed),
                "last": min((c.last for c in clients), default=-1),
                "lat_us": lat,
            }), flush=True)
        elif line in ("quit", ""):
            break
    for c in clients:
        c.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--channel", default="bench")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.clients, args.channel))
