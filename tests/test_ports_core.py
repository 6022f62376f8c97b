"""The pure rules of dynamic ports (reference_server/core/ports.py)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_server.core.ports import (
    ListenSpec,
    OnRemove,
    PortBook,
    PortError,
    PortsFileError,
    RefusalReason,
    bind_error,
    parse_ports_file,
    parse_spec,
    plan_ports,
)
from reference_server.errors import ErrorCode

HANDLERS = ("default", "echo")


def spec(raw: dict) -> ListenSpec:
    return parse_spec(raw, default_host="127.0.0.1", handlers=HANDLERS)


def test_a_minimal_request_takes_the_defaults() -> None:
    s = spec({"port": 9001})
    assert s == ListenSpec(9001, "127.0.0.1", False, OnRemove.KEEP, 0, "default", 0)
    assert spec({"port": 9001, "host": "localhost"}).host == "127.0.0.1"
    assert spec({"port": 9001, "host": "::1"}).host == "::1"


@pytest.mark.parametrize(
    ("raw", "code", "named"),
    [
        ({"port": 70000}, ErrorCode.BAD_REQUEST, "70000"),
        ({"port": -1}, ErrorCode.BAD_REQUEST, "-1"),
        ({"port": "80"}, ErrorCode.BAD_REQUEST, "'80'"),
        ({"port": True}, ErrorCode.BAD_REQUEST, "True"),
        ({}, ErrorCode.BAD_REQUEST, "None"),
        ({"port": 9001, "host": "example.com"}, ErrorCode.BAD_ADDRESS, "example.com"),
        ({"port": 9001, "host": "999.1.1.1"}, ErrorCode.BAD_ADDRESS, "999.1.1.1"),
        ({"port": 9001, "host": 5}, ErrorCode.BAD_ADDRESS, "9001"),
        ({"port": 9001, "reuse_port": "yes"}, ErrorCode.BAD_REQUEST, "reuse_port"),
        ({"port": 9001, "on_remove": "drop"}, ErrorCode.BAD_REQUEST, "'drop'"),
        ({"port": 9001, "max_connections": -2}, ErrorCode.BAD_REQUEST, "max_connections"),
        ({"port": 9001, "handler": "nope"}, ErrorCode.HANDLER_UNKNOWN, "'nope'"),
        ({"port": 9001, "backlog": 10**6}, ErrorCode.BAD_REQUEST, "backlog"),
        ({"port": 9001, "colour": "blue"}, ErrorCode.BAD_REQUEST, "'colour'"),
    ],
)
def test_bad_requests_name_the_field_and_the_port(raw: dict, code: ErrorCode, named: str) -> None:
    with pytest.raises(PortError) as info:
        spec(raw)
    assert info.value.code is code
    assert named in info.value.message


def test_a_non_object_request_is_a_bad_request() -> None:
    with pytest.raises(PortError) as info:
        parse_spec([9001], default_host="127.0.0.1", handlers=HANDLERS)
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("number", "code", "name"),
    [
        (errno.EADDRINUSE, ErrorCode.PORT_IN_USE, "EADDRINUSE"),
        (errno.EACCES, ErrorCode.PORT_PRIVILEGED, "EACCES"),
        (errno.EADDRNOTAVAIL, ErrorCode.BAD_ADDRESS, "EADDRNOTAVAIL"),
        (errno.EMFILE, ErrorCode.LISTEN_FAILED, "EMFILE"),
    ],
)
def test_bind_errors_are_named(number: int, code: ErrorCode, name: str) -> None:
    err = bind_error(OSError(number, "x"), "127.0.0.1", 9001)
    assert err.code is code and name in err.message and "127.0.0.1:9001" in err.message and err.port == 9001


def test_the_book_counts_per_listener_and_enforces_the_limit() -> None:
    book = PortBook()
    book.add(spec({"port": 9001, "max_connections": 2}), "api", 0.0)
    assert book.admit(9001) is None
    book.opened(1, 9001)
    book.opened(2, 9001)
    assert book.admit(9001) is RefusalReason.LIMIT
    book.refused(9001, RefusalReason.LIMIT)
    assert book.closed(1) == 9001
    assert book.admit(9001) is None
    with pytest.raises(PortError) as info:
        book.add(spec({"port": 9001}), "api", 0.0)
    assert info.value.code is ErrorCode.ALREADY_LISTENING
    old = book.remove(9001, 1.0)
    assert book.sessions_of(old) == [2] and old.live == 1
    # The same number again is a new listener: the kept session is not its own.
    new = book.add(spec({"port": 9001, "max_connections": 1}), "api", 2.0)
    assert book.admit(9001) is None and book.sessions_of(new) == []
    snap = book.snapshot()
    assert snap["listeners"][0]["connections"] == 0 and snap["kept_sessions"] == 1
    assert snap["removed"][0]["refused_by_reason"] == {"limit": 1}
    with pytest.raises(PortError) as info:
        book.remove(9002, 3.0)
    assert info.value.code is ErrorCode.NOT_LISTENING
    with pytest.raises(PortError) as info:
        book.remove("9001", 3.0)
    assert info.value.code is ErrorCode.BAD_REQUEST and "'9001'" in info.value.message


def test_ports_file_reports_every_rejected_entry() -> None:
    text = """
