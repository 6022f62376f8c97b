"""The pure rules of broadcast (reference_server/core/broadcast.py) and the stream's coalescing."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from reference_server.core.broadcast import (
    ALL,
    BadChannel,
    BadPayload,
    Clock,
    Ring,
    Run,
    backoff_delays,
    check_channel,
    check_payload,
    encode_frame,
    frame_header,
    group_runs,
    next_stream_id,
    stream_id,
    stream_pos,
)
from reference_server.session.stream import SocketStream


def parse_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    gen = Frame.parse(reader.read_exact, mask=False)
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_are_valid_unmasked_text_frames(size):
    payload = json.dumps("x" * size)
    frame = encode_frame("news", None, payload)
    parsed = parse_frame(frame)
    assert parsed.opcode is Opcode.TEXT and parsed.fin
    event = json.loads(parsed.data)
    assert event == {"ev": "broadcast", "channel": "news", "id": None, "data": "x" * size}
    assert frame_header(size)[1] & 0x80 == 0  # server frames are never masked


def test_durable_frames_carry_the_stream_id():
    event = json.loads(parse_frame(encode_frame("a.b", "1700000000000-3", '{"k":[1,2]}')).data)
    assert event["id"] == "1700000000000-3" and event["data"] == {"k": [1, 2]}


@pytest.mark.parametrize(
    "name, ok",
    [("news", True), ("a:b.c-d_e", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("with space", False), ("é", False), (7, False), (None, False)],
)
def test_channel_names(name, ok):
    if ok:
        assert check_channel(name) == name
    else:
        with pytest.raises(BadChannel):
            check_channel(name)


def test_all_is_not_joinable_but_is_a_channel():
    with pytest.raises(BadChannel, match="every established session"):
        check_channel(ALL)
    assert check_channel(ALL, joinable=False) == ALL


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"", "{'single': 1}"])
def test_bad_payloads_are_refused_with_a_reason(payload):
    with pytest.raises(BadPayload):
        check_payload(payload)


def test_good_payload_is_kept_verbatim():
    assert check_payload(b'{"a": 1}') == '{"a": 1}'


@given(ms=st.integers(0, 2**48), seq=st.integers(0, 2**63))
def test_stream_positions_round_trip_and_order(ms, seq):
    pos = stream_pos(f"{ms}-{seq}")
    assert stream_id(pos) == f"{ms}-{seq}"
    assert stream_pos(next_stream_id(pos)) == pos + 1
    assert stream_pos(f"{ms + 1}-0") > pos


@pytest.mark.parametrize("bad", ["", "abc", "1-x", "-1", "1--2"])
def test_malformed_stream_ids_are_refused(bad):
    with pytest.raises(ValueError):
        stream_pos(bad)


def test_clock_is_strictly_increasing_even_if_time_stands_still():
    now = [5_000_000]
    clock = Clock(now=lambda: now[0])
    a, b, c = clock.next(), clock.next(), clock.next()
    assert a < b < c
    now[0] = 0  # the wall clock went back
    assert clock.next() > c


@settings(max_examples=200)
@given(
    positions=st.lists(st.integers(1, 10_000), min_size=1, max_size=30, unique=True).map(sorted),
    last=st.integers(0, 10_001),
)
def test_run_after_gives_exactly_the_frames_after_a_position(positions, last):
    run = Run("c")
    for p in positions:
        run.add(p, f"<{p}>".encode())
    data, n = run.after(last)
    wanted = [p for p in positions if p > last]
    assert n == len(wanted)
    assert data == b"".join(f"<{p}>".encode() for p in wanted)


def test_group_runs_keeps_each_channels_order():
    runs = group_runs([("a", 1, b"1"), ("b", 2, b"2"), ("a", 3, b"3"), ("b", 4, b"4")])
    assert runs["a"].positions == [1, 3] and runs["b"].frames == [b"2", b"4"]


def test_ring_says_when_it_cannot_be_complete():
    ring = Ring(3)
    ring.add("c", 1, b"early")  # not open yet: not kept
    assert ring.since("c", 0, 10) == ([], False)
    ring.open("c", 5)
    for p in (6, 7, 8):
        ring.add("c", p, b"%d" % p)
    assert ring.since("c", 5, 8) == ([(6, b"6"), (7, b"7"), (8, b"8")], True)
    assert ring.since("c", 6, 7) == ([(7, b"7")], True)
    assert ring.since("c", 4, 8)[1] is False  # older than the opening
    ring.add("c", 9, b"9")  # 6 drops out
    assert ring.since("c", 5, 9)[1] is False
    assert ring.since("c", 6, 9) == ([(7, b"7"), (8, b"8"), (9, b"9")], True)
    ring.forget("c")
    assert "c" not in ring


def test_backoff_doubles_up_to_its_cap():
    gen = backoff_delays(0.05, 0.4)
    assert [next(gen) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]


# -- the stream: coalescing and dropping a slow consumer's queue ------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None: ...

    def on_lost(self, exc) -> None:
        self.lost.set()


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.setblocking(False)
    return a, b


class _Counting:
    """A socket that counts the system calls that write."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.sock, name)

    def send(self, data) -> int:
        self.calls += 1
        return self.sock.send(data)

    def sendmsg(self, buffers) -> int:
        self.calls += 1
        return self.sock.sendmsg(buffers)


def test_queued_chunks_leave_in_few_system_calls_and_in_order():
    async def main() -> None:
        a, b = _pair()
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        counting = _Counting(a)
        stream = SocketStream(loop, a, _Sink())
        stream.sock = counting  # type: ignore[assignment]
        chunks = [b"%06d" % i * 100 for i in range(300)]  # 600 bytes each: far more than the buffers hold
        for c in chunks:
            stream.write(c)
        assert stream.buffered > 0
        got = bytearray()
        want = sum(len(c) for c in chunks)
        while len(got) < want:
            got += await asyncio.wait_for(loop.sock_recv(b, 1 << 16), 5)
        assert bytes(got) == b"".join(chunks)
        assert stream.buffered == 0
        assert counting.calls < len(chunks) / 2, f"{counting.calls} system calls for {len(chunks)} chunks"
        stream.abort()
        b.close()

    asyncio.run(main())


def test_discard_keeps_only_a_half_written_chunk():
    async def main() -> None:
        a, b = _pair()
        stream = SocketStream(asyncio.get_running_loop(), a, _Sink())
        big = b"A" * 200_000  # more than the kernel takes at once: the rest is a half-written chunk
        stream.write(big)
        stream.write(b"B" * 1000)
        stream.write(b"C" * 1000)
        head = stream._out[0]
        assert stream._head_partial and big.endswith(head)
        dropped = stream.discard_queued()
        assert dropped == 2000
        assert list(stream._out) == [head] and stream.buffered == len(head)
        stream.abort()
        b.close()

    asyncio.run(main())


def test_discard_of_whole_chunks_drops_everything():
    async def main() -> None:
        a, b = _pair()
        stream = SocketStream(asyncio.get_running_loop(), a, _Sink())
        while not stream.buffered:  # fill the kernel so the next writes queue whole
            stream.write(b"x" * 4096)
        stream._out.clear()
        stream._out_size = 0
        stream._head_partial = False
        stream._out.extend([b"1" * 10, b"2" * 10])
        stream._out_size = 20
        assert stream.discard_queued() == 20 and stream.buffered == 0
        stream.abort()
        b.close()

    asyncio.run(main())
