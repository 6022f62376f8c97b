"""The comparison matrix: its verdict rules (pure), and a real small comparison run.

The small run compares, through ``python -m scenarios.compare`` as a user runs
it: the reference, the python-websockets target, a broken variant (its case
must be a known deviation), and a manifest whose known-failures list is stale
(the case passes, so the comparison must fail). The page it writes is then
opened in Debian's headless Chromium: the DOM it renders and a screenshot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.compare import html, matrix, runner
from scenarios.compare.matrix import RunResult

REPO = Path(__file__).resolve().parents[1]


def record(case: str, verdict: str, seed: str = "s1", **extra) -> dict:
    return {"id": case.split("[")[0], "case": case, "seed": seed, "verdict": verdict, "duration_s": 1.5, "checks": 3,
            "failed_checks": extra.pop("failed_checks", []), "message": extra.pop("message", ""), **extra}


def results(name: str, records: list[dict], **extra) -> dict:
    return {"target": {"name": name, "declared_capabilities": ["heartbeat"], "known_failures": {}}, "scenarios": records,
            "target_stops": extra.pop("stops", []), "duration_s": 2.0, "broker": "embedded", **extra}


def test_cells_rows_and_groups() -> None:
    a = RunResult("a", "a.toml", results("a", [record("x", "passed"), record("y[p]", "failed", "s2", failed_checks=["c1"])]), 1)
    b = RunResult("b", "b.toml", results("b", [record("y[p]", "known_deviation", "s2", message="why\n\nmore"), record("z", "unsupported", "s1")]), 0)
    doc = matrix.build([a, b])
    assert [g["seed"] for g in doc["groups"]] == ["s1", "s2"]  # grouped by seed, first-seen order
    rows = {r["case"]: r["cells"] for g in doc["groups"] for r in g["rows"]}
    assert list(rows) == ["x", "z", "y[p]"]
    assert rows["x"]["a"]["verdict"] == "passed" and rows["x"]["b"]["verdict"] == "not_run"
    assert rows["y[p]"]["a"]["failed_checks"] == ["c1"]
    assert rows["y[p]"]["b"]["verdict"] == "known_deviation" and rows["y[p]"]["b"]["message"] == "why"
    assert rows["z"]["a"]["verdict"] == "not_run" and rows["z"]["b"]["verdict"] == "unsupported"
    assert not doc["ok"] and doc["problems"] == ["a: y[p] failed; failed checks: ['c1']"]  # a CI log says what failed
    assert doc["targets"][1]["counts"] == {"known_deviation": 1, "unsupported": 1}
    assert matrix.exit_status(doc) == 1


def test_what_fails_a_comparison() -> None:
    fine = RunResult("ok", "ok.toml", results("ok", [record("x", "passed"), record("y", "known_deviation")]), 0)
    assert matrix.build([fine])["ok"]
    crashed = RunResult("gone", "g.toml", None, 2)
    stale = RunResult("st", "s.toml", results("st", [record("x", "failed", message="stale known failure: listed but it passed")]), 1)
    killed = RunResult("k", "k.toml", results("k", [record("x", "passed")], stops=[{"label": "default", "forced": True}]), 0)
    error = RunResult("e", "e.toml", results("e", [record("x", "error")]), 1)
    weird = RunResult("w", "w.toml", results("w", [record("x", "passed")]), 3)
    doc = matrix.build([fine, crashed, stale, killed, error, weird])
    assert not doc["ok"]
    assert len(doc["problems"]) == 5, doc["problems"]
    cell = doc["groups"][0]["rows"][0]["cells"]["st"]
    assert cell["stale"] and cell["verdict"] == "failed"
    assert doc["targets"][1]["crashed"]
    assert matrix.build([fine, RunResult("ok2", "o.toml", results("o", [record("x", "skipped")]), 0)])["ok"]


def test_an_inconclusive_case_does_not_fail_the_comparison_and_shows_the_machine_was_busy() -> None:
    """Contract 11.4: shown on the matrix with what the harness measured, never a failure."""
    cond = {"noise_cpus_max": 1.7, "starved": True, "why": "other processes used 1.7 CPUs in a 1 s window (bound 1.0)"}
    run = RunResult("t", "t.toml", results("t", [record("x", "inconclusive", failed_checks=["gap"], conditions=cond)]), 0)
    doc = matrix.build([run])
    assert doc["ok"] and "inconclusive" in doc["verdicts"]
    (cell,) = [r["cells"]["t"] for g in doc["groups"] for r in g["rows"]]
    assert cell["verdict"] == "inconclusive" and cell["conditions"]["noise_cpus_max"] == 1.7
    page = html.render_index(doc)
    assert 'data-verdict="inconclusive"' in page and "other processes used 1.7 CPUs" in page


def test_index_page_escapes_and_marks_every_cell() -> None:
    bad = record("<script>", "failed", seed="<b>seed</b>", failed_checks=["a <check>"])
    doc = matrix.build([RunResult("t<1>", "t.toml", results("t<1>", [bad, record("ok", "passed")]), 1, links={"ok": "cases/t/ok.html"})])
    page = html.render_index(doc)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;seed" in page
    assert page.count('data-verdict="failed"') == 1 and page.count('data-verdict="passed"') == 1
    assert 'href="cases/t/ok.html"' in page
    assert "comparison failed" in page


def test_a_targets_variants_share_a_column_group() -> None:
    """Consecutive manifests of one folder (a target and its seed variants) get one group header."""
    runs = [
        RunResult("ref", "reference_server/target.toml", results("ref", [record("x", "passed")]), 0),
        RunResult("sw-p", "targets/swoole/process.toml", results("sw-p", [record("x", "passed")]), 0),
        RunResult("sw-n", "targets/swoole/naive-push.toml", results("sw-n", [record("x", "known_deviation", failed_checks=["storm"])]), 0),
        RunResult("v", "/tmp/v/variant-a.toml", results("v", [record("x", "known_deviation")]), 0, note="broken on purpose: a"),
    ]
    doc = matrix.build(runs)
    assert [t["group"] for t in doc["targets"]] == ["reference_server", "swoole", "swoole", "broken on purpose (tests/variants)"]
    page = html.render_index(doc)
    assert '<th class="group" colspan="2" data-group="swoole">swoole</th>' in page
    assert page.count('class="group" colspan="1"') == 1  # the reference; the broken variants are folded apart
    assert '<tr data-variant="v">' in page and "broken on purpose (tests/variants)" not in page.split("<details")[0]
    assert '<div class="why">storm</div>' in page  # a known deviation shows the check it failed by


def test_cases_inconclusive_beside_other_runs_are_run_again_alone(monkeypatch, tmp_path: Path) -> None:
    first = RunResult("t", "t.toml", results("t", [record("a", "passed", test="f::a"), record("b", "inconclusive", test="f::b")]))
    asked: list[tuple[list[str], str, bool]] = []

    def fake_run_entry(entry, out, *, pytest_args=(), suffix="", pages=True, **_):
        asked.append((entry.select, suffix, pages))
        return RunResult("t", "t.toml", results("t", [record("b", "failed", test="f::b", failed_checks=["c"])]))

    monkeypatch.setattr(runner, "run_entry", fake_run_entry)
    monkeypatch.setattr(runner, "write_case_pages", lambda name, res, out: {"a": "a.html", "b": "b.html"})
    runner.rerun_inconclusive_alone(runner.Entry(Path("t.toml")), first, tmp_path, pytest_args=(), progress=lambda _: None)
    assert asked == [(["f::b"], "-alone", False)]
    assert [(r["case"], r["verdict"]) for r in first.results["scenarios"]] == [("a", "passed"), ("b", "failed")]
    assert first.results["summary"] == {"passed": 1, "failed": 1} and first.links == {"a": "a.html", "b": "b.html"}
    # Nothing inconclusive: nothing runs again.
    asked.clear()
    runner.rerun_inconclusive_alone(runner.Entry(Path("t.toml")), first, tmp_path, pytest_args=(), progress=lambda _: None)
    assert asked == []


def run_compare(args: list[str], out: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "scenarios.compare", *args, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path, dict]:
    out = tmp_path_factory.mktemp("compare")
    stale = out / "stale.toml"
    text = (REPO / "reference_server" / "target.toml").read_text().replace('cwd = ".."', f'cwd = "{REPO}"')
    stale.write_text(text.replace('name = "reference"', 'name = "stale-list"')
                     + '\n[known_failures]\n"contract_probe[core]" = "was broken once"\n"no_such_case" = "a typo"\n')
    code, output = run_compare(
        [
            "reference_server/target.toml@scenarios/test_probe.py,scenarios/test_dead_session_push.py",
            "targets/websockets_single/target.toml@scenarios/test_probe.py,scenarios/test_dead_session_push.py",
            f"{stale}@scenarios/test_probe.py::test_contract_probe[core]",
            "--variants", "sid_reuse",
            "--jobs", "2",  # two runs at once, as CI's PHP comparison runs
        ],
        out,
    )
    return code, output, out, json.loads((out / "index.json").read_text())


def cells_of(doc: dict) -> dict[str, dict[str, str]]:
    return {r["case"]: {t: c["verdict"] for t, c in r["cells"].items()} for g in doc["groups"] for r in g["rows"]}


def test_small_comparison_verdicts(small_run) -> None:
    code, output, _, doc = small_run
    assert code == 1, output  # the stale list fails the comparison, and nothing else does
    assert doc["problems"] == ["stale-list: contract_probe[core] failed (stale known failure: the manifest lists this case "
                               "('was broken once') but it passed)"], doc["problems"]
    cells = cells_of(doc)
    names = [t["name"] for t in doc["targets"]]
    assert names == ["reference", "websockets-single", "stale-list", "variant-sid_reuse"]
    assert cells["dead_session_push"] == {"reference": "passed", "websockets-single": "passed", "stale-list": "not_run",
                                          "variant-sid_reuse": "known_deviation"}
    assert cells["contract_probe[core]"]["stale-list"] == "failed"
    for cap in ("migrate", "reload", "dynamic_ports", "ports_file"):  # declared by one, refused honestly by the other
        assert cells[f"contract_probe[{cap}]"]["reference"] == "passed"
        assert cells[f"contract_probe[{cap}]"]["websockets-single"] == "passed"
    declared = {t["name"]: t["declared"] for t in doc["targets"]}
    assert "migrate" in declared["reference"] and "migrate" not in declared["websockets-single"]
    variant = doc["targets"][3]
    assert variant["note"].startswith("broken on purpose") and variant["selection"] == ["scenarios/test_dead_session_push.py"]
    assert "broken on purpose" in variant["known_failures"]["dead_session_push"]
    unmatched = {t["name"]: t["known_failures_unmatched"] for t in doc["targets"]}
    assert unmatched["stale-list"] == ["no_such_case"] and unmatched["reference"] == []  # shown, not a failure


def test_small_comparison_evidence_pages(small_run) -> None:
    _, _, out, doc = small_run
    links = [c["link"] for g in doc["groups"] for r in g["rows"] for c in r["cells"].values() if c["verdict"] != "not_run"]
    assert links and all(link and (out / link).is_file() for link in links), links
    # Every evidence page of a case that ran its checks shows a figure of its history, drawn.
    for link in links:
        text = (out / link).read_text()
        assert '<figure id="fig-' in text and 'src="data:image/png;base64,' in text, link
    index = (out / "index.html").read_text()
    # The broken variants are folded apart, a row each, so the matrix keeps the real targets' width.
    assert '<details id="variants">' in index and index.count('<tr data-variant="variant-sid_reuse">') == 1
    assert 'data-target="variant-sid_reuse"' not in index
    page = (out / "cases" / "variant-sid_reuse" / "dead_session_push.html").read_text()
    assert "a new client never receives what was meant for another session" in page  # the failed check, named
    assert "expected" in page and "observed" in page and "Target log excerpt" in page
    assert 'class="cell v-failed"' in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_matrix_page_in_a_real_browser(small_run, tmp_path: Path) -> None:
    """Chromium renders the page: the DOM it built, and a screenshot whose verdict colours are there."""
    from PIL import Image

    _, _, out, doc = small_run
    base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", (out / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rows = sum(len(g["rows"]) for g in doc["groups"])
    assert dom.stdout.count("<tr data-case=") == rows
    assert dom.stdout.count('data-verdict="known_deviation"') == 1
    shot = tmp_path / "matrix.png"
    run = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1400,1000", (out / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000)
    colours = {rgb for _, rgb in image.getcolors(maxcolors=1 << 20)}
    for name, rgb in {"passed": (0xE3, 0xF4, 0xE8), "failed": (0xFD, 0xE2, 0xE1), "known deviation": (0xFF, 0xF1, 0xCC)}.items():
        assert rgb in colours, f"no {name} cell drawn in the screenshot"
    shutil.copyfile(shot, out / "matrix.png")
    # An evidence page: its figure is embedded and drawn (the plot's first colour is on screen).
    page = out / "cases" / "variant-sid_reuse" / "dead_session_push.html"
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert '<figure id="fig-dead_pushes"' in dom.stdout and 'src="data:image/png;base64,' in dom.stdout
    shot = tmp_path / "evidence.png"
    run = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    colours = {rgb for _, rgb in Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (0x1F, 0x77, 0xB4) in colours, "the figure is not drawn on the evidence page"
    shutil.copyfile(shot, out / "evidence.png")


def test_probe_judgements() -> None:
    """The honesty probe's rules: a declared op answers in kind, an undeclared one is refused with 4501."""
    from scenarios.harness.probe import PROBES, OpProbe, RouteProbe, judge_op, judge_route

    unsupported = {"ok": False, "error": {"code": 4501}}
    migrate = PROBES["migrate"].ops[0]
    assert judge_op(migrate, {"ok": False, "error": {"code": 2003}}, declared=True)[0]
    assert not judge_op(migrate, unsupported, declared=True)[0]  # declared, but says unsupported
    assert judge_op(migrate, unsupported, declared=False)[0]
    assert not judge_op(migrate, {"ok": True, "from": 0, "to": 1}, declared=False)[0]  # hides what it does
    assert not judge_op(OpProbe("channels", carries="channels"), {"ok": True}, declared=True)[0]
    assert not judge_op(OpProbe("timer_status", expect="error"), unsupported, declared=True)[0]
    route = RouteProbe("GET", "/v1/reloads", carries="history")
    assert judge_route(route, 200, {"history": []}, declared=True)[0]
    assert not judge_route(route, 200, {}, declared=True)[0]
    assert judge_route(route, 404, {}, declared=False)[0] and judge_route(route, 501, {}, declared=False)[0]
    assert not judge_route(route, 200, {"history": []}, declared=False)[0]
    coded = RouteProbe("POST", "/x", status=404, code=2003)
    assert judge_route(coded, 404, {"error": {"code": 2003}}, declared=True)[0]
    assert not judge_route(coded, 404, {"error": {"code": 4404}}, declared=True)[0]
