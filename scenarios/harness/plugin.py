"""The pytest plugin behind ``pytest scenarios/ --target PATH``.

* ``--target``: a manifest (default: the reference server's). ``--redis-url``:
  a real Redis for targets that take one (default: an embedded fakeredis the
  harness starts). ``--report-dir``: where results go (default ``reports``).
* Fixtures: ``target`` (one instance per run, default profile),
  ``target_factory`` (an instance with its own profile, stopped after the
  test), ``admin``, ``evidence``, and ``run_async`` to drive a scenario coroutine.
* A test marked ``@pytest.mark.requires("cap", ...)`` whose capability the
  target does not declare is skipped and reported as ``unsupported``.
* A case the manifest lists in ``[known_failures]`` is expected to fail: if it
  fails it is reported as ``known_deviation`` (and the run stays green); if it
  passes, the list is stale and the case is reported ``failed``. An entry that
  names its checks (``{reason, checks}``) must fail by each of them, else it is
  ``failed`` too: a known bug does not excuse another one. One marked
  ``intermittent`` (a race of the target) may also pass: it is then ``passed``.
* Each run writes ``<report-dir>/runs/<run-id>/results.json`` (and a copy at
  ``<report-dir>/latest/results.json``): one record per scenario with its
  verdict, duration and the path of its evidence file, and the run's
  ``run_seed``: every random choice of the scenarios follows from it
  (``Evidence.rng``), so ``--run-seed N`` makes the same choices again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from ..compare.draw import Drawer
from . import CONTRACT_VERSION, conformance
from .admin import AdminClient
from .broker import EmbeddedBroker, ExternalRedis, RedisServer
from .evidence import DEFAULT_RUN_SEED, Evidence, ScenarioFailed
from .manifest import Manifest, ManifestError, load_manifest
from .sharing import share_dir, turn
from .starvation import LoopLag, Sampler
from .target import Target
from .waiting import WaitTimeout

REPO = Path(__file__).resolve().parents[2]
REFERENCE_MANIFEST = REPO / "reference_server" / "target.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("scenarios", "scenario harness")
    group.addoption("--target", default=str(REFERENCE_MANIFEST), help="target manifest (TOML)")
    group.addoption(
        "--redis-url",
        default=os.environ.get("SCENARIO_REDIS_URL", ""),
        help="a real Redis the user runs, used as it is (it is never restarted)",
    )
    group.addoption(
        "--broker",
        choices=("embedded", "redis-server"),
        default=os.environ.get("SCENARIO_BROKER", "embedded"),
        help="without --redis-url: embedded fakeredis (default), or a real redis-server the harness runs",
    )
    group.addoption("--report-dir", default=str(REPO / "reports"), help="where results are written")
    group.addoption(
        "--run-seed",
        type=int,
        default=DEFAULT_RUN_SEED,
        help=f"the seed of every random choice of the scenarios (default {DEFAULT_RUN_SEED}); results.json records it",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*caps): contract capabilities the scenario needs")
    config.addinivalue_line("markers", "scenario(id, seed=''): scenario identity in reports")
    config.addinivalue_line(
        "markers", "heavy(reason): the case loads the machine; among runs sharing it, it runs alone (harness/sharing.py)"
    )


class ScenarioRun:
    """State of one harness run: the target manifest, the broker, the results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        try:
            self.manifest: Manifest = load_manifest(config.getoption("--target"))
        except ManifestError as exc:
            raise pytest.UsageError(str(exc)) from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{self.manifest.name}-{os.getpid()}"
        self.report_root = Path(config.getoption("--report-dir")).resolve()
        self.run_dir = self.report_root / "runs" / self.run_id
        self.results: list[dict[str, Any]] = []
        self.target_stops: list[dict[str, Any]] = []
        self.unmatched_known_failures: list[str] = []
        self.started = time.time()
        self.run_seed: int = config.getoption("--run-seed")
        url = config.getoption("--redis-url")
        kind = config.getoption("--broker")
        self.broker: EmbeddedBroker | RedisServer | ExternalRedis
        if url:
            self.broker = ExternalRedis(url)
        elif kind == "redis-server":
            if not RedisServer.available():
                raise pytest.UsageError("--broker redis-server: no redis-server on PATH")
            self.broker = RedisServer()
        else:
            self.broker = EmbeddedBroker()
        self.broker_kind = self.broker.kind
        self._redis_url = ""
        self._install_problem: str | bool | None = False
        #: The harness's own conditions (CPU noise, loop lag): a starved timing failure is inconclusive.
        self.sampler = Sampler()
        #: draws each case's figures beside the run, at the lowest priority (scenarios/compare/draw.py)
        self.drawer = Drawer()
        self.drawing_problems: list[str] = []
        self.sampler.start()

    @property
    def install_problem(self) -> str | None:
        """Why the target cannot start here (manifest ``[install]``), checked once per run."""
        if self._install_problem is False:
            self._install_problem = self.manifest.install_problem()
        return self._install_problem  # type: ignore[return-value]

    @property
    def redis_url(self) -> str:
        """The broker's URL (started on first use; it serves every target of the run)."""
        if not self._redis_url:
            self._redis_url = self.broker.start()
        return self._redis_url

    def new_target(self, profile: dict[str, Any], label: str) -> Target:
        redis_url = self.redis_url if self.manifest.uses_redis else ""
        target = Target(
            self.manifest,
            profile=profile,
            redis_url=redis_url,
            log_path=self.run_dir / "logs" / f"{label}.log",
        )
        target.start()
        return target

    def stopped(self, target: Target, label: str) -> None:
        report = target.stop()
        self.target_stops.append(
            {
                "label": label,
                "exit_code": report.exit_code,
                "forced": report.forced,
                "leftover_pids": report.leftover_pids,
                "stop_s": round(report.duration_s, 3),
                "log": str(target.log_path),
            }
        )

    def close(self) -> None:
        self.drawing_problems = self.drawer.finish()
        self.sampler.stop()
        if self._redis_url:
            self.broker.stop()

    def write_results(self) -> Path:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        doc = {
            "run_id": self.run_id,
            "run_seed": self.run_seed,
            "contract": CONTRACT_VERSION,
            "target": {
                "name": self.manifest.name,
                "manifest": str(self.manifest.path),
                "description": self.manifest.description,
                "declared_capabilities": sorted(self.manifest.capabilities),
                "known_failures": self.manifest.known_failures,
                "known_failure_checks": {k: list(v) for k, v in self.manifest.known_failure_checks.items()},
                "known_failures_intermittent": sorted(self.manifest.known_failure_intermittent),
                "known_failures_unmatched": self.unmatched_known_failures,
            },
            "broker": self.broker_kind,
            "started": self.started,
            "duration_s": round(time.time() - self.started, 3),
            "summary": counts,
            "scenarios": self.results,
            "target_stops": self.target_stops,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "results.json"
        path.write_text(json.dumps(doc, indent=1))
        latest = self.report_root / "latest"
        latest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, latest / "results.json")
        return path


