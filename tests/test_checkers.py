"""The scenarios' checkers (scenarios/harness/checkers/) on synthetic histories.

For each checker: a history of a correct server passes every check, and each bug the
scenario is about fails the check that names it (and only the checks it should), so no
check is vacuous.
"""

from __future__ import annotations

import dataclasses

import pytest

from scenarios.harness import reloads
from scenarios.harness.checkers import closing, dead_push, heartbeat, reload, sweep
from scenarios.harness.evidence import Check
from scenarios.harness.spec import Leftovers, check_leftovers


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]


# -- what every history has -----------------------------------------------------------------------


def test_leftovers_pass_when_nothing_is_left_and_fds_are_back() -> None:
    assert failed(check_leftovers(Leftovers([], {"worker-0": 10}, {"worker-0": 9}))) == []


def test_leftovers_name_a_session_left_and_a_process_above_its_fds() -> None:
    names = failed(check_leftovers(Leftovers([{"session": 1}], {"worker-0": 10}, {"worker-0": 12})))
    assert names == ["no sessions left after every client is gone", "every process is back to its fd count (no fd leak)"]


# -- closing_session --------------------------------------------------------------------------------

GOOD_CLOSING = closing.ClosingHistory(
    closing_codes=[1004] * 3, gone_codes=[1005] * 5, dead_while_closing=3, dead_total=8, late_ticks=0
)


def test_closing_a_correct_history_passes() -> None:
    assert failed(closing.check(GOOD_CLOSING)) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"closing_codes": [], "dead_while_closing": 0, "dead_total": 5}, ["a push to a session that is closing fails with 1004 (SESSION_CLOSED)"]),
        ({"closing_codes": [1004, 0, 1004], "dead_while_closing": 2, "dead_total": 7}, ["a push to a session that is closing fails with 1004 (SESSION_CLOSED)"]),
        ({"gone_codes": [1004] * 5}, ["a push to a session that is gone fails with 1005 (SESSION_NOT_EXIST)"]),
        ({"late_ticks": 2}, ["a session's own timer never pushes once its close is known"]),
        ({"dead_while_closing": 5, "dead_total": 10}, ["a session's own timer never pushes once its close is known", "dead_session_pushes grows by exactly the number of dead pushes"]),
        ({"dead_total": 7}, ["dead_session_pushes grows by exactly the number of dead pushes"]),
    ],
    ids=["no-push-while-closing", "a-closing-push-succeeds", "gone-answers-1004", "timer-ticks-after-close", "timer-pushes-dead", "miscounted"],
)
def test_closing_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(closing.check(dataclasses.replace(GOOD_CLOSING, **change))) == names


# -- heartbeat -------------------------------------------------------------------------------------


def _idle(name: str, after: int | None = 800, frame: tuple[int, str] | None = (4408, "idle"), kept_open: bool = False):
    return heartbeat.IdleClient(name, frame, frame is not None or after is not None, after, kept_open=kept_open)


def _hb(**change) -> heartbeat.HeartbeatHistory:
    base = heartbeat.HeartbeatHistory(
        idle_ms=600, check_ms=100, latest_ms=1100, window_s=1.7,
        idle=[_idle("idle-0"), _idle("idle-1")], pushed=[_idle("pushed-0")],
        pings={"pinger-0": 11}, ping_every_s=0.15, heartbeat_closes_counted=3,
    )
    return dataclasses.replace(base, **change)


