"""The session registry: one table of every session, readable from every process.

The table lives in a buffer shared by all processes of a server (an anonymous
``MAP_SHARED`` mapping created by the master before it forks). This module
only interprets the buffer, so it is pure: tests hand it a ``bytearray``.

Layout
    A 64-byte header, then ``capacity`` fixed-size records (one per slot).

Session ids
    ``sid = (serial << slot_bits) | slot``: the master draws a new serial for
    every connection, so ids grow strictly and are never reused during a
    server's life, and any process finds a session's slot without a lookup.
    A reader always compares the record's ``sid`` with the id it was given:
    a stale id can never reach the newer session that reuses its slot (the
    bug of servers that key sessions by OS fd).

Writers (one at a time per slot, by protocol rather than by lock)
    * the master: ``allocate`` (FREE -> CONNECTING) and ``free`` (-> FREE);
    * the owner process, for everything between (establish, touch, bind,
      protect, closing, closed, and a change of owner on migration).
    Operations on a session from any other process are routed to its owner.

Readers
    Each record carries a sequence counter (a seqlock): a writer makes it odd,
    writes, and makes it even again; a reader copies the record and retries
    if the counter was odd or changed meanwhile. A reader therefore never sees
    a half-written record, and never blocks a writer.
"""

from __future__ import annotations

import enum
import heapq
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import ErrorCode

MAGIC = 0x52454653  # "REFS"
LAYOUT_VERSION = 3

_HEADER = struct.Struct("<IIIIQ")  # magic, layout, capacity, high-water mark, serial
_HWM_INDEX = 3  # the high-water mark, as the header's 4th uint32
_SERIAL_AT = 16
_SERIAL = struct.Struct("<Q")
HEADER_SIZE = 64

# seq, state, flags, worker, owner_pid, sid, uid, connect, last_recv,
# established, remote_port, local_port, os_fd, family, remote_addr, group, migrations,
# handler (the handler set of the port it came in through: 0 is the application itself)
_RECORD = struct.Struct("<IBBhiQqdddHHiB16sqIB")
RECORD_SIZE = 96
assert _RECORD.size <= RECORD_SIZE

_SEQ = struct.Struct("<I")
_LAST_RECV_OFFSET = struct.calcsize("<IBBhiQqd")  # seq .. connect_time
_LAST_RECV = struct.Struct("<d")

#: How often a reader retries a record that is being written before giving up.
READ_RETRIES = 2_000  # spins before the reader starts yielding the CPU
READ_PATIENCE = 0.5  # seconds a record may stay mid-write before the writer is taken for dead


class SessionState(enum.IntEnum):
    """Life of a slot. Only CONNECTING and ESTABLISHED sessions *exist*."""

    FREE = 0
    CONNECTING = 1  # TCP accepted, WebSocket handshake not complete
    ESTABLISHED = 2  # handshake complete, messages flow
    CLOSING = 3  # close frame sent or received, or the socket is going away
    CLOSED = 4  # socket released by the owner; the master has not freed the slot yet


class Flag(enum.IntFlag):
    NONE = 0
    PROTECTED = 1  # exempt from the heartbeat
    MIGRATING = 2  # the session is moving to another worker (set by the source, cleared by the target)


LIVE_STATES = frozenset({SessionState.CONNECTING, SessionState.ESTABLISHED})


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A snapshot of one session's record (``get_client_info``)."""

    session: int
    state: SessionState
    worker: int
    owner_pid: int
    remote_addr: str
    remote_port: int
    local_port: int
    connect_time: float
    last_recv_time: float
    established_time: float
    uid: int
    protected: bool
    os_fd: int
    group: int = 0
    migrating: bool = False
    migrations: int = 0
    handler: int = 0

    @property
    def established(self) -> bool:
        return self.state is SessionState.ESTABLISHED

    def as_dict(self, handler_names: Sequence[str] = ("default",)) -> dict[str, object]:
        """The session record of contract 4.1 (``handler_names``: the handler sets by index)."""
        return {
            "session": self.session,
            "state": self.state.name.lower(),
            "established": self.established,
            "worker": self.worker,
            "pid": self.owner_pid,
            "remote_addr": self.remote_addr,
            "remote_port": self.remote_port,
            "local_port": self.local_port,
            "connect_time": self.connect_time,
            "last_recv_time": self.last_recv_time,
            "established_time": self.established_time or None,
            "uid": self.uid,
            "protected": self.protected,
            "os_fd": self.os_fd if self.os_fd >= 0 else None,
            "group": self.group,
            "migrating": self.migrating,
            "migrations": self.migrations,
            "handler": handler_names[self.handler] if self.handler < len(handler_names) else "default",
        }