_RUN_KEY = pytest.StashKey[ScenarioRun]()


def _run(config: pytest.Config) -> ScenarioRun:
    if _RUN_KEY not in config.stash:
        config.stash[_RUN_KEY] = ScenarioRun(config)
    return config.stash[_RUN_KEY]


def _is_scenario(item: pytest.Item) -> bool:
    return item.get_closest_marker("scenario") is not None


def _scenario_id(item: pytest.Item) -> tuple[str, str]:
    marker = item.get_closest_marker("scenario")
    if marker is None:
        return item.name, ""
    return marker.args[0], marker.kwargs.get("seed", "")


def case_key(scenario_id: str, nodeid: str) -> str:
    """A case's name in reports and in ``known_failures``: the scenario id, plus ``[param]`` if any."""
    name = nodeid.rsplit("::", 1)[-1]
    return scenario_id + name[name.index("[") :] if "[" in name else scenario_id


def known_failure_reason(manifest: Manifest, scenario_id: str, nodeid: str) -> str | None:
    """The manifest's reason if it lists this case (by case key, or by scenario id for every case)."""
    known = manifest.known_failures
    return known.get(case_key(scenario_id, nodeid), known.get(scenario_id))


def known_failure_checks(manifest: Manifest, scenario_id: str, nodeid: str) -> tuple[str, ...]:
    """(1.1) The checks a listed case must fail by; empty when any failure will do."""
    key = case_key(scenario_id, nodeid)
    if key in manifest.known_failures:
        return manifest.known_failure_checks.get(key, ())
    return manifest.known_failure_checks.get(scenario_id, ())


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(_is_scenario(item) for item in items):
        return
    run = _run(config)
    matched: set[str] = set()
    for item in items:
        if not _is_scenario(item):
            continue
        sid = _scenario_id(item)[0]
        matched |= {case_key(sid, item.nodeid), sid}
        item.add_marker(pytest.mark.timeout(SCENARIO_BACKSTOP_S))
        reason = known_failure_reason(run.manifest, sid, item.nodeid)
        if reason is not None:
            strict = not known_failure_intermittent(run.manifest, sid, item.nodeid)
            item.add_marker(pytest.mark.xfail(reason=f"known deviation: {reason}", strict=strict))
    # A key that names no collected case is a typo, or a case of scenarios this run did not load.
    run.unmatched_known_failures = sorted(set(run.manifest.known_failures) - matched)


