"""Scenarios: listening ports added and removed at run time, under churn (seed: dynamic ports).

The seed: a server opens and closes listening ports while it runs. Known
failures: a "shut down" port that stays bound (clients hang in its backlog,
the port cannot be reused), a port conflict that crashes a process instead
of failing clearly, queued connections reset when an SO_REUSEPORT listener
closes.

``port_churn``
    Two dozen ports (outside the ephemeral range) are added and removed in
    random order, through the admin API and through a worker (app op), half
    with SO_REUSEPORT, each with policy keep or close, while six clients keep
    connecting to all of them and exchanging a message; with ``reload``, a
    reload runs in the middle. Checked against the history: an attempt succeeds exactly when its
    port is listed and is refused when it is not (outside each change's grace
    window); none hangs; after each unlisten a fresh socket binds the port at
    once; sessions of a removed port follow its policy; SO_REUSEPORT is what
    was asked; the listeners the target reports match the model after every
    change; ports and sessions survive the reload (with ``reload``); no fd is
    left behind.

``port_errors``
    Conflicting and invalid listens (a port another process holds, one the
    server holds, a privileged port, bad addresses, bad fields, an unknown
    handler set, unlisten of a port not held), through the admin API and a
    worker: each fails with its contract error naming the port, and nothing
    changes: same listeners, same processes, no session lost.

``port_limits``
    A port with a connection limit and a port with another handler set: over
    the limit a handshake is answered 503 ``PORT_LIMIT`` while the other port
    serves on; per-port figures agree with what the clients saw.

``ports_file``
    The watched ports file: entries added, changed, removed, invalid; each
    rejected entry is reported with its code, the rest applied; an invalid
    file changes nothing; an empty file removes every file port.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import time
from typing import Any

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.common import check_no_leaks, warm_up
from scenarios.harness.ports import (
    Attempt,
    Change,
    Outcome,
    PortHistory,
    admin_listen,
    admin_unlisten,
    attempt,
    bind_probe,
    error_code,
    listeners,
    pick_free_ports,
    privileged_port_free,
    settings,
)
from scenarios.harness.waiting import settle, until

PROFILE = {"workers": 3, "task_workers": 1}
N_PORTS = 24
STEPS = 160
ATTEMPTERS = 6
RESIDENT_BOUND_S = 5.0
CHURN_BUDGET_S = 30.0  # the reference needs about 3 s


def model_mismatch(model: dict[int, dict[str, Any]], reported: dict[int, dict[str, Any]], fixed: set[int]) -> dict:
    """Differences between the ports the harness listed and the ones the target reports."""
    got = {p: e for p, e in reported.items() if p not in fixed}
    out: dict[str, Any] = {}
    if set(model) != set(got):
        out["missing"] = sorted(set(model) - set(got))
        out["unexpected"] = sorted(set(got) - set(model))
    for port in set(model) & set(got):
        for key in ("reuse_port", "on_remove"):
            if model[port][key] != got[port].get(key):
                out.setdefault("settings", []).append({"port": port, key: [model[port][key], got[port].get(key)]})
    return out


class Churn:
    """The state of one churn run: the model, the history, and what the checks need."""

    def __init__(self, target, admin: AdminClient, controller: ScenarioClient, seed: int) -> None:
        self.admin = admin
        self.controller = controller
        self.seed = seed
        self.rng = random.Random(seed)
        self.history = PortHistory(target.manifest.ports_grace_ms)
        self.ports = pick_free_ports(N_PORTS, seed=seed)
        self.model: dict[int, dict[str, Any]] = {}  # port -> the options it was listened with
        self.attempts: list[Attempt] = []
        self.residents: dict[int, list[ScenarioClient]] = {}
        self.resident_checks: list[dict[str, Any]] = []
        self.resident_connect_failed: list[dict[str, Any]] = []
        self.change_failures: list[dict[str, Any]] = []
        self.bind_after_unlisten: list[dict[str, Any]] = []
        self.reuse_probes: list[dict[str, Any]] = []
        self.mismatches: list[dict[str, Any]] = []
        self.pending: set[asyncio.Task] = set()
        self.fixed: set[int] = set()
        self.stop = asyncio.Event()
        self.all_clients: list[ScenarioClient] = []

    async def attempter(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/attempter {index}")
        while not self.stop.is_set():
            self.attempts.append(await attempt(rng.choice(self.ports)))
            await asyncio.sleep(0.004)  # client pacing: leave CPU to the target on a small machine

    async def _change(self, how: str, op: str, body: dict[str, Any]) -> tuple[bool, Any]:
        if how == "admin":
            if op == "listen":
                return await admin_listen(self.admin, body)
            return await admin_unlisten(self.admin, body["port"], body.get("on_remove"))
        reply = await self.controller.request(op, **body)
        return bool(reply.get("ok")), reply

    async def listen(self, port: int) -> None:
        opts = {"port": port, "reuse_port": self.rng.random() < 0.5, "on_remove": self.rng.choice(["keep", "close"])}
        how = self.rng.choice(["admin", "admin", "app"])
        sent = time.monotonic()
        ok, answer = await self._change(how, "listen", opts)
        done = time.monotonic()
        self.history.record(Change(port, True, sent, done, how, opts, ok, None if ok else answer))
        if not ok:
            self.change_failures.append({"listen": opts, "how": how, "answer": answer})
            return
        self.model[port] = opts
        probe = bind_probe(port, reuse_port=True)
        expected = None if opts["reuse_port"] else "EADDRINUSE"
        self.reuse_probes.append({"port": port, "reuse_port": opts["reuse_port"], "probe": probe, "ok": probe == expected})
        try:
            client = await ScenarioClient.connect(f"ws://127.0.0.1:{port}/", f"resident-{port}", timeout=RESIDENT_BOUND_S)
        except Exception as exc:  # any failure to connect is the finding
            self.resident_connect_failed.append({"port": port, "error": f"{type(exc).__name__}: {exc}"})
            return
        self.all_clients.append(client)
        self.residents.setdefault(port, []).append(client)

    async def unlisten(self, port: int) -> None:
        policy = self.model[port]["on_remove"]
        override = None
        if self.rng.random() < 0.25:
            override = "close" if policy == "keep" else "keep"
        body: dict[str, Any] = {"port": port, **({"on_remove": override} if override else {})}
        how = self.rng.choice(["admin", "admin", "app"])
        sent = time.monotonic()
        ok, answer = await self._change(how, "unlisten", body)
        done = time.monotonic()
        self.history.record(Change(port, False, sent, done, how, body, ok, None if ok else answer))
        if not ok:
            self.change_failures.append({"unlisten": body, "how": how, "answer": answer})
            return
        probe = bind_probe(port)
        self.bind_after_unlisten.append({"port": port, "probe": probe, "ms_after_answer": round((time.monotonic() - done) * 1000, 2)})
        del self.model[port]
        effective = override or policy
        for client in self.residents.pop(port, []):
            task = asyncio.create_task(self.check_resident(client, port, effective))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def check_resident(self, client: ScenarioClient, port: int, policy: str) -> None:
        record: dict[str, Any] = {"port": port, "policy": policy}
        if policy == "close":
            try:
                await client.wait_closed(RESIDENT_BOUND_S)
            except TimeoutError:
                pass
            record["close"] = client.close_frame[0] if client.close_frame else None
            record["ok"] = client.close_frame is not None and client.close_frame[0] == 1001
        else:
            reply = await client.request("echo", seq=port, timeout=RESIDENT_BOUND_S)
            record["ok"] = bool(reply.get("ok"))
            record["reply"] = {k: reply.get(k) for k in ("ok", "closed", "seq")}
        self.resident_checks.append(record)

    async def compare_model(self, when: str) -> None:
        diff = model_mismatch(self.model, await listeners(self.admin), self.fixed)
        if diff:
            self.mismatches.append({"when": when, **diff})

    async def step(self, index: int) -> None:
        port = self.rng.choice(self.ports)
        if port in self.model:
            await self.unlisten(port)
        else:
            await self.listen(port)
        await self.compare_model(f"after step {index} (port {port})")


@pytest.mark.scenario("port_churn", seed="coroutine server with dynamic ports")
@pytest.mark.requires("dynamic_ports")
def test_port_churn(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "port-churn")
    admin = AdminClient(target.admin_url, target.admin_token)

    async def scenario() -> None:
        baseline = await warm_up(target, admin)
        fixed = set(await listeners(admin))
        seed = evidence.rng().randrange(1 << 30)
        evidence.fact("seed", seed)
        controller = await ScenarioClient.connect(target.ws_url, "controller")
        churn = Churn(target, admin, controller, seed)
        churn.fixed = fixed
        evidence.fact("ports", churn.ports)
        stats_before = await admin.stats()
        attempters = [asyncio.create_task(churn.attempter(i)) for i in range(ATTEMPTERS)]
        reload_record: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + CHURN_BUDGET_S
            steps = 0
            for i in range(STEPS):
                if i == STEPS // 2 and "reload" in target.capabilities:
                    reload_record = await reload_in_the_middle(churn, admin)
                await churn.step(i)
                steps += 1
                if time.monotonic() > deadline and i > STEPS // 2:
                    break  # a target that hangs makes each step slow: the evidence is in by now
            evidence.fact("steps", steps)
            # Leave nothing listed: every port removed once more, the last ones under churn too.
            for port in list(churn.model):
                await churn.unlisten(port)
            await churn.compare_model("at the end")
        finally:
            churn.stop.set()
            await asyncio.gather(*attempters, return_exceptions=True)
            await asyncio.gather(*list(churn.pending), return_exceptions=True)
        stats_after = await admin.stats()
        t0 = min((a.start for a in churn.attempts), default=0.0)
        outcomes: dict[str, int] = {}
        for a in churn.attempts:
            outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
        evidence.fact("attempts", outcomes)
        changes = [c for cs in churn.history.changes.values() for c in cs]
        evidence.fact("changes", {"listen": sum(c.listed for c in changes), "unlisten": sum(not c.listed for c in changes),
                                  "by_app_op": sum(c.how == "app" for c in changes)})
        answer_ms = sorted((c.done - c.sent) * 1000 for c in changes)
        if answer_ms:
            evidence.fact("change_answer_ms", {"p50": round(answer_ms[len(answer_ms) // 2], 2),
                                               "max": round(answer_ms[-1], 2)})
        evidence.check(
            "every listen and unlisten of the churn succeeded",
            not churn.change_failures,
            expected="each answered ok",
            observed=churn.change_failures[:5] or "all ok",
        )
        bad, decided, doubtful = churn.history.violations(churn.attempts)
        evidence.fact("attempts_decided_vs_in_grace_window", {"decided": decided, "in_grace_window": doubtful})
        evidence.check(
            "a connection attempt succeeds exactly when its port is listed (refused when it is not)",
            not bad and decided > 0,
            expected="listed: handshake and echo; not listed: ECONNREFUSED (outside each change's grace window)",
            observed=f"{len(bad)} of {decided} decided attempts contradict the model" if bad else f"{decided} agree",
            violations=[dict(a.as_dict(t0), listed=churn.history.state(a.port, a.start, a.end)) for a in bad[:15]],
        )
        hangs = [a.as_dict(t0) for a in churn.attempts if a.outcome == Outcome.HANG]
        evidence.check(
            "no connection attempt hangs",
            not hangs,
            expected=f"every attempt concluded within {2.0}s",
            observed=f"{len(hangs)} hung" if hangs else "none",
            hung=hangs[:10],
        )
        not_free = [b for b in churn.bind_after_unlisten if b["probe"] is not None]
        evidence.check(
            "after unlisten, a fresh process can bind the port at once",
            not not_free and bool(churn.bind_after_unlisten),
            expected="bind() succeeds right after the answer",
            observed=not_free[:10] or f"{len(churn.bind_after_unlisten)} ports free at once",
        )
        wrong_reuse = [p for p in churn.reuse_probes if not p["ok"]]
        evidence.check(
            "SO_REUSEPORT is as asked: a second SO_REUSEPORT socket can bind only a reuse_port listener's port",
            not wrong_reuse,
            expected="reuse_port: bind succeeds; otherwise EADDRINUSE",
            observed=wrong_reuse[:10] or f"{len(churn.reuse_probes)} listeners as asked",
        )
        resident_bad = [r for r in churn.resident_checks if not r["ok"]]
        evidence.check(
            "sessions of a removed port follow its policy (keep: served on; close: closed with 1001)",
            not resident_bad and not churn.resident_connect_failed and bool(churn.resident_checks),
            expected="keep: an echo is answered after the unlisten; close: a close frame 1001",
            observed=(resident_bad + churn.resident_connect_failed)[:10] or f"{len(churn.resident_checks)} as expected",
        )
        evidence.check(
            "the listeners the target reports match the harness's model after every change",
            not churn.mismatches,
            expected="same ports, same reuse_port and on_remove",
            observed=churn.mismatches[:5] or "always",
        )
        if "reload" in target.capabilities:  # a target without reload has no reload in the middle
            evidence.check(
                "ports listed before the reload are listed after it, with the same settings",
                reload_record.get("same", False),
                expected="identical listener settings",
                observed=reload_record,
            )
            closed_by_reload = reload_record.get("residents_closed", [])
            evidence.check(
                "the reload closed no session",
                not closed_by_reload,
                expected="resident sessions open across the reload",
                observed=closed_by_reload or "none closed",
            )
        accepted = int(stats_after["counters"]["connections_accepted"]) - int(stats_before["counters"]["connections_accepted"])
        evidence.fact("connections_accepted_during_churn", accepted)
        await dispose_all([controller, *churn.all_clients])
        await check_no_leaks(admin, evidence, baseline)
        evidence.verdict()

    run_async(scenario(), timeout=240)


async def reload_in_the_middle(churn: Churn, admin: AdminClient) -> dict[str, Any]:
    """A full reload while the attempts go on; the listeners and the residents must come through."""
    before = {p: settings(e) for p, e in (await listeners(admin)).items()}
    residents = [c for cs in churn.residents.values() for c in cs]
    answer = await admin.call("POST", "/v1/reload", {"scope": "all", "wait": True, "timeout_ms": 30_000})
    after = {p: settings(e) for p, e in (await listeners(admin)).items()}
    replies = await asyncio.gather(*(c.request("echo", seq=1, timeout=RESIDENT_BOUND_S) for c in residents))
    closed = [c.name for c, r in zip(residents, replies, strict=True) if not r.get("ok")]
    return {"same": before == after, "listeners": len(before), "reload": answer.get("reload"),
            "duration_ms": answer.get("duration_ms"), "residents": len(residents), "residents_closed": closed,
            **({"before": before, "after": after} if before != after else {})}


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.scenario("port_errors", seed="coroutine server with dynamic ports")
@pytest.mark.requires("dynamic_ports")
def test_port_errors(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "port-errors")
    admin = AdminClient(target.admin_url, target.admin_token)

    async def scenario() -> None:
        await warm_up(target, admin)
        own = pick_free_ports(1, seed=7)[0]
        await admin.call("POST", "/v1/listeners", {"port": own})
        foreign = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process's port
        foreign.bind(("127.0.0.1", 0))
        foreign.listen(8)
        held = foreign.getsockname()[1]
        clients = [await ScenarioClient.connect(target.ws_url, f"bystander-{i}") for i in range(4)]
        asker = await ScenarioClient.connect(target.ws_url, "asker")
        for c in [*clients, asker]:
            await c.whoami()
        procs_before = sorted((p["name"], p["pid"]) for p in await admin.processes())
        listeners_before = {p: settings(e) for p, e in (await listeners(admin)).items()}
        cases: list[tuple[str, dict[str, Any], int]] = [
            ("a port another process listens on", {"port": held}, 3001),
            ("a port this server already listens on", {"port": own}, 3004),
            ("the server's main port", {"port": target.port}, 3004),
            ("a host that is not an IP address", {"port": own + 1, "host": "no.such.host"}, 3003),
            ("an address not of this machine", {"port": own + 1, "host": "192.0.2.1"}, 3003),
            ("a port out of range", {"port": 70000}, 4400),
            ("a handler set that does not exist", {"port": own + 1, "handler": "no-such-set"}, 3007),
            ("an unknown option", {"port": own + 1, "colour": "blue"}, 4400),
        ]
        privileged = privileged_port_free()
        if privileged is not None:
            cases.append(("a privileged port", {"port": privileged}, 3002))
        evidence.fact("privileged_port_checked", privileged is not None)
        results = []
        for label, spec, code in cases:
            ok, answer = await admin_listen(admin, spec)
            results.append({"case": label, "via": "admin", "expected": code, "got": error_code(answer),
                            "ok": not ok and error_code(answer) == code, "answer": answer})
            reply = await asker.request("listen", timeout=5, **spec)
            got = error_code(reply)
            message = (reply.get("error") or {}).get("message", "")
            names_port = str(spec["port"]) in message
            results.append({"case": label, "via": "app", "expected": code, "got": got,
                            "ok": not reply.get("ok") and got == code and names_port, "answer": reply})
        ok, answer = await admin_unlisten(admin, own + 2)
        results.append({"case": "unlisten of a port not listened", "via": "admin", "expected": 3005,
                        "got": error_code(answer), "ok": not ok and error_code(answer) == 3005})
        status, body = await admin.request("POST", "/v1/listeners", raw=b"{not json")
        results.append({"case": "garbage body", "via": "admin", "expected": 4400, "got": error_code(body),
                        "ok": status == 400 and error_code(body) == 4400})
        wrong = [r for r in results if not r["ok"]]
        evidence.check(
            "conflicting and invalid listens fail with their contract error, naming the port",
            not wrong,
            expected={r["case"]: r["expected"] for r in results},
            observed=wrong[:8] or "each as expected",
        )
        alive = await asyncio.gather(*(c.request("whoami", timeout=5) for c in [*clients, asker]))
        procs_after = sorted((p["name"], p["pid"]) for p in await admin.processes())
        listeners_after = {p: settings(e) for p, e in (await listeners(admin)).items()}
        evidence.check(
            "a conflicting or invalid listen changes nothing (no process restarted, no session lost)",
            procs_before == procs_after and all(r.get("ok") for r in alive),
            expected="same processes, every client answered",
            observed={"processes_changed": procs_before != procs_after,
                      "clients_answering": sum(bool(r.get("ok")) for r in alive), "clients": len(alive)},
        )
        evidence.check(
            "the listeners are unchanged by failed listens",
            listeners_before == listeners_after,
            expected=sorted(listeners_before),
            observed=sorted(listeners_after),
        )
        served = await attempt(own)
        evidence.check(
            "the server still serves its other ports",
            served.outcome == Outcome.OK and (await attempt(target.port)).outcome == Outcome.OK,
            expected="ok",
            observed=served.outcome,
        )
        foreign.close()
        await admin_unlisten(admin, own)
        await dispose_all([*clients, asker])
        evidence.verdict()

    run_async(scenario(), timeout=120)


# -- limits and handler sets --------------------------------------------------------------------


@pytest.mark.scenario("port_limits", seed="coroutine server with dynamic ports")
@pytest.mark.requires("dynamic_ports")
def test_port_limits(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "port-limits")
    admin = AdminClient(target.admin_url, target.admin_token)
    limit = 5

    async def scenario() -> None:
        await warm_up(target, admin)
        tenant_a, tenant_b = pick_free_ports(2, seed=11)
        await admin.call("POST", "/v1/listeners", {"port": tenant_a, "max_connections": limit})
        await admin.call("POST", "/v1/listeners", {"port": tenant_b, "handler": "echo"})
        a_clients = [await ScenarioClient.connect(f"ws://127.0.0.1:{tenant_a}/", f"a-{i}") for i in range(limit)]
        over = [await attempt(tenant_a) for _ in range(3)]
        b_clients = [await ScenarioClient.connect(f"ws://127.0.0.1:{tenant_b}/", f"b-{i}") for i in range(limit + 3)]
        evidence.check(
            "over its limit, a port answers the handshake with 503 PORT_LIMIT (never a hang)",
            all(a.outcome == Outcome.LIMITED for a in over),
            expected=f"{len(over)} x limited",
            observed=[(a.outcome, a.detail) for a in over],
        )
        evidence.check(
            "a port at its limit does not starve another port",
            len(b_clients) == limit + 3 and all(not c.is_closed for c in b_clients),
            expected=f"{limit + 3} sessions on the other port",
            observed=len(b_clients),
        )
        who_a = await a_clients[0].request("whoami")
        await b_clients[0].send({"op": "whoami", "id": 77})
        echoed = await until(
            lambda: next((e for e in b_clients[0].events if e.get("id") == 77), None), timeout=5,
            what="the echo handler's answer",
        )
        evidence.check(
            "each port serves its handler set (default: the contract ops; echo: messages back verbatim)",
            who_a.get("ok") and who_a.get("port") == tenant_a and who_a.get("handler") == "default"
            and echoed.get("op") == "whoami" and "ok" not in echoed,
            expected={"a": "whoami reply", "b": "the request echoed"},
            observed={"a": who_a, "b": echoed},
        )
        await a_clients[0].close()
        # The client sees its close before the server has released the session: wait for the release.
        await settle(lambda: _connections(admin, tenant_a, limit - 1), timeout=5, interval=0.02)
        freed = await attempt(tenant_a)
        evidence.check(
            "when a session of the port closes, a new connection is admitted",
            freed.outcome == Outcome.OK,
            expected="ok",
            observed=(freed.outcome, freed.detail),
        )
        figures: dict[int, dict] = {}

        async def figures_settled() -> bool:
            nonlocal figures
            figures = await listeners(admin)
            return figures[tenant_a]["connections"] == limit - 1 and figures[tenant_b]["connections"] == limit + 3

        await settle(figures_settled, timeout=5, interval=0.05)
        a, b = figures[tenant_a], figures[tenant_b]
        expected_a = {"accepted": limit + 1, "refused": len(over), "connections": limit - 1}
        expected_b = {"accepted": limit + 3, "refused": 0, "connections": limit + 3}
        evidence.check(
            "per-port figures agree with what the clients saw",
            {k: a[k] for k in expected_a} == expected_a and {k: b[k] for k in expected_b} == expected_b,
            expected={"a": expected_a, "b": expected_b},
            observed={"a": {k: a[k] for k in expected_a}, "b": {k: b[k] for k in expected_b}},
            refused_by_reason=a.get("refused_by_reason"),
        )
        await dispose_all([*a_clients, *b_clients])
        for port in (tenant_a, tenant_b):
            await admin_unlisten(admin, port)
        evidence.verdict()

    run_async(scenario(), timeout=120)


# -- the ports file --------------------------------------------------------------------------------


@pytest.mark.scenario("ports_file", seed="coroutine server with dynamic ports")
@pytest.mark.requires("dynamic_ports", "ports_file")
def test_ports_file(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "ports-file")
    admin = AdminClient(target.admin_url, target.admin_token)

    async def write(text: str) -> dict[str, Any]:
        """Write the file atomically; wait until the target says it applied exactly this text."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        tmp = target.ports_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target.ports_file)
        return await until(lambda: _status_for(admin, digest), timeout=10, what="the ports file applied")

    async def scenario() -> None:
        baseline = await warm_up(target, admin)
        p = pick_free_ports(6, seed=23)
        held_by_api = p[5]
        await admin.call("POST", "/v1/listeners", {"port": held_by_api})
        first = "\n".join([
            f"[[listen]]\nport = {p[0]}\n",
            f"[[listen]]\nport = {p[1]}\nhandler = \"echo\"\nmax_connections = 3\n",
            f"[[listen]]\nport = {p[2]}\nreuse_port = true\non_remove = \"close\"\n",
            "[[listen]]\nport = 70000\n",  # entry 3: out of range
            f"[[listen]]\nport = {p[3]}\nhost = \"no.such.host\"\n",  # entry 4: bad address
            f"[[listen]]\nport = {p[0]}\n",  # entry 5: listed twice
            f"[[listen]]\nport = {held_by_api}\n",  # entry 6: the API holds it
        ])
        status = await write(first)
        report = status["last"]
        rejected = {r["entry"]: r["code"] for r in report["rejected"]}
        expected_rejected = {3: 4400, 4: 3003, 5: 4400, 6: 3004}
        evidence.check(
            "every rejected entry of the ports file is reported with its code",
            rejected == expected_rejected,
            expected=expected_rejected,
            observed=report["rejected"],
        )
        now = await listeners(admin)
        file_ports = {q for q, e in now.items() if e.get("source") == "file"}
        evidence.check(
            "the valid entries are applied",
            file_ports == {p[0], p[1], p[2]} and now[p[1]]["handler"] == "echo" and now[p[2]]["reuse_port"]
            and now[held_by_api]["source"] == "api",
            expected=sorted([p[0], p[1], p[2]]),
            observed={q: settings(e) for q, e in now.items()},
        )
        served = [await attempt(q) for q in (p[0], p[1], p[2])]
        resident = await ScenarioClient.connect(f"ws://127.0.0.1:{p[2]}/", "resident")
        evidence.check(
            "ports from the file serve connections",
            all(a.outcome == Outcome.OK for a in served),
            expected="ok x 3",
            observed=[(a.port, a.outcome) for a in served],
        )
        # Change: p0 removed, p1's limit changed in place, p2 re-bound without SO_REUSEPORT, p4 added.
        second = "\n".join([
            f"[[listen]]\nport = {p[1]}\nhandler = \"echo\"\nmax_connections = 9\n",
            f"[[listen]]\nport = {p[2]}\non_remove = \"close\"\n",
            f"[[listen]]\nport = {p[4]}\n",
        ])
        report2 = (await write(second))["last"]
        now = await listeners(admin)
        refused = await attempt(p[0])
        evidence.check(
            "a changed file adds, removes, updates and re-binds to match",
            sorted(report2["removed"]) == [p[0]] and report2["updated"] == [p[1]] and report2["rebound"] == [p[2]]
            and report2["added"] == [p[4]] and now[p[1]]["max_connections"] == 9 and not now[p[2]]["reuse_port"]
            and refused.outcome == Outcome.REFUSED,
            expected={"removed": [p[0]], "updated": [p[1]], "rebound": [p[2]], "added": [p[4]]},
            observed={k: report2[k] for k in ("removed", "updated", "rebound", "added")} | {"p0_attempt": refused.outcome},
        )
        try:
            await resident.wait_closed(5)
        except TimeoutError:
            pass
        evidence.check(
            "a re-bound port applies its policy to its sessions (close: 1001)",
            resident.close_frame is not None and resident.close_frame[0] == 1001,
            expected=1001,
            observed=resident.close_frame,
        )
        # Only p1's handler changes (echo -> default): updated in place, its sessions untouched (9.4).
        echo_resident = await ScenarioClient.connect(f"ws://127.0.0.1:{p[1]}/", "echo-resident")
        added_at = now[p[1]]["added_at"]
        third = second.replace(f"port = {p[1]}\nhandler = \"echo\"\n", f"port = {p[1]}\n")
        report3 = (await write(third))["last"]
        now = await listeners(admin)
        served = await attempt(p[1])
        evidence.check(
            "an entry whose only change is its handler is updated in place",
            report3["updated"] == [p[1]] and not report3["rebound"] and not report3["removed"]
            and now[p[1]]["added_at"] == added_at and now[p[1]]["handler"] == "default"
            and not echo_resident.is_closed and served.outcome == Outcome.OK,
            expected={"updated": [p[1]], "rebound": [], "added_at": added_at, "its session": "open"},
            observed={k: report3[k] for k in ("updated", "rebound", "removed")}
            | {"added_at": now[p[1]]["added_at"], "handler": now[p[1]]["handler"], "session closed": echo_resident.is_closed},
        )
        await dispose_all([echo_resident])
        before_invalid = {q: settings(e) for q, e in (await listeners(admin)).items()}
        bad = (await write("[[listen]\nport = = 1\n"))["last"]
        after_invalid = {q: settings(e) for q, e in (await listeners(admin)).items()}
        evidence.check(
            "a file that is not valid TOML changes nothing and is reported",
            bad["error"] is not None and before_invalid == after_invalid,
            expected="error reported, listeners unchanged",
            observed={"error": bad["error"], "unchanged": before_invalid == after_invalid},
        )
        empty = (await write("# nothing\n"))["last"]
        now = await listeners(admin)
        evidence.check(
            "an empty file removes every file port and nothing else",
            set(now) == {target.port, held_by_api} and sorted(empty["removed"]) == sorted([p[1], p[2], p[4]]),
            expected=sorted([target.port, held_by_api]),
            observed=sorted(now),
        )
        await admin_unlisten(admin, held_by_api)
        await dispose_all([resident])
        await check_no_leaks(admin, evidence, baseline)
        evidence.verdict()

    run_async(scenario(), timeout=120)


async def _connections(admin: AdminClient, port: int, n: int) -> bool:
    return (await listeners(admin))[port]["connections"] == n


async def _status_for(admin: AdminClient, digest: str) -> dict[str, Any] | None:
    status = await admin.get("/v1/ports-file")
    if status.get("sha256") == digest and status.get("last"):
        return status
    return None
