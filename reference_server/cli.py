"""``python -m reference_server``: parse options, validate, bind, run the master.

Exit codes (``reference_server.errors.ExitCode``): 0 clean stop, 1 internal
failure, 2 bad option or config, 3 a port could not be bound. Errors are
printed as one structured log line naming the option or the address.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import LOG_LEVELS, Config
from .errors import ConfigError, ExitCode
from .logs import Log

_HELP = {
    "host": "address to listen on for WebSocket clients",
    "port": "WebSocket port (0: pick a free one; the log says which)",
    "workers": "number of worker processes (they own the client sockets)",
    "task_workers": "number of task worker processes",
    "redis_url": "Redis URL for broadcast (default: start the embedded fakeredis broker)",
    "embedded_broker": "start the embedded broker when no --redis-url is given",
    "broadcast_mode": "pubsub (at most once), durable (Redis Streams, at least once, history) or off",
    "broadcast_prefix": "Redis name of channel C is PREFIX + C (pub/sub channel or stream key)",
    "broadcast_buffer_bytes": "close a session (4429) with more broadcast output than this waiting",
    "output_buffer_bytes": "close a session (4429) with more output of any kind than this waiting",
    "broadcast_ring": "pub/sub mode: recent messages kept per channel for catch-up after a move",
    "broadcast_history_max": "durable mode: the most messages one history request may return",
    "admin_host": "address of the admin API",
    "admin_port": "admin API port (0: no admin API)",
    "admin_token": "bearer token the admin API requires",
    "admin_idle_ms": "close an admin connection that sends no complete request for this long",
    "admin_max_connections": "admin connections open at once (past it: closed at once)",
    "log_level": "lowest level logged",
    "log_format": "json (one object per line) or text",
    "app": "application as module:attribute",
    "app_admin_ops": "let clients use the contract application's administrative ops (listen, unlisten, reload, "
    "block): the scenario suite needs them; never on a server others can reach",
    "max_connections": "size of the session table",
    "max_message_size": "largest message accepted from a client, in bytes (larger: close 1009)",
    "heartbeat_idle_ms": "close sessions that sent nothing for this long (0: off)",
    "heartbeat_check_ms": "how often idleness is checked (0: half the idle time)",
    "ping_interval_ms": "send a WebSocket ping this often (0: off)",
    "ping_timeout_ms": "close a session whose pong is this late",
    "close_timeout_ms": "how long a closing session waits for the client's close frame",
    "handshake_timeout_ms": "how long a connection may take to complete its handshake",
    "shutdown_timeout_ms": "graceful shutdown bound; then remaining processes are killed",
    "max_wait_ms": "reload: kill an old process still alive this long after it was retired",
    "backlog": "listen backlog",
    "ports_file": "TOML file of [[listen]] ports, watched and applied while the server runs",
    "ports_file_poll_ms": "how often the ports file is checked for changes",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_server",
        description="Reference multi-process WebSocket server (Swoole-like API).",
    )
    defaults = Config()
    for f in fields(Config):
        if f.name == "extra":
            continue
        option = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default, help=_HELP[f.name])
        elif f.name == "log_level":
            parser.add_argument(option, choices=LOG_LEVELS, default=default, help=_HELP[f.name])
        else:
            parser.add_argument(
                option, type=type(default), default=default, metavar=f.name.upper(), help=_HELP[f.name]
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's message on unknown options
    config = Config(**{k: v for k, v in vars(args).items()})
    log = Log("master", level=config.log_level, fmt=config.log_format)
    try:
        config.validate()
    except ConfigError as exc:
        log.error("config.invalid", error=str(exc), code=int(ExitCode.BAD_CONFIG))
        return ExitCode.BAD_CONFIG

    from .child.boot import load_app
    from .master.arbiter import BindError, Master

    try:
        app = load_app(config.app)
    except (ImportError, AttributeError, TypeError) as exc:
        log.error("config.invalid", error=f"--app={config.app!r}: {exc}", code=int(ExitCode.BAD_CONFIG))
        return ExitCode.BAD_CONFIG
    master = Master(config, app, log)
    try:
        master.bind()
    except BindError as exc:
        log.error("bind.failed", error=exc.strerror, error_code=exc.errno, code=int(ExitCode.CANNOT_BIND))
        return ExitCode.CANNOT_BIND
    return master.run()


if __name__ == "__main__":
    sys.exit(main())
