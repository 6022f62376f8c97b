"""A plain single-process broadcast server on python-websockets: the benchmark's peer.

    python -m loadtests.peers.pw_broadcast --port P --redis-url URL [--prefix bc:]

Written the way its documentation suggests: one asyncio process, a Redis
``PSUBSCRIBE prefix*`` in a task, and ``websockets.broadcast()`` to the
connections of the message's channel. It speaks the contract's ``subscribe``
op and sends the same broadcast event as the reference
(``{"ev":"broadcast","channel":C,"id":null,"data":PAYLOAD}``), so the same
clients and the same published messages serve both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import defaultdict

import redis.asyncio as aioredis
import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(port: int, redis_url: str, prefix: str) -> None:
    channels: dict[str, set[ServerConnection]] = defaultdict(set)

    async def handler(ws: ServerConnection) -> None:
        joined: set[str] = set()
        try:
            async for message in ws:
                req = json.loads(message)
                if req.get("op") == "subscribe":
                    channel = str(req.get("channel"))
                    channels[channel].add(ws)
                    joined.add(channel)
                    await ws.send(json.dumps({"re": req.get("id"), "ok": True, "channel": channel}))
                else:
                    await ws.send(json.dumps({"re": req.get("id"), "ok": False, "error": {"code": 4501}}))
        except websockets.ConnectionClosed:
            pass
        finally:
            for channel in joined:
                channels[channel].discard(ws)

    async def pump() -> None:
        client = aioredis.Redis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.psubscribe(prefix + "*")
        cut = len(prefix)
        async for msg in pubsub.listen():
            if msg["type"] != "pmessage":
                continue
            channel = msg["channel"][cut:].decode()
            members = channels.get(channel)
            if members:
                text = f'{{"ev":"broadcast","channel":{json.dumps(channel)},"id":null,"data":{msg["data"].decode()}}}'
                broadcast(members, text)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        task = asyncio.ensure_future(pump())
        print("ready", flush=True)
        await stop
        task.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="bc:")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.redis_url, args.prefix))
