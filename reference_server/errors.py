"""Error codes, close codes and exit codes: the names a user can search for.

Session error codes follow Swoole's numbering so that people who know the seed
recognise them (``1004``, ``1005``, ``8503``); the rest are this project's own.
Every code has a stable upper-case name; logs, the admin API and the contract's
application protocol always carry both.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Why an operation on a session (or a request) failed."""

    OK = 0
    #: The session is closing or closed (close frame sent or received, socket
    #: not yet released).
    SESSION_CLOSED = 1004
    #: No live session has this id: it never existed, or it is gone for good.
    SESSION_NOT_EXIST = 1005
    #: The TCP connection exists but the WebSocket handshake is not complete.
    NOT_ESTABLISHED = 8503
    #: The message is larger than ``max_message_size``.
    MESSAGE_TOO_BIG = 1009
    #: The process that owns the session could not be reached.
    OWNER_UNREACHABLE = 2001
    #: No task worker is running.
    NO_TASK_WORKER = 2002
    #: A destination process (worker id, task worker id) does not exist.
    UNKNOWN_PROCESS = 2003
    #: A task's task worker died before its result came (the task may have run in part).
    TASK_LOST = 2004
    #: ``migrate``: the session already belongs to the requested worker.
    ALREADY_THERE = 2010
    #: ``migrate``: another migration of this session is under way.
    MIGRATION_IN_PROGRESS = 2011
    #: ``migrate``: the hand-over did not happen (the target refused it, could
    #: not be reached, or died first); the session goes on where it was.
    MIGRATION_FAILED = 2012
    #: ``migrate``: the session's connection state cannot move (for example a
    #: negotiated permessage-deflate context). The reference never negotiates
    #: deflate, so it never returns this; other targets may.
    NOT_MOVABLE = 2013
    #: Internal: the session moved on while a request for it was on its way.
    #: The API retries with the new owner; applications never see it.
    MOVED = 2014
    #: ``listen``: the address is in use (``EADDRINUSE``): another process, or
    #: another socket of this host, holds the port.
    PORT_IN_USE = 3001
    #: ``listen``: the port needs privileges (``EACCES``: below
    #: ``net.ipv4.ip_unprivileged_port_start`` for an unprivileged user).
    PORT_PRIVILEGED = 3002
    #: ``listen``: the host is not an IP address, or not one of this machine
    #: (``EADDRNOTAVAIL``).
    BAD_ADDRESS = 3003
    #: ``listen``: this server already listens on that port number.
    ALREADY_LISTENING = 3004
    #: ``unlisten``: this server does not listen on that port.
    NOT_LISTENING = 3005
    #: A connection refused because its port's ``max_connections`` is reached
    #: (sent as the HTTP 503 answer to its handshake).
    PORT_LIMIT = 3006
    #: ``listen``: the handler set named for the port does not exist.
    HANDLER_UNKNOWN = 3007
    #: A connection that was in a port's backlog when the port was removed
    #: with policy ``close`` (HTTP 503 answer to its handshake).
    PORT_REMOVED = 3008
    #: ``listen`` failed for another reason (``EMFILE``...); the message names it.
    LISTEN_FAILED = 3009
    #: Broadcast is off on this server (``--broadcast-mode off``, or no broker).
    BROADCAST_OFF = 5001
    #: A channel name the contract does not allow (section 10.1), or ``@all``
    #: in ``subscribe``/``unsubscribe``.
    BAD_CHANNEL = 5002
    #: ``subscribe`` with ``since`` on a server in pub/sub mode: only the durable
    #: mode keeps history.
    HISTORY_UNAVAILABLE = 5003
    #: ``subscribe`` with ``since``: more messages than ``broadcast_history_max``
    #: follow that id.
    HISTORY_TOO_LONG = 5004
    #: Redis could not be reached (``publish``, or a durable ``subscribe`` that
    #: needs the stream).
    BROKER_UNAVAILABLE = 5005
    #: The broadcaster process could not be reached or did not answer.
    BROADCASTER_UNREACHABLE = 5006
    #: A request of the application protocol or the admin API is malformed.
    BAD_REQUEST = 4400
    #: The target does not implement the requested operation.
    UNSUPPORTED = 4501
    #: The admin token is missing or wrong.
    UNAUTHORIZED = 4401
    #: Unknown admin route.
    NOT_FOUND = 4404
    #: The admin route exists, but not with this method (HTTP 405).
    METHOD_NOT_ALLOWED = 4405
    #: A POST, PUT or DELETE without Content-Length, or a chunked body (HTTP 411).
    LENGTH_REQUIRED = 4411
    #: An admin request body over 1 MiB (HTTP 413).
    TOO_LARGE = 4413
    #: A per-session bound is reached (contract 12.2): timers a session holds, tasks it has
    #: outstanding. The message names the bound and its value.
    LIMIT_REACHED = 4429
    #: Unexpected failure inside the server (a bug: it is logged with a trace).
    INTERNAL = 4500

    @property
    def label(self) -> str:
        return self.name


class CloseCode(enum.IntEnum):
    """WebSocket close codes the reference server sends (contract section 5)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown, or the port the session came in on was removed
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SWEPT = 4001  # closed by the task process's sweep rule
    IDLE_TIMEOUT = 4408  # heartbeat: nothing received for heartbeat_idle_time
    SLOW_CONSUMER = 4429  # broadcast: more than broadcast_buffer_bytes waited to be written


class ExitCode(enum.IntEnum):
    """Exit status of ``python -m reference_server``."""

    OK = 0
    FAILURE = 1  # the server stopped because of an internal failure
    BAD_CONFIG = 2  # a bad option, a bad value, or a bad config file
    CANNOT_BIND = 3  # a port is in use, privileged, or the address is invalid


class ServerError(Exception):
    """An error with a stable code and name, raised by the public API."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code = code
        self.message = message


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the option and the value."""
