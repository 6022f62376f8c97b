"""Where one client frame ends: what makes a live WebSocket connection movable.

websockets' Sans-I/O parser consumes every byte it is given into its own
generator state, which cannot leave the process. A migrated session must take
with it the bytes it has read but not parsed yet (half a frame, a header cut
in two). :class:`FrameSplitter` therefore stands between the socket and the
parser and hands the parser only *whole* units:

* before the handshake is complete, the HTTP request up to and including its
  blank line (anything after it waits: a client must not send frames before
  the 101, but the bytes are kept rather than lost if one does);
* afterwards, whole client frames.

At any moment, :attr:`FrameSplitter.pending` is exactly what the parser has
not seen, so the parser itself holds nothing but its state between frames
(``current_size`` of an unfinished fragmented message), which is plain data.

Edge cases, by design:

* A frame that announces more than ``max_frame`` payload bytes is passed on
  as soon as its header is complete, so that the parser rejects it (1009)
  instead of this buffer growing to the announced size.
* A request head longer than ``max_head`` without its blank line is passed
  on, so that the parser rejects it (431/414).
* Everything here is pure: no sockets, no clocks.
"""

from __future__ import annotations

import enum

#: Longest request head kept back while waiting for its blank line.
MAX_HEAD = 64 * 1024


class Mode(enum.Enum):
    HANDSHAKE = 1  # waiting for the end of the HTTP request head
    FRAMES = 2  # cutting client frames


def frame_length(buf: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int] | None:
    """``(header_length, payload_length)`` of the frame at ``buf[start:]``, or None if the header is cut."""
    avail = len(buf) - start
    if avail < 2:
        return None
    b1 = buf[start + 1]
    length = b1 & 0x7F
    header = 2
    if length == 126:
        if avail < 4:
            return None
        length = int.from_bytes(buf[start + 2 : start + 4], "big")
        header = 4
    elif length == 127:
        if avail < 10:
            return None
        length = int.from_bytes(buf[start + 2 : start + 10], "big")
        header = 10
    if b1 & 0x80:
        header += 4
        if avail < header:
            return None
    return header, length


class FrameSplitter:
    """Cut a byte stream into whole units for the parser; keep the rest.

    ``feed(data)`` returns the bytes the parser may consume now (possibly
    empty); the remainder stays in :attr:`pending` until completed.
    """

    def __init__(self, *, max_frame: int, mode: Mode = Mode.HANDSHAKE, pending: bytes = b"") -> None:
        self.max_frame = max_frame
        self.mode = mode
        self._buf = bytearray(pending)

    @property
    def pending(self) -> bytes:
        """Bytes received and not yet handed to the parser."""
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        cut = self._boundary(buf)
        if cut == 0:
            if buf is data:
                self._buf += data
            return b""
        if buf is data:
            if cut < len(data):
                self._buf += data[cut:]
            return data if cut == len(data) else data[:cut]
        out = bytes(self._buf[:cut])
        del self._buf[:cut]
        return out

    def handshake_done(self) -> None:
        """The parser accepted the request: from now on, cut frames."""
        self.mode = Mode.FRAMES

    def _boundary(self, buf: bytes | bytearray) -> int:
        """How many leading bytes of ``buf`` form whole units."""
        if self.mode is Mode.HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return end + 4
            return len(buf) if len(buf) > MAX_HEAD else 0
        pos = 0
        size = len(buf)
        while pos < size:
            parsed = frame_length(buf, pos)
            if parsed is None:
                break
            header, length = parsed
            if length > self.max_frame:
                return size  # let the parser refuse it now
            end = pos + header + length
            if end > size:
                break
            pos = end
        return pos
