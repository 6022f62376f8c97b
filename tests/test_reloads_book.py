"""The reload books (core/reloads.py) against a model: one reload at a time, merges, generations."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reference_server.core.reloads import HISTORY, ReloadBook, ReloadScope, ReloadState


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = ReloadBook()
        self.started = 0  # reloads started (the model's ids are 1..started)
        self.running_kinds: set[str] | None = None
        self.requests = self.merged = self.completed = 0

    @rule(scope=st.sampled_from(list(ReloadScope)))
    def request(self, scope: ReloadScope) -> None:
        ticket = self.book.request(scope, "test")
        self.requests += 1
        if self.running_kinds is None:
            self.started += 1
            self.running_kinds = set(scope.kinds)
            assert not ticket.merged and ticket.widened == scope.kinds
        else:
            self.merged += 1
            assert ticket.merged and ticket.widened == frozenset(scope.kinds - self.running_kinds)
            self.running_kinds |= scope.kinds
        assert ticket.reload.id == self.started
        assert ticket.reload.generation == self.started + 1

    @precondition(lambda self: self.running_kinds is not None)
    @rule()
    def finish(self) -> None:
        done = self.book.finish()
        self.completed += 1
        assert done.id == self.started and done.state is ReloadState.DONE
        assert set(done.kinds) == self.running_kinds
        self.running_kinds = None

    @invariant()
    def agrees_with_the_model(self) -> None:
        book = self.book
        assert (book.current is None) == (self.running_kinds is None)
        counters = book.status()["counters"]
        assert counters == {"requested": self.requests, "merged": self.merged, "completed": self.completed, "forced_kills": 0}
        assert book.generation == self.started + 1
        assert len(book.history) == min(self.completed, HISTORY)
        if book.current is not None:
            assert book.current.merged == len(book.current.requests) - 1


TestBook = BookMachine.TestCase
TestBook.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def test_finish_without_a_running_reload_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no reload is running"):
        ReloadBook().finish()


def test_scope_parse_names_the_bad_value() -> None:
    assert ReloadScope.parse("task_workers") is ReloadScope.TASK_WORKERS
    with pytest.raises(ValueError, match="'workers'"):
        ReloadScope.parse("workers")


def test_retired_reports_are_kept_and_name_their_pids() -> None:
    book = ReloadBook()
    book.request(ReloadScope.ALL, "test")
    book.note_retired(11, {"name": "worker-0", "counters": {"pushes": 3}})
    book.note_retired(12, {"name": "worker-1", "counters": {"pushes": 4, "dead_session_pushes": 1}})
    book.note_forced_kill()
    done = book.finish()
    assert book.retired_totals() == {"pids": [11, 12]}
    assert done.forced_kills == 1 and [r["name"] for r in done.retired] == ["worker-0", "worker-1"]
    assert book.status()["counters"]["forced_kills"] == 1
