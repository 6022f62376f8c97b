"""Unit tests of what makes a session movable: the frame splitter, the detachable stream,
descriptors on peer links, and a session detached in one place and restored in another.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from reference_server.core.wsframes import MAX_HEAD, FrameSplitter, Mode, frame_length
from reference_server.ipc import links as ipc
from reference_server.session.session import Session, SessionPhase
from reference_server.session.stream import SocketStream

# -- FrameSplitter (pure) ---------------------------------------------------------------------

frames_st = st.lists(
    st.tuples(
        st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.PING]),
        st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]),
    ),
    min_size=1,
    max_size=6,
)


def client_frame(opcode: Opcode, size: int) -> bytes:
    if opcode is Opcode.PING:
        size = min(size, 125)
    return Frame(opcode, os.urandom(size) if size < 1000 else b"p" * size).serialize(mask=True, extensions=[])


@settings(max_examples=150, deadline=None)
@given(frames=frames_st, cuts=st.lists(st.integers(0, 300_000), max_size=12))
def test_splitter_hands_over_only_whole_frames_whatever_the_chunking(frames, cuts):
    wire_frames = [client_frame(op, size) for op, size in frames]
    wire = b"".join(wire_frames)
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    boundaries = {0}
    pos = 0
    for f in wire_frames:
        pos += len(f)
        boundaries.add(pos)
    splitter = FrameSplitter(max_frame=1 << 20, mode=Mode.FRAMES)
    given_out = 0
    for a, b in itertools.pairwise(bounds):
        out = splitter.feed(wire[a:b])
        assert wire[given_out : given_out + len(out)] == out
        given_out += len(out)
        assert given_out in boundaries, "the parser only ever gets whole frames"
        assert splitter.pending == wire[given_out:b], "pending is exactly what the parser has not seen"
    assert given_out == len(wire)
    assert splitter.pending == b""


def test_splitter_keeps_frames_sent_right_behind_the_request_head():
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    frame = client_frame(Opcode.TEXT, 10)
    s = FrameSplitter(max_frame=1000)
    assert s.feed(head[:10]) == b""
    assert s.feed(head[10:] + frame[:3]) == head
    assert s.pending == frame[:3]
    s.handshake_done()
    assert s.feed(frame[3:]) == frame


def test_splitter_passes_an_oversized_frame_on_at_once():
    s = FrameSplitter(max_frame=1000, mode=Mode.FRAMES)
    frame = client_frame(Opcode.BINARY, 5000)
    assert s.feed(frame[:20]) == frame[:20], "the parser must see the header to refuse it (1009)"


def test_splitter_passes_an_endless_request_head_on():
    s = FrameSplitter(max_frame=1000)
    junk = b"GET /" + b"a" * (MAX_HEAD + 10)
    assert s.feed(junk) == junk


def test_frame_length_reads_every_header_form():
    for size in (0, 125, 126, 65535, 65536):
        f = client_frame(Opcode.BINARY, size)
        header, length = frame_length(f)
        assert length == size and header + length == len(f)
        assert frame_length(f[: header - 1]) is None


# -- SocketStream ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: list[Exception | None] = []

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_eof(self) -> None:
        self.eof = True

    def on_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def test_detached_stream_keeps_unsent_bytes_and_sends_no_fin():
    async def main():
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        peer.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        rec = Recorder()
        stream = SocketStream(loop, ours, rec)
        stream.start()
        payload = b"x" * 2_000_000
        stream.write(payload)
        assert stream.buffered > 0, "the kernel cannot take 2 MB at once"
        other_copy = os.dup(ours.fileno())  # what the target would hold
        sock, unsent = stream.detach()
        sock.close()  # the source drops its copy: must not end the connection
        received = bytearray()
        while True:
            try:
                chunk = peer.recv(1 << 20)
            except BlockingIOError:
                break
            assert chunk, "the peer saw EOF: the source ended the connection"
            received += chunk
        assert bytes(received) + b"".join(unsent) == payload, "sent + carried over == everything"
        await asyncio.sleep(0)
        assert rec.lost == [], "a detached stream reports no loss"
        os.close(other_copy)
        peer.close()

    asyncio.run(main())


# -- descriptors on peer links ---------------------------------------------------------------------


def test_peer_link_carries_descriptors_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        token = os.urandom(4).hex()
        got: list[tuple] = []
        done = asyncio.Event()

        def handler(message, fds):
            got.append((message, fds))
            if message == ("end",):
                done.set()

        inbox = ipc.Inbox(token, loop, handler, lambda event, exc: got.append((event, exc)))
        links = ipc.PeerLinks(token, loop)
        a, b = socket.socketpair()
        try:
            for i in range(50):
                assert links.send(os.getpid(), ("n", i))
            assert links.send(os.getpid(), ("adopt", "x" * 300_000), fds=[a.fileno()])
            for i in range(50, 100):
                links.send(os.getpid(), ("n", i))
            links.send(os.getpid(), ("end",))
            await asyncio.wait_for(done.wait(), 10)
            kinds = [m[0] for m, _ in got]
            assert kinds == ["n"] * 50 + ["adopt"] + ["n"] * 50 + ["end"], kinds[:5]
            (fd,) = got[50][1]
            assert all(not fds for i, (_, fds) in enumerate(got) if i != 50)
            assert not os.get_inheritable(fd)
            os.write(fd, b"through the passed fd")
            assert b.recv(100) == b"through the passed fd"
            os.close(fd)
        finally:
            links.close()
            inbox.close()
            a.close()
            b.close()

    asyncio.run(main())


# -- a session detached mid-frame and restored elsewhere -----------------------------------------------


class Host:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.opened = 0
        self.lost = 0

    def session_opened(self, session, request) -> None:
        self.opened += 1

    def session_message(self, session, data) -> None:
        self.messages.append(data)

    def session_closing(self, session) -> None:
        pass

    def session_lost(self, session) -> None:
        self.lost += 1

    def session_activity(self, session, now) -> None:
        pass


def test_session_moves_mid_frame_and_mid_message():
    async def main():
        loop = asyncio.get_running_loop()
        server_sock, client_sock = socket.socketpair()
        for s in (server_sock, client_sock):
            s.setblocking(False)
        source_host, target_host = Host(), Host()
        sess = Session(1, source_host, max_message_size=1 << 20, close_timeout=2, handshake_timeout=5)
        sess.attach(loop, server_sock)
        client = ClientProtocol(parse_uri("ws://test/"))
        client.send_request(client.connect())

        async def pump_client() -> None:
            for chunk in client.data_to_send():
                await loop.sock_sendall(client_sock, chunk)

        async def read_client() -> None:
            data = await asyncio.wait_for(loop.sock_recv(client_sock, 65536), 5)
            client.receive_data(data)

        await pump_client()
        while client.state is State.CONNECTING:
            await read_client()
        assert source_host.opened == 1 and sess.phase is SessionPhase.OPEN and sess.established
        client.events_received()  # the 101 response

        first = Frame(Opcode.TEXT, b"hello ", fin=False).serialize(mask=True, extensions=[])
        second = Frame(Opcode.CONT, b"world", fin=True).serialize(mask=True, extensions=[])
        await loop.sock_sendall(client_sock, first + second[:4])
        for _ in range(100):
            if len(sess.splitter) == 4:
                break
            await asyncio.sleep(0.001)  # the source's reader runs on this same loop
        assert len(sess.splitter) == 4 and sess.movable

        sock, snap = sess.detach()
        assert sess.phase is SessionPhase.DETACHED and sess.detached and not sess.closing
        assert snap.rx_pending == second[:4] and snap.fragments == [b"hello "] and snap.current_size == 6
        target = Session.restore(snap, target_host, loop, sock, max_message_size=1 << 20, close_timeout=2, handshake_timeout=5)
        target.resume()
        assert target.phase is SessionPhase.OPEN and target.is_open
        await loop.sock_sendall(client_sock, second[4:])
        for _ in range(200):
            if target_host.messages:
                break
            await asyncio.sleep(0.001)
        assert target_host.messages == ["hello world"]
        assert source_host.messages == []
        assert target.send("reply")
        await read_client()
        (event,) = client.events_received()
        assert event.data == b"reply"
        target.close(1000, "bye")
        assert target.phase is SessionPhase.CLOSING and target.closing and not target.lost
        client_sock.close()
        for _ in range(200):
            if target.lost:
                break
            await asyncio.sleep(0.001)
        assert target.phase is SessionPhase.LOST and target.closing and target_host.lost == 1

    asyncio.run(main())
