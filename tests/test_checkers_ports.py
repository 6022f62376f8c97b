"""The dynamic-port checkers (scenarios/harness/checkers/ports.py) on synthetic histories.

A history of a correct server passes every check; each bug a port scenario is about (an
attempt accepted on a removed port or refused on a listed one, a hang, a port that stays
bound after unlisten, SO_REUSEPORT not as asked, a resident closed under ``keep``, a wrong
error code, a port limit that hangs instead of answering 503, a ports-file entry rejected
with the wrong code, a scenario where nothing happened) fails the check that names it.
"""

from __future__ import annotations

import dataclasses

import pytest

from scenarios.harness.checkers import ports as pc
from scenarios.harness.evidence import Check
from scenarios.harness.spec import Leftovers


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]


# -- the model ------------------------------------------------------------------------------------

P = 21000


def _model(grace_ms: float = 0.0) -> pc.PortHistory:
    """Port P listened during [1.0, 1.1] and unlistened during [5.0, 5.1]."""
    m = pc.PortHistory(grace_ms)
    m.record(pc.Change(P, True, 1.0, 1.1, "admin"))
    m.record(pc.Change(P, False, 5.0, 5.1, "app"))
    return m


def test_model_state_before_during_and_after_changes() -> None:
    m = _model()
    assert m.state(P, 0.1, 0.5) is False  # never listed yet
    assert m.state(P, 1.05, 1.2) is None  # overlaps the listen's window
    assert m.state(P, 2.0, 3.0) is True
    assert m.state(P, 4.9, 5.05) is None
    assert m.state(P, 6.0, 6.5) is False
    assert m.state(P + 1, 2.0, 3.0) is False  # a port never listed


def test_model_grace_widens_the_window_after_the_answer() -> None:
    assert _model(0).state(P, 1.2, 1.3) is True
    assert _model(500).state(P, 1.2, 1.3) is None  # within 500 ms of the answer


def test_model_a_failed_change_is_a_window_of_doubt_but_changes_nothing() -> None:
    m = _model()
    m.record(pc.Change(P, False, 3.0, 3.1, "admin", ok=False, error={"code": 3005}))
    assert m.state(P, 3.05, 3.2) is None
    assert m.state(P, 4.0, 4.5) is True  # still listed


def test_model_violations_count_decided_and_doubtful() -> None:
    m = _model()
    attempts = [
        pc.Attempt(P, 2.0, 2.1, pc.Outcome.OK),
        pc.Attempt(P, 6.0, 6.1, pc.Outcome.REFUSED),
        pc.Attempt(P, 1.05, 1.2, pc.Outcome.REFUSED),  # in grace: either way
        pc.Attempt(P, 6.2, 6.3, pc.Outcome.OK),  # accepted on a removed port
        pc.Attempt(P, 2.5, 2.6, pc.Outcome.HANG),  # not ok on a listed port
    ]
    bad, decided, doubtful = m.violations(attempts)
    assert (decided, doubtful) == (4, 1)
    assert [(a.start, a.outcome) for a in bad] == [(6.2, pc.Outcome.OK), (2.5, pc.Outcome.HANG)]


def test_model_mismatch_names_missing_unexpected_and_settings() -> None:
    model = {P: {"reuse_port": True, "on_remove": "keep"}, P + 1: {"reuse_port": False, "on_remove": "close"}}
    reported = {
        9000: {"reuse_port": False, "on_remove": "keep"},  # the main port: fixed, ignored
        P: {"reuse_port": False, "on_remove": "keep"},
        P + 2: {"reuse_port": False, "on_remove": "keep"},
    }
    diff = pc.model_mismatch(model, reported, {9000})
    assert diff == {"missing": [P + 1], "unexpected": [P + 2], "settings": [{"port": P, "reuse_port": [True, False]}]}
    assert pc.model_mismatch(model, {**model, 9000: {}}, {9000}) == {}


# -- port_churn -----------------------------------------------------------------------------------

