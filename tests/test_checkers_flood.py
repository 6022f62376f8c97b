"""The fd_exhaustion checks on synthetic histories, and the reference's descriptor bounds."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from reference_server.core.limits import FD_RESERVE_MIN, descriptor_capacity, room_again
from reference_server.ipc import links, messages
from scenarios.harness.checkers.faults import Bystander
from scenarios.harness.checkers.flood import FloodHistory, check_flood
from scenarios.harness.spec import Leftovers


def _good(**changes) -> FloodHistory:
    h = FloodHistory(
        open_files=256,
        bare={"attempted": 1024, "connected": 1024, "refused": 0, "timed_out": 0, "errors": {}},
        half_open={"attempted": 100, "connected": 100, "refused": 0, "timed_out": 0, "errors": {}},
        held_during={"shed": 700, "held": 424},
        newcomer="refused",
        admin=[("/ready", 200, 0.01), ("/v1/stats", 200, 0.05)],
        bystanders=[Bystander(1, 0, ticks=50, max_gap_s=0.1, echoes=20)],
        recovery_wanted=6,
        recovery_served=6,
        processes_before=[("master", 1), ("worker-0", 2)],
        processes_after=[("master", 1), ("worker-0", 2)],
        log_lines=400,
        leftovers=Leftovers(baseline_fds={"master": 9}, fds={"master": 9}),
    )
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def _failed(h: FloodHistory) -> list[str]:
    return [c.name for c in check_flood(h) if not c.passed]


def test_a_clean_run_passes() -> None:
    assert _failed(_good()) == []
    assert _failed(_good(newcomer="served")) == []


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"bare": {"attempted": 100}}, "the flood passed the target's open-file limit"),
        ({"open_files": 0}, "the flood passed the target's open-file limit"),
        ({"processes_after": [("master", 1), ("worker-0", 3)]}, "no process exits"),
        ({"bystanders": [Bystander(1, 0, ticks=50, max_gap_s=2.4)]},
         "established sessions see no gap over 2 s and every echo answered"),
        ({"bystanders": [Bystander(1, 0, ticks=50, max_gap_s=0.1, echo_failures=["closed"])]},
         "established sessions see no gap over 2 s and every echo answered"),
        ({"admin": [("/ready", 0, 10.0)]}, "the admin API answers during the flood"),
        ({"admin": [("/v1/stats", 200, 6.0)]}, "the admin API answers during the flood"),
        ({"admin": []}, "the admin API answers during the flood"),
        ({"newcomer": "hung"}, "a client that connects during the flood is served or refused within 5 s, not left hanging"),
        ({"newcomer": ""}, "a client that connects during the flood is served or refused within 5 s, not left hanging"),
        ({"recovery_served": 5}, "once the flood is gone, new connections are served"),
        ({"recovery_wanted": 0, "recovery_served": 0}, "once the flood is gone, new connections are served"),
        ({"log_lines": 100_000}, "the log stays bounded (a few lines per connection, no storm)"),
    ],
)
def test_each_check_can_fail(changes: dict, check: str) -> None:
    assert _failed(_good(**changes)) == [check]


def test_descriptor_capacity_keeps_a_reserve() -> None:
    assert descriptor_capacity(256, 20) == 256 - 20 - FD_RESERVE_MIN
    assert descriptor_capacity(65536, 20) == 65536 - 20 - 65536 // 16
    assert descriptor_capacity(40, 30) == 1  # never below one
    assert room_again(100) == 90 and room_again(1) == 0


def test_a_message_whose_descriptor_did_not_arrive_is_told_apart() -> None:
    """At the open-file limit the kernel drops a passed descriptor (MSG_CTRUNC): the message still
    comes, as FdsTruncated, so that a worker refuses that connection and stays up."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no descriptor to spare, then receive one
        code = 1
        try:
            a.close()
            os.close(w)
            os.read(r, 1)
            lowest_free = os.dup(0)  # a new descriptor takes the lowest free number: below the limit, none is free
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            try:
                links.ctl_recv(b)
            except links.FdsTruncated as exc:
                code = 0 if exc.message == messages.Accept(7, 80, 0, None) else 2
        finally:
            os._exit(code)
    try:
        b.close()
        os.close(r)
        socket.send_fds(a, [links.ctl_encode(messages.Accept(7, 80, 0, None))], [w])
        os.write(w, b"x")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        a.close()
        os.close(w)