def test_heartbeat_a_correct_history_passes() -> None:
    assert failed(heartbeat.check(_hb())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        # Swoole's heartbeat: the connection is dropped at the TCP level, on time.
        ({"idle": [_idle("idle-0", frame=None), _idle("idle-1")]}, ["idle clients are closed with a 4408 close frame"]),
        # Pushes counted as activity: the push-only client is never closed.
        (
            {"pushed": [_idle("pushed-0", after=None, frame=None, kept_open=True)], "heartbeat_closes_counted": 2},
            [
                "idle clients are closed with a 4408 close frame",
                "server pushes do not count as activity: push-only clients are closed as idle",
                "idle sessions close within the tolerance of the idle time",
                "stats count the heartbeat closes",
            ],
        ),
        ({"idle": [_idle("idle-0", after=300), _idle("idle-1")]}, ["idle sessions close within the tolerance of the idle time"]),
        ({"idle": [_idle("idle-0", after=2500), _idle("idle-1")]}, ["idle sessions close within the tolerance of the idle time"]),
        ({"pings": {"pinger-0": 2}}, ["ping-only clients did ping through the whole window"]),
        ({"survivors_closed": [{"client": "chatty-0"}]}, ["chatty, ping-only and protected clients stay open"]),
        ({"heartbeat_closes_counted": 0}, ["stats count the heartbeat closes"]),
        (
            {"idle": [], "pushed": [], "heartbeat_closes_counted": 0},
            [
                "idle clients are closed with a 4408 close frame",
                "server pushes do not count as activity: push-only clients are closed as idle",
                "idle sessions close within the tolerance of the idle time",
            ],
        ),
    ],
    ids=["no-close-frame", "pushes-count-as-activity", "too-early", "too-late", "pinger-stalled", "survivor-closed", "not-counted", "vacuous"],
)
def test_heartbeat_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(heartbeat.check(_hb(**change))) == names


# -- dead_session_push -----------------------------------------------------------------------------


def _dead(**change) -> dead_push.DeadPushHistory:
    base = dead_push.DeadPushHistory(
        victims=2, min_fails_per_timer=30, victims_gone=True,
        failed_by_timer={"victim-0": {1004: 2, 1005: 40}, "victim-1": {1005: 35}},
        one_off={"ok": False, "error": {"code": 1005, "name": "SESSION_NOT_EXIST"}},
        dead_session_pushes_counted=78, log_lines=["open"] * 10, reused=[{"session": 9}],
    )
    return dataclasses.replace(base, **change)


def test_dead_push_a_correct_history_passes() -> None:
    assert failed(dead_push.check(_dead())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"victims_gone": False}, ["the server notices every victim is gone"]),
        ({"failed_by_timer": {"victim-0": {1004: 2, 1005: 40}, "victim-1": {1005: 34, 2001: 1}}}, ["failed pushes to dead sessions report 1004 or 1005 only"]),
        ({"failed_by_timer": {"victim-0": {1004: 42}, "victim-1": {1005: 35}}}, ["once a session is gone for good, pushes report 1005 SESSION_NOT_EXIST"]),
        ({"one_off": {"ok": True}}, ["a one-off push to a dead session fails with 1005 SESSION_NOT_EXIST"]),
        ({"dead_session_pushes_counted": 10}, ["stats count every dead-session push the clients saw"]),
        ({"failed_by_timer": {"victim-0": {1005: 3}, "victim-1": {1005: 3}}, "dead_session_pushes_counted": 7}, ["enough dead pushes happened for the log check to mean something"]),
        ({"log_lines": ["push.failed"] * 77}, ["no warning storm: the log does not grow with the number of dead pushes"]),
        ({"foreign": [{"client": "newcomer-0"}]}, ["a new client never receives what was meant for another session"]),
        ({"reused": []}, ["the scenario reproduced OS fd reuse (a newcomer got a victim's fd)"]),
    ],
    ids=["not-noticed", "wrong-code", "never-1005", "one-off-succeeds", "undercounted", "too-few", "warning-storm", "foreign", "no-fd-reuse"],
)
def test_dead_push_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(dead_push.check(_dead(**change))) == names


def test_dead_push_without_fd_reuse_info_makes_no_reuse_check() -> None:
    assert "the scenario reproduced OS fd reuse (a newcomer got a victim's fd)" not in [c.name for c in dead_push.check(_dead(reused=None))]


# -- task_sweep ------------------------------------------------------------------------------------


def _client(name: str, group: str, sid: int, closed_at: float | None = None, **kw) -> sweep.SweptClient:
    return sweep.SweptClient(name, group, sid, sid % 3, opened_at=0.0, closed_at=closed_at, **kw)


def _report(n: int, started: float, ended: float, seen: list[int], closed: list[int], **kw) -> dict:
    return {"sweep": n, "started": started, "ended": ended, "seen": seen, "closed": closed, "info_missing": [], "errors": [], **kw}