CHANGES = "every listen and unlisten of the churn succeeded"
MODEL = "a connection attempt succeeds exactly when its port is listed (refused when it is not)"
HANGS = "no connection attempt hangs"
FREE = "after unlisten, a fresh process can bind the port at once"
REUSE = "SO_REUSEPORT is as asked: a second SO_REUSEPORT socket can bind only a reuse_port listener's port"
RESIDENTS = "sessions of a removed port follow its policy (keep: served on; close: closed with 1001)"
REPORTED = "the listeners the target reports match the harness's model after every change"
RELOAD_SAME = "ports listed before the reload are listed after it, with the same settings"
RELOAD_CLOSED = "the reload closed no session"
NO_SESSIONS = "no sessions left after every client is gone"
NO_FDS = "every process is back to its fd count (no fd leak)"


def _churn(**change) -> pc.ChurnHistory:
    h = pc.ChurnHistory(
        model=_model(),
        attempts=[pc.Attempt(P, 2.0, 2.1, pc.Outcome.OK), pc.Attempt(P, 6.0, 6.1, pc.Outcome.REFUSED)],
        bind_after_unlisten=[{"port": P, "probe": None}],
        reuse_probes=[{"port": P, "reuse_port": True, "probe": None, "ok": True}],
        residents=[{"port": P, "policy": "keep", "ok": True}],
        reload={"same": True, "listeners": 3, "residents_closed": []},
        leftovers=Leftovers([], {"worker-0": 10}, {"worker-0": 10}),
    )
    return dataclasses.replace(h, **change)


def test_churn_a_correct_history_passes() -> None:
    checks = pc.check_churn(_churn(), attempt_bound_s=2.0)
    assert failed(checks) == []
    assert {CHANGES, MODEL, HANGS, FREE, REUSE, RESIDENTS, REPORTED, RELOAD_SAME, RELOAD_CLOSED, NO_SESSIONS, NO_FDS} == {
        c.name for c in checks}


def test_churn_without_reload_has_no_reload_checks() -> None:
    names = {c.name for c in pc.check_churn(_churn(reload=None), attempt_bound_s=2.0)}
    assert RELOAD_SAME not in names and RELOAD_CLOSED not in names


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"change_failures": [{"listen": {"port": P}, "answer": {"code": 3001}}]}, [CHANGES]),
        # A port still accepting after its unlisten (swoole-src #4098's stuck port).
        ({"attempts": [pc.Attempt(P, 2.0, 2.1, pc.Outcome.OK), pc.Attempt(P, 6.0, 6.1, pc.Outcome.OK)]}, [MODEL]),
        ({"attempts": [pc.Attempt(P, 2.0, 2.1, pc.Outcome.OK), pc.Attempt(P, 6.0, 8.1, pc.Outcome.HANG)]}, [MODEL, HANGS]),
        ({"bind_after_unlisten": [{"port": P, "probe": "EADDRINUSE"}]}, [FREE]),
        ({"reuse_probes": [{"port": P, "reuse_port": False, "probe": None, "ok": False}]}, [REUSE]),
        ({"residents": [{"port": P, "policy": "close", "close": None, "ok": False}]}, [RESIDENTS]),
        ({"resident_connect_failed": [{"port": P, "error": "TimeoutError"}]}, [RESIDENTS]),
        ({"mismatches": [{"when": "after step 3", "missing": [P]}]}, [REPORTED]),
        ({"reload": {"same": False, "listeners": 3, "residents_closed": []}}, [RELOAD_SAME]),
        ({"reload": {"same": True, "listeners": 3, "residents_closed": ["resident-21000"]}}, [RELOAD_CLOSED]),
        ({"leftovers": Leftovers([{"session": 4}], {"worker-0": 10}, {"worker-0": 10})}, [NO_SESSIONS]),
        ({"leftovers": Leftovers([], {"worker-0": 10}, {"worker-0": 14})}, [NO_FDS]),
    ],
)
def test_churn_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(pc.check_churn(_churn(**change), attempt_bound_s=2.0)) == names


def test_churn_where_nothing_happened_fails() -> None:
    empty = pc.ChurnHistory(model=pc.PortHistory(0), leftovers=Leftovers())
    assert set(failed(pc.check_churn(empty, attempt_bound_s=2.0))) == {CHANGES, MODEL, HANGS, FREE, REUSE, RESIDENTS}


