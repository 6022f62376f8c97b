"""Broadcast over Redis: the pure rules (no I/O).

What travels, and how it is named (contract section 10):

* A **channel** is a name matching :data:`CHANNEL_RE`. In Redis it is the
  pub/sub channel (mode ``pubsub``) or the stream key (mode ``durable``)
  ``prefix + name``. The channel :data:`ALL` is not joined: every
  established session is in it from its handshake to its close.
* A **payload** is what a publisher put in Redis (the pub/sub message, or the
  stream entry's ``data`` field). It must be a JSON text; anything else is
  rejected (counted, logged once per channel) and never reaches a client.
* A **position** orders the messages of one channel inside a node.
  Durable mode: the stream id ``ms-seq``, as the integer ``ms << 64 | seq``.
  Pub/sub mode: the broadcaster draws one from :class:`Clock` (microseconds
  since the epoch, strictly increasing), so a broadcaster that restarts
  continues above every position it gave before.
  A session remembers, per channel, the position of the last message it was
  given; a message at or below it is never given again. That one rule is
  what makes catch-up (after a move, a reload, a history request) free of
  duplicates.
* The **frame** a client receives is built once per message, for every
  recipient on the node (:func:`encode_frame`): an unmasked WebSocket text
  frame holding
  ``{"ev":"broadcast","channel":C,"id":ID,"data":PAYLOAD}``, where ``ID``
  is the stream id in durable mode and null in pub/sub mode.
"""

from __future__ import annotations

import collections
import json
import re
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

ALL = "@all"
CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class BroadcastMode(StrEnum):
    """How a node hears Redis (contract section 10.1); ``off``: no broadcast."""

    PUBSUB = "pubsub"  # PUBLISH/PSUBSCRIBE: at most once, no history
    DURABLE = "durable"  # XADD/XREAD on streams: at least once, history by stream id
    OFF = "off"


MODES = tuple(m.value for m in BroadcastMode)


class BadChannel(ValueError):
    """A channel name the contract does not allow."""


class BadPayload(ValueError):
    """A payload that is not a JSON text."""


def check_channel(name: object, *, joinable: bool = True) -> str:
    """Return ``name`` if it is a channel a client may use, else raise :class:`BadChannel`."""
    if not isinstance(name, str):
        raise BadChannel(f"channel must be a string, got {type(name).__name__}")
    if name == ALL:
        if joinable:
            raise BadChannel(f"{ALL!r} is every established session: it cannot be joined or left")
        return name
    if not CHANNEL_RE.fullmatch(name):
        raise BadChannel(f"channel {name[:80]!r} must match {CHANNEL_RE.pattern}")
    return name


# -- positions -------------------------------------------------------------------------