def _sweep(**change) -> sweep.SweepHistory:
    doomed = _client("doomed-0", "doomed", 2, closed_at=1.2, close_frame=(4001, "swept"), kinds=["tick", "tick", "notice"], tick_seqs=[1, 2])
    base = sweep.SweepHistory(
        workers_used=[0, 1, 2], workers_running=3,
        clients=[_client("keep-0", "keep", 1), doomed, _client("churn-0", "churn", 3, closed_at=0.5)],
        reports=[_report(1, 1.0, 1.1, [1, 2], [2]), _report(2, 2.0, 2.1, [1], [])],
        sweep_closes_counted=1,
    )
    return dataclasses.replace(base, **change)


def test_sweep_a_correct_history_passes() -> None:
    assert failed(sweep.check(_sweep())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"workers_used": [0]}, ["clients are spread over several workers (if the target runs several)"]),
        ({"reports": [_report(1, 1.0, 1.1, [1, 2], [2])]}, ["sweeps ran"]),
        # The seed's bug: a sweep that sees only its own process's connections.
        ({"reports": [_report(1, 1.0, 1.1, [2], [2]), _report(2, 2.0, 2.1, [1], [])]}, ["each sweep saw every session that was live throughout it, on every worker"]),
        ({"reports": [_report(1, 1.0, 1.1, [1, 2], [2], info_missing=[1]), _report(2, 2.0, 2.1, [1], [])]}, ["get_client_info failed only for sessions that were closing"]),
        ({"reports": [_report(1, 1.0, 1.1, [1, 2], [2], errors=["boom"]), _report(2, 2.0, 2.1, [1], [])]}, ["sweeps reported no error while sessions closed under them"]),
        ({"disturbed": [{"client": "keep-0"}]}, ["clients the rule does not match stay open, get no notice, keep getting ticks"]),
        ({"sweep_closes_counted": 0}, ["stats count the sweep's closes"]),
    ],
    ids=["one-worker", "one-sweep", "local-only", "info-missing", "sweep-error", "disturbed", "not-counted"],
)
def test_sweep_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(sweep.check(_sweep(**change))) == names


@pytest.mark.parametrize(
    ("doomed", "name"),
    [
        (dict(close_frame=(1000, "")), "every swept client got a close frame 4001"),
        (dict(close_frame=(4001, "swept"), kinds=["tick", "notice", "tick"]), "every swept client got all its ticks, then the notice last, then the close frame"),
        (dict(close_frame=(4001, "swept"), kinds=["tick", "notice"], tick_seqs=[1, 3]), "every swept client got all its ticks, then the notice last, then the close frame"),
    ],
    ids=["wrong-close-code", "tick-after-notice", "tick-gap"],
)
def test_sweep_a_swept_client_judged_on_its_close_and_its_order(doomed: dict, name: str) -> None:
    clients = [_client("keep-0", "keep", 1), _client("doomed-0", "doomed", 2, closed_at=1.2, **doomed)]
    assert failed(sweep.check(_sweep(clients=clients))) == [name]


def test_sweep_handshaking_sessions_are_seen_by_every_sweep() -> None:
    good = sweep.HandshakingHistory(2, listed={5, 6}, still={5, 6}, reports=[_report(1, 0, 1, [5, 6], []), _report(2, 1, 2, [5, 6], [])])
    assert failed(sweep.check_handshaking(good)) == []
    blind = dataclasses.replace(good, reports=[_report(1, 0, 1, [], []), _report(2, 1, 2, [5], [])])
    assert failed(sweep.check_handshaking(blind)) == ["each sweep saw the sessions whose handshake is not complete"]
    vacuous = dataclasses.replace(good, listed=set(), still=set())
    assert failed(sweep.check_handshaking(vacuous)) == [
        "sessions whose handshake is not complete exist (listed as connecting)",
        "each sweep saw the sessions whose handshake is not complete",
    ]


# -- reload_* --------------------------------------------------------------------------------------


def _ticks(n: int, gens: list[int] | None = None, start: float = 0.0, every: float = 0.01) -> list[dict]:
    gens = gens or [1] * n
    return [{"seq": i + 1, "gen": gens[i], "_t": start + i * every, "timer": 1} for i in range(n)]


