"""The honesty probe: does the target do what it declares, and refuse what it does not?

Seed: quic-interop-runner, where an implementation must answer "unsupported"
explicitly and the runner checks it does so honestly, and connectrpc's
conformance suite, where implementations declare their features. One case per
capability (and one for the core every target owes), run against the shared
target instance. See ``scenarios/harness/probe.py`` for what each case sends.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.client import ScenarioClient
from scenarios.harness.probe import (
    CORE_OPS,
    CORE_ROUTES,
    HTTP_PROBES,
    PROBED,
    PROBES,
    UNSUPPORTED,
    judge_op,
    judge_route,
)
from scenarios.harness.waiting import until

SEED = "quic-interop-runner / connectrpc: features are declared, and unsupported is said honestly"


async def probe_core(target: Any, admin: AdminClient, evidence: Any) -> None:
    client = await ScenarioClient.connect(target.ws_url, "probe")
    try:
        me = await client.request("whoami")
        session = me.get("session")
        for probe in CORE_OPS:
            reply = await client.request(probe.op, **probe.fields)
            good, expected = judge_op(probe, reply, declared=True)
            evidence.check(f"core: {probe.describe()} answers as section 3 says", good, expected=expected, observed=_short(reply))
        # A message that is not JSON: BAD_REQUEST with re null, and the session stays open.
        await client.ws.send("this is not json {")
        bad = await until(
            lambda: next((e for e in client.events if e.get("re", 0) is None and e.get("ok") is False), None),
            timeout=5,
            what="reply to a malformed message",
        )
        code = (bad.get("error") or {}).get("code")
        evidence.check(
            "core: a malformed message gets BAD_REQUEST (4400) with re null",
            code == 4400,
            expected={"re": None, "ok": False, "code": 4400},
            observed=_short(bad),
        )
        still = await client.request("ping")
        evidence.check("core: the session stays open after bad input", still.get("ok") is True, observed=_short(still))
        # Task: the reply names the task, then its result arrives as an event.
        reply = await client.request("task", data="probe", sleep_ms=0)
        result = None
        if reply.get("ok"):
            result = await until(
                lambda: next((e for e in client.evs("task_result") if e.get("task") == reply.get("task")), None),
                timeout=10,
                what="task_result of the probe's task",
            )
        evidence.check(
            "core: op task answers with its id, then a task_result event arrives",
            result is not None,
            expected="ok reply with 'task', then {'ev': 'task_result', 'task': T}",
            observed={"reply": _short(reply), "result": _short(result)},
        )
        for route in CORE_ROUTES:
            path = route.path.format(session=session)
            status, body = await admin.request(route.method, path, route.body)
            good, expected = judge_route(route, status, body, declared=True)
            evidence.check(f"core: {route.method} {path} answers as section 4 says", good, expected=expected, observed=[status, _short(body)])
        status, body = await admin.request("GET", "/v1/stats", token="wrong-token")
        evidence.check("core: a wrong admin token is refused with 401", status == 401, expected=401, observed=[status, _short(body)])
        for http in HTTP_PROBES:
            try:
                status, body = await admin.raw(http.request(admin.token, session))
            except (OSError, TimeoutError, ValueError) as exc:
                status, body = 0, f"no answer: {exc!r}"
            code = body.get("error", {}).get("code") if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
            evidence.check(
                f"core: admin API, {http.what}: {http.status} with code {http.code}",
                status == http.status and code == http.code,
                expected=[http.status, http.code],
                observed=[status, _short(body)],
            )
        await probe_core_pushes(client, admin, evidence, session)
    finally:
        await client.dispose()


async def probe_core_pushes(client: ScenarioClient, admin: AdminClient, evidence: Any, session: Any) -> None:
    """Timers, pushes and close, each with what the client sees (contract 3.1, 4)."""
    started = await client.request("timer_start", interval_ms=10)
    tick, stopped = None, {}
    if started.get("ok"):
        tick = await until(
            lambda: next((e for e in client.evs("tick") if e.get("timer") == started.get("timer")), None),
            timeout=5,
            what="a tick of the probe's timer",
        )
        stopped = await client.request("timer_stop", timer=started.get("timer"))
    evidence.check(
        "core: timer_start answers a timer id, its ticks come, timer_stop answers its status with seq",
        tick is not None and stopped.get("ok") is True and isinstance(stopped.get("seq"), int) and stopped["seq"] >= 1,
        expected={"reply": "ok with 'timer'", "then": {"ev": "tick", "timer": "T", "seq": 1}, "stop": "ok, seq >= 1"},
        observed={"reply": _short(started), "tick": _short(tick), "stop": _short(stopped)},
    )
    text = "probe: verbatim text"
    status, body = await admin.request("POST", f"/v1/sessions/{session}/push", {"data": text})
    got = None
    if status == 200:
        got = await until(
            lambda: next((e.data for e in client.history if e.direction == "recv" and e.data == text), None),
            timeout=5,
            what="the admin push",
        )
    evidence.check(
        "core: POST /v1/sessions/{id}/push delivers its data verbatim, as one text message",
        got == text,
        expected=[200, text],
        observed=[status, _short(body), got],
    )
    reply = await client.request("close", code=4000, reason="probe")
    if reply.get("ok"):
        await client.wait_closed(timeout=5)
    evidence.check(
        "core: op close answers ok, then the session is closed with that code",
        reply.get("ok") is True and client.close_frame is not None and client.close_frame[0] == 4000,
        expected={"reply": "ok", "close frame": 4000},
        observed={"reply": _short(reply), "close frame": list(client.close_frame) if client.close_frame else None},
    )


async def probe_capability(capability: str, target: Any, admin: AdminClient, evidence: Any) -> None:
    probe = PROBES[capability]
    declared = capability in target.capabilities
    evidence.fact("declared", declared)
    side = "declared" if declared else "not declared"
    client = await ScenarioClient.connect(target.ws_url, "probe")
    try:
        session = (await client.request("whoami")).get("session")
        for op in probe.ops:
            reply = await client.request(op.op, **op.fields)
            good, expected = judge_op(op, reply, declared=declared)
            evidence.check(f"{capability} ({side}): {op.describe()}", good, expected=expected, observed=_short(reply))
        for route in probe.routes:
            path = route.path.format(session=session)
            status, body = await admin.request(route.method, path, route.body)
            good, expected = judge_route(route, status, body, declared=declared)
            evidence.check(f"{capability} ({side}): {route.method} {path}", good, expected=expected, observed=[status, _short(body)])
        if declared and capability == "dead_session_stats":
            before = await admin.stats()
            reply = await client.request("push", to=session + 10**9 if isinstance(session, int) else 0, data="x")
            after = await admin.stats()
            grown = int(after["counters"].get("dead_session_pushes", 0)) - int(before["counters"].get("dead_session_pushes", 0))
            evidence.check(
                "dead_session_stats (declared): a push to a dead session fails with 1005 and is counted",
                (reply.get("error") or {}).get("code") == 1005 and grown >= 1,
                expected={"code": 1005, "dead_session_pushes grows": ">= 1"},
                observed={"reply": _short(reply), "grown": grown},
            )
        if declared and capability == "fd_reuse_info":
            status, record = await admin.request("GET", f"/v1/sessions/{session}")
            evidence.check(
                "fd_reuse_info (declared): the session record carries an integer os_fd and worker",
                status == 200 and isinstance(record.get("os_fd"), int) and "worker" in record,
                expected="os_fd: int, worker",
                observed=[status, _short(record)],
            )
        # Whatever the target declares, an op no version of the contract defines stays unsupported.
        reply = await client.request("probe_" + capability + "_nonexistent")
        evidence.check(
            "an op the contract does not define is still UNSUPPORTED",
            (reply.get("error") or {}).get("code") == UNSUPPORTED,
            expected=UNSUPPORTED,
            observed=_short(reply),
        )
    finally:
        await client.dispose()


def _short(value: Any, limit: int = 400) -> Any:
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "_t"}
    text = json.dumps(value, default=str)
    return value if len(text) <= limit else text[:limit] + "..."


@pytest.mark.scenario("contract_probe", seed=SEED)
@pytest.mark.parametrize("capability", PROBED)
def test_contract_probe(capability: str, target, admin, evidence, run_async) -> None:
    if capability != "core" and capability not in target.capabilities and not PROBES[capability].checks_undeclared:
        pytest.skip(f"unsupported: {capability} is not declared, and has no op or route to probe")
    if capability == "core":
        run_async(probe_core(target, admin, evidence))
    else:
        run_async(probe_capability(capability, target, admin, evidence))
    evidence.verdict()