@pytest.fixture(scope="session")
def scenario_run(request: pytest.FixtureRequest) -> ScenarioRun:
    return _run(request.config)


@pytest.fixture(scope="session")
def target(scenario_run: ScenarioRun):
    instance = scenario_run.new_target({}, "default")
    try:
        yield instance
    finally:
        scenario_run.stopped(instance, "default")


@pytest.fixture
def target_factory(scenario_run: ScenarioRun, request: pytest.FixtureRequest):
    started: list[tuple[Target, str]] = []

    def start(profile: dict[str, Any], label: str = "") -> Target:
        label = label or f"{request.node.name}-{len(started)}"
        instance = scenario_run.new_target(profile, label)
        started.append((instance, label))
        return instance

    try:
        yield start
    finally:
        for instance, label in started:
            scenario_run.stopped(instance, label)


@pytest.fixture
def admin(target: Target) -> AdminClient:
    return AdminClient(target.admin_url, target.admin_token)


@pytest.fixture
def evidence(request: pytest.FixtureRequest, scenario_run: ScenarioRun):
    sid, seed = _scenario_id(request.node)
    ev = Evidence(sid, scenario_run.run_dir / "evidence" / f"{request.node.name}.json")
    ev.conformance = request.node.stash.get(_CONFORMANCE_KEY, None)
    ev.run_seed = scenario_run.run_seed
    request.node.stash[_EVIDENCE_KEY] = ev
    yield ev
    ev.write({"seed": seed, "run_seed": scenario_run.run_seed, "target": scenario_run.manifest.name, "test": request.node.nodeid})
    if ev.figures:
        scenario_run.drawer.submit(ev.path)


_EVIDENCE_KEY = pytest.StashKey[Evidence]()
_CONFORMANCE_KEY = pytest.StashKey[conformance.ConformanceLog]()


#: pytest-timeout's bound for a scenario: a backstop far above every scenario's own bound
#: (``run_async``'s ``timeout``), so that the scenario's bound fires first and its evidence is written.
SCENARIO_BACKSTOP_S = 600


class ScenarioTimeout(AssertionError):
    """A scenario did not finish within its own bound; the checks recorded so far are its evidence."""


@pytest.fixture
def run_async(request: pytest.FixtureRequest):
    """Run a scenario coroutine to completion on a fresh event loop, within its own bound."""

    def runner(coro, timeout: float = 90.0):
        assert timeout < SCENARIO_BACKSTOP_S - 60, "a scenario's bound must stay below the backstop"

        async def bounded():
            lag = LoopLag(_run(request.config).sampler.lags)
            lag.start()
            try:
                return await asyncio.wait_for(coro, timeout)
            except TimeoutError:
                ev = request.node.stash.get(_EVIDENCE_KEY, None)
                if ev is not None:
                    ev.check(
                        "the scenario finishes within its own bound",
                        False,
                        expected=f"<= {timeout} s",
                        observed="still running",
                        timing=True,
                    )
                raise ScenarioTimeout(f"the scenario did not finish within its own bound of {timeout} s") from None
            finally:
                lag.stop()

        return asyncio.run(bounded())

    return runner


