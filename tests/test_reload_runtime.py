"""Integration tests of reload in the reference server (reference-specific).

The scenarios check what any target must do under a reload; these check the
reference's own rules: signals, custom processes, the framework clearing the
timers an exit hook forgot (one warning each), the kill after ``max_wait_ms``,
and bad reload requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal

import pytest

from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.reloads import wait_completed
from scenarios.harness.waiting import until
from tests.test_server import admin_of, start_target


@pytest.fixture
def leaky(tmp_path):
    target = start_target(tmp_path, "leaky", ("--app", "tests.apps:leaky_app"), workers=2, task_workers=1)
    yield target
    report = target.stop()
    assert report.exit_code == 0 and not report.forced and not report.leftover_pids, report


def _events(target, name: str) -> list[dict]:
    return [json.loads(line) for line in target.log_lines() if f'"{name}"' in line]


def test_signals_custom_processes_and_forgotten_timers(leaky):
    admin = admin_of(leaky)

    async def main():
        client = await ScenarioClient.connect(leaky.ws_url, "c")
        await client.whoami()
        try:
            before = {p["name"]: p for p in await admin.processes()}
            leaky.signal(signal.SIGHUP)
            await until(lambda: _events(leaky, "signal.ignored"), timeout=5, what="SIGHUP logged")
            leaky.signal(signal.SIGUSR2)
            task_only = await wait_completed(admin, 1)
            middle = {p["name"]: p for p in await admin.processes()}
            leaky.signal(signal.SIGUSR1)
            full = await wait_completed(admin, 2)
            after = {p["name"]: p for p in await admin.processes()}
            reply = await client.request("echo", seq=1, data="still here")
            return before, middle, after, task_only, full, reply, (await admin.get("/v1/reloads"))["counters"]
        finally:
            await dispose_all([client])

    before, middle, after, task_only, full, reply, counters = asyncio.run(main())
    assert counters == {"requested": 2, "merged": 0, "completed": 2, "forced_kills": 0}  # SIGHUP asked for nothing
    assert task_only["scope"] == ["task_worker"] and [p["name"] for p in task_only["retired"]] == ["task-0"]
    assert middle["task-0"]["pid"] != before["task-0"]["pid"] and middle["task-0"]["generation"] == 2
    for name in ("worker-0", "worker-1", "custom-pulse", "custom-greeter", "admin"):
        assert middle[name]["pid"] == before[name]["pid"], name
    for name in ("worker-0", "worker-1", "task-0", "custom-pulse"):
        assert after[name]["pid"] != middle[name]["pid"] and after[name]["generation"] == 3, name
    assert after["custom-greeter"]["pid"] == before["custom-greeter"]["pid"]  # not reloadable: left alone
    assert after["custom-greeter"]["generation"] == 1
    assert reply["ok"] and reply["data"] == "still here"
    workers = [p for p in full["retired"] if p["kind"] == "worker"]
    assert len(workers) == 2 and all(p["timers_after_exit_hook"] == 1 and p["timers_at_exit"] == 0 for p in workers)
    warnings = _events(leaky, "timers.left_after_exit")
    assert len(warnings) == 2, warnings  # one per retired worker, naming what it cleared
    assert all(w["count"] == 1 and w["timers"][0]["label"] == "forgotten heartbeat" for w in warnings)


def test_old_worker_outliving_max_wait_is_killed_with_a_warning(tmp_path):
    target = start_target(tmp_path, "slow", workers=2, task_workers=1, max_wait_ms=500)
    admin = admin_of(target)

    async def main():
        blocked = await ScenarioClient.connect(target.ws_url, "blocked")
        other = await ScenarioClient.connect(target.ws_url, "other")
        await asyncio.gather(blocked.whoami(), other.whoami())
        assert blocked.worker != other.worker, "round-robin puts them on different workers"
        try:
            await other.request("timer_start", interval_ms=10)
            await blocked.send({"op": "block", "id": "b", "ms": 4000})  # its worker cannot retire in time
            record = await admin.call("POST", "/v1/reload", {"wait": True})
            seen = len(other.evs("tick"))
            await until(lambda: len(other.evs("tick")) > seen + 5, timeout=5, what="ticks after the reload")
            await until(lambda: blocked.is_closed, timeout=5, what="the killed worker's client to see the end")
            fresh = await ScenarioClient.connect(target.ws_url, "fresh")
            await fresh.whoami()
            await fresh.close()
            stats = await admin.stats()
            return record, stats, other.is_closed, [t["gen"] for t in other.evs("tick")]
        finally:
            await dispose_all([blocked, other])

    try:
        record, stats, other_closed, gens = asyncio.run(main())
    finally:
        report = target.stop()
    assert report.exit_code == 0 and not report.leftover_pids, report
    assert record["forced_kills"] == 1 and record["sessions_lost"] == 1, record
    assert stats["reloads"]["forced_kills"] == 1 and stats["generation"] == 2
    assert not other_closed and gens[-1] == 2 and gens == sorted(gens)
    kills = _events(target, "reload.force_kill")
    assert len(kills) == 1 and kills[0]["max_wait_ms"] == 500 and kills[0]["name"].startswith("worker-"), kills


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"scope": "workers"}, "'scope'"),
        ({"wait": "yes"}, "'wait'"),
        ({"timeout_ms": 0}, "'timeout_ms'"),
        ([1, 2], "object"),
    ],
)
def test_bad_reload_requests_are_refused_and_change_nothing(server_for_bad_input, body, names):
    admin = admin_of(server_for_bad_input)
    status, payload = admin.request_sync("POST", "/v1/reload", body)
    assert status == 400 and payload["error"]["code"] == 4400 and names in payload["error"]["message"], payload
    status, payload = admin.request_sync("GET", "/v1/reloads")
    assert status == 200 and payload["counters"]["requested"] == 0 and payload["running"] is None


def test_reload_route_methods_and_app_op(server_for_bad_input):
    admin = admin_of(server_for_bad_input)
    status, payload = admin.request_sync("GET", "/v1/reload")
    assert status == 405 and "POST" in payload["error"]["message"]

    async def main():
        client = await ScenarioClient.connect(server_for_bad_input.ws_url, "c")
        try:
            bad = await client.request("reload", scope="everything")
            good = await client.request("reload", scope="task_workers")
            return bad, good
        finally:
            await dispose_all([client])

    bad, good = asyncio.run(main())
    assert not bad["ok"] and bad["error"]["code"] == 4400 and "'scope'" in bad["error"]["message"]
    assert good["ok"] and good["merged"] is False and good["generation"] == 2


@pytest.fixture(scope="module")
def server_for_bad_input(tmp_path_factory):
    target = start_target(tmp_path_factory.mktemp("bad"), "bad-reload", workers=1, task_workers=1)
    yield target
    report = target.stop()
    assert report.exit_code == 0 and not report.forced and not report.leftover_pids, report


def test_reload_with_nothing_in_scope_is_done_at_once(tmp_path):
    target = start_target(tmp_path, "no-tasks", workers=1, task_workers=0)
    try:
        status, record = admin_of(target).request_sync("POST", "/v1/reload", {"scope": "task_workers", "wait": True})
    finally:
        report = target.stop()
    assert status == 200 and record["state"] == "done" and record["retired"] == [], record
    assert report.exit_code == 0 and not report.leftover_pids, report


def test_workers_retire_one_at_a_time_after_every_successor_serves(tmp_path):
    """The reference's order (docs/architecture.md, "Reload"): every new worker is ready before
    the first old one retires, and an old worker retires only once the one before has exited.
    The sessions move in batches and keep ticking."""
    target = start_target(tmp_path, "rolling", workers=3, task_workers=1, log_level="info")
    admin = admin_of(target)

    async def main():
        clients = [await ScenarioClient.connect(target.ws_url, f"c{i}") for i in range(24)]
        try:
            await asyncio.gather(*(c.request("timer_start", interval_ms=20) for c in clients))
            await admin.call("POST", "/v1/reload", {"wait": True})
            before = [len(c.evs("tick")) for c in clients]
            await until(lambda: all(len(c.evs("tick")) >= n + 3 for c, n in zip(clients, before, strict=True)),
                        timeout=5, what="every session ticking after the reload")
            return [c.is_closed for c in clients]
        finally:
            await dispose_all(clients)

    try:
        closed = asyncio.run(main())
        events = [json.loads(line) for line in target.log_lines()]
    finally:
        report = target.stop()
    assert not any(closed)
    assert report.exit_code == 0 and not report.forced, report
    ready = [
        e["ts"] for e in events
        if e.get("event") == "process.ready" and e.get("generation") == 2 and e["name"].startswith("worker")
    ]
    retire = [(e["ts"], e["name"]) for e in events if e.get("event") == "reload.retire"]
    retired = {e["name"]: e["ts"] for e in events if e.get("event") == "reload.retired"}
    workers = [(ts, name) for ts, name in retire if name.startswith("worker")]
    assert len(workers) == 3 and len(ready) == 3, (workers, ready)
    assert workers[0][0] >= max(ready), "a worker retired before every new worker served"
    for (_, previous), (ts, _) in itertools.pairwise(workers):
        assert ts >= retired[previous], f"a worker retired while {previous} was still handing over"
    handed = [e for e in events if e.get("event") == "reload.handover_done" and e.get("kind") == "worker"]
    assert sum(e["handed_over"] for e in handed) == 24 and all("phases_ms" in e for e in handed), handed
