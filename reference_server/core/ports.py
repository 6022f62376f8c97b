"""Listening ports opened and closed at run time: requests, books, the ports file (pure).

No sockets here. The master (``master/listeners.py``) binds and closes; this
module decides what a request means and keeps the books, so all of it is
testable without a network:

* :func:`parse_spec` turns a listen request (admin JSON, app op, ports-file
  entry) into a :class:`ListenSpec`, or raises :class:`PortError` naming the
  port, the field and what was wrong.
* :func:`bind_error` names an ``OSError`` from ``bind``/``listen``:
  ``EADDRINUSE`` is ``PORT_IN_USE``, ``EACCES`` ``PORT_PRIVILEGED``,
  ``EADDRNOTAVAIL`` ``BAD_ADDRESS``, anything else ``LISTEN_FAILED``.
* :class:`PortBook` holds the listeners and their figures. A session is
  counted against the listener it came in through from accept to release,
  also after that listener is removed (a ``keep`` session still lives). A
  port removed and added again is a new listener: the per-port connection
  limit and policy ``close`` concern the sessions of the current listener
  only, never those an earlier listener of the same number kept.
* :func:`parse_ports_file` and :func:`plan_ports`: the ports file lists the
  listeners it owns; the plan says what to add, remove, update in place or
  re-bind so that the listeners match it, and which entries are rejected.

Keys: a server listens at most once on a port number, whatever the host, and
``unlisten`` takes the port number.
"""

from __future__ import annotations

import collections
import enum
import errno
import ipaddress
import tomllib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from ..errors import ErrorCode

DEFAULT_HANDLER = "default"
SPEC_KEYS = ("host", "port", "reuse_port", "on_remove", "max_connections", "handler", "backlog")


class OnRemove(enum.Enum):
    """What happens to established sessions of a port when it is removed."""

    KEEP = "keep"  # they go on until they close (default)
    CLOSE = "close"  # they are closed with 1001 "going away"


class RefusalReason(enum.Enum):
    LIMIT = "limit"  # the port's max_connections is reached
    NO_WORKER = "no_worker"  # no worker was ready to take it
    TABLE_FULL = "table_full"  # the server's max_connections is reached
    REMOVED = "removed"  # in the backlog when the port was removed with policy close
    AT_CAPACITY = "at_capacity"  # every ready worker holds all the connections its descriptors allow
    NO_DESCRIPTOR = "no_descriptor"  # the master itself is at its open-file limit


class PortError(Exception):
    """A listen or unlisten that cannot be done; ``code`` and ``port`` say why and where."""

    def __init__(self, code: ErrorCode, port: Any, message: str) -> None:
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code = code
        self.port = port
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"code": int(self.code), "name": self.code.name, "message": self.message, "port": self.port}

    def as_rejected(self, entry: int | None = None) -> Rejected:
        return Rejected(entry, self.port, self.code, self.message)


