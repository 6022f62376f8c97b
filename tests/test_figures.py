"""The figures of the evidence pages: the data each checker draws from its history, and the drawing.

Builders are pure functions of a history (scenarios/harness/checkers/*); these tests give them
small synthetic histories and check what they mark; the drawing (scenarios/compare/draw.py) must
turn every figure into a PNG, and the evidence page must embed it and point a failed check at it.
"""

from __future__ import annotations

import json
from pathlib import Path

from scenarios.compare import draw, html, runner
from scenarios.harness.checkers import dead_push, migration, ports
from scenarios.harness.checkers.reload import GAP_CHECK, Ticking, tick_figure
from scenarios.harness.figures import MAX_LANES, MAX_POINTS, Figure, Lane, Mark, Series
from scenarios.harness.reloads import ReloadWindow

PNG = b"\x89PNG\r\n\x1a\n"


def ticks(name: str, times: list[float], gen_after: float = 99.0) -> Ticking:
    return Ticking(name, [{"seq": i + 1, "_t": t, "gen": 2 if t > gen_after else 1, "timer": 1} for i, t in enumerate(times)])


def test_the_reload_figure_marks_the_longest_gap_in_the_right_session() -> None:
    even = [100 + i * 0.1 for i in range(30)]
    gap = [100 + i * 0.1 for i in range(10)] + [101.6 + i * 0.1 for i in range(14)]
    window = ReloadWindow("full", 100.95, 101.2)
    fig = tick_figure([ticks("a", even, 101.0), ticks("b", gap, 101.0)], [window])
    assert [lane.name for lane in fig.lanes] == ["a", "b"]
    assert {c for lane in fig.lanes for _, c in lane.points} == {"gen 1", "gen 2"}
    (mark,) = [m for m in fig.marks if m.check == GAP_CHECK]
    assert mark.lane == "b" and mark.label == "longest gap 700 ms" and abs(mark.t - 1.6) < 1e-6
    assert fig.headline == "longest gap 700 ms"  # the number the matrix cell shows
    assert fig.windows[0].start == 0.95 and fig.windows[0].label == "full"


def test_a_figure_keeps_the_rows_with_marks_and_samples_too_many_points() -> None:
    lanes = [Lane(f"s{i}", [(float(j), "x") for j in range(1000)]) for i in range(MAX_LANES + 10)]
    fig = Figure("f", "t", "lanes", lanes=lanes, marks=[Mark(1.0, "here", f"s{MAX_LANES + 5}")])
    doc = fig.as_dict()
    names = [lane["name"] for lane in doc["lanes"]]
    assert len(names) == MAX_LANES and f"s{MAX_LANES + 5}" in names
    assert sum(len(lane["points"]) for lane in doc["lanes"]) <= MAX_POINTS
    assert "rows shown" in doc["note"] and "points shown" in doc["note"]


def test_the_port_figure_draws_listed_spans_and_marks_a_hang_and_a_contradiction() -> None:
    model = ports.PortHistory(grace_ms=0)
    model.record(ports.Change(9000, True, 1.0, 1.1, "admin"))
    model.record(ports.Change(9000, False, 3.0, 3.1, "admin"))
    h = ports.ChurnHistory(model=model, attempts=[
        ports.Attempt(9000, 2.0, 2.01, "ok"), ports.Attempt(9000, 4.0, 4.01, "ok"), ports.Attempt(9000, 5.0, 7.0, "hang"),
    ])
    assert ports.listed_spans(model, end=8.0) == {9000: [(1.1, 3.0)]}
    fig = ports.churn_figure(h)
    assert fig is not None
    labels = {m.label: m.check for m in fig.marks}
    assert labels == {"ok while not listed": ports.MODEL_CHECK, "hang": ports.HANG_CHECK}


def test_the_dead_push_figure_marks_the_log_past_its_budget() -> None:
    h = dead_push.DeadPushHistory(victims=2, min_fails_per_timer=1, samples=[(10.0, 0, 0), (11.0, 100, 5), (12.0, 200, 400)],
                                  moments={"victims leave": 10.0})
    fig = dead_push.figure(h)
    assert fig is not None
    assert fig.series[0].points == [(1.0, 100.0), (2.0, 100.0)] and fig.series[1].points == [(1.0, 5.0), (2.0, 395.0)]
    assert [m.check for m in fig.marks if m.check] == [dead_push.STORM_CHECK]


def test_the_ownership_figure_marks_a_reply_from_a_worker_that_did_not_own_the_session() -> None:
    log = migration.MoveLog({7: 0}, [migration.Move(7, 1.0, 1.1, 1, "admin", True, src=0)])
    s = migration.SessionStream("c7", 7)
    s.sent = {1: migration.Sent(1, 0.5, 3, "d", 1), 2: migration.Sent(2, 2.0, 3, "d", 1)}
    s.replies = {1: migration.EchoReply(0.6, 0, 3, "d"), 2: migration.EchoReply(2.1, 0, 3, "d")}
    s.reply_order = [1, 2]
    fig = migration.ownership_figure(log, [s])
    assert fig is not None
    (lane,) = fig.lanes
    assert [b[2] for b in lane.bars] == ["worker 0", "moving", "worker 1"]
    (mark,) = fig.marks
    assert mark.check == migration.ECHO_CHECK and abs(mark.t - 1.5) < 1e-6  # from the first event, at 0.6


