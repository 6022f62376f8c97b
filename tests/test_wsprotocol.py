"""The RFC 6455 cases of protocol_conformance: frames built as meant, outcomes judged as the RFC says."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from websockets.frames import Frame
from websockets.streams import StreamReader

from scenarios.harness.checkers.protocol import CaseResult, ProtocolHistory, check_protocol
from scenarios.harness.wsprotocol import (
    CLOSE,
    PONG,
    TEXT,
    Case,
    Expect,
    Observed,
    cases,
    close_payload,
    frame,
    judge,
    run_case,
)


def _parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536, 70_000])
def test_a_valid_frame_parses_back_to_its_payload(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    parsed = _parse(frame(TEXT, payload))
    assert parsed.data == payload and parsed.fin


def test_frames_carry_what_no_library_would_send() -> None:
    assert frame(TEXT, b"x", rsv=4)[0] == 0x80 | 0x40 | TEXT
    assert frame(TEXT, b"x", mask=False)[1] == 1  # no mask bit
    assert frame(TEXT, b"", length=1 << 63)[1] == 0x80 | 127 and frame(TEXT, b"", length=1 << 63)[2] == 0x80
    assert frame(TEXT, b"ab", fin=False)[0] == TEXT


def test_every_case_has_a_unique_id_and_a_known_group() -> None:
    all_cases = cases(1 << 20)
    assert len({c.id for c in all_cases}) == len(all_cases)
    assert {c.group for c in all_cases} == {"framing", "control", "fragmentation", "utf-8", "close", "limits"}


REPLY = Case("r", "framing", "a request", (), Expect.REPLY, pongs=(b"p",))
FAIL = Case("f", "framing", "bad", (), Expect.FAIL, codes=(1002,))
CLOSING = Case("c", "close", "close 3000", (), Expect.CLOSE, codes=(1000, 3000))


def _reply(ok: bool = True) -> tuple[int, bytes]:
    return TEXT, json.dumps({"re": 1, "ok": ok, "data": "x"}).encode()


def _close(code: int) -> tuple[int, bytes]:
    return CLOSE, struct.pack("!H", code)


@pytest.mark.parametrize(
    ("case", "seen", "problem", "non_strict"),
    [
        (REPLY, Observed(frames=[(PONG, b"p"), _reply()]), None, False),
        (REPLY, Observed(frames=[_reply()]), "pongs", False),
        (REPLY, Observed(frames=[(PONG, b"p")]), "0 replies", False),
        (REPLY, Observed(frames=[(PONG, b"p"), _reply(), _close(1002)], tcp_closed=True), "closed", False),
        (FAIL, Observed(frames=[_close(1002)], tcp_closed=True), None, False),
        (FAIL, Observed(tcp_closed=True), None, True),
        (FAIL, Observed(frames=[_close(1000)], tcp_closed=True), "close code 1000", False),
        (FAIL, Observed(frames=[_close(1002)]), "did not end", False),
        (FAIL, Observed(), "still open", False),
        (FAIL, Observed(frames=[_reply()]), "answered", False),
        (CLOSING, Observed(frames=[_close(3000)], tcp_closed=True), None, False),
        (CLOSING, Observed(frames=[_close(1000)], tcp_closed=True), None, False),
        (CLOSING, Observed(frames=[_close(1002)], tcp_closed=True), "close code 1002", False),
        (CLOSING, Observed(tcp_closed=True), "no close frame", False),
        (CLOSING, Observed(frames=[_close(1000)]), "did not end", False),
        (REPLY, Observed(handshake="HTTP/1.1 400 Bad"), "no handshake", False),
    ],
)
def test_judge(case: Case, seen: Observed, problem: str | None, non_strict: bool) -> None:
    got, loose = judge(case, seen)
    assert (got is None) == (problem is None), got
    if problem is not None:
        assert problem in got
    assert loose is non_strict


def test_a_close_frame_without_a_code_reads_as_1005() -> None:
    assert Observed(frames=[(CLOSE, b"")]).close_code == 1005
    assert close_payload(1000, b"ok") == b"\x03\xe8ok"


def test_check_protocol_names_each_failed_case_in_its_group() -> None:
    results = [CaseResult("1.1", "framing", "ok", None), CaseResult("1.5", "framing", "unmasked", "answered"),
               *(CaseResult(f"{g}.1", g, "ok", None) for g in ("control", "fragmentation", "utf-8", "close", "limits"))]
    h = ProtocolHistory(results=results, processes_before=[("m", 1)], processes_after=[("m", 1)])
    failed = {c.name: c.observed for c in check_protocol(h) if not c.passed}
    assert list(failed) == ["framing: lengths, masking, reserved bits and opcodes as RFC 6455 5.2 says"]
    assert failed["framing: lengths, masking, reserved bits and opcodes as RFC 6455 5.2 says"] == {"1.5 unmasked": "answered"}
    h.results = [r for r in results if r.group != "limits"]
    assert "limits: a message over the target's limit failed with 1009" in [c.name for c in check_protocol(h) if not c.passed]


def test_a_connection_that_ends_before_the_handshake_answer_is_a_failed_case_not_an_error() -> None:
    """Workerman: one frame kills a worker, and the next case's connection can reach it as it dies."""

    async def play() -> Observed:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await run_case("127.0.0.1", port, cases(1 << 20)[0])

    seen = asyncio.run(play())
    assert seen.handshake == "the connection ended before the handshake was answered (0 bytes read)"
    problem, _ = judge(cases(1 << 20)[0], seen)
    assert problem is not None and problem.startswith("no handshake")