_LOG_MARKS = pytest.StashKey[dict[str, int]]()
LOG_EXCERPT_LINES = 40


def _log_sizes(run: ScenarioRun) -> dict[str, int]:
    logs = run.run_dir / "logs"
    return {p.name: p.stat().st_size for p in logs.glob("*.log")} if logs.is_dir() else {}


def log_excerpts(run: ScenarioRun, marks: dict[str, int]) -> dict[str, list[str]]:
    """What each target log gained since ``marks`` (its last lines): the case's share of the logs."""
    out: dict[str, list[str]] = {}
    for name, size in sorted(_log_sizes(run).items()):
        start = marks.get(name, 0)
        if size <= start:
            continue
        with open(run.run_dir / "logs" / name, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        out[name] = lines[-LOG_EXCERPT_LINES:]
    return out


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("requires")
    if not _is_scenario(item) and marker is None:
        return
    run = _run(item.config)
    if _is_scenario(item) and run.install_problem:
        pytest.skip(f"not installed: {run.install_problem}")
    if marker is not None:
        missing = [cap for cap in marker.args if cap not in run.manifest.capabilities]
        if missing:
            pytest.skip(f"unsupported: target {run.manifest.name!r} does not declare {', '.join(missing)}")
    if _is_scenario(item):
        _take_turn(item)
        item.stash[_LOG_MARKS] = _log_sizes(run)
        item.stash[_CONFORMANCE_KEY] = conformance.begin_case()
        item.stash[_STARTED_KEY] = time.time()


_TURN_KEY = pytest.StashKey[contextlib.ExitStack]()


def _take_turn(item: pytest.Item) -> None:
    """Among the runs sharing the machine ($SCENARIO_SHARE_DIR), wait for this case's turn (alone
    if it is marked ``heavy``); the case's clock and its starvation window start after the wait."""
    stack = contextlib.ExitStack()
    stack.enter_context(turn(share_dir(), heavy=item.get_closest_marker("heavy") is not None))
    item.stash[_TURN_KEY] = stack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    try:
        return (yield)
    finally:
        stack = item.stash.get(_TURN_KEY, None)
        if stack is not None:
            del item.stash[_TURN_KEY]
            stack.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if not _is_scenario(item):
        return report
    finished = report.when == "call" or (report.when == "setup" and not report.passed)
    if report.when == "teardown" and report.failed:
        finished = True
    if not finished:
        return report
    sid, seed = _scenario_id(item)
    ev = item.stash.get(_EVIDENCE_KEY, None)
    if report.when == "call" and report.failed and ev is not None:
        _blame_malformed_answers(item, report, call, ev)
    known = known_failure_reason(_run(item.config).manifest, sid, item.nodeid)
    mismatch_timing_only = False
    if hasattr(report, "wasxfail") and report.skipped and ev is not None and _malformed(item, ev):
        # The manifest excuses the case's known bug, not answers of a shape the contract does not allow.
        verdict = "failed"
        message = f"known failure ({known}), but the target's answers do not match the contract:\n" + "\n".join(
            c.describe() for c in ev.failed if c.name == conformance.CHECK_NAME
        )
        report.outcome, report.longrepr = "failed", message
        del report.wasxfail
    elif hasattr(report, "wasxfail") and report.skipped and _missing_checks(item, ev, sid):
        # The manifest names the checks of the known bug: failing otherwise is another bug (unless
        # the machine was too busy to tell: below).
        missing = _missing_checks(item, ev, sid)
        failed = [c.name for c in ev.failed] if ev is not None else []
        listed = set(known_failure_checks(_run(item.config).manifest, sid, item.nodeid))
        mismatch_timing_only = ev is not None and all(c.timing for c in ev.failed if c.name not in listed)
        verdict = "failed"
        message = (
            f"known failure ({known}) expected to fail by {missing}, but it failed by {failed or 'no named check'}:\n"
            + str(call.excinfo.value if call.excinfo else "")[-4000:]
        )
        report.outcome, report.longrepr = "failed", message
        del report.wasxfail
    elif hasattr(report, "wasxfail") and report.skipped:
        verdict, message = "known_deviation", f"{known}\n\n" + str(call.excinfo.value if call.excinfo else "")[-4000:]
    elif known is not None and report.failed and report.when == "call" and call.excinfo is None:
        verdict = "failed"
        message = f"stale known failure: the manifest lists this case ({known!r}) but it passed"
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        verdict = "unsupported" if "unsupported:" in reason else "skipped"
        message = reason.removeprefix("Skipped: ")
    elif report.passed:
        verdict, message = "passed", ""
        if known is not None:  # an intermittent known failure that did not show this time
            message = f"listed as an intermittent known failure ({known}); it did not show in this run"
    else:
        verdict = "failed" if report.when == "call" else "error"
        failure = call.excinfo.value if call.excinfo is not None else None
        message = (str(failure) if isinstance(failure, AssertionError) and str(failure) else str(report.longrepr))[-4000:]
        message = item.stash.get(_STOPPED_KEY, message)
    run = _run(item.config)
    conditions = run.sampler.conditions(item.stash.get(_STARTED_KEY, time.time()), time.time())
    starved_why = ""
    if verdict == "failed" and report.when == "call" and conditions.starved and _timing_only(ev, call):
        # Contract 11.4: the failure is within what the harness's own starvation explains.
        starved_why = "only timing checks failed"
    elif verdict == "failed" and conditions.starved and mismatch_timing_only:
        # A known failure that failed by other checks than its listed ones, all of them timing ones,
        # on a starved machine (the target's own timing shifts too): not judged either way.
        starved_why = "a known failure whose other failed checks are all timing ones"
    if starved_why:
        verdict = "inconclusive"
        message = f"inconclusive: {conditions.why}; {starved_why}\n\n{message}"
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, message[:2000])
    if ev is not None:
        ev.fact("conditions", conditions.as_dict())
    run.results.append(
        {
            "id": sid,
            "case": case_key(sid, item.nodeid),
            "seed": seed,
            "test": item.nodeid,
            "verdict": verdict,
            "duration_s": round(report.duration, 3),
            "evidence": str(ev.path) if ev is not None else None,
            "checks": len(ev.checks) if ev is not None else 0,
            "failed_checks": [c.name for c in ev.failed] if ev is not None else [],
            "message": message,
            "log_excerpt": log_excerpts(run, item.stash.get(_LOG_MARKS, {})) if verdict != "unsupported" else {},
            "conditions": conditions.as_dict(),
            "headline": next((f["headline"] for f in ev.figures if f.get("headline")), "") if ev is not None else "",
            #: figures of the history with something drawn in them (a point, a bar or a series point)
            "figures": sum(1 for f in ev.figures if _drawn(f)) if ev is not None else 0,
        }
    )
    return report