@dataclass(frozen=True)
class ListenSpec:
    """One listener as asked for. ``port`` 0 asks the kernel for a free port."""

    port: int
    host: str = "127.0.0.1"
    reuse_port: bool = False
    on_remove: OnRemove = OnRemove.KEEP
    max_connections: int = 0  # 0: no per-port limit (the server's max_connections still holds)
    handler: str = DEFAULT_HANDLER
    backlog: int = 0  # 0: the server's --backlog

    def needs_rebind(self, other: ListenSpec) -> bool:
        """True if going from ``self`` to ``other`` needs a new socket (not just new settings)."""
        return (self.host, self.reuse_port, self.backlog) != (other.host, other.reuse_port, other.backlog)

    def as_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "host": self.host,
            "reuse_port": self.reuse_port,
            "on_remove": self.on_remove.value,
            "max_connections": self.max_connections,
            "handler": self.handler,
            "backlog": self.backlog,
        }


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_spec(
    raw: Any,
    *,
    default_host: str,
    handlers: Collection[str],
    allow_ephemeral: bool = True,
) -> ListenSpec:
    """Validate a listen request (a dict with the keys of :data:`SPEC_KEYS`).

    Errors (:class:`PortError`): ``BAD_REQUEST`` for a missing or mistyped
    field or an unknown key, ``BAD_ADDRESS`` for a host that is not an IP
    address (names are never resolved: no DNS in the accept path),
    ``HANDLER_UNKNOWN`` for a handler set the application does not name.
    """
    if not isinstance(raw, dict):
        raise PortError(ErrorCode.BAD_REQUEST, None, "a listen request must be an object with at least 'port'")
    port = raw.get("port")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise PortError(ErrorCode.BAD_REQUEST, port, f"unknown key {unknown[0]!r} (known: {', '.join(SPEC_KEYS)})")
    low = 0 if allow_ephemeral else 1
    if not _is_int(port) or not low <= port <= 65535:
        raise PortError(ErrorCode.BAD_REQUEST, port, f"port {port!r}: must be an integer {low}..65535")
    host = raw.get("host", default_host)
    if not isinstance(host, str):
        raise PortError(ErrorCode.BAD_ADDRESS, port, f"host {host!r} of port {port}: must be a string")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise PortError(
            ErrorCode.BAD_ADDRESS, port, f"host {host[:80]!r} of port {port}: not an IP address (names are not resolved)"
        ) from None
    reuse_port = raw.get("reuse_port", False)
    if not isinstance(reuse_port, bool):
        raise PortError(ErrorCode.BAD_REQUEST, port, f"reuse_port of port {port}: must be true or false")
    on_remove = raw.get("on_remove", OnRemove.KEEP.value)
    try:
        policy = OnRemove(on_remove)
    except ValueError:
        raise PortError(
            ErrorCode.BAD_REQUEST, port, f"on_remove {on_remove!r} of port {port}: must be 'keep' or 'close'"
        ) from None
    limit = raw.get("max_connections", 0)
    if not _is_int(limit) or not 0 <= limit <= 1 << 20:
        raise PortError(ErrorCode.BAD_REQUEST, port, f"max_connections {limit!r} of port {port}: must be 0..1048576")
    handler = raw.get("handler", DEFAULT_HANDLER)
    if not isinstance(handler, str) or handler not in handlers:
        raise PortError(
            ErrorCode.HANDLER_UNKNOWN,
            port,
            f"handler {handler!r} of port {port}: the application has {', '.join(sorted(handlers))}",
        )
    backlog = raw.get("backlog", 0)
    if not _is_int(backlog) or not 0 <= backlog <= 65535:
        raise PortError(ErrorCode.BAD_REQUEST, port, f"backlog {backlog!r} of port {port}: must be 0..65535")
    return ListenSpec(port, host, reuse_port, policy, limit, handler, backlog)


def bind_error(exc: OSError, host: str, port: int) -> PortError:
    """Name the failure of ``bind``/``listen`` on ``host:port``."""
    number = exc.errno or 0
    name = errno.errorcode.get(number, "error")
    cause = exc.strerror or str(exc)
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if number == errno.EADDRINUSE:
        return PortError(ErrorCode.PORT_IN_USE, port, f"cannot listen on {where}: address already in use ({name})")
    if number in (errno.EACCES, errno.EPERM):
        return PortError(
            ErrorCode.PORT_PRIVILEGED,
            port,
            f"cannot listen on {where}: permission denied ({name}); ports below "
            "net.ipv4.ip_unprivileged_port_start need privileges",
        )
    if number in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL):
        return PortError(ErrorCode.BAD_ADDRESS, port, f"cannot listen on {where}: {cause} ({name})")
    return PortError(ErrorCode.LISTEN_FAILED, port, f"cannot listen on {where}: {cause} ({name})")


# -- the book of listeners ------------------------------------------------------------