[[listen]]
port = 9001
[[listen]]
port = 0
[[listen]]
port = 9002
handler = "missing"
[[listen]]
port = 9001
[stray]
x = 1
"""
    parsed = parse_ports_file(text, default_host="127.0.0.1", handlers=HANDLERS)
    assert [s.port for s in parsed.specs] == [9001]
    codes = {r.entry: r.code for r in parsed.rejected}
    assert codes == {None: ErrorCode.BAD_REQUEST, 1: ErrorCode.BAD_REQUEST, 2: ErrorCode.HANDLER_UNKNOWN,
                     3: ErrorCode.BAD_REQUEST}
    with pytest.raises(PortsFileError):
        parse_ports_file("[[listen]\nport=", default_host="127.0.0.1", handlers=HANDLERS)
    with pytest.raises(PortsFileError):
        parse_ports_file("listen = 5", default_host="127.0.0.1", handlers=HANDLERS)


specs = st.builds(
    lambda port, reuse, policy, limit, handler: ListenSpec(port, "127.0.0.1", reuse, policy, limit, handler),
    st.integers(9000, 9012),
    st.booleans(),
    st.sampled_from(list(OnRemove)),
    st.integers(0, 3),
    st.sampled_from(HANDLERS),
)


@settings(max_examples=300, deadline=None)
@given(
    current=st.lists(st.tuples(specs, st.sampled_from(["config", "api", "file"])), max_size=8),
    desired=st.lists(specs, max_size=8),
)
def test_applying_a_plan_makes_the_file_ports_match_the_file(current, desired) -> None:
    """Model: after the plan, file ports == wanted ports not held by others; others untouched."""
    book = PortBook()
    for s, source in current:
        if s.port not in book.listeners:
            book.add(s, source, 0.0)
    others = {p: (lst.spec, lst.source) for p, lst in book.listeners.items() if lst.source != "file"}
    unique = list({s.port: s for s in reversed(desired)}.values())  # a file lists each port once
    plan = plan_ports(unique, book.listeners)
    for port in plan.remove:
        book.remove(port, 1.0)
    for s in plan.rebind:
        book.remove(s.port, 1.0)
        book.add(s, "file", 1.0)
    for s in plan.update:
        assert not book.listeners[s.port].spec.needs_rebind(s)
        book.update(s)
    for s in plan.add:
        book.add(s, "file", 1.0)
    expected_file = {s.port: s for s in unique if s.port not in others}
    assert book.owned_by_file() == expected_file
    assert {p: (lst.spec, lst.source) for p, lst in book.listeners.items() if lst.source != "file"} == others
    assert sorted(r.port for r in plan.rejected) == sorted(s.port for s in unique if s.port in others)
    assert all(r.code is ErrorCode.ALREADY_LISTENING for r in plan.rejected)