def _drawn(figure: dict[str, Any]) -> bool:
    """Whether a figure has data: a dot or a bar in a row, or a point of a series."""
    lanes = figure.get("lanes") or []
    return any(lane.get("points") or lane.get("bars") for lane in lanes) or any(s.get("points") for s in figure.get("series") or [])


def _timing_only(ev: Evidence | None, call: pytest.CallInfo) -> bool:
    """Whether the case failed only by checks with a time bound (or a bounded wait that ran out)."""
    failure = call.excinfo.value if call.excinfo is not None else None
    if ev is not None and ev.failed:
        return all(c.timing for c in ev.failed)
    return isinstance(failure, WaitTimeout | ScenarioTimeout)


_STARTED_KEY = pytest.StashKey[float]()


def known_failure_intermittent(manifest: Manifest, scenario_id: str, nodeid: str) -> bool:
    """(1.1) Whether the listed case may pass in some runs (a race of the target)."""
    key = case_key(scenario_id, nodeid)
    return (key if key in manifest.known_failures else scenario_id) in manifest.known_failure_intermittent


def _missing_checks(item: pytest.Item, ev: Evidence | None, sid: str) -> list[str]:
    """The checks a known failure is listed to fail by that did not fail (or did not run)."""
    wanted = known_failure_checks(_run(item.config).manifest, sid, item.nodeid)
    failed = {c.name for c in ev.failed} if ev is not None else set()
    return [name for name in wanted if name not in failed]