def test_the_ownership_figure_marks_an_echo_never_answered_and_where_the_ticks_went_wrong() -> None:
    """Workerman's naive migration: a frame cut by the move never comes back, and the session's
    timer stops at the first move; each failed check is marked where it happened."""
    log = migration.MoveLog({7: 0, 8: 0}, [migration.Move(7, 1.0, 1.1, 1, "admin", True, src=0)])
    s = migration.SessionStream("c7", 7, tick_seqs=[1, 2, 3], tick_times=[0.2, 0.4, 0.9], tick_total=9)
    s.sent = {1: migration.Sent(1, 0.5, 3, "d", 1), 2: migration.Sent(2, 1.05, 3, "d", 1)}
    s.replies = {1: migration.EchoReply(0.6, 0, 3, "d")}
    s.reply_order = [1]
    jumpy = migration.SessionStream("c8", 8, tick_seqs=[1, 2, 4], tick_times=[0.3, 0.5, 0.95], tick_total=4)
    fig = migration.ownership_figure(log, [s, jumpy])
    assert fig is not None
    marks = {(m.lane, m.label): (m.check, round(m.t, 3)) for m in fig.marks}  # from the first tick, at 0.2
    assert marks == {
        ("c7", "e2 never answered"): (migration.ECHO_CHECK, 0.85),
        ("c7", "ticks stop at #3 of 9"): (migration.TICK_CHECK, 0.7),
        ("c8", "tick #4 after #2"): (migration.TICK_CHECK, 0.75),
    }


def test_a_session_whose_ticks_are_right_has_no_tick_mark() -> None:
    s = migration.SessionStream("c7", 7, tick_seqs=[1, 2, 3], tick_times=[0.1, 0.2, 0.3], tick_total=3)
    assert migration.tick_problem(s) is None
    assert migration.tick_problem(migration.SessionStream("c7", 7, tick_seqs=[2, 3], tick_total=3)) == (None, "tick #2 after the start")
    gone = migration.SessionStream("c7", 7, tick_seqs=[1, 2], tick_times=[0.1, 0.2], tick_total=-1)  # the timer was lost
    assert migration.tick_problem(gone) == (0.2, "ticks stop at #2 (timer_stop gave no count)")


def test_every_figure_kind_draws_a_png_and_a_failed_check_changes_the_drawing() -> None:
    lanes = Figure("l", "lanes", "lanes", lanes=[Lane("a", [(0.1, "x"), (0.2, "y")], [(0.0, 0.3, "z")])],
                   marks=[Mark(0.2, "bad", "a", check="c")]).as_dict()
    series = Figure("s", "series", "series", series=[Series("n", [(0.0, 1.0), (1.0, 2.0)], "line")],
                    bound=(1.5, "bound"), log_y=True, marks=[Mark(0.5, "v")]).as_dict()
    for fig in (lanes, series):
        assert draw.draw(fig).startswith(PNG)
    assert draw.draw(lanes, {"c"}) != draw.draw(lanes)


def test_the_evidence_page_embeds_each_figure_and_points_a_failed_check_at_it(tmp_path: Path) -> None:
    fig = Figure("ticks", "Ticks", "lanes", lanes=[Lane("a", [(0.1, "gen 1")])], marks=[Mark(0.1, "gap", "a", check="c1")])
    evidence = {"checks": [{"name": "c1", "passed": False, "expected": 1, "observed": 2},
                           {"name": "c2", "passed": True, "expected": 1, "observed": 1}],
                "facts": {}, "figures": [fig.as_dict()]}
    path = tmp_path / "evidence" / "test_x.json"
    path.parent.mkdir()
    path.write_text(json.dumps(evidence))
    assert draw.draw_evidence(str(path)) == [str(draw.png_path(path, "ticks"))]
    images = runner.figure_images(path, evidence)
    assert images["ticks"].startswith(PNG)
    page = html.render_case("t", {"id": "x", "case": "x", "verdict": "failed"}, evidence, index_href="i.html", images=images)
    assert 'id="fig-ticks"' in page and 'src="data:image/png;base64,' in page
    assert page.count('href="#fig-ticks"') == 1  # the failed check points at the figure; the passed one does not
    assert page.index("<h2>History</h2>") < page.index("<h2>Checks")
    # A figure whose PNG is missing is drawn when the page is written.
    draw.png_path(path, "ticks").unlink()
    assert runner.figure_images(path, evidence)["ticks"].startswith(PNG)


