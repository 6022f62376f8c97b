"""Scenario: a flood of connections past the open-file limit knocks nothing over (contract 12.3; no capability).

The promise: a target that runs out of file descriptors refuses what it cannot hold and keeps
serving: no process exits, its sessions tick on, its admin API answers, a client that comes
during the flood is served or refused (never left hanging), it serves again once the flood is
gone, and its log does not fill.

The seed: bare TCP connects up to the open-file limit made every worker of the reference exit
(a worker at its limit received a handed-over fd truncated and took it for a broken control
channel), and a master at its limit busy-looped on ``accept``, writing 100,000 warnings in a
few seconds.

``drive`` records what happened (``scenarios/harness/flood.py`` opens the connections); the
checks are pure, in ``scenarios/harness/checkers/flood.py`` (unit tests:
``tests/test_checkers_flood.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.bystanders import AdminWatch, Watch, tick_times
from scenarios.harness.checkers.flood import ANSWER_BOUND_S, FLOOD_FACTOR, FloodHistory, check_flood, figure
from scenarios.harness.common import warm_up
from scenarios.harness.flood import flood
from scenarios.harness.hostile import HostileClient
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle

SEED = "every worker exits at the open-file limit; the master busy-loops on accept, 100k warnings"
OPEN_FILES = 256
PROFILE = {"workers": 2, "task_workers": 1, "open_files": OPEN_FILES}
BYSTANDERS = 3
HALF_OPEN = 100
HOLD_S = 2.5  # the flood is held this long, so that a stall of the sessions shows
ADMIN_EVERY_S = 0.2
RECOVERY_CLIENTS = 6
RECOVERY_BOUND_S = 10.0


async def try_client(port: int, name: str) -> tuple[str, str]:
    """A WebSocket client: ("served", ...), ("refused", why) or ("hung", where)."""
    try:
        client = await asyncio.wait_for(HostileClient.connect("127.0.0.1", port, name, timeout=ANSWER_BOUND_S),
                                        ANSWER_BOUND_S)
    except TimeoutError:
        return "hung", "no handshake answer"
    except (ConnectionError, OSError) as exc:
        return "refused", repr(exc)[:120]
    try:
        reply = await client.request("echo", seq=1, data=name, timeout=ANSWER_BOUND_S)
        return ("served", "") if reply.get("ok") is True else ("refused", str(reply)[:120])
    except TimeoutError:
        return "hung", "no echo answer"
    except ConnectionError as exc:
        return "refused", repr(exc)[:120]
    finally:
        client.abort()


async def recover(port: int, h: FloodHistory) -> None:
    """Each new client tries until it is served, or the bound since the release passes."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    h.recovery_wanted = RECOVERY_CLIENTS
    for i in range(RECOVERY_CLIENTS):
        while True:
            outcome, detail = await try_client(port, f"after-{i}")
            if outcome == "served":
                h.recovery_served += 1
                break
            if time.monotonic() >= deadline:
                h.recovery_failures.append(f"{outcome}: {detail}")
                break


async def drive(target: Any, admin: AdminClient) -> FloodHistory:
    h = FloodHistory(open_files=OPEN_FILES)
    baseline = await warm_up(target, admin)
    h.processes_before = sorted((p.get("name"), p["pid"]) for p in await admin.processes())
    watch = await Watch.open(target.port, BYSTANDERS)
    watch.start()
    log_mark = len(target.log_lines())
    sampler = AdminWatch(admin, every_s=ADMIN_EVERY_S, bound_s=2 * ANSWER_BOUND_S)
    sampler.start()
    started = time.time()
    bare = half = None
    try:
        bare = await flood("127.0.0.1", target.port, FLOOD_FACTOR * OPEN_FILES)
        half = await flood("127.0.0.1", target.port, HALF_OPEN, half_open=True)
        flooded = time.time()
        h.newcomer, h.newcomer_detail = await try_client(target.port, "newcomer")
        h.newcomer_at = (flooded, time.time())
        await settle(lambda: watch.ticked_after(flooded + HOLD_S), timeout=HOLD_S + ANSWER_BOUND_S, interval=0.05)
        h.held_during = {k: bare.classify()[k] + half.classify()[k] for k in ("shed", "held")}
    finally:
        for f in (bare, half):
            if f is not None:
                f.release()
        h.admin = await sampler.stop()
        if sampler.errors:
            h.facts["admin_errors"] = sampler.errors[:5]
    for name, f in (("bare", bare), ("half_open", half)):
        setattr(h, name, {"attempted": f.attempted, "connected": f.connected, "refused": f.refused,
                          "timed_out": f.timed_out, "errors": f.errors})
    released = time.time()
    await recover(target.port, h)
    h.phases = [("flood", started, flooded), ("held", flooded, released), ("recovery", released, time.time())]
    h.bystanders = await watch.stop(since=started)
    h.tick_times = {f"s{rec.session}": tick_times(c) for c, rec in watch.clients}
    watch.abort()
    h.log_lines = len(target.log_lines()) - log_mark
    h.processes_after = sorted((p.get("name"), p["pid"]) for p in await admin.processes())
    h.leftovers = await observe_leftovers(admin, baseline)
    h.facts["flood"] = {"bare": h.bare, "half_open": h.half_open, "just_before_release": h.held_during,
                        "newcomer": [h.newcomer, h.newcomer_detail], "log_lines": h.log_lines,
                        "admin_slowest_s": max((a[2] for a in h.admin), default=None),
                        "window": {"fault": "flood", "start": started, "end": flooded}}
    return h


@pytest.mark.scenario("fd_exhaustion", seed=SEED)
def test_fd_exhaustion(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "fd_exhaustion")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive(target, admin), timeout=180)
    evidence.add_facts(history.facts)
    evidence.figure(figure(history))
    evidence.record(check_flood(history))
    evidence.verdict()