def _window(label: str, requested: float, done: float, gen: int = 2, **record) -> reloads.ReloadWindow:
    return reloads.ReloadWindow(label, requested, done, {"reload": gen - 1, "generation": gen, "retired": [{"name": "worker-0"}], **record})


def test_reload_tick_rules_pass_on_consecutive_ticks_and_name_each_bug() -> None:
    window = _window("r", 0.2, 0.3)
    good = [reload.Ticking("a", _ticks(50, [1] * 25 + [2] * 25), final=50)]
    assert failed(reload.check_ticks(good, [window], 3000)) == []
    lost = [reload.Ticking("a", [t for t in _ticks(50) if t["seq"] != 20], final=50)]
    assert failed(reload.check_ticks(lost, [window], 3000)) == ["per session, tick numbers strictly increase and none is lost"]
    # The seed's pitfall: the old worker's timer keeps ticking next to the new one.
    interleaved = [reload.Ticking("a", _ticks(4, [1, 2, 1, 2]), final=4)]
    assert failed(reload.check_ticks(interleaved, [window], 3000)) == ["no tick from an old generation arrives after one from a newer generation"]
    silent = [reload.Ticking("a", [*_ticks(10), {"seq": 11, "gen": 2, "_t": 4.0, "timer": 1}], final=11)]
    assert failed(reload.check_ticks(silent, [window], 3000)) == ["the longest silence in a session's ticks during a reload is below max_wait_ms"]
    assert failed(reload.check_ticks([reload.Ticking("a")], [window], 3000)) == ["per session, tick numbers strictly increase and none is lost"]


def test_reload_retired_processes_must_have_cleared_their_timers_and_nobody_was_killed() -> None:
    assert failed(reload.check_retired([{"retired": [{"name": "w", "timers_at_exit": 0}]}])) == []
    assert failed(reload.check_retired([{"retired": [{"name": "w", "timers_after_exit_hook": 3}]}])) == [
        "old processes reach zero timers (the exit hook cleared them)"
    ]
    assert failed(reload.check_retired([{"retired": [{"name": "w"}], "forced_kills": 1, "sessions_lost": 4}])) == [
        "no old process had to be killed and no session was lost"
    ]
    assert failed(reload.check_retired([])) == ["old processes reach zero timers (the exit hook cleared them)"]


def _ticks_history(**change) -> reload.TicksHistory:
    windows = [
        _window("full", 0.1, 0.2, 2, merged_requests=2, started=0.1, finished=0.2),
        _window("task", 0.3, 0.4, 3),
        _window("worker", 0.5, 0.6, 4),
        _window("signal", 0.7, 0.8, 5),
    ]
    base = reload.TicksHistory(
        max_wait_ms=3000, task_ms=1500, first_gens={"worker-0": 1},
        merge={"first": {"reload": 1, "merged": False}, "second": {"reload": 1, "merged": True}, "third": {"reload": 1, "merged": True}},
        task={"ok": True, "task": 1}, task_results=[{"result": {"data": "in flight"}}], task_held_ms=1501.0,
        worker_reload_reply={"ok": True}, windows=windows,
        clients=[reload.Ticking("a", _ticks(100, [1] * 10 + [2] * 20 + [3] * 20 + [4] * 20 + [5] * 30), final=100)],
        marked=True, snapshots=5, reload_counters={"requested": 6, "merged": 2, "completed": 4, "forced_kills": 0},
        status_generation=5, process_generations={"worker-0": 5}, last_tick_generations=[5], old_processes=8,
    )
    return dataclasses.replace(base, **change)


