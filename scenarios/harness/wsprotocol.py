"""RFC 6455 conformance cases, Autobahn style, compact: what a client sends and what the server owes.

Each :class:`Case` is a list of hand-built frames (:func:`frame`, which can build what no
client library would: reserved bits, unknown opcodes, unmasked frames, oversized control
frames, bad UTF-8) and what the server must do (:class:`Expect`):

* ``REPLY``: the frames carry a contract request (possibly fragmented, with pings between);
  the server answers it (``ok``), and each ping with a pong of the same payload; the
  connection stays open;
* ``FAIL``: the server fails the connection (RFC 6455 7.1.7): a close frame with one of the
  codes listed (1002 protocol error, 1007 invalid payload, 1009 too big), or, less strictly, the
  end of the TCP connection without one (Autobahn's "non-strict": counted, not failed); it
  must not answer the request;
* ``CLOSE``: the client starts a clean close; the server answers with a close frame (its
  code 1000 or the client's) and ends the TCP connection.

:func:`run_case` plays one case over a fresh connection and records an :class:`Observed`;
:func:`judge` (pure) says what is wrong with it, if anything. The scenario is
``scenarios/test_protocol.py``; the unit tests of ``judge`` are in ``tests/test_wsprotocol.py``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from .rawclient import cut_server_frames, upgrade_request

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: How long the server has to answer a case (a reply, a pong, its close frame, the end of TCP).
CASE_BOUND_S = 5.0
#: How long a connection the server must fail may stay open (failing takes it microseconds).
FAIL_BOUND_S = 2.0


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """One frame as given: ``rsv`` is the three reserved bits (0..7), ``length`` a false length field."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
    m = 0x80 if mask else 0
    if n < 126:
        head.append(m | n)
    elif n < 1 << 16:
        head.append(m | 126)
        head += struct.pack("!H", n)
    else:
        head.append(m | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big") if n else b""
    return bytes(head) + key + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def request(req_id: int, data: str = "x") -> bytes:
    return json.dumps({"op": "echo", "id": req_id, "seq": req_id, "data": data}, ensure_ascii=False).encode()


class Expect(enum.Enum):
    REPLY = "reply"
    FAIL = "fail"
    CLOSE = "close"


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    what: str
    frames: tuple[bytes, ...]
    expect: Expect
    codes: tuple[int, ...] = ()  # FAIL, CLOSE: the close codes allowed in the server's close frame
    pongs: tuple[bytes, ...] = ()  # REPLY: the pong payloads owed, in order
    data: str | None = None  # REPLY: the echoed data expected


def _reply_case(cid: str, group: str, what: str, frames: list[bytes], *, pongs: tuple[bytes, ...] = (),
                data: str | None = None) -> Case:
    return Case(cid, group, what, tuple(frames), Expect.REPLY, pongs=pongs, data=data)


def _fail(cid: str, group: str, what: str, frames: list[bytes], *codes: int) -> Case:
    return Case(cid, group, what, tuple(frames), Expect.FAIL, codes=codes or (1002,))


def cases(message_bytes: int) -> list[Case]:
    """Every case; ``message_bytes`` is the largest message the target takes (manifest ``[limits]``)."""
    req = request(1)
    half = len(req) // 2
    big = request(1, "b" * 70_000)
    kosme = "κόσμε ✓ 𝄞"
    bad_utf8 = b'{"op":"echo","id":1,"data":"\xce\xba\xff"}'
    out = [
        # 1. framing
        _reply_case("1.1", "framing", "a text message, 7-bit length", [frame(TEXT, req)]),
        _reply_case("1.2", "framing", "a text message, 16-bit length", [frame(TEXT, request(1, "m" * 300))]),
        _reply_case("1.3", "framing", "a text message, 64-bit length (70,000 bytes)", [frame(TEXT, big)]),
        _reply_case("1.4", "framing", "a text message written one byte at a time", [bytes([b]) for b in frame(TEXT, req)]),
        _fail("1.5", "framing", "an unmasked client frame", [frame(TEXT, req, mask=False)]),
        _fail("1.6", "framing", "RSV1 set, no extension negotiated", [frame(TEXT, req, rsv=4)]),
        _fail("1.7", "framing", "RSV2 set", [frame(TEXT, req, rsv=2)]),
        _fail("1.8", "framing", "RSV3 set", [frame(TEXT, req, rsv=1)]),
        _fail("1.9", "framing", "reserved data opcode 3", [frame(3, req)]),
        _fail("1.10", "framing", "reserved control opcode 0xB", [frame(0xB, b"")]),
        _fail("1.11", "framing", "a 64-bit length with its most significant bit set",
              [frame(TEXT, b"", length=1 << 63)], 1002, 1009),
        # 2. control frames
        _reply_case("2.1", "control", "a ping with an empty payload, then a request", [frame(PING), frame(TEXT, req)],
                    pongs=(b"",)),
        _reply_case("2.2", "control", "a ping of 125 bytes (the most a control frame holds)",
                    [frame(PING, b"p" * 125), frame(TEXT, req)], pongs=(b"p" * 125,)),
        _fail("2.3", "control", "a ping of 126 bytes", [frame(PING, b"p" * 126)]),
        _fail("2.4", "control", "a fragmented ping (FIN clear)", [frame(PING, b"abc", fin=False)]),
        _reply_case("2.5", "control", "an unsolicited pong is ignored", [frame(PONG, b"hello"), frame(TEXT, req)]),
        _reply_case("2.6", "control", "ten pings in a row, each answered in order",
                    [*(frame(PING, f"{i}".encode()) for i in range(10)), frame(TEXT, req)],
                    pongs=tuple(f"{i}".encode() for i in range(10))),
        # 3. fragmentation
        _reply_case("3.1", "fragmentation", "a request in two fragments",
                    [frame(TEXT, req[:half], fin=False), frame(CONT, req[half:])]),
        _reply_case("3.2", "fragmentation", "a request in one fragment per byte",
                    [frame(TEXT, req[:1], fin=False), *(frame(CONT, req[i : i + 1], fin=False) for i in range(1, len(req) - 1)),
                     frame(CONT, req[-1:])]),
        _reply_case("3.3", "fragmentation", "a ping between two fragments is answered at once",
                    [frame(TEXT, req[:half], fin=False), frame(PING, b"mid"), frame(CONT, req[half:])], pongs=(b"mid",)),
        _reply_case("3.4", "fragmentation", "empty fragments around the request",
                    [frame(TEXT, b"", fin=False), frame(CONT, req, fin=False), frame(CONT, b"")]),
        _fail("3.5", "fragmentation", "a continuation with no message started", [frame(CONT, req)]),
        _fail("3.6", "fragmentation", "a new text message before the last one ended",
              [frame(TEXT, req[:half], fin=False), frame(TEXT, req)]),
        _fail("3.7", "fragmentation", "a fragmented message whose last fragment is a text frame",
              [frame(TEXT, req[:half], fin=False), frame(TEXT, req[half:])]),
        # 4. UTF-8
        _reply_case("4.1", "utf-8", "multi-byte characters (2, 3 and 4 bytes)", [frame(TEXT, request(1, kosme))],
                    data=kosme),
        _reply_case("4.2", "utf-8", "a 4-byte character split between fragments",
                    [frame(TEXT, request(1, kosme)[:-5], fin=False), frame(CONT, request(1, kosme)[-5:])], data=kosme),
        _fail("4.3", "utf-8", "invalid UTF-8 in a text message", [frame(TEXT, bad_utf8)], 1007),
        _fail("4.4", "utf-8", "invalid UTF-8 in the second fragment", [frame(TEXT, bad_utf8[:20], fin=False),
                                                                       frame(CONT, bad_utf8[20:])], 1007),
        _fail("4.5", "utf-8", "an encoded surrogate (ED A0 80)",
              [frame(TEXT, b'{"op":"echo","id":1,"data":"\xed\xa0\x80"}')], 1007),
        _fail("4.6", "utf-8", "invalid UTF-8 in a close reason", [frame(CLOSE, close_payload(1000, b"\xff\xfe"))],
              1007, 1002),
        # 5. closing
        Case("5.1", "close", "a close with code 1000", (frame(CLOSE, close_payload(1000)),), Expect.CLOSE, (1000,)),
        Case("5.2", "close", "a close with no payload", (frame(CLOSE),), Expect.CLOSE, (1000, 1005)),
        Case("5.3", "close", "a close with code 3000 and a reason", (frame(CLOSE, close_payload(3000, b"bye")),),
             Expect.CLOSE, (1000, 3000)),
        Case("5.4", "close", "a close with code 4999", (frame(CLOSE, close_payload(4999)),), Expect.CLOSE, (1000, 4999)),
        _fail("5.5", "close", "a close payload of one byte", [frame(CLOSE, b"\x03")]),
        *(
            _fail(f"5.{6 + i}", "close", f"a close with the invalid code {code}", [frame(CLOSE, close_payload(code))])
            for i, code in enumerate((0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000))
        ),
        # 6. limits
        _reply_case("6.1", "limits", "a request of 64 KiB", [frame(TEXT, request(1, "L" * 65_000))]),
        _fail("6.2", "limits", "a message over the target's limit (in one frame)",
              [frame(TEXT, request(1, "L" * (2 * message_bytes)))], 1009),
        _fail("6.3", "limits", "a message over the target's limit (in fragments)",
              [frame(TEXT, b"L" * 65536, fin=False),
               *(frame(CONT, b"L" * 65536, fin=False) for _ in range(2 * message_bytes // 65536)),
               frame(CONT, b"L")], 1009),
    ]
    return out


@dataclass
class Observed:
    """What the server did in a case: frames received (opcode, payload), how the connection ended."""

    handshake: str = ""  # "" when the upgrade was answered 101, else what came
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    tcp_closed: bool = False
    seconds: float = 0.0
    write_error: str = ""

    @property
    def close_code(self) -> int | None:
        for op, payload in self.frames:
            if op == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def replies(self) -> list[Any]:
        out = []
        for op, payload in self.frames:
            if op == TEXT:
                try:
                    out.append(json.loads(payload))
                except ValueError:
                    out.append(payload[:80].decode(errors="replace"))
        return out


def judge(case: Case, seen: Observed) -> tuple[str | None, bool]:
    """What is wrong with ``seen`` for ``case`` (None if nothing), and whether it passed only non-strictly."""
    if seen.handshake:
        return f"no handshake: {seen.handshake[:80]}", False
    pongs = [p for op, p in seen.frames if op == PONG]
    replies = [r for r in seen.replies() if isinstance(r, dict) and r.get("re") == 1]
    code = seen.close_code
    if case.expect is Expect.REPLY:
        if code is not None or seen.tcp_closed:
            return f"the connection was closed (close code {code})", False
        if len(replies) != 1 or replies[0].get("ok") is not True:
            return f"the request got {len(replies)} replies: {str(replies)[:120]}", False
        if case.data is not None and replies[0].get("data") != case.data:
            return f"the echo changed the data: {str(replies[0].get('data'))[:60]!r}", False
        if tuple(pongs) != case.pongs:
            return f"pongs {[p[:20] for p in pongs]} for pings {[p[:20] for p in case.pongs]}", False
        return None, False
    if case.expect is Expect.FAIL:
        if replies:
            return "the request was answered: the frames should have failed the connection", False
        if code is None:
            return (None, True) if seen.tcp_closed else ("the connection is still open", False)
        if code not in case.codes:
            return f"close code {code}, expected {' or '.join(map(str, case.codes))}", False
        if not seen.tcp_closed:
            return f"close frame {code} sent, but the TCP connection did not end", False
        return None, False
    # CLOSE: a close frame back (1000 or the client's code), then the end of TCP
    if code is None:
        return ("no close frame, the TCP connection just ended" if seen.tcp_closed else "no close frame"), False
    if code not in case.codes:
        return f"close code {code}, expected one of {list(case.codes)}", False
    if not seen.tcp_closed:
        return "the TCP connection did not end after the closing handshake", False
    return None, False


async def run_case(host: str, port: int, case: Case) -> Observed:
    """Play ``case`` over a new connection: handshake, its frames, then read until the end or the bound."""
    seen = Observed()
    start = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CASE_BOUND_S)
    try:
        writer.write(upgrade_request(host, port))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CASE_BOUND_S)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:  # e.g. the worker it reached died
            partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
            seen.handshake = f"the connection ended before the handshake was answered ({len(partial)} bytes read)"
            return seen
        if not head.startswith(b"HTTP/1.1 101"):
            seen.handshake = head.decode(errors="replace")
            return seen
        buf = bytearray()
        try:
            for data in case.frames:
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError) as exc:  # the server may fail the connection before all is written
            seen.write_error = repr(exc)
        deadline = start + (FAIL_BOUND_S if case.expect is Expect.FAIL else CASE_BOUND_S)
        want_reply = case.expect is Expect.REPLY
        answered = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except (ConnectionError, OSError):
                seen.tcp_closed = True
                break
            if not chunk:
                seen.tcp_closed = True
                break
            buf += chunk
            frames, used = cut_server_frames(buf)
            del buf[:used]
            seen.frames += frames
            if not answered and case.expect is not Expect.CLOSE and any(op == CLOSE for op, _ in frames):
                answered = True  # a well-behaved client answers the server's close frame (RFC 6455 5.5.1)
                try:
                    code = seen.close_code
                    writer.write(frame(CLOSE, close_payload(code) if code and code != 1005 else b""))
                except (ConnectionError, OSError):
                    pass
            if want_reply and len(seen.replies()) >= 1 and len([f for f in seen.frames if f[0] == PONG]) >= len(case.pongs):
                break  # all owed came; the connection stays open
    finally:
        seen.seconds = round(time.monotonic() - start, 3)
        writer.transport.abort()
    return seen