def test_churn_attempts_all_in_grace_decide_nothing_and_fail() -> None:
    h = _churn(attempts=[pc.Attempt(P, 1.05, 1.2, pc.Outcome.OK)])
    assert failed(pc.check_churn(h, attempt_bound_s=2.0)) == [MODEL]


# -- port_errors ----------------------------------------------------------------------------------

CODES = "conflicting and invalid listens fail with their contract error, naming the port"
NOTHING_CHANGED = "a conflicting or invalid listen changes nothing (no process restarted, no session lost)"
LISTENERS_SAME = "the listeners are unchanged by failed listens"
STILL_SERVES = "the server still serves its other ports"


def _errors(**change) -> pc.PortErrorsHistory:
    h = pc.PortErrorsHistory(
        refusals=[
            pc.Refusal("a port another process listens on", "admin", 3001, True, 3001),
            pc.Refusal("a port another process listens on", "app", 3001, True, 3001, names_port=True),
            pc.Refusal("garbage body", "admin", 4400, True, 4400),
        ],
        processes_before=[("worker-0", 10)],
        processes_after=[("worker-0", 10)],
        clients=5,
        clients_answering=5,
        listeners_before={9000: {}, P: {}},
        listeners_after={9000: {}, P: {}},
        own_port_attempt=pc.Outcome.OK,
        main_port_attempt=pc.Outcome.OK,
    )
    return dataclasses.replace(h, **change)


def test_port_errors_a_correct_history_passes() -> None:
    assert failed(pc.check_port_errors(_errors())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"refusals": [pc.Refusal("a port another process listens on", "admin", 3001, True, 3004)]}, [CODES]),
        ({"refusals": [pc.Refusal("a port out of range", "admin", 4400, False, None)]}, [CODES]),
        ({"refusals": [pc.Refusal("a port out of range", "app", 4400, True, 4400, names_port=False)]}, [CODES]),
        ({"refusals": []}, [CODES]),
        ({"processes_after": [("worker-0", 11)]}, [NOTHING_CHANGED]),  # a process crashed and came back
        ({"clients_answering": 4}, [NOTHING_CHANGED]),
        ({"listeners_after": {9000: {}}}, [LISTENERS_SAME]),
        ({"main_port_attempt": pc.Outcome.HANG}, [STILL_SERVES]),
    ],
)
def test_port_errors_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(pc.check_port_errors(_errors(**change))) == names


# -- port_limits ----------------------------------------------------------------------------------

LIMITED = "over its limit, a port answers the handshake with 503 PORT_LIMIT (never a hang)"
STARVE = "a port at its limit does not starve another port"
HANDLERS = "each port serves its handler set (default: the contract ops; echo: messages back verbatim)"
FREED = "when a session of the port closes, a new connection is admitted"
FIGURES = "per-port figures agree with what the clients saw"


def _limits(**change) -> pc.LimitsHistory:
    n = 5
    h = pc.LimitsHistory(
        limit=n,
        port_a=P,
        over=[(pc.Outcome.LIMITED, "503")] * 3,
        b_sessions=n + 3,
        b_open=n + 3,
        who_a={"ok": True, "port": P, "handler": "default"},
        echoed_b={"op": "whoami", "id": 77},
        freed=(pc.Outcome.OK, ""),
        figures_a={"accepted": n + 1, "refused": 3, "connections": n - 1},
        figures_b={"accepted": n + 3, "refused": 0, "connections": n + 3},
    )
    return dataclasses.replace(h, **change)


