"""Unit tests of the pure core: framing, rate limiting, metrics, config, process table."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_server.config import Config
from reference_server.core.framing import Decoder, FrameTooLarge, encode
from reference_server.core.limits import INT64_MAX, close_problem, int64_problem
from reference_server.core.metrics import render_prometheus
from reference_server.core.proctable import ProcKind, ProcState, ProcTable, proctable_size
from reference_server.core.ratelimit import OncePerKey, Summariser
from reference_server.core.registry import SessionTable, TableFull, table_size
from reference_server.errors import ConfigError

messages = st.lists(
    st.tuples(st.sampled_from(["push", "close", "task"]), st.integers(), st.binary(max_size=300)), max_size=20
)


@given(messages, st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_frames_survive_any_split(batch, cuts):
    stream = b"".join(encode(m) for m in batch)
    decoder, out, pos = Decoder(), [], 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        out += decoder.feed(stream[pos : pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    out += decoder.feed(stream[pos:])
    assert out == batch and decoder.pending == 0


def test_oversized_frame_is_refused():
    with pytest.raises(FrameTooLarge):
        Decoder().feed(b"\xff\xff\xff\xff")


def test_once_per_key_is_bounded():
    once = OncePerKey(capacity=2)
    assert once.first(1) and not once.first(1)
    assert once.first(2) and once.first(3)  # evicts 1
    assert once.first(1)


def test_summariser_releases_once_per_interval():
    s = Summariser(interval=10)
    assert s.due(0) == []
    for sid in (1, 1, 2):
        s.suppressed("push.dead_session", sid)
    assert s.due(5) == []
    assert s.due(10) == [("push.dead_session", 3, 2)]
    assert s.due(30) == []


def test_prometheus_text_has_standard_counters():
    text = render_prometheus({"pushes": 3}, {"sessions_open": 2}, {"worker_sessions": [({"worker": "0"}, 2)]})
    assert "refsrv_pushes_total 3" in text
    assert "refsrv_dead_session_pushes_total 0" in text
    assert 'refsrv_worker_sessions{worker="0"} 2' in text
    assert "# TYPE refsrv_pushes_total counter" in text


@pytest.mark.parametrize(
    "change, names",
    [
        ({"port": 70000}, "--port"),
        ({"workers": 0}, "--workers"),
        ({"host": "not-an-ip"}, "--host"),
        ({"admin_port": 9000}, "--admin-token"),
        ({"redis_url": "http://x"}, "--redis-url"),
        ({"log_level": "loud"}, "--log-level"),
        ({"heartbeat_idle_ms": -1}, "--heartbeat-idle-ms"),
    ],
)
def test_bad_config_names_the_option(change, names):
    with pytest.raises(ConfigError, match=names):
        Config(**change).validate()


def test_session_table_refuses_when_full_and_reuses_slots():
    table = SessionTable(bytearray(table_size(2)), 2, create=True)
    kw = dict(worker=0, owner_pid=1, remote_addr="::1", remote_port=1, local_port=2, now=0.0)
    a, b = table.allocate(**kw), table.allocate(**kw)
    with pytest.raises(TableFull):
        table.allocate(**kw)
    assert table.get_client_info(a).remote_addr == "::1"
    table.free(a)
    c = table.allocate(**kw)
    assert table.slot_of(c) == table.slot_of(a) and c != a
    assert table.lookup(a) is None and table.exists(b)


def test_a_value_that_does_not_fit_leaves_the_record_unmarked():
    """A uid past int64 raised after the record was marked mid-write: every read then waited 0.5 s."""
    buf = bytearray(table_size(2))
    table = SessionTable(buf, 2, create=True)
    sid = table.allocate(worker=0, owner_pid=os.getpid(), remote_addr="::1", remote_port=1, local_port=2, now=0.0)
    table.set_uid(sid, 7)
    off = table._offset(table.slot_of(sid))
    seq_before = struct.unpack_from("<I", buf, off)[0]
    with pytest.raises(struct.error):
        table.set_uid(sid, 2**63)
    assert struct.unpack_from("<I", buf, off)[0] == seq_before and seq_before % 2 == 0
    assert table.get_client_info(sid).uid == 7
    table.set_uid(sid, INT64_MAX)
    assert table.get_client_info(sid).uid == INT64_MAX


@pytest.mark.parametrize(
    ("code", "reason", "problem"),
    [
        (1000, "", None),
        (4999, "x" * 123, None),
        (4000, "é" * 61, None),  # 122 bytes
        (4000, "é" * 62, "124 bytes"),
        (4000, "\ud800", "lone surrogate"),
        (4000, 5, "must be a string"),
        (1001, "", "not 1000 or 3000..4999"),
        (5000, "", "not 1000 or 3000..4999"),
        (True, "", "not an integer"),
        (2**70, "", "not 1000"),
    ],
)
def test_close_problem(code, reason, problem):
    got = close_problem(code, reason)
    assert got is None if problem is None else problem in got


def test_the_server_may_close_with_its_own_codes_but_never_reserved_ones():
    assert close_problem(1001, "port removed", client=False) is None
    assert close_problem(1011, "", client=False) is None
    assert "1001 is not 1000" in close_problem(1001, "")
    for reserved in (1004, 1005, 1006, 1015, 999, 5000):
        assert "may not be sent" in close_problem(reserved, "", client=False), reserved


def test_int64_problem():
    assert int64_problem("uid", 0) is None and int64_problem("uid", INT64_MAX) is None
    assert "0..9223372036854775807" in int64_problem("uid", INT64_MAX + 1)
    assert "0.." in int64_problem("group", -1)
    assert "integer" in int64_problem("uid", 1.5) and "integer" in int64_problem("uid", True)


def test_proctable_round_trip():
    procs = ProcTable(bytearray(proctable_size()))
    procs.put(kind=ProcKind.WORKER, index=1, pid=42, generation=1, started=1.0, name="worker-1")
    procs.set_state(42, ProcState.READY)
    (entry,) = procs.find(ProcKind.WORKER, 1)
    assert (entry.pid, entry.state, entry.name) == (42, ProcState.READY, "worker-1")
    procs.remove(42)
    assert procs.by_pid(42) is None