def test_reload_ticks_a_correct_history_passes() -> None:
    assert failed(reload.check_ticks_history(_ticks_history())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"merge": {"first": {"reload": 1}, "second": {"reload": 2, "merged": False}, "third": {"reload": 1, "merged": True}}}, ["a reload requested while one runs is merged into it", "reload counters and generations are as expected"]),
        ({"task_results": [], "task_held_ms": None}, ["a task in flight during the reload completes and its result arrives once", "the task in flight ran its full sleep_ms (the reload did not cut it short)"]),
        ({"task_held_ms": 300.0}, ["the task in flight ran its full sleep_ms (the reload did not cut it short)"]),
        ({"workers_replaced": ["worker-0"]}, ["a task-worker-only reload replaces the task workers and nothing else"]),
        ({"dead_session_pushes": 12}, ["no push reaches a dead session"]),
        ({"state_changes": [{"session": 1, "uid": [7, 0]}]}, ["uid, protection, group and handler set survive every reload"]),
        ({"counters_decreased": [{"counter": "pushes"}]}, ["no standard counter ever decreases across a reload"]),
        ({"last_tick_generations": [4, 5]}, ["reload counters and generations are as expected"]),
        ({"old_left": {123: "worker-0"}}, ["every old process has exited"]),
    ],
    ids=["not-merged", "task-lost", "task-cut-short", "workers-replaced", "dead-pushes", "state-lost", "counter-down", "old-timer-holder", "old-process-left"],
)
def test_reload_ticks_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(reload.check_ticks_history(_ticks_history(**change))) == names


def test_a_reload_op_that_got_no_reply_fails_the_reply_check_and_the_scenario_goes_on() -> None:
    """A worker's reload op with no reply in 10 s (seen on Swoole PROCESS, cause not found) is a
    named check, not a harness exception: the other checks still judge what happened."""
    silent = {"ok": False, reload.NO_REPLY: "timed out after 10.0s waiting for tick2: reply to 'reload' #5"}
    checks = reload.check_ticks_history(_ticks_history(worker_reload_reply=silent))
    assert failed(checks) == ["every reload request gets a reply", "a worker can ask for a reload (app op reload)"]
    (reply_check,) = [c for c in checks if c.name == "every reload request gets a reply"]
    assert reply_check.timing and reply_check.observed == {"from a worker": silent[reload.NO_REPLY]}
    merge = {"first": {"reload": 1, "merged": False}, "second": {"reload": 1, "merged": True}, "third": silent}
    h = _ticks_history(merge=merge, reload_counters={"requested": 6, "merged": 1, "completed": 5, "forced_kills": 0})
    h.windows[0].record["merged_requests"] = 1
    names = failed(reload.check_ticks_history(h))
    assert names[:2] == ["every reload request gets a reply", "a reload requested while one runs is merged into it"]
    (merge_check,) = [c for c in reload.check_ticks_history(h) if c.name.startswith("a reload requested while")]
    assert reload.NO_REPLY in str(merge_check.observed)


def _late(first_record: dict, **merge) -> reload.TicksHistory:
    """The history where some of the second and third requests started reloads of their own."""
    h = _ticks_history()
    h.windows[0].record.update(first_record)
    h.merge.update({k: v for k, v in merge.items() if k in ("second", "third")})
    h.merge_records.update(merge.get("records", {}))
    return h


def test_a_request_that_came_after_the_first_reload_was_done_may_start_its_own() -> None:
    """The first reload can be short (its task was still queued and went to the successor): a
    request that reached the target after it was done starts a new reload, and the counters
    expect one more completed reload and one fewer merge."""
    h = _late({"merged_requests": 1}, third={"reload": 2, "merged": False, "_t": 0.31},
              records={"third": {"reload": 2, "started": 0.25, "merged_requests": 0}})
    h.reload_counters = {"requested": 6, "merged": 1, "completed": 5, "forced_kills": 0}
    assert failed(reload.check_ticks_history(h)) == []
    h.reload_counters = {"requested": 6, "merged": 2, "completed": 4, "forced_kills": 0}
    assert failed(reload.check_ticks_history(h)) == ["reload counters and generations are as expected"]


def test_a_request_that_came_while_the_first_reload_ran_must_join_it() -> None:
    # Its own reload started before the first was done: two reloads at once.
    during = _late({"merged_requests": 1}, third={"reload": 2, "merged": False, "_t": 0.31},
                   records={"third": {"reload": 2, "started": 0.15}})
    # Its reply came before the first was done (a target that queues the request and starts it later).
    queued = _late({"merged_requests": 1}, third={"reload": 2, "merged": False, "_t": 0.15},
                   records={"third": {"reload": 2, "started": 0.25}})
    # Merged, but the record does not count it.
    uncounted = _late({"merged_requests": 1})
    for h in (during, queued, uncounted):
        merge = next(c for c in reload.check_ticks_history(h) if c.name == "a reload requested while one runs is merged into it")
        assert not merge.passed and not merge.timing, merge


