"""``python -m targets.uvicorn_starlette --port P --admin-port A --admin-token T --redis-url URL [...]``.

Binds both ports, then runs the supervisor (``supervisor.py``), which starts
the uvicorn workers and the task workers. Bad options, a port in use or a
Redis that cannot be reached are refused by name (exit code 2). SIGTERM or
SIGINT stops everything: uvicorn closes the sessions, the task workers
finish their task, and this server's keys are removed from Redis.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import redis
import uvicorn
from redis.exceptions import RedisError

from .settings import Settings
from .supervisor import Supervisor

APP = "targets.uvicorn_starlette.app:create_app"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m targets.uvicorn_starlette", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address of the WebSocket and admin ports")
    p.add_argument("--port", type=int, required=True, help="WebSocket port")
    p.add_argument("--admin-port", type=int, required=True, help="admin API port (HTTP)")
    p.add_argument("--admin-token", required=True, help="bearer token of the admin API")
    p.add_argument("--redis-url", required=True, help="Redis shared by the processes (and the broadcast)")
    p.add_argument("--workers", type=int, default=3, help="uvicorn worker processes")
    p.add_argument("--task-workers", type=int, default=1, help="task worker processes")
    p.add_argument("--heartbeat-idle-ms", type=int, default=0, help="close sessions idle this long with 4408 (0: off)")
    p.add_argument("--heartbeat-check-ms", type=int, default=0, help="how often idleness is checked")
    p.add_argument("--max-wait-ms", type=int, default=3000, help="how long an old process may take to exit at a reload")
    p.add_argument("--broadcast-prefix", default="bc:", help="Redis name of channel C is prefix + C")
    p.add_argument("--broadcast-mode", choices=["pubsub"], default="pubsub", help="only pub/sub: no history")
    p.add_argument("--broadcast-buffer-bytes", type=int, default=1 << 20, help="slow-consumer bound (4429)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def listening_socket(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"error: cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("port", "admin_port"):
        if not 0 < getattr(args, name) < 65536:
            parser.error(f"--{name.replace('_', '-')} must be 1..65535")
    if args.workers < 1 or args.task_workers < 1:
        parser.error("--workers and --task-workers must be >= 1")
    if args.heartbeat_idle_ms < 0 or args.heartbeat_check_ms < 0 or args.max_wait_ms < 1:
        parser.error("--heartbeat-* must be >= 0 and --max-wait-ms >= 1")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        redis.Redis.from_url(args.redis_url, socket_connect_timeout=2.0).ping()
    except (RedisError, ValueError) as exc:
        parser.error(f"--redis-url {args.redis_url!r} cannot be reached: {exc}")
    settings = Settings(
        host=args.host, port=args.port, admin_port=args.admin_port, admin_token=args.admin_token,
        redis_url=args.redis_url, namespace=f"uvs:{os.getpid()}:", workers=args.workers,
        task_workers=args.task_workers, heartbeat_idle_ms=args.heartbeat_idle_ms,
        heartbeat_check_ms=args.heartbeat_check_ms, max_wait_ms=args.max_wait_ms,
        broadcast_prefix=args.broadcast_prefix, broadcast_buffer_bytes=args.broadcast_buffer_bytes,
        log_level=args.log_level,
    )
    settings.export()  # the spawned workers read it (they import the app by name)
    ws_socket = listening_socket(args.host, args.port, "WebSocket port")
    admin_socket = listening_socket(args.host, args.admin_port, "admin port")
    config = uvicorn.Config(
        APP, factory=True, workers=args.workers, lifespan="on",
        ws="websockets-sansio", ws_per_message_deflate=False, ws_max_size=settings.max_message_bytes,
        ws_ping_interval=None, timeout_graceful_shutdown=max(1, args.max_wait_ms // 1000),
        log_level=args.log_level, access_log=False,
    )
    try:
        Supervisor(config, [ws_socket], settings, admin_socket).run()
    finally:
        ws_socket.close()
        admin_socket.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
