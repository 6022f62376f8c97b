"""Scenario ``migration_model``: Hypothesis drives a live server against a model of who owns what.

A state machine interleaves connect, echo, migrate (to any worker, including
the current one and ones that do not exist), admin push, graceful close and
abrupt abort, on one running target (one server for all examples). The model
knows, for every client, whether it is open, which worker owns it, and how
many pushes were sent to it. After every step:

* a migrate answers exactly as the model predicts: 200 to another running
  worker; ``ALREADY_THERE`` (2010) to its own; ``UNKNOWN_PROCESS`` (2003) to
  a worker that does not exist; 1004/1005 for a closed session;
* an echo comes back intact from the worker the model says owns the session;
* every open client has received its pushes 1..n, each once, in order;
* no open client was closed by the server.

Hypothesis shrinks any disagreement to a short sequence of steps, which the
evidence file records. The model's rules are pure, in
``scenarios/harness/checkers/ownership.py`` (unit tests: ``tests/test_checkers_ownership.py``);
the run also fails when it moved, echoed or pushed nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.ownership import (
    ModelRun,
    Owned,
    check_model,
    judge_echo,
    judge_migrate,
    judge_push,
    judge_received,
)
from scenarios.harness.checkers.ownership import figure as model_figure
from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.traffic import numbered
from scenarios.harness.waiting import settle

SEED = "hypothesis: connect/echo/migrate/push/close/abort against an ownership model"
MAX_CLIENTS = 6
EXAMPLES = 25
STEPS_PER_EXAMPLE = 30
ECHO_SIZES = [0, 10, 5000, 100_000]
#: Bound of one step's I/O, and of the server noticing a client's close.
STEP_BOUND_S = 30.0
CLOSE_KNOWN_BOUND_S = 10.0
PUSHES_BOUND_S = 5.0


def _ok(problem: str | None) -> None:
    assert problem is None, problem


def make_machine(target: Any, admin: AdminClient, run: ModelRun) -> type[RuleBasedStateMachine]:
    """The state machine: each rule drives one step and asserts the model's judgement of it."""
    workers = int(target.profile["workers"])
    log = run.steps

    class MigrationMachine(RuleBasedStateMachine):
        clients = Bundle("clients")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.models: list[tuple[Owned, ScenarioClient]] = []

        def io(self, coro):
            return self.loop.run_until_complete(asyncio.wait_for(coro, STEP_BOUND_S))

        def teardown(self) -> None:
            self.io(dispose_all([c for _, c in self.models]))
            self.loop.close()

        @initialize(target=clients)
        def first(self) -> tuple[Owned, ScenarioClient]:
            return self.connect()

        @precondition(lambda self: len(self.models) < MAX_CLIENTS)
        @rule(target=clients)
        def connect(self) -> tuple[Owned, ScenarioClient]:
            client = self.io(ScenarioClient.connect(target.ws_url, f"m{len(self.models)}"))
            reply = self.io(client.whoami())
            pair = (Owned(client.session, reply["worker"]), client)
            self.models.append(pair)
            run.count("connect")
            log.append(f"connect {client.session} -> worker {pair[0].owner}")
            return pair

        @rule(pair=clients, size=st.sampled_from(ECHO_SIZES))
        def echo(self, pair: tuple[Owned, ScenarioClient], size: int) -> None:
            m, client = pair
            if not m.open:
                return
            m.echoes += 1
            data = f"{m.echoes}:" + "e" * size
            reply = self.io(client.request("echo", seq=m.echoes, data=data))
            run.count("echo")
            log.append(f"echo {m.session} size {size} -> {reply.get('worker')}")
            _ok(judge_echo(m, data, reply))

        @rule(pair=clients, dst=st.integers(-1, workers))
        def migrate(self, pair: tuple[Owned, ScenarioClient], dst: int) -> None:
            m, _ = pair
            status, body = self.io(admin.request("POST", f"/v1/sessions/{m.session}/migrate", {"worker": dst}))
            log.append(f"migrate {m.session} {m.owner}->{dst}: {status} {body.get('error', {}).get('code') if isinstance(body, dict) else None}")
            _ok(judge_migrate(m, dst, workers, status, body))
            if status == 200:
                m.owner = dst
                run.count("migrated")

        @rule(pair=clients)
        def push(self, pair: tuple[Owned, ScenarioClient]) -> None:
            m, _ = pair
            payload = json.dumps({"ev": "apush", "n": m.pushes + 1})
            status, body = self.io(admin.request("POST", f"/v1/sessions/{m.session}/push", {"data": payload}))
            log.append(f"push {m.session} #{m.pushes + 1}: {status}")
            _ok(judge_push(m, status, body))
            if m.open and status == 200:
                m.pushes += 1
                run.count("push")

        @rule(pair=clients)
        def close(self, pair: tuple[Owned, ScenarioClient]) -> None:
            m, client = pair
            if m.open:
                m.open = False
                run.count("close")
                log.append(f"close {m.session}")
                self.io(client.close())
                self.until_server_knows(m)

        @rule(pair=clients)
        def abort(self, pair: tuple[Owned, ScenarioClient]) -> None:
            m, client = pair
            if m.open:
                m.open = False
                run.count("abort")
                log.append(f"abort {m.session}")
                client.abort()
                self.io(client.wait_closed())
                self.until_server_knows(m)

        def until_server_knows(self, m: Owned) -> None:
            """The model's "closed" holds once the server knows it: a reset reaches the server
            after the client's side is closed, and until then a migrate or a push may still
            succeed. Wait (bounded) until the session is gone or closing."""

            async def known() -> bool:
                status, body = await admin.request("GET", f"/v1/sessions/{m.session}")
                return status == 404 or (status == 200 and isinstance(body, dict) and body.get("established") is False)

            noticed = self.io(settle(known, timeout=CLOSE_KNOWN_BOUND_S, interval=0.02))
            log.append(f"server knows {m.session} closed: {noticed}")
            assert noticed, f"the server still lists session {m.session} as open {CLOSE_KNOWN_BOUND_S} s after its client closed"

        @invariant()
        def pushes_in_order_and_open_stays_open(self) -> None:
            opened = [(m, c) for m, c in self.models if m.open]
            self.io(settle(
                lambda: all(len(numbered(c.evs("apush"), "n")) >= m.pushes or c.is_closed for m, c in opened),
                timeout=PUSHES_BOUND_S,
            ))
            for m, c in opened:
                _ok(judge_received(m, numbered(c.evs("apush"), "n"), c.is_closed))

    return MigrationMachine


def drive(target: Any, admin: AdminClient) -> ModelRun:
    """Run the state machine (Hypothesis, derandomized); the steps, the counts and the first disagreement."""
    run = ModelRun()
    try:
        run_state_machine_as_test(
            make_machine(target, admin, run),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS_PER_EXAMPLE,
                deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    except Exception as exc:  # a disagreement (shrunk by Hypothesis when it replays the same way)
        run.failure = str(exc)
    return run


@pytest.mark.scenario("migration_model", seed=SEED)
@pytest.mark.requires("migrate")
def test_migration_model(target, admin, evidence):
    run = drive(target, admin)
    evidence.fact("steps_run", len(run.steps))
    evidence.fact("counts", run.counts)
    evidence.figure(model_figure(run))
    evidence.record(check_model(run))
    evidence.verdict()