def test_port_limits_a_correct_history_passes() -> None:
    assert failed(pc.check_limits(_limits())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        # Hangs over the limit: and the target counted no refusal for them.
        ({"over": [(pc.Outcome.HANG, "")] * 3}, [LIMITED, FIGURES]),
        ({"over": []}, [LIMITED]),  # nothing was attempted over the limit: vacuous, so failed
        ({"b_open": 7}, [STARVE]),
        ({"echoed_b": {"ok": True, "op": "whoami"}}, [HANDLERS]),  # port B ran the contract ops
        ({"who_a": {"ok": True, "port": P + 1, "handler": "default"}}, [HANDLERS]),
        ({"freed": (pc.Outcome.LIMITED, "503")}, [FREED]),
        ({"figures_a": {"accepted": 6, "refused": 0, "connections": 4}}, [FIGURES]),
    ],
)
def test_port_limits_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    h = _limits(**change)
    if "over" in change:  # the target's figures as it would count them: no refusal for a hang
        h.figures_a = {"accepted": 6, "refused": 0, "connections": 4}
    assert failed(pc.check_limits(h)) == names


# -- ports_file -----------------------------------------------------------------------------------

REJECTED = "every rejected entry of the ports file is reported with its code"
APPLIED = "the valid entries are applied"
SERVED = "ports from the file serve connections"
CHANGED = "a changed file adds, removes, updates and re-binds to match"
REBOUND = "a re-bound port applies its policy to its sessions (close: 1001)"
IN_PLACE = "an entry whose only change is its handler is updated in place"
INVALID = "a file that is not valid TOML changes nothing and is reported"
EMPTY = "an empty file removes every file port and nothing else"


def _file(**change) -> pc.FileHistory:
    p = [P, P + 1, P + 2, P + 3, P + 4, P + 5]
    h = pc.FileHistory(
        main_port=9000,
        ports=p,
        report1={"rejected": [{"entry": e, "code": c} for e, c in pc.FILE_REJECTED.items()]},
        listeners1={
            9000: {"source": "config"},
            p[0]: {"source": "file", "handler": "default"},
            p[1]: {"source": "file", "handler": "echo"},
            p[2]: {"source": "file", "reuse_port": True},
            p[5]: {"source": "api"},
        },
        served1=[(p[0], pc.Outcome.OK), (p[1], pc.Outcome.OK), (p[2], pc.Outcome.OK)],
        report2={"removed": [p[0]], "updated": [p[1]], "rebound": [p[2]], "added": [p[4]]},
        listeners2={p[1]: {"max_connections": 9, "added_at": 5.0}, p[2]: {"reuse_port": False}},
        removed_port_attempt=pc.Outcome.REFUSED,
        rebound_resident_close=(1001, "port removed"),
        report3={"updated": [p[1]], "rebound": [], "removed": []},
        listeners3={p[1]: {"added_at": 5.0, "handler": "default"}},
        added_at_before=5.0,
        echo_resident_closed=False,
        served3=pc.Outcome.OK,
        invalid_error="line 1: expected ']]'",
        invalid_unchanged=True,
        report_empty={"removed": [p[1], p[2], p[4]]},
        listeners_empty=[9000, p[5]],
        leftovers=Leftovers([], {"worker-0": 10}, {"worker-0": 10}),
    )
    return dataclasses.replace(h, **change)


def test_ports_file_a_correct_history_passes() -> None:
    assert failed(pc.check_file(_file())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"report1": {"rejected": [{"entry": 3, "code": 4400}]}}, [REJECTED]),
        ({"served1": [(P, pc.Outcome.OK), (P + 1, pc.Outcome.HANG), (P + 2, pc.Outcome.OK)]}, [SERVED]),
        ({"removed_port_attempt": pc.Outcome.HANG}, [CHANGED]),  # a removed port still bound
        ({"rebound_resident_close": None}, [REBOUND]),
        ({"report3": {"updated": [], "rebound": [P + 1], "removed": []}}, [IN_PLACE]),  # re-bound for a handler
        ({"echo_resident_closed": True}, [IN_PLACE]),
        ({"invalid_error": None}, [INVALID]),
        ({"invalid_unchanged": False}, [INVALID]),
        ({"listeners_empty": [9000]}, [EMPTY]),  # the API's port went too
    ],
)
def test_ports_file_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(pc.check_file(_file(**change))) == names


def test_ports_file_a_file_port_missing_fails_applied() -> None:
    h = _file()
    del h.listeners1[P + 1]
    assert failed(pc.check_file(h)) == [APPLIED]