@dataclass
class Listener:
    """A port the server listens on, and its figures since it was added."""

    spec: ListenSpec  # with the port actually bound
    source: str  # config (the command line), api (any process, the admin API), file (the ports file)
    added_at: float
    accepted: int = 0
    live: int = 0  # sessions it brought in that are not released yet
    refused: collections.Counter = field(default_factory=collections.Counter)
    removed_at: float | None = None
    drained: int = 0  # connections found in the backlog when it was removed

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.spec.as_dict(),
            "source": self.source,
            "added_at": self.added_at,
            "connections": self.live,
            "accepted": self.accepted,
            "refused": sum(self.refused.values()),
            "refused_by_reason": dict(sorted(self.refused.items())),
            **({"removed_at": self.removed_at, "drained": self.drained} if self.removed_at is not None else {}),
        }


class PortBook:
    """The listeners of one server and the sessions each brought in (master only)."""

    def __init__(self, history: int = 64) -> None:
        self.listeners: dict[int, Listener] = {}
        self.removed: collections.deque[Listener] = collections.deque(maxlen=history)
        self._listener_of: dict[int, Listener] = {}  # live session id -> the listener it came in through

    def add(self, spec: ListenSpec, source: str, now: float) -> Listener:
        if spec.port in self.listeners:
            raise already_listening(spec.port, self.listeners[spec.port])
        listener = Listener(spec, source, now)
        self.listeners[spec.port] = listener
        return listener

    def get(self, port: Any) -> Listener:
        if not _is_int(port):
            raise PortError(ErrorCode.BAD_REQUEST, port, f"port {port!r}: must be an integer 0..65535")
        listener = self.listeners.get(port)
        if listener is None:
            raise PortError(ErrorCode.NOT_LISTENING, port, f"port {port!r}: the server does not listen on it")
        return listener

    def remove(self, port: int, now: float) -> Listener:
        listener = self.get(port)
        del self.listeners[port]
        listener.removed_at = now
        self.removed.append(listener)
        return listener

    def update(self, spec: ListenSpec) -> None:
        """New settings (limit, handler, policy) for a listener whose socket stays."""
        self.get(spec.port).spec = spec

    def admit(self, port: int) -> RefusalReason | None:
        """May one more connection come in through ``port``? (None: yes)."""
        listener = self.listeners.get(port)
        if listener is None:
            return None
        limit = listener.spec.max_connections
        if limit and listener.live >= limit:
            return RefusalReason.LIMIT
        return None

    def opened(self, sid: int, port: int) -> None:
        listener = self.listeners.get(port)
        if listener is not None:
            listener.accepted += 1
            listener.live += 1
            self._listener_of[sid] = listener

    def refused(self, port: int, reason: RefusalReason) -> None:
        listener = self.listeners.get(port)
        if listener is not None:
            listener.refused[reason.value] += 1

    def closed(self, sid: int) -> int | None:
        """The session is released; return the port it had come in through (None if unknown)."""
        listener = self._listener_of.pop(sid, None)
        if listener is None:
            return None
        listener.live -= 1
        return listener.spec.port

    def live(self, port: int) -> int:
        listener = self.listeners.get(port)
        return listener.live if listener is not None else 0

    def sessions_of(self, listener: Listener) -> list[int]:
        return [sid for sid, lst in self._listener_of.items() if lst is listener]

    def owned_by_file(self) -> dict[int, ListenSpec]:
        return {p: lst.spec for p, lst in self.listeners.items() if lst.source == "file"}

    def snapshot(self) -> dict[str, Any]:
        return {
            "listeners": [lst.as_dict() for _, lst in sorted(self.listeners.items())],
            "removed": [lst.as_dict() for lst in self.removed],
            "kept_sessions": len(self._listener_of) - sum(lst.live for lst in self.listeners.values()),
        }


