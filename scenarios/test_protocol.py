"""Scenario: the WebSocket protocol itself, case by case, Autobahn style (contract 12.4; no capability).

The promise: a target speaks RFC 6455 as a browser and an attacker may: lengths of every size,
masking, reserved bits and opcodes, control frames (ping, pong, close) and their limits,
fragmentation with control frames between fragments, UTF-8 validation of text (1007), the
closing handshake and its codes (1002 for invalid ones), and a bound on message size (1009).
Each case runs on a connection of its own (16 at a time); no process may exit on any of them.

The seed: a server author gets protocol conformance and multi-process behaviour from one suite.
The Autobahn test suite covers far more (and needs Python 2 or Docker); these are its
categories 1-7 and 9 in their most telling cases.

``drive`` plays the cases (``scenarios/harness/wsprotocol.py``: the frames, the expectations and
the pure ``judge``); the checks are in ``scenarios/harness/checkers/protocol.py`` (unit tests:
``tests/test_wsprotocol.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.protocol import CaseResult, ProtocolHistory, check_protocol, figure
from scenarios.harness.common import warm_up
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle
from scenarios.harness.wsprotocol import Case, cases, judge, run_case

SEED = "RFC 6455 conformance (Autobahn categories 1-7, 9) next to the multi-process behaviour"
PROFILE = {"workers": 2, "task_workers": 1}
CONCURRENT_CASES = 16
READY_BOUND_S = 10.0


async def _ready(admin: AdminClient) -> bool:
    status, _ = await admin.request("GET", "/ready")
    return status == 200


async def drive(target: Any, admin: AdminClient) -> ProtocolHistory:
    h = ProtocolHistory()
    baseline = await warm_up(target, admin)
    h.processes_before = sorted((p.get("name"), p["pid"]) for p in await admin.processes())
    gate = asyncio.Semaphore(CONCURRENT_CASES)

    async def play(case: Case) -> CaseResult:
        async with gate:
            try:
                seen = await run_case("127.0.0.1", target.port, case)
            except (ConnectionError, OSError, TimeoutError) as exc:
                return CaseResult(case.id, case.group, case.what, f"could not play the case: {exc!r}"[:160])
        problem, non_strict = judge(case, seen)
        return CaseResult(case.id, case.group, case.what, problem, non_strict, seen.seconds)

    # Each case has its own connection, so they run side by side: a target that leaves a connection
    # open where it should fail it costs the case's bound once per batch, not once per case.
    all_cases = cases(target.manifest.message_bytes)
    h.results = list(await asyncio.gather(*(play(c) for c in all_cases)))
    if sorted((p.get("name"), p["pid"]) for p in await admin.processes()) != h.processes_before:
        # A case killed a process, and with it the other cases' connections to it: play every case
        # again, one at a time, so that each verdict is the case's own ("no process exits" fails anyway).
        h.facts["replayed_one_at_a_time"] = "a process exited while the cases ran side by side"
        await settle(lambda: _ready(admin), timeout=READY_BOUND_S, interval=0.05)
        gate = asyncio.Semaphore(1)
        h.results = [await play(c) for c in all_cases]
    h.processes_after = sorted((p.get("name"), p["pid"]) for p in await admin.processes())
    h.leftovers = await observe_leftovers(admin, baseline)
    h.facts["cases"] = {r.id: (r.problem or ("passed (non-strict)" if r.non_strict else "passed")) for r in h.results}
    h.facts["seconds"] = round(sum(r.seconds for r in h.results), 3)
    return h


@pytest.mark.scenario("protocol_conformance", seed=SEED)
def test_protocol_conformance(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "protocol")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive(target, admin), timeout=400)
    evidence.add_facts(history.facts)
    evidence.figure(figure(history))
    evidence.record(check_protocol(history))
    evidence.verdict()
