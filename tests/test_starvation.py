"""The harness's measure of its own conditions (scenarios/harness/starvation.py), and its verdict.

The pure judge on synthetic samples; the sampler on this machine, with a CPU hog inside the
harness's process tree (never noise: a target that starves itself fails) and one outside it
(noise); and the plugin's rule: only a case that failed by timing checks alone while starved is
``inconclusive``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.harness import starvation as st
from scenarios.harness.starvation import Sample, judge, tree_cpu


def samples(noise_per_s: list[float], *, tree_per_s: float = 0.5, steal_per_s: float = 0.0, step: float = 0.25) -> list[Sample]:
    """Cumulative readings every ``step`` s; ``noise_per_s`` gives the noise (CPUs) of each second."""
    out, busy, tree, steal, t = [], 10.0, 5.0, 0.0, 1000.0
    out.append(Sample(t, busy, tree, steal))
    for noise in noise_per_s:
        for _ in range(round(1 / step)):
            t += step
            tree += tree_per_s * step
            steal += steal_per_s * step
            busy += (tree_per_s + noise + steal_per_s) * step
            out.append(Sample(t, busy, tree, steal))
    return out


def test_a_quiet_case_is_not_starved_whatever_the_target_itself_uses() -> None:
    got = judge(samples([0.1, 0.2, 0.1], tree_per_s=1.9), [(1001.0, 0.003)], 1000.0, 1003.0)
    assert not got.starved, got
    assert got.noise_cpus_max is not None and got.noise_cpus_max < 0.3
    assert got.loop_lag_max_s == 0.003
    assert got.windows == []


def test_one_busy_second_of_other_processes_starves_the_case() -> None:
    got = judge(samples([0.1, 1.6, 0.1]), [], 1000.0, 1003.0)
    assert got.starved and "other processes" in got.why
    assert got.noise_cpus_max == pytest.approx(1.6, abs=0.01)
    assert len(got.windows) == 1 and got.windows[0]["noise_cpus"] == pytest.approx(1.6, abs=0.01)


def test_noise_outside_the_case_does_not_count() -> None:
    data = samples([1.8, 1.8, 0.1, 0.1, 1.8])  # the case runs in seconds 2..4 only
    assert not judge(data, [], 1002.0, 1004.0).starved
    assert judge(data, [], 1000.0, 1002.0).starved


def test_a_short_last_window_is_not_judged() -> None:
    """A last reading just after the one before: one 10 ms tick over 5 ms must not read as 2 CPUs."""
    data = samples([0.1, 0.1])
    last = data[-1]
    data.append(Sample(last.t + 0.005, last.busy_s + 0.01, last.tree_s, last.steal_s))
    got = judge(data, [], 1000.0, last.t + 0.005)
    assert not got.starved and got.noise_cpus_max is not None and got.noise_cpus_max < 0.2, got


def test_steal_alone_starves_the_case() -> None:
    got = judge(samples([0.0, 0.0], steal_per_s=0.3), [], 1000.0, 1002.0)
    assert got.starved and "stole" in got.why


def test_the_harness_late_or_waiting_for_a_cpu_is_reported_but_does_not_starve_the_case() -> None:
    """A long step of the harness's own makes its loop late; a target that keeps every core busy
    makes the harness wait for a CPU. Both are shown, neither excuses a failure."""
    lags = [(1000.5, 0.01), (1001.5, 0.7), (1010.0, 2.0)]
    waiting = [Sample(x.t, x.busy_s, x.tree_s, x.steal_s, wait_s=(x.t - 1000.0) * 0.4) for x in samples([0.1, 0.1])]
    got = judge(waiting, lags, 1000.0, 1002.0)
    assert not got.starved, got
    assert got.loop_lag_max_s == 0.7  # the 2.0 s outside the case is not its own
    assert got.wait_share_max == pytest.approx(0.4, abs=0.01)


def test_no_readings_means_nothing_is_known_and_nothing_is_excused() -> None:
    got = judge([], [], 1000.0, 1002.0)
    assert not got.starved and got.noise_cpus_max is None and got.loop_lag_max_s is None


def test_tree_cpu_sums_a_process_and_its_descendants_only() -> None:
    stats = {1: (0, 100.0), 10: (1, 1.0), 11: (10, 2.0), 12: (11, 4.0), 20: (1, 50.0)}
    assert tree_cpu(10, stats) == 7.0
    assert tree_cpu(12, stats) == 4.0
    assert tree_cpu(99, stats) == 0.0


def test_a_reaped_child_stays_in_the_tree_through_its_parent() -> None:
    """A worker that exits and is reaped between readings: its time moves into its parent's
    cutime (the stats say so), so the tree's sum does not drop (a drop read as noise, hundreds of
    CPUs after a reload, in an earlier version that summed living processes only)."""
    before = {1: (0, 0.0), 10: (1, 5.0), 11: (10, 40.0)}
    after = {1: (0, 0.0), 10: (1, 5.5 + 40.25)}  # 11 used 0.25 s more, exited, and 10 reaped it
    assert tree_cpu(10, after) - tree_cpu(10, before) == pytest.approx(0.75)


HOG = "import time\nend = time.time() + {secs}\nwhile time.time() < end: pass\n"


def start_hogs(n: int, secs: float, *, outside: bool, nice: int = 0) -> list[int]:
    """``n`` busy loops; ``outside``: not in this process's tree (setsid -f: its parent exits at once);
    ``nice``: at that lower priority."""
    code = HOG.format(secs=secs)
    if not outside:
        return [subprocess.Popen([sys.executable, "-c", code]).pid for _ in range(n)]
    pids = []
    for _ in range(n):
        out = subprocess.run(
            ["setsid", "-f", "nice", "-n", str(nice), sys.executable, "-c",
             f"import os; print(os.getpid(), flush=True); os.close(1)\n{code}"],
            stdout=subprocess.PIPE, text=True, timeout=10,
        )
        pids.append(int(out.stdout.split()[0]))
    return pids


def stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # not our child (outside the tree): init reaps it
            pass


needs_proc = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")


def conditions_beside_hogs(sampler: st.Sampler, *, outside: bool, nice: int = 0) -> st.Conditions:
    """Two busy loops for two seconds of sampling; what the sampler judged meanwhile."""
    pids = start_hogs(2, 5, outside=outside, nice=nice)
    try:
        t0 = time.time()
        for _ in range(8):
            sampler.sample()
            time.sleep(st.SAMPLE_S)  # the sampler's own pace: readings every SAMPLE_S
        return sampler.conditions(t0, time.time())
    finally:
        stop(pids)


@needs_proc
def test_the_sampler_sees_a_hog_outside_the_tree_as_noise_and_one_inside_as_ours() -> None:
    sampler = st.Sampler()
    inside = conditions_beside_hogs(sampler, outside=False)
    outside = conditions_beside_hogs(sampler, outside=True)
    # Two busy loops on this machine's cores: about 2 CPUs between them, less what others take.
    assert outside.noise_cpus_max is not None and outside.noise_cpus_max >= st.NOISE_BOUND_CPUS, outside
    assert outside.starved
    assert inside.noise_cpus_max is not None and inside.noise_cpus_max < outside.noise_cpus_max - 0.5, (inside, outside)


@needs_proc
@pytest.mark.skipif(st._HARNESS_NICED, reason="the harness runs niced itself: niced work is counted")
def test_niced_work_outside_the_tree_is_not_noise() -> None:
    """Two busy loops at nice 19 (CI's Swoole build runs so beside the tests) yield the CPU to the
    harness: they are not noise, and a case beside them is not starved."""
    sampler = st.Sampler()
    niced = conditions_beside_hogs(sampler, outside=True, nice=19)
    assert niced.noise_cpus_max is not None and niced.noise_cpus_max < 0.5, niced
    assert not niced.starved


# -- the verdicts beside a CPU hog ----------------------------------------------------------


@needs_proc
def test_beside_a_cpu_hog_timing_failures_are_inconclusive_and_other_failures_stay_failed(tmp_path: Path) -> None:
    """Three busy loops outside the harness's tree (more than this machine's two cores) while:

    * ``stall_blind`` runs it (its bug fails a check with a time bound: new connections hang):
      inconclusive, with the noise recorded; quiet, it fails (tests/test_scenarios_bite.py);
    * ``utf8_unchecked`` runs ``protocol_conformance`` (its bug fails checks with no time bound):
      failed, however busy the machine.
    """
    from tests.test_scenarios_bite import run_suite
    from tests.variants import write_manifest

    stall = "scenarios/test_faults.py::test_fault_worker_stall"
    runs = {
        "stall_blind": (stall, write_manifest("stall_blind", tmp_path)),
        "utf8_unchecked": ("scenarios/test_protocol.py", write_manifest("utf8_unchecked", tmp_path)),
    }
    hogs = start_hogs(3, 120, outside=True)
    records = {}
    try:
        for name, (scenario, manifest) in runs.items():
            _code, results, _output = run_suite([scenario], manifest, tmp_path / name)
            (records[name],) = results["scenarios"]
    finally:
        stop(hogs)
    verdicts = {name: r["verdict"] for name, r in records.items()}
    conditions = {name: r["conditions"] for name, r in records.items()}
    assert all(c["starved"] and c["noise_cpus_max"] >= 1.0 for c in conditions.values()), conditions
    assert verdicts["stall_blind"] == "inconclusive", records["stall_blind"]
    assert "other processes used" in records["stall_blind"]["message"]
    assert verdicts["utf8_unchecked"] == "failed", records["utf8_unchecked"]