def _malformed(item: pytest.Item, ev: Evidence | None) -> bool:
    """Whether the case saw answers the contract does not allow (the check is then in ``ev``)."""
    log = item.stash.get(_CONFORMANCE_KEY, None)
    if ev is None or log is None or log.summary()["violations"] == 0:
        return False
    conformance.check(ev, log)
    return True


def _blame_malformed_answers(item: pytest.Item, report: pytest.TestReport, call: pytest.CallInfo, ev: Evidence) -> None:
    """A scenario that stopped on an exception after malformed answers fails by the contract check.

    Whatever broke afterwards (a missing key, a wrong type, a wait that never
    ended) follows from answers the contract does not allow: the case is a
    failed check naming them, never a harness traceback.
    """
    log = item.stash.get(_CONFORMANCE_KEY, None)
    failure = call.excinfo.value if call.excinfo is not None else None
    if log is None or failure is None or isinstance(failure, ScenarioFailed):
        return
    if log.summary()["violations"] == 0:
        return
    conformance.check(ev, log)
    lines = [f"{ev.scenario}: the target's answers do not match the contract, and the scenario stopped"]
    lines += [c.describe() for c in ev.failed]
    lines.append(f"then: {type(failure).__name__}: {str(failure)[:300]}")
    lines.append(f"evidence: {ev.path}")
    text = "\n".join(lines)
    report.longrepr = text
    item.stash[_STOPPED_KEY] = text


_STOPPED_KEY = pytest.StashKey[str]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(_RUN_KEY, None)
    if run is None:
        return
    run.close()
    if run.results:
        path = run.write_results()
        session.config.stash[_RESULTS_PATH] = path
        write_single_report(run, path, exitstatus)


def write_single_report(run: ScenarioRun, results_path: Path, exitstatus: int) -> None:
    """This run alone as a one-column matrix: ``<report-dir>/latest/index.html`` (and evidence pages)."""
    from ..compare import matrix, runner

    results = json.loads(results_path.read_text())
    out = run.report_root / "latest"
    one = matrix.RunResult(run.manifest.name, str(run.manifest.path), results, exit_code=int(exitstatus))
    one.links = runner.write_case_pages(run.manifest.name, results, out)
    runner.write(matrix.build([one], generated=time.time()), out)


_RESULTS_PATH = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    path = config.stash.get(_RESULTS_PATH, None)
    run = config.stash.get(_RUN_KEY, None)
    if path is None or run is None:
        return
    counts: dict[str, int] = {}
    for r in run.results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    terminalreporter.write_sep("=", f"scenarios against {run.manifest.name}: {summary}")
    for r in run.results:
        terminalreporter.write_line(f"  {r['verdict']:<15} {r['case']:<36} {r['duration_s']:>7.2f}s")
    for r in run.results:
        if r["verdict"] == "inconclusive":
            terminalreporter.write_line(
                f"INCONCLUSIVE: {r['case']}: {r['conditions']['why']}; its timing checks failed"
                f" ({'; '.join(r['failed_checks'])}). Run it again on a quieter machine."
            )
    terminalreporter.write_line(f"run seed: {run.run_seed} (the same random choices again: --run-seed {run.run_seed})")
    terminalreporter.write_line(f"results: {path}")
    terminalreporter.write_line(f"report:  {run.report_root / 'latest' / 'index.html'}")
    if run.unmatched_known_failures:
        terminalreporter.write_line(
            f"WARNING: [known_failures] names cases this run did not collect: {', '.join(run.unmatched_known_failures)}"
        )
    for problem in run.drawing_problems[:5]:
        terminalreporter.write_line(f"WARNING: a figure could not be drawn (its data is in the evidence): {problem}")
    leftovers = [s for s in run.target_stops if s["leftover_pids"] or s["forced"]]
    for s in leftovers:
        terminalreporter.write_line(f"WARNING: target {s['label']} had to be killed: {s}")
