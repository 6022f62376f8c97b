"""The checks of the honesty probe (scenarios/test_probe.py; contract section 11).

The probe's requests are pure descriptions in :mod:`..probe` (``OpProbe``, ``RouteProbe``,
``HttpProbe``) with the rules that judge one answer (``judge_op``, ``judge_route``). A run
records every answer in a history; the checks here turn a history into named checks:

* :class:`CoreHistory`: what every target owes whatever it declares (section 3.1 ops,
  error replies, the admin routes, the admin API's own HTTP errors, timers, pushes, close);
* :class:`CapabilityHistory`: one capability, declared (its ops and routes answer as the
  contract says) or not (refused with ``UNSUPPORTED`` / 404 or 501).

An answer that never came is recorded as ``None`` (ops) or status 0 (HTTP) and fails its
check: silence is not an answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..codes import UNSUPPORTED
from ..evidence import Check
from ..figures import Figure, steps_figure
from ..probe import HttpProbe, OpProbe, RouteProbe, judge_op, judge_route
from ..spec import named

#: Longest excerpt of an answer in the evidence.
EXCERPT = 400


def short(value: Any, limit: int = EXCERPT) -> Any:
    """An answer as the evidence shows it: without the client's receive time, cut when long."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "_t"}
    text = json.dumps(value, default=str)
    return value if len(text) <= limit else text[:limit] + "..."


def _code(body: Any) -> int | None:
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


@dataclass
class OpAnswer:
    probe: OpProbe
    reply: dict[str, Any]


@dataclass
class RouteAnswer:
    probe: RouteProbe
    path: str
    status: int
    body: Any


@dataclass
class HttpAnswer:
    probe: HttpProbe
    status: int  # 0: no answer (the body says why)
    body: Any


@dataclass
class CoreHistory:
    """The answers to what every target owes (sections 3 and 4)."""

    ops: list[OpAnswer] = field(default_factory=list)
    malformed: dict[str, Any] | None = None  # the reply to a message that is not JSON
    after_malformed: dict[str, Any] = field(default_factory=dict)  # a ping on the same session
    task_reply: dict[str, Any] = field(default_factory=dict)
    task_result: dict[str, Any] | None = None  # the task_result event of that task
    routes: list[RouteAnswer] = field(default_factory=list)
    wrong_token: tuple[int, Any] = (0, None)
    http: list[HttpAnswer] = field(default_factory=list)
    timer_started: dict[str, Any] = field(default_factory=dict)
    tick: dict[str, Any] | None = None
    timer_stopped: dict[str, Any] = field(default_factory=dict)
    push_text: str = ""
    push_answer: tuple[int, Any] = (0, None)
    push_received: str | None = None
    close_reply: dict[str, Any] = field(default_factory=dict)
    close_frame: tuple[int, str] | None = None


