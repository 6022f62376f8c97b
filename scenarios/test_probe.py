"""The honesty probe: does the target do what it declares, and refuse what it does not?

Seed: quic-interop-runner, where an implementation must answer "unsupported"
explicitly and the runner checks it does so honestly, and connectrpc's
conformance suite, where implementations declare their features. One case per
capability (and one for the core every target owes), run against the shared
target instance. See ``scenarios/harness/probe.py`` for what each case sends.

``drive_core`` and ``drive_capability`` record every answer in a history; the checks
are pure, in ``scenarios/harness/checkers/probe.py`` (unit tests:
``tests/test_checkers_probe.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.probe import (
    CapabilityHistory,
    CoreHistory,
    HttpAnswer,
    OpAnswer,
    RouteAnswer,
    check_capability,
    check_core,
)
from scenarios.harness.checkers.probe import figure as probe_figure
from scenarios.harness.client import ScenarioClient
from scenarios.harness.probe import CORE_OPS, CORE_ROUTES, HTTP_PROBES, PROBED, PROBES
from scenarios.harness.waiting import until

SEED = "quic-interop-runner / connectrpc: features are declared, and unsupported is said honestly"
#: How long the probe waits for an event it asked for (a task result, a tick, a push, a close).
EVENT_BOUND_S = 5.0
TASK_BOUND_S = 10.0


async def drive_core(target: Any, admin: AdminClient) -> CoreHistory:
    """Every core op and route, a malformed message, the admin API's HTTP errors, a timer, a push, a close."""
    h = CoreHistory()
    client = await ScenarioClient.connect(target.ws_url, "probe")
    try:
        session = (await client.request("whoami")).get("session")
        for probe in CORE_OPS:
            h.ops.append(OpAnswer(probe, await client.request(probe.op, **probe.fields)))
        # A message that is not JSON: BAD_REQUEST with re null, and the session stays open.
        await client.ws.send("this is not json {")
        h.malformed = await until(
            lambda: next((e for e in client.events if e.get("re", 0) is None and e.get("ok") is False), None),
            timeout=EVENT_BOUND_S,
            what="reply to a malformed message",
        )
        h.after_malformed = await client.request("ping")
        # Task: the reply names the task, then its result arrives as an event.
        h.task_reply = await client.request("task", data="probe", sleep_ms=0)
        if h.task_reply.get("ok"):
            h.task_result = await until(
                lambda: next((e for e in client.evs("task_result") if e.get("task") == h.task_reply.get("task")), None),
                timeout=TASK_BOUND_S,
                what="task_result of the probe's task",
            )
        for route in CORE_ROUTES:
            path = route.path.format(session=session)
            status, body = await admin.request(route.method, path, route.body)
            h.routes.append(RouteAnswer(route, path, status, body))
        h.wrong_token = await admin.request("GET", "/v1/stats", token="wrong-token")
        for http in HTTP_PROBES:
            try:
                status, body = await admin.raw(http.request(admin.token, session))
            except (OSError, TimeoutError, ValueError) as exc:
                status, body = 0, f"no answer: {exc!r}"
            h.http.append(HttpAnswer(http, status, body))
        await drive_core_pushes(client, admin, session, h)
    finally:
        await client.dispose()
    return h


async def drive_core_pushes(client: ScenarioClient, admin: AdminClient, session: Any, h: CoreHistory) -> None:
    """Timers, pushes and close, each with what the client sees (contract 3.1, 4)."""
    h.timer_started = await client.request("timer_start", interval_ms=10)
    if h.timer_started.get("ok"):
        timer = h.timer_started.get("timer")
        h.tick = await until(
            lambda: next((e for e in client.evs("tick") if e.get("timer") == timer), None),
            timeout=EVENT_BOUND_S,
            what="a tick of the probe's timer",
        )
        h.timer_stopped = await client.request("timer_stop", timer=timer)
    h.push_text = text = "probe: verbatim text"
    h.push_answer = await admin.request("POST", f"/v1/sessions/{session}/push", {"data": text})
    if h.push_answer[0] == 200:
        h.push_received = await until(
            lambda: next((e.data for e in client.history if e.direction == "recv" and e.data == text), None),
            timeout=EVENT_BOUND_S,
            what="the admin push",
        )
    h.close_reply = await client.request("close", code=4000, reason="probe")
    if h.close_reply.get("ok"):
        await client.wait_closed(timeout=EVENT_BOUND_S)
    h.close_frame = tuple(client.close_frame) if client.close_frame else None


async def drive_capability(capability: str, target: Any, admin: AdminClient) -> CapabilityHistory:
    """The capability's ops and routes on a fresh session, and an op no contract defines."""
    probe = PROBES[capability]
    h = CapabilityHistory(capability, capability in target.capabilities)
    client = await ScenarioClient.connect(target.ws_url, "probe")
    try:
        session = (await client.request("whoami")).get("session")
        for op in probe.ops:
            h.ops.append(OpAnswer(op, await client.request(op.op, **op.fields)))
        for route in probe.routes:
            path = route.path.format(session=session)
            status, body = await admin.request(route.method, path, route.body)
            h.routes.append(RouteAnswer(route, path, status, body))
        if h.declared and capability == "dead_session_stats":
            before = await admin.stats()
            reply = await client.request("push", to=session + 10**9 if isinstance(session, int) else 0, data="x")
            after = await admin.stats()
            grown = int(after["counters"].get("dead_session_pushes", 0)) - int(before["counters"].get("dead_session_pushes", 0))
            h.dead_push = (reply, grown)
        if h.declared and capability == "fd_reuse_info":
            h.fd_record = await admin.request("GET", f"/v1/sessions/{session}")
        # Whatever the target declares, an op no version of the contract defines stays unsupported.
        h.nonexistent = await client.request("probe_" + capability + "_nonexistent")
    finally:
        await client.dispose()
    return h


@pytest.mark.scenario("contract_probe", seed=SEED)
@pytest.mark.parametrize("capability", PROBED)
def test_contract_probe(capability: str, target, admin, evidence, run_async) -> None:
    if capability != "core" and capability not in target.capabilities and not PROBES[capability].checks_undeclared:
        pytest.skip(f"unsupported: {capability} is not declared, and has no op or route to probe")
    if capability == "core":
        checks = check_core(run_async(drive_core(target, admin)))
    else:
        history = run_async(drive_capability(capability, target, admin))
        evidence.fact("declared", history.declared)
        checks = check_capability(history)
    evidence.figure(probe_figure(checks, capability))
    evidence.record(checks)
    evidence.verdict()
