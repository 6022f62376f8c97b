"""Hypothesis stateful test: the session registry against a plain model.

Operations: connect (allocate), handshake (establish), close (closing), lost
(closed + freed by the master), abort (freed at once: a worker died), push
(its error code), migrate (the migrating flag, then one owner switch that
counts), group, sweep (the live scan) and stale ids. A tiny table (4 slots)
forces slot reuse, which is where an fd-keyed registry goes wrong.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from reference_server.core.registry import SessionState, SessionTable, TableFull, table_size
from reference_server.errors import ErrorCode
from scenarios.harness.conformance import contract

CAPACITY = 4
EXPECTED_PUSH = {
    SessionState.CONNECTING: ErrorCode.NOT_ESTABLISHED,
    SessionState.ESTABLISHED: ErrorCode.OK,
    SessionState.CLOSING: ErrorCode.SESSION_CLOSED,
    SessionState.CLOSED: ErrorCode.SESSION_CLOSED,
}


class RegistryMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.table = SessionTable(bytearray(table_size(CAPACITY)), CAPACITY, create=True)
        self.model: dict[int, SessionState] = {}
        self.owner: dict[int, int] = {}
        self.moves: dict[int, int] = {}
        self.group: dict[int, int] = {}
        self.gone: set[int] = set()
        self.last_sid = 0
        self.clock = 1000.0

    @rule(target=sessions, worker=st.integers(0, 2), port=st.integers(1, 65535))
    def connect(self, worker: int, port: int) -> int:
        self.clock += 1
        try:
            sid = self.table.allocate(
                worker=worker, owner_pid=100 + worker, remote_addr="127.0.0.1", remote_port=port,
                local_port=9501, now=self.clock,
            )
        except TableFull:
            assert len(self.model) == CAPACITY
            return -1
        assert sid > self.last_sid, "ids grow strictly and are never reused"
        self.last_sid = sid
        self.model[sid] = SessionState.CONNECTING
        self.owner[sid] = 100 + worker
        info = self.table.get_client_info(sid)
        assert info is not None and info.worker == worker and info.remote_port == port
        return sid

    @rule(sid=sessions)
    def handshake(self, sid: int) -> None:
        if self.model.get(sid) is SessionState.CONNECTING:
            self.table.establish(sid, self.clock)
            self.model[sid] = SessionState.ESTABLISHED

    @rule(sid=sessions)
    def close(self, sid: int) -> None:
        if self.model.get(sid) in (SessionState.CONNECTING, SessionState.ESTABLISHED):
            self.table.set_closing(sid)
            self.model[sid] = SessionState.CLOSING

    @rule(sid=consumes(sessions))
    def lost(self, sid: int) -> None:
        if sid in self.model:
            self.table.set_closed(sid)
            assert self.table.push_error(sid)[0] is ErrorCode.SESSION_CLOSED
            assert self.table.free(sid)
            del self.model[sid]
            self.gone.add(sid)

    @rule(sid=consumes(sessions))
    def abort(self, sid: int) -> None:
        if sid in self.model:
            # The owning worker died: the master frees every session it owned.
            pid = self.owner[sid]
            freed = set(self.table.free_owned_by(pid))
            expected = {s for s in self.model if self.owner[s] == pid}
            assert freed == expected
            for other in expected:
                del self.model[other]
                self.gone.add(other)

    @rule(sid=sessions)
    def push(self, sid: int) -> None:
        code, _ = self.table.push_error(sid)
        if sid in self.model:
            assert code is EXPECTED_PUSH[self.model[sid]]
        else:
            assert code is ErrorCode.SESSION_NOT_EXIST

    @rule(uid=st.integers(1, 1 << 40), sid=sessions)
    def bind(self, uid: int, sid: int) -> None:
        if sid in self.model:
            self.table.set_uid(sid, uid)
            assert self.table.lookup(sid).uid == uid

    @rule(sid=sessions, worker=st.integers(0, 2))
    def migrate(self, sid: int, worker: int) -> None:
        if self.model.get(sid) is SessionState.ESTABLISHED:
            self.table.set_migrating(sid, True)
            assert self.table.lookup(sid).migrating
            assert self.table.get_client_info(sid).owner_pid == self.owner[sid], "the source owns it until the switch"
            self.table.set_owner(sid, worker, 100 + worker)  # clears MIGRATING in the same write
            self.owner[sid] = 100 + worker
            self.moves[sid] = self.moves.get(sid, 0) + 1
            info = self.table.get_client_info(sid)
            assert (info.worker, info.owner_pid, info.migrating) == (worker, 100 + worker, False)
            assert info.migrations == self.moves[sid]

    @rule(sid=sessions, group=st.integers(0, 1 << 40))
    def set_group(self, sid: int, group: int) -> None:
        if sid in self.model:
            self.table.set_group(sid, group)
            self.group[sid] = group

    @rule()
    def sweep(self) -> None:
        listed = list(self.table.sessions())
        seen = {info.session: info.state for info in listed}
        live = {s: st_ for s, st_ in self.model.items() if st_ in (SessionState.CONNECTING, SessionState.ESTABLISHED)}
        assert seen == live
        # In every state (just accepted, moved, bound), what /v1/sessions lists has the contract's
        # SessionRecord shape: e.g. os_fd is null, never -1, before a descriptor is recorded.
        for info in listed:
            record = info.as_dict()
            assert not contract().component_problems("SessionRecord", record), record

    @invariant()
    def stale_ids_never_resolve(self) -> None:
        for sid in self.gone:
            assert not self.table.exists(sid)
            assert self.table.get_client_info(sid) is None
            assert self.table.push_error(sid)[0] is ErrorCode.SESSION_NOT_EXIST

    @invariant()
    def exists_matches_model(self) -> None:
        for sid, state in self.model.items():
            assert self.table.exists(sid) == (state in (SessionState.CONNECTING, SessionState.ESTABLISHED))
            assert self.table.is_established(sid) == (state is SessionState.ESTABLISHED)
            info = self.table.lookup(sid)
            assert info.owner_pid == self.owner[sid]
            assert info.migrations == self.moves.get(sid, 0)
            assert info.group == self.group.get(sid, 0)


RegistryMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestRegistry = RegistryMachine.TestCase
