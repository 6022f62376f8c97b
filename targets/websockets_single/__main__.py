"""``python -m targets.websockets_single --port P --admin-port A --admin-token T [...]``.

Bad options are refused by name (exit code 2); SIGTERM or SIGINT stops the
server: every session is closed with 1001, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .admin import Admin
from .server import Options, SingleServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m targets.websockets_single", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address of the WebSocket and admin ports")
    p.add_argument("--port", type=int, required=True, help="WebSocket port")
    p.add_argument("--admin-port", type=int, required=True, help="admin API port (HTTP)")
    p.add_argument("--admin-token", required=True, help="bearer token of the admin API")
    p.add_argument("--heartbeat-idle-ms", type=int, default=0, help="close sessions idle this long with 4408 (0: off)")
    p.add_argument("--heartbeat-check-ms", type=int, default=0, help="how often idleness is checked")
    p.add_argument("--task-threads", type=int, default=2, help="threads that run tasks")
    p.add_argument("--redis-url", default="", help="Redis for broadcast (empty: no broadcast)")
    p.add_argument("--broadcast-prefix", default="bc:", help="Redis name of channel C is prefix + C")
    p.add_argument("--broadcast-mode", choices=["pubsub"], default="pubsub", help="only pub/sub: no history")
    p.add_argument("--broadcast-buffer-bytes", type=int, default=1 << 20, help="slow-consumer bound (4429)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("port", "admin_port"):
        if not 0 < getattr(args, name) < 65536:
            build_parser().error(f"--{name.replace('_', '-')} must be 1..65535")
    if args.heartbeat_idle_ms < 0 or args.heartbeat_check_ms < 0 or args.task_threads < 1:
        build_parser().error("--heartbeat-* must be >= 0 and --task-threads >= 1")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    opts = Options(
        host=args.host, port=args.port, heartbeat_idle_ms=args.heartbeat_idle_ms,
        heartbeat_check_ms=args.heartbeat_check_ms, task_threads=args.task_threads, redis_url=args.redis_url,
        broadcast_prefix=args.broadcast_prefix, broadcast_buffer_bytes=args.broadcast_buffer_bytes,
    )
    asyncio.run(run(opts, args.admin_port, args.admin_token))
    return 0


async def run(opts: Options, admin_port: int, token: str) -> None:
    server = SingleServer(opts)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    admin = await Admin(server, token).serve(opts.host, admin_port)
    try:
        await server.run(stop)
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
