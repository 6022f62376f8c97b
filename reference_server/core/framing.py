"""Length-prefixed message framing for the inter-process links (pure).

A frame is a 4-byte big-endian length followed by a pickled message. Links
only ever connect processes of one server running as the same user (the
receiving side checks ``SO_PEERCRED``), so pickle is safe here and keeps the
hot path (a routed push) cheap. Nothing outside a server ever speaks this.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class FrameTooLarge(ValueError):
    pass


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"IPC message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


class Decoder:
    """Accumulate bytes; yield every complete message, in order."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise FrameTooLarge(f"IPC frame announces {length} bytes")
            if n - pos - 4 < length:
                break
            out.append(pickle.loads(memoryview(buf)[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