def test_every_scenario_draws_a_figure_of_its_history() -> None:
    """Each scenario test (``@pytest.mark.scenario``) passes a figure of what it recorded to its evidence."""
    import ast

    missing, seen = [], 0
    for path in sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            marks = [d for d in node.decorator_list if "mark.scenario" in ast.unparse(d)]
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and ast.unparse(c.func) == "evidence.figure"]
            seen += bool(marks)
            if marks and not calls:
                missing.append(f"{path.name}::{node.name}")
    assert seen >= 30, seen  # the walk found the scenario tests
    assert not missing, f"scenarios without a figure: {missing}"


def test_a_matrix_cell_shows_its_figures_number() -> None:
    from scenarios.compare import matrix

    cell = matrix._cell({"id": "x", "case": "x", "verdict": "passed", "headline": "p99 12 ms"}, "cases/t/x.html")
    assert '<div class="hl">p99 12 ms</div>' in html._cell_html(cell, "t", "x")


def test_a_figure_keeps_a_few_marks_per_check_and_none_on_rows_left_out() -> None:
    lanes = [Lane(f"s{i}") for i in range(MAX_LANES + 5)]
    marks = [Mark(float(i), "bad", f"s{i}", check="c") for i in range(MAX_LANES + 5)] + [Mark(1.0, "info")]
    doc = Figure("f", "t", "lanes", lanes=lanes, marks=marks).as_dict()
    assert [m["lane"] for m in doc["marks"] if m["check"] == "c"] == ["s0", "s1", "s2", "s3"]
    assert any(m["check"] is None for m in doc["marks"]) and "marks of each check shown" in doc["note"]


# -- the drawer process ------------------------------------------------------------------------


def evidence_files(folder: Path, n: int) -> list[Path]:
    fig = Figure("ticks", "Ticks", "lanes", lanes=[Lane("a", [(0.1, "gen 1")])]).as_dict()
    folder.mkdir(exist_ok=True)
    paths = [folder / f"test_{i}.json" for i in range(n)]
    for p in paths:
        p.write_text(json.dumps({"checks": [], "facts": {}, "figures": [fig]}))
    return paths


def test_the_drawer_draws_at_the_lowest_priority_during_the_run_and_at_ours_at_its_end(tmp_path: Path) -> None:
    import os

    paths = evidence_files(tmp_path, 3)
    (tmp_path / "test_bad.json").write_text("{not json")
    drawer = draw.Drawer()
    drawer.submit(paths[0])
    drawer.submit(tmp_path / "test_bad.json")
    pid = drawer.pid
    assert pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + draw.DRAWING_NICE)
    for p in paths[1:]:
        drawer.submit(p)
    if drawer.hurry():  # allowed to raise it back (a privileged user): the same process, at our priority
        assert drawer.pid == pid and os.getpriority(os.PRIO_PROCESS, pid) == ours
    problems = drawer.finish(timeout=60)
    assert all(draw.png_path(p, "ticks").read_bytes().startswith(PNG) for p in paths)
    assert len(problems) == 1 and "test_bad.json" in problems[0] and "JSONDecodeError" in problems[0], problems
    assert drawer.pid is None and not Path(f"/proc/{pid}").exists()
    assert not list(tmp_path.glob("*.part"))


def test_where_it_may_not_raise_the_priority_the_drawer_draws_the_rest_in_a_new_process(tmp_path: Path, monkeypatch) -> None:
    import os

    paths = evidence_files(tmp_path, 4)
    drawer = draw.Drawer()
    for p in paths:
        drawer.submit(p)
    first = drawer.pid

    def refuse(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    assert drawer.hurry() is False
    assert drawer.pid != first and not Path(f"/proc/{first}").exists()
    assert os.getpriority(os.PRIO_PROCESS, drawer.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    assert drawer.finish(timeout=60) == []
    assert all(draw.png_path(p, "ticks").read_bytes().startswith(PNG) for p in paths)


def test_a_drawing_that_never_ends_is_named_and_its_process_stopped_at_the_bound(tmp_path: Path) -> None:
    import os

    stuck = tmp_path / "test_stuck.json"
    os.mkfifo(stuck)  # reading it blocks until a writer comes: none will
    drawer = draw.Drawer()
    drawer.submit(stuck)
    pid = drawer.pid
    problems = drawer.finish(timeout=1.5)
    assert len(problems) == 1 and "1 evidence file(s) not drawn within 1.5 s" in problems[0], problems
    assert "test_stuck.json" in problems[0]
    assert drawer.pid is None
    assert drawer.hurry()  # no process left: nothing to do
    assert not Path(f"/proc/{pid}").exists()


def test_a_drawer_that_dies_is_named_at_once_not_waited_for(tmp_path: Path) -> None:
    import os
    import signal

    paths = evidence_files(tmp_path, 1)
    drawer = draw.Drawer()
    drawer.submit(paths[0])
    os.kill(drawer.pid, signal.SIGKILL)
    problems = drawer.finish(timeout=60)
    assert len(problems) == 1 and "the drawer ended (exit code -9)" in problems[0], problems