def check_core(h: CoreHistory) -> list[Check]:
    checks: list[Check] = []
    for a in h.ops:
        good, expected = judge_op(a.probe, a.reply, declared=True)
        checks.append(named(f"core: {a.probe.describe()} answers as section 3 says", good, expected=expected,
                            observed=short(a.reply)))
    checks += [
        named(
            "core: a malformed message gets BAD_REQUEST (4400) with re null",
            h.malformed is not None and _code(h.malformed) == 4400,
            expected={"re": None, "ok": False, "code": 4400},
            observed=short(h.malformed),
        ),
        named("core: the session stays open after bad input", h.after_malformed.get("ok") is True,
              observed=short(h.after_malformed)),
        named(
            "core: op task answers with its id, then a task_result event arrives",
            h.task_reply.get("ok") is True and h.task_result is not None,
            expected="ok reply with 'task', then {'ev': 'task_result', 'task': T}",
            observed={"reply": short(h.task_reply), "result": short(h.task_result)},
        ),
    ]
    for r in h.routes:
        good, expected = judge_route(r.probe, r.status, r.body, declared=True)
        checks.append(named(f"core: {r.probe.method} {r.path} answers as section 4 says", good, expected=expected,
                            observed=[r.status, short(r.body)]))
    checks.append(named("core: a wrong admin token is refused with 401", h.wrong_token[0] == 401, expected=401,
                        observed=[h.wrong_token[0], short(h.wrong_token[1])]))
    for x in h.http:
        checks.append(named(
            f"core: admin API, {x.probe.what}: {x.probe.status} with code {x.probe.code}",
            x.status == x.probe.status and _code(x.body) == x.probe.code,
            expected=[x.probe.status, x.probe.code],
            observed=[x.status, short(x.body)],
        ))
    stop_seq = h.timer_stopped.get("seq")
    checks += [
        named(
            "core: timer_start answers a timer id, its ticks come, timer_stop answers its status with seq",
            h.tick is not None and h.timer_stopped.get("ok") is True and isinstance(stop_seq, int) and stop_seq >= 1,
            expected={"reply": "ok with 'timer'", "then": {"ev": "tick", "timer": "T", "seq": 1}, "stop": "ok, seq >= 1"},
            observed={"reply": short(h.timer_started), "tick": short(h.tick), "stop": short(h.timer_stopped)},
        ),
        named(
            "core: POST /v1/sessions/{id}/push delivers its data verbatim, as one text message",
            bool(h.push_text) and h.push_received == h.push_text,
            expected=[200, h.push_text],
            observed=[h.push_answer[0], short(h.push_answer[1]), h.push_received],
        ),
        named(
            "core: op close answers ok, then the session is closed with that code",
            h.close_reply.get("ok") is True and h.close_frame is not None and h.close_frame[0] == 4000,
            expected={"reply": "ok", "close frame": 4000},
            observed={"reply": short(h.close_reply), "close frame": list(h.close_frame) if h.close_frame else None},
        ),
    ]
    return checks


@dataclass
class CapabilityHistory:
    """The answers to one capability's probe, declared or not."""

    capability: str
    declared: bool
    ops: list[OpAnswer] = field(default_factory=list)
    routes: list[RouteAnswer] = field(default_factory=list)
    #: dead_session_stats, declared: the reply to a push to a session that never existed, and
    #: how much ``dead_session_pushes`` grew.
    dead_push: tuple[dict[str, Any], int] | None = None
    #: fd_reuse_info, declared: GET /v1/sessions/{id} (status, record).
    fd_record: tuple[int, Any] | None = None
    #: The reply to an op no version of the contract defines.
    nonexistent: dict[str, Any] = field(default_factory=dict)


def check_capability(h: CapabilityHistory) -> list[Check]:
    cap = h.capability
    side = "declared" if h.declared else "not declared"
    checks: list[Check] = []
    for a in h.ops:
        good, expected = judge_op(a.probe, a.reply, declared=h.declared)
        checks.append(named(f"{cap} ({side}): {a.probe.describe()}", good, expected=expected, observed=short(a.reply)))
    for r in h.routes:
        good, expected = judge_route(r.probe, r.status, r.body, declared=h.declared)
        checks.append(named(f"{cap} ({side}): {r.probe.method} {r.path}", good, expected=expected,
                            observed=[r.status, short(r.body)]))
    if h.declared and cap == "dead_session_stats":
        reply, grown = h.dead_push or ({}, 0)
        checks.append(named(
            "dead_session_stats (declared): a push to a dead session fails with 1005 and is counted",
            _code(reply) == 1005 and grown >= 1,
            expected={"code": 1005, "dead_session_pushes grows": ">= 1"},
            observed={"reply": short(reply), "grown": grown},
        ))
    if h.declared and cap == "fd_reuse_info":
        status, record = h.fd_record or (0, None)
        checks.append(named(
            "fd_reuse_info (declared): the session record carries an integer os_fd and worker",
            status == 200 and isinstance(record, dict) and isinstance(record.get("os_fd"), int) and "worker" in record,
            expected="os_fd: int, worker",
            observed=[status, short(record)],
        ))
    checks.append(named(
        "an op the contract does not define is still UNSUPPORTED",
        _code(h.nonexistent) == UNSUPPORTED,
        expected=UNSUPPORTED,
        observed=short(h.nonexistent),
    ))
    return checks


def figure(checks: list[Check], capability: str) -> Figure | None:
    """Each request of the probe (one check each), in the order asked: answered as the contract says, or not."""
    return steps_figure("answers", f"The probe of {capability}: each request, answered as the contract says?", checks,
                        strip=r"^[a-z_]+( \([a-z ]+\))?: | answers as section \d+ says$")