def already_listening(port: int, listener: Listener) -> PortError:
    return PortError(
        ErrorCode.ALREADY_LISTENING,
        port,
        f"port {port}: the server already listens on it ({listener.spec.host}, added by {listener.source})",
    )


# -- the ports file -----------------------------------------------------------------------


class PortsFileError(ValueError):
    """The whole file is unusable (not TOML, wrong shape): nothing of it is applied."""


@dataclass(frozen=True)
class Rejected:
    """One entry of the ports file that is not applied, and why."""

    entry: int | None  # index in the file's [[listen]] list; None for the file as a whole
    port: Any
    code: ErrorCode
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "port": self.port, "code": int(self.code), "name": self.code.name,
                "message": self.message}


@dataclass
class PortsFile:
    """What a ports file asks for: its valid listeners, its rejected entries."""

    specs: list[ListenSpec]
    rejected: list[Rejected]
    entry_of: dict[int, int]  # port -> index of its entry


def parse_ports_file(text: str, *, default_host: str, handlers: Collection[str]) -> PortsFile:
    """The valid listeners a ports file lists, and every entry it rejects.

    The file is ``[[listen]]`` tables with the keys of :data:`SPEC_KEYS`;
    ``port`` is required and fixed (0 is rejected: a file names its ports).
    A port listed twice keeps its first entry. Unknown top-level keys are
    rejected entries too (``entry`` None), and do not stop the rest.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PortsFileError(f"not valid TOML: {exc}") from None
    rejected: list[Rejected] = []
    for key in sorted(set(data) - {"listen"}):
        rejected.append(Rejected(None, None, ErrorCode.BAD_REQUEST, f"unknown top-level key {key!r} (expected [[listen]])"))
    entries = data.get("listen", [])
    if not isinstance(entries, list):
        raise PortsFileError("'listen' must be an array of tables: write [[listen]] entries")
    specs: list[ListenSpec] = []
    first: dict[int, int] = {}
    for index, raw in enumerate(entries):
        try:
            spec = parse_spec(raw, default_host=default_host, handlers=handlers, allow_ephemeral=False)
        except PortError as exc:
            rejected.append(Rejected(index, exc.port, exc.code, f"entry {index}: {exc.message}"))
            continue
        if spec.port in first:
            rejected.append(
                Rejected(index, spec.port, ErrorCode.BAD_REQUEST,
                         f"entry {index}: port {spec.port} is already listed by entry {first[spec.port]}")
            )
            continue
        first[spec.port] = index
        specs.append(spec)
    return PortsFile(specs, rejected, first)


@dataclass
class Plan:
    """What applying a ports file does; removals first, so that a port can change hands."""

    remove: list[int] = field(default_factory=list)
    rebind: list[ListenSpec] = field(default_factory=list)  # removed, then added with new socket settings
    update: list[ListenSpec] = field(default_factory=list)  # same socket, new limit/handler/policy
    add: list[ListenSpec] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def plan_ports(
    desired: Iterable[ListenSpec], listeners: dict[int, Listener], entry_of: dict[int, int] | None = None
) -> Plan:
    """Make the file's listeners match ``desired``; listeners of other sources are left alone.

    An entry for a port that the command line or the API listens on is
    rejected (``ALREADY_LISTENING``): the file never takes over a port.
    ``entry_of`` (port -> index in the file) only labels rejections.
    """
    plan = Plan()
    wanted = {}
    for spec in desired:
        current = listeners.get(spec.port)
        if current is not None and current.source != "file":
            plan.rejected.append(already_listening(spec.port, current).as_rejected((entry_of or {}).get(spec.port)))
            continue
        wanted[spec.port] = spec
        if current is None:
            plan.add.append(spec)
        elif current.spec == spec:
            plan.keep.append(spec.port)
        elif current.spec.needs_rebind(spec):
            plan.rebind.append(spec)
        else:
            plan.update.append(spec)
    plan.remove = sorted(p for p, lst in listeners.items() if lst.source == "file" and p not in wanted)
    return plan