def test_when_both_came_after_the_first_reload_was_done_merging_is_not_judged_a_timing_failure() -> None:
    h = _late({"merged_requests": 0, "duration_ms": 100.0},
              second={"reload": 2, "merged": False, "_t": 0.3}, third={"reload": 3, "merged": False, "_t": 0.4},
              records={"second": {"reload": 2, "started": 0.21, "merged_requests": 0},
                       "third": {"reload": 3, "started": 0.35, "merged_requests": 0}})
    merge = next(c for c in reload.check_ticks_history(h) if c.name == "a reload requested while one runs is merged into it")
    assert not merge.passed and merge.timing
    assert "nothing to judge" in merge.observed["why"]


def test_reload_disconnects_late_clients_must_be_served_by_the_new_generation() -> None:
    window = _window("r", 0.2, 0.3, 2)
    good = reload.DisconnectsHistory(
        3000, 2, window, late_connected=2, late_open=2, late_generations=[2, 2],
        stay=[reload.Ticking("stay0", _ticks(50, [1] * 25 + [2] * 25), final=50)],
    )
    assert failed(reload.check_disconnects(good)) == []
    refused = dataclasses.replace(good, late_connected=1, late_open=1, late_generations=[2], refused=["late1: 503"])
    assert failed(reload.check_disconnects(refused)) == ["clients that arrive during a reload are served, by the new generation"]
    old_gen = dataclasses.replace(good, late_generations=[1, 2])
    assert failed(reload.check_disconnects(old_gen)) == ["clients that arrive during a reload are served, by the new generation"]
    dead = dataclasses.replace(good, dead_session_pushes=1)
    assert failed(reload.check_disconnects(dead)) == ["no push is made to a session after its close is known"]


def test_reload_repeated_judges_growth_only_when_every_reload_was_clean() -> None:
    windows = [_window(f"r{i}", i, i + 0.1, i + 2) for i in range(3)]
    base = {"master": {"fds": 20, "rss": 50 << 20}, "worker-0": {"fds": 30, "rss": 40 << 20}}
    clients = [reload.Ticking("a", _ticks(10), final=10)]
    good = reload.RepeatedHistory(2, 3000, 3, 8 << 20, windows=windows, baseline=base, now=base, clients=clients)
    assert failed(reload.check_repeated(good)) == []
    leak = dataclasses.replace(good, now={**base, "worker-0": {"fds": 40, "rss": 40 << 20}})
    assert failed(reload.check_repeated(leak)) == ["after 2 reloads, fds and memory of the master and each worker stay near their baseline"]
    stopped = dataclasses.replace(good, stopped=1, windows=windows[:2])
    assert failed(reload.check_repeated(stopped)) == [
        "after 2 reloads, fds and memory of the master and each worker stay near their baseline",
        "3 reloads ran one after the other, each with a new generation",
    ]


def test_a_late_request_may_join_the_reload_the_other_late_one_started() -> None:
    """Seen on Swoole beside two CPU hogs: the first reload was done at once, the app op came
    next and started reload 2, and the admin request joined it. That is a merge, judged right."""
    records = {"third": {"reload": 2, "started": 0.25, "merged_requests": 1}}
    h = _late({"merged_requests": 0}, second={"reload": 2, "merged": True, "_t": 0.4},
              third={"reload": 2, "merged": False}, records=records)
    h.reload_counters = {"requested": 6, "merged": 1, "completed": 5, "forced_kills": 0}
    assert failed(reload.check_ticks_history(h)) == []
    # The late reload's record must count the request that joined it.
    h.merge_records["third"] = {**records["third"], "merged_requests": 0}
    assert failed(reload.check_ticks_history(h)) == ["a reload requested while one runs is merged into it"]
    # A join into a reload neither request started is wrong, not late.
    stray = _late({"merged_requests": 0}, second={"reload": 7, "merged": True}, third={"reload": 2, "merged": False},
                  records=records)
    merge = next(c for c in reload.check_ticks_history(stray) if c.name == "a reload requested while one runs is merged into it")
    assert not merge.passed and not merge.timing and "neither reload 1" in str(merge.observed)
