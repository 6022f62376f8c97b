"""Server configuration: one dataclass, validated in one place.

Every field has a command-line option of the same name (``--heartbeat-idle-ms``
for ``heartbeat_idle_ms``). :meth:`Config.validate` raises
:class:`~reference_server.errors.ConfigError` naming the option and the value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields

from .core.broadcast import CHANNEL_RE, MODES
from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 9501
    workers: int = 2
    task_workers: int = 1
    #: Redis URL for broadcast; empty: start the embedded fakeredis broker.
    redis_url: str = ""
    #: Start the embedded broker when no ``redis_url`` is given (off: no broker at all).
    embedded_broker: bool = True
    #: Broadcast: ``pubsub`` (Redis pub/sub, at most once), ``durable`` (Redis Streams,
    #: at least once, with history), or ``off``.
    broadcast_mode: str = "pubsub"
    #: Redis name of channel C: ``prefix + C`` (the pub/sub channel, or the stream key).
    broadcast_prefix: str = "bc:"
    #: A session with more broadcast output than this waiting to be written is closed (4429).
    broadcast_buffer_bytes: int = 1024 * 1024
    #: A session with more output of any kind than this waiting to be written is closed (4429).
    output_buffer_bytes: int = 8 * 1024 * 1024
    #: Pub/sub mode: recent messages kept per channel for sessions that catch up after a move.
    broadcast_ring: int = 4096
    #: Durable mode: the most messages a history request (``since``) may return.
    broadcast_history_max: int = 10_000
    admin_host: str = "127.0.0.1"
    admin_port: int = 0  # 0: no admin API
    admin_token: str = ""
    #: An admin connection that sends no complete request for this long is closed.
    admin_idle_ms: int = 30_000
    #: Admin connections open at once; past it a new one is closed at once.
    admin_max_connections: int = 64
    log_level: str = "info"
    log_format: str = "json"  # json | text
    #: Application: ``module:attribute`` naming an Application instance or class.
    app: str = "reference_server.apps.contract:app"
    #: The contract application's administrative ops (listen, unlisten, reload, block) are for the
    #: scenarios: off, any client could close the main port or stall a worker (contract 12).
    app_admin_ops: bool = False
    max_connections: int = 65536
    max_message_size: int = 1024 * 1024
    #: Heartbeat (Swoole semantics): close sessions that sent nothing for this long.
    heartbeat_idle_ms: int = 0  # 0: off
    heartbeat_check_ms: int = 0  # 0: idle / 2 (Swoole's default relation)
    #: WebSocket ping keepalive: ping every interval, close if no pong in timeout.
    ping_interval_ms: int = 0  # 0: off
    ping_timeout_ms: int = 10_000
    #: How long a closing session waits for the client's close frame.
    close_timeout_ms: int = 2_000
    handshake_timeout_ms: int = 10_000
    #: Graceful shutdown bound: after this the master kills what is left.
    shutdown_timeout_ms: int = 5_000
    #: Reload: an old process still alive this long after it was retired is killed (Swoole's max_wait_time).
    max_wait_ms: int = 3_000
    backlog: int = 1024
    #: Dynamic ports: a TOML file of [[listen]] entries the master watches and applies.
    ports_file: str = ""
    ports_file_poll_ms: int = 200
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def heartbeat_check_interval_ms(self) -> int:
        if self.heartbeat_check_ms:
            return self.heartbeat_check_ms
        return max(1, self.heartbeat_idle_ms // 2)

    def validate(self) -> Config:
        def need(cond: bool, option: str, value: object, why: str) -> None:
            if not cond:
                raise ConfigError(f"--{option.replace('_', '-')}={value!r}: {why}")

        for name in ("host", "admin_host"):
            value = getattr(self, name)
            try:
                ipaddress.ip_address(value)
            except ValueError:
                need(value == "localhost", name, value, "not an IP address")
        need(0 <= self.port <= 65535, "port", self.port, "must be 0..65535")
        need(0 <= self.admin_port <= 65535, "admin_port", self.admin_port, "must be 0..65535")
        need(1 <= self.workers <= 64, "workers", self.workers, "must be 1..64")
        need(0 <= self.task_workers <= 64, "task_workers", self.task_workers, "must be 0..64")
        need(
            1 <= self.max_connections <= 1 << 20,
            "max_connections",
            self.max_connections,
            "must be 1..1048576",
        )
        need(self.max_message_size >= 125, "max_message_size", self.max_message_size, ">= 125")
        need(self.log_level in LOG_LEVELS, "log_level", self.log_level, f"one of {LOG_LEVELS}")
        need(self.log_format in ("json", "text"), "log_format", self.log_format, "json or text")
        need(":" in self.app, "app", self.app, "expected module:attribute")
        need(10 <= self.ports_file_poll_ms <= 60_000, "ports_file_poll_ms", self.ports_file_poll_ms, "must be 10..60000")
        need(1 <= self.backlog <= 65535, "backlog", self.backlog, "must be 1..65535")
        need(self.broadcast_mode in MODES, "broadcast_mode", self.broadcast_mode, f"one of {MODES}")
        need(
            bool(CHANNEL_RE.fullmatch(self.broadcast_prefix + "x")) and len(self.broadcast_prefix) <= 64,
            "broadcast_prefix",
            self.broadcast_prefix,
            f"at most 64 characters of {CHANNEL_RE.pattern}",
        )
        need(
            4096 <= self.broadcast_buffer_bytes <= 1 << 30,
            "broadcast_buffer_bytes",
            self.broadcast_buffer_bytes,
            "must be 4096..1073741824",
        )
        need(
            65536 <= self.output_buffer_bytes <= 1 << 30,
            "output_buffer_bytes",
            self.output_buffer_bytes,
            "must be 65536..1073741824",
        )
        need(100 <= self.admin_idle_ms <= 3_600_000, "admin_idle_ms", self.admin_idle_ms, "must be 100..3600000")
        need(
            1 <= self.admin_max_connections <= 65536,
            "admin_max_connections",
            self.admin_max_connections,
            "must be 1..65536",
        )
        need(1 <= self.broadcast_ring <= 1_000_000, "broadcast_ring", self.broadcast_ring, "must be 1..1000000")
        need(
            1 <= self.broadcast_history_max <= 1_000_000,
            "broadcast_history_max",
            self.broadcast_history_max,
            "must be 1..1000000",
        )
        for name in (
            "heartbeat_idle_ms",
            "heartbeat_check_ms",
            "ping_interval_ms",
            "ping_timeout_ms",
            "close_timeout_ms",
            "handshake_timeout_ms",
            "shutdown_timeout_ms",
            "max_wait_ms",
        ):
            need(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        need(
            not self.admin_port or bool(self.admin_token),
            "admin_token",
            self.admin_token,
            "required when --admin-port is set",
        )
        if self.redis_url:
            need(
                self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "redis_url",
                self.redis_url,
                "expected redis://host:port[/db]",
            )
        if self.port and self.admin_port:
            need(self.port != self.admin_port, "admin_port", self.admin_port, "same as --port")
        return self

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]