def stream_pos(stream_id: str | bytes) -> int:
    """The position of a stream id (``"1700000000000-3"``); ValueError if malformed."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode("ascii")
    ms, _, seq = stream_id.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise ValueError(f"not a stream id: {stream_id!r}")
    return int(ms) << 64 | int(seq or 0)


def stream_id(pos: int) -> str:
    """The stream id of a position (inverse of :func:`stream_pos`)."""
    return f"{pos >> 64}-{pos & ((1 << 64) - 1)}"


def next_stream_id(pos: int) -> str:
    """The smallest stream id after ``pos`` (an inclusive XRANGE start that excludes ``pos``)."""
    return stream_id(pos + 1)


class Clock:
    """Positions for pub/sub mode: microseconds since the epoch, strictly increasing."""

    __slots__ = ("_last", "_now")

    def __init__(self, now=time.time_ns) -> None:
        self._now = now
        self._last = 0

    def next(self) -> int:
        pos = self._now() // 1000
        if pos <= self._last:
            pos = self._last + 1
        self._last = pos
        return pos


# -- frames -----------------------------------------------------------------------------


def frame_header(length: int, opcode: int = 0x1) -> bytes:
    """The header of one unmasked, final frame (RFC 6455 section 5.2)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def check_payload(payload: bytes | str) -> str:
    """The payload as text if it is one JSON value, else :class:`BadPayload`."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadPayload(f"not UTF-8 at byte {exc.start}") from None
    try:
        json.loads(payload)
    except ValueError as exc:
        raise BadPayload(f"not JSON: {exc}") from None
    return payload


def encode_frame(channel: str, msg_id: str | None, payload: str) -> bytes:
    """The whole WebSocket frame of one broadcast (payload: a checked JSON text)."""
    msg_json = "null" if msg_id is None else json.dumps(msg_id)
    text = f'{{"ev":"broadcast","channel":{json.dumps(channel)},"id":{msg_json},"data":{payload}}}'
    body = text.encode("utf-8")
    return frame_header(len(body)) + body


# -- batches ------------------------------------------------------------------------------


@dataclass
class Run:
    """The messages of one channel in one batch, in position order."""

    channel: str
    positions: list[int] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    _joined: bytes | None = None

    def add(self, pos: int, frame: bytes) -> None:
        self.positions.append(pos)
        self.frames.append(frame)
        self._joined = None

    @property
    def first(self) -> int:
        return self.positions[0]

    @property
    def last(self) -> int:
        return self.positions[-1]

    def after(self, pos: int) -> tuple[bytes, int]:
        """The frames after ``pos`` as one buffer, and how many there are.

        The common case (the session has seen nothing of this run) joins
        the frames once for every recipient.
        """
        if pos < self.positions[0]:
            if self._joined is None:
                self._joined = b"".join(self.frames)
            return self._joined, len(self.frames)
        if pos >= self.positions[-1]:
            return b"", 0
        i = 0
        while self.positions[i] <= pos:
            i += 1
        return b"".join(self.frames[i:]), len(self.frames) - i


def group_runs(batch: Iterable[tuple[str, int, bytes]]) -> dict[str, Run]:
    """Group a batch of ``(channel, pos, frame)`` into runs, keeping each channel's order."""
    runs: dict[str, Run] = {}
    for channel, pos, frame in batch:
        run = runs.get(channel)
        if run is None:
            run = runs[channel] = Run(channel)
        run.add(pos, frame)
    return runs


# -- the broadcaster's recent messages -------------------------------------------------------


class Ring:
    """The last ``size`` messages of each open channel, for catch-up (pub/sub mode).

    A channel is *open* from the position it was first asked for
    (:meth:`open`); before that nothing of it was kept. :meth:`since` says
    whether what it returns is complete: it is not when the asked position
    is older than the opening, or than a message already dropped.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._msgs: dict[str, collections.deque[tuple[int, bytes]]] = {}
        self._from: dict[str, int] = {}  # channel -> position it was opened at
        self._dropped: dict[str, int] = {}  # channel -> highest position that left the ring

    def open(self, channel: str, pos: int) -> None:
        if channel not in self._from:
            self._from[channel] = pos
            self._msgs[channel] = collections.deque()

    def add(self, channel: str, pos: int, frame: bytes) -> None:
        ring = self._msgs.get(channel)
        if ring is None:
            return  # not open: nobody here can need it
        if len(ring) >= self.size:
            self._dropped[channel] = ring.popleft()[0]
        ring.append((pos, frame))

    def since(self, channel: str, pos: int, upto: int) -> tuple[list[tuple[int, bytes]], bool]:
        """Messages with ``pos < position <= upto``, oldest first, and whether none is missing."""
        ring = self._msgs.get(channel)
        if ring is None:
            return [], False
        out = [(p, f) for p, f in ring if pos < p <= upto]
        return out, pos >= self._from[channel] and self._dropped.get(channel, 0) <= pos

    def forget(self, channel: str) -> None:
        self._msgs.pop(channel, None)
        self._from.pop(channel, None)
        self._dropped.pop(channel, None)

    def __contains__(self, channel: str) -> bool:
        return channel in self._from


# -- outages ---------------------------------------------------------------------------------


@dataclass
class Outage:
    """A time the broadcaster could not hear Redis: what was published then may be lost.

    ``start`` is the last time Redis was heard from before the failure (wall
    clock, seconds), ``end`` the time the subscription was confirmed again
    (0 while it lasts).
    """

    start: float
    end: float = 0.0
    error: str = ""
    attempts: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "start": round(self.start, 6),
            "end": round(self.end, 6) if self.end else None,
            "ms": round(((self.end or time.time()) - self.start) * 1000.0, 3),
            "error": self.error,
            "attempts": self.attempts,
        }


def backoff_delays(base: float = 0.05, cap: float = 0.5) -> Iterator[float]:
    """Reconnect delays: doubling from ``base`` up to ``cap`` (the caller adds jitter)."""
    delay = base
    while True:
        yield delay
        delay = min(cap, delay * 2)
