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
evidence file records.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

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
from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.traffic import numbered
from scenarios.harness.waiting import settle

MAX_CLIENTS = 6


@dataclass
class Model:
    client: ScenarioClient
    owner: int
    open: bool = True
    pushes: int = 0
    echoes: int = 0


def make_machine(target, admin: AdminClient, log: list[str]):
    workers = int(target.profile["workers"])

    class MigrationMachine(RuleBasedStateMachine):
        clients = Bundle("clients")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.models: list[Model] = []

        def run(self, coro):
            return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

        def teardown(self) -> None:
            self.run(dispose_all([m.client for m in self.models]))
            self.loop.close()

        @initialize(target=clients)
        def first(self) -> Model:
            return self.connect()

        @precondition(lambda self: len(self.models) < MAX_CLIENTS)
        @rule(target=clients)
        def connect(self) -> Model:
            client = self.run(ScenarioClient.connect(target.ws_url, f"m{len(self.models)}"))
            reply = self.run(client.whoami())
            model = Model(client, reply["worker"])
            self.models.append(model)
            log.append(f"connect {client.session} -> worker {model.owner}")
            return model

        @rule(m=clients, size=st.sampled_from([0, 10, 5000, 100_000]))
        def echo(self, m: Model, size: int) -> None:
            if not m.open:
                return
            m.echoes += 1
            data = f"{m.echoes}:" + "e" * size
            reply = self.run(m.client.request("echo", seq=m.echoes, data=data))
            log.append(f"echo {m.client.session} size {size} -> {reply.get('worker')}")
            assert reply.get("ok") and reply.get("data") == data, f"echo broken: {str(reply)[:200]}"
            assert reply.get("worker") == m.owner, f"echo from worker {reply.get('worker')}, model says {m.owner}"

        @rule(m=clients, dst=st.integers(-1, workers))
        def migrate(self, m: Model, dst: int) -> None:
            status, body = self.run(admin.request("POST", f"/v1/sessions/{m.client.session}/migrate", {"worker": dst}))
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            log.append(f"migrate {m.client.session} {m.owner}->{dst}: {status} {code}")
            if not m.open:
                assert code in (1004, 1005), f"migrate of a closed session answered {status} {body}"
            elif not 0 <= dst < workers:
                assert (status, code) == (404, 2003), f"migrate to worker {dst} answered {status} {body}"
            elif dst == m.owner:
                assert (status, code) == (409, 2010), f"migrate to its own worker answered {status} {body}"
            else:
                assert status == 200, f"migrate {m.owner}->{dst} answered {status} {body}"
                assert body.get("from") == m.owner and body.get("to") == dst, body
                m.owner = dst

        @rule(m=clients)
        def push(self, m: Model) -> None:
            payload = json.dumps({"ev": "apush", "n": m.pushes + 1})
            status, body = self.run(admin.request("POST", f"/v1/sessions/{m.client.session}/push", {"data": payload}))
            log.append(f"push {m.client.session} #{m.pushes + 1}: {status}")
            if m.open:
                assert status == 200, f"push to an open session answered {status} {body}"
                m.pushes += 1
            else:
                assert status in (404, 409), f"push to a closed session answered {status} {body}"

        @rule(m=clients)
        def close(self, m: Model) -> None:
            if m.open:
                m.open = False
                log.append(f"close {m.client.session}")
                self.run(m.client.close())
                self.until_server_knows(m)

        @rule(m=clients)
        def abort(self, m: Model) -> None:
            if m.open:
                m.open = False
                log.append(f"abort {m.client.session}")
                m.client.abort()
                self.run(m.client.wait_closed())
                self.until_server_knows(m)

        def until_server_knows(self, m: Model) -> None:
            """The model's "closed" holds once the server knows it: a reset reaches the server
            after the client's side is closed, and until then a migrate or a push may still
            succeed. Wait (bounded) until the session is gone or closing."""
            sid = m.client.session

            async def known() -> bool:
                status, body = await admin.request("GET", f"/v1/sessions/{sid}")
                return status == 404 or (status == 200 and isinstance(body, dict) and body.get("established") is False)

            noticed = self.run(settle(known, timeout=10, interval=0.02))
            log.append(f"server knows {sid} closed: {noticed}")
            assert noticed, f"the server still lists session {sid} as open 10 s after its client closed"

        @invariant()
        def pushes_in_order_and_open_stays_open(self) -> None:
            opened = [m for m in self.models if m.open]
            self.run(
                settle(lambda: all(len(numbered(m.client.evs("apush"), "n")) >= m.pushes or m.client.is_closed for m in opened), timeout=5)
            )
            for m in opened:
                assert not m.client.is_closed, f"session {m.client.session} was closed: {m.client.excerpt(4)}"
                got = numbered(m.client.evs("apush"), "n")
                assert got == list(range(1, m.pushes + 1)), f"pushes to {m.client.session}: {got[-10:]} (sent {m.pushes})"

    return MigrationMachine


@pytest.mark.scenario("migration_model", seed="hypothesis: connect/echo/migrate/push/close/abort against an ownership model")
@pytest.mark.requires("migrate")
def test_migration_model(target, admin, evidence):
    log: list[str] = []
    machine = make_machine(target, admin, log)
    failure = None
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=30,
                deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    except Exception as exc:  # a disagreement (shrunk by Hypothesis when it replays the same way)
        failure = exc
    evidence.fact("steps_run", len(log))
    evidence.check(
        "the server agrees with the ownership model in every step",
        failure is None,
        expected="no disagreement",
        observed=str(failure)[:2000] if failure else "none",
        last_steps=log[-30:],
    )
    evidence.verdict()