class TableFull(Exception):
    """No free slot: the server is at ``max_connections``."""


class TornRecord(Exception):
    """A record stayed mid-write for too long (its writer died while writing)."""


def slot_bits_for(capacity: int) -> int:
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return max(1, (capacity - 1).bit_length())


def table_size(capacity: int) -> int:
    """Bytes needed for a table of ``capacity`` slots."""
    return HEADER_SIZE + capacity * RECORD_SIZE


def _pack_addr(addr: str) -> tuple[int, bytes]:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return int(family), socket.inet_pton(family, addr).ljust(16, b"\0")
        except OSError:
            continue
    return 0, b"\0" * 16


def _unpack_addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


class SessionTable:
    """Interpret ``buf`` as a session table; see the module docstring."""

    def __init__(self, buf: bytearray | memoryview, capacity: int, *, create: bool = False) -> None:
        if len(buf) < table_size(capacity):
            raise ValueError(f"buffer of {len(buf)} bytes is too small for {capacity} slots")
        self._buf = buf
        self.capacity = capacity
        self.slot_bits = slot_bits_for(capacity)
        self._slot_mask = (1 << self.slot_bits) - 1
        if create:
            buf[: table_size(capacity)] = bytes(table_size(capacity))
            _HEADER.pack_into(buf, 0, MAGIC, LAYOUT_VERSION, capacity, 0, 0)
        else:
            magic, layout, cap, _, _ = _HEADER.unpack_from(buf, 0)
            if (magic, layout, cap) != (MAGIC, LAYOUT_VERSION, capacity):
                raise ValueError("buffer does not hold a session table of this layout")
        # Sequence numbers and the high-water mark are written with one aligned 4-byte store each
        # (``struct.pack_into`` zero-fills before it writes: a reader could catch a 0 there).
        self._u32 = memoryview(buf)[: table_size(capacity)].cast("B").cast("I")
        # Master-only bookkeeping (the single allocator): free slots, lowest first.
        self._free: list[int] | None = None

    # -- ids ---------------------------------------------------------------

    def slot_of(self, sid: int) -> int:
        return sid & self._slot_mask

    def _offset(self, slot: int) -> int:
        return HEADER_SIZE + slot * RECORD_SIZE

    @property
    def high_water(self) -> int:
        """One past the highest slot ever used: scans stop here."""
        return _HEADER.unpack_from(self._buf, 0)[3]

    # -- reading (any process) ---------------------------------------------

    def _read_raw(self, slot: int) -> tuple:
        """A consistent copy of a record (seqlock read).

        A writer takes microseconds, so the reader spins first. A writer can
        also be preempted mid-write on a busy machine (one timeslice is
        milliseconds): past the spin, the reader yields the CPU between tries
        for up to :data:`READ_PATIENCE` seconds. Only a writer that died
        mid-write keeps the record odd longer; then :class:`TornRecord`.
        """
        off = self._offset(slot)
        buf = self._buf
        tries = 0
        deadline = 0.0
        while True:
            (seq1,) = _SEQ.unpack_from(buf, off)
            if not seq1 & 1:
                fields = _RECORD.unpack_from(buf, off)
                (seq2,) = _SEQ.unpack_from(buf, off)
                if seq1 == seq2 == fields[0]:
                    return fields
            tries += 1
            if tries >= READ_RETRIES:
                now = time.monotonic()
                if not deadline:
                    deadline = now + READ_PATIENCE
                elif now > deadline:
                    raise TornRecord(f"slot {slot} stayed mid-write for {READ_PATIENCE} s")
                os.sched_yield()  # let a preempted writer finish

    def _record(self, sid: int) -> tuple | None:
        """The raw fields of ``sid``'s record in any state but FREE, or None if the id is stale."""
        if sid <= 0:
            return None
        slot = sid & self._slot_mask
        if slot >= self.capacity:
            return None
        f = self._read_raw(slot)
        if f[5] != sid or f[1] == SessionState.FREE:
            return None
        return f

    def lookup(self, sid: int) -> ClientInfo | None:
        """The record of ``sid`` in any state but FREE, or None if the id is stale."""
        f = self._record(sid)
        return None if f is None else self._info(f)

    def get_client_info(self, sid: int) -> ClientInfo | None:
        """The record of a session that exists (connecting or established), else None."""
        info = self.lookup(sid)
        if info is None or info.state not in LIVE_STATES:
            return None
        return info

    # The hot paths (every push and every exists() of a timer) read the state and the owner
    # only: no ClientInfo is built for them.

    def exists(self, sid: int) -> bool:
        f = self._record(sid)
        return f is not None and f[1] in LIVE_STATES

    def is_established(self, sid: int) -> bool:
        f = self._record(sid)
        return f is not None and f[1] == SessionState.ESTABLISHED

    def push_error(self, sid: int) -> tuple[ErrorCode, int]:
        """Why a push to ``sid`` cannot be delivered (``OK`` when it can), and its owner's pid.

        ``SESSION_NOT_EXIST`` for an unknown or stale id (owner 0), ``SESSION_CLOSED`` while the
        session is closing, ``NOT_ESTABLISHED`` during the handshake.
        """
        f = self._record(sid)
        if f is None:
            return ErrorCode.SESSION_NOT_EXIST, 0
        state = f[1]
        if state == SessionState.ESTABLISHED:
            return ErrorCode.OK, f[4]
        if state == SessionState.CONNECTING:
            return ErrorCode.NOT_ESTABLISHED, f[4]
        return ErrorCode.SESSION_CLOSED, f[4]

    def sessions(self, *, established_only: bool = False) -> Iterator[ClientInfo]:
        """Live scan of existing sessions, in slot order.

        A session may close between being yielded and being used: callers
        must tolerate that (this is the contract of ``connections``).
        """
        wanted = (
            (SessionState.ESTABLISHED,) if established_only else tuple(LIVE_STATES)
        )
        for slot in range(self.high_water):
            # Cheap pre-check of the state byte, then a consistent read.
            if self._buf[self._offset(slot) + 4] not in wanted:
                continue
            try:
                f = self._read_raw(slot)
            except TornRecord:
                continue
            if f[1] in wanted:
                yield self._info(f)

    def _info(self, f: tuple) -> ClientInfo:
        return ClientInfo(
            session=f[5],
            state=SessionState(f[1]),
            worker=f[3],
            owner_pid=f[4],
            remote_addr=_unpack_addr(f[13], f[14]),
            remote_port=f[10],
            local_port=f[11],
            connect_time=f[7],
            last_recv_time=f[8],
            established_time=f[9],
            uid=f[6],
            protected=bool(f[2] & Flag.PROTECTED),
            os_fd=f[12],
            group=f[15],
            migrating=bool(f[2] & Flag.MIGRATING),
            migrations=f[16],
            handler=f[17],
        )

    # -- writing ------------------------------------------------------------

    def _write(self, slot: int, **changes: object) -> None:
        """Seqlock write of some fields of one record (caller is the slot's writer).

        The new record is packed before the record is marked: a value that does not fit its
        field (``struct.error``) leaves the record as it was, never marked mid-write (a mark
        that stays makes every reader wait ``READ_PATIENCE`` for a writer that is not there).
        """
        off = self._offset(slot)
        f = list(_RECORD.unpack_from(self._buf, off))
        seq = f[0]
        if seq & 1:  # a previous writer died mid-write; we are its successor
            seq += 1
        for name, value in changes.items():
            f[_FIELD_INDEX[name]] = value
        f[0] = seq + 1
        packed = _RECORD.pack(*f)  # raises before anything is written
        self._u32[off // 4] = seq + 1
        self._buf[off + _SEQ.size : off + _RECORD.size] = packed[_SEQ.size :]
        self._u32[off // 4] = seq + 2

    def _owned(self, sid: int) -> int:
        slot = self.slot_of(sid)
        if slot >= self.capacity:
            raise KeyError(sid)
        f = _RECORD.unpack_from(self._buf, self._offset(slot))
        if f[5] != sid or f[1] == SessionState.FREE:
            raise KeyError(sid)
        return slot

    # master ----------------------------------------------------------------

    def allocate(
        self,
        *,
        worker: int,
        owner_pid: int,
        remote_addr: str,
        remote_port: int,
        local_port: int,
        now: float,
        handler: int = 0,
    ) -> int:
        """Reserve the lowest free slot for a new connection; return its session id.

        Master only. Raises :class:`TableFull` at capacity.
        """
        if self._free is None:
            self._rebuild_free()
        assert self._free is not None
        if not self._free:
            raise TableFull(f"all {self.capacity} session slots are in use")
        slot = heapq.heappop(self._free)
        _, _, _, hwm, serial = _HEADER.unpack_from(self._buf, 0)
        serial += 1
        sid = (serial << self.slot_bits) | slot
        family, packed = _pack_addr(remote_addr)
        self._write(
            slot,
            state=SessionState.CONNECTING,
            flags=0,
            worker=worker,
            owner_pid=owner_pid,
            sid=sid,
            uid=0,
            connect_time=now,
            last_recv=now,
            established=0.0,
            remote_port=remote_port,
            local_port=local_port,
            os_fd=-1,
            family=family,
            remote_addr=packed,
            group=0,
            migrations=0,
            handler=handler,
        )
        self._buf[_SERIAL_AT : _SERIAL_AT + 8] = _SERIAL.pack(serial)  # read by the master only
        self._u32[_HWM_INDEX] = max(hwm, slot + 1)  # read by every scan
        return sid

    def free(self, sid: int) -> bool:
        """Return the slot of ``sid`` to the free list (master only).

        Idempotent: freeing a stale id does nothing and returns False.
        """
        try:
            slot = self._owned(sid)
        except KeyError:
            return False
        self._write(slot, state=SessionState.FREE, flags=0)
        if self._free is not None:
            heapq.heappush(self._free, slot)
        return True

    def free_owned_by(self, owner_pid: int) -> list[int]:
        """Free every slot owned by a dead process; return the session ids (master only)."""
        freed = []
        for slot in range(self.high_water):
            f = _RECORD.unpack_from(self._buf, self._offset(slot))
            if f[1] != SessionState.FREE and f[4] == owner_pid:
                freed.append(f[5])
                self.free(f[5])
        return freed

    def _rebuild_free(self) -> None:
        self._free = [
            slot
            for slot in range(self.capacity)
            if self._buf[self._offset(slot) + 4] == SessionState.FREE
        ]

    # owner -----------------------------------------------------------------

    def set_os_fd(self, sid: int, fd: int) -> None:
        self._write(self._owned(sid), os_fd=fd)

    def establish(self, sid: int, now: float) -> None:
        self._write(self._owned(sid), state=SessionState.ESTABLISHED, established=now, last_recv=now)

    def touch(self, sid: int, now: float) -> None:
        """Record that data was received from the client (heartbeat activity)."""
        slot = self._owned(sid)
        off = self._offset(slot)
        seq = self._u32[off // 4]
        seq += seq & 1
        self._u32[off // 4] = seq + 1
        self._buf[off + _LAST_RECV_OFFSET : off + _LAST_RECV_OFFSET + _LAST_RECV.size] = _LAST_RECV.pack(now)
        self._u32[off // 4] = seq + 2

    def set_closing(self, sid: int) -> None:
        self._write(self._owned(sid), state=SessionState.CLOSING)

    def set_closed(self, sid: int) -> None:
        self._write(self._owned(sid), state=SessionState.CLOSED)

    def set_uid(self, sid: int, uid: int) -> None:
        self._write(self._owned(sid), uid=uid)

    def _set_flag(self, sid: int, flag: Flag, on: bool) -> None:
        slot = self._owned(sid)
        flags = _RECORD.unpack_from(self._buf, self._offset(slot))[2]
        flags = (flags | flag) if on else (flags & ~flag)
        self._write(slot, flags=int(flags))

    def set_protected(self, sid: int, protected: bool) -> None:
        self._set_flag(sid, Flag.PROTECTED, protected)

    def set_migrating(self, sid: int, on: bool) -> None:
        """Mark a session as moving (its source sets it, its new owner clears it)."""
        self._set_flag(sid, Flag.MIGRATING, on)

    def set_group(self, sid: int, group: int) -> None:
        self._write(self._owned(sid), group=group)

    def set_owner(self, sid: int, worker: int, owner_pid: int) -> None:
        """Make ``owner_pid`` (worker ``worker``) the session's owner, in one write.

        Called by the process that has just adopted the session, which from
        then on is the record's writer. Counts the migration and clears
        MIGRATING in the same write.
        """
        slot = self._owned(sid)
        f = _RECORD.unpack_from(self._buf, self._offset(slot))
        flags = int(f[2] & ~Flag.MIGRATING)
        self._write(slot, worker=worker, owner_pid=owner_pid, migrations=f[16] + 1, flags=flags)


_FIELD_INDEX = {
    name: i
    for i, name in enumerate(
        (
            "seq",
            "state",
            "flags",
            "worker",
            "owner_pid",
            "sid",
            "uid",
            "connect_time",
            "last_recv",
            "established",
            "remote_port",
            "local_port",
            "os_fd",
            "family",
            "remote_addr",
            "group",
            "migrations",
            "handler",
        )
    )
}
