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

Each scenario drives the target into a history; the checks are pure functions of it, in
``scenarios/harness/checkers/ports.py`` (with unit tests in ``tests/test_checkers_ports.py``).
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
from scenarios.harness.checkers.ports import (
    Change,
    ChurnHistory,
    FileHistory,
    LimitsHistory,
    PortErrorsHistory,
    PortHistory,
    Refusal,
    check_churn,
    check_file,
    check_limits,
    check_port_errors,
    churn_figure,
    errors_figure,
    model_mismatch,
)
from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.common import warm_up
from scenarios.harness.figures import steps_figure
from scenarios.harness.ports import (
    ATTEMPT_BOUND_S,
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
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle, until

SEED = "coroutine server with dynamic ports"
PROFILE = {"workers": 3, "task_workers": 1}
N_PORTS = 24
STEPS = 160
ATTEMPTERS = 6
#: Pause between one attempter's attempts: leave CPU to the target on a small machine.
ATTEMPT_PACING_S = 0.004
RESIDENT_BOUND_S = 5.0
CHURN_BUDGET_S = 12.0  # the reference needs about 3 s; a slower target still makes half the steps
#: port_limits: port A's max_connections.
LIMIT = 5


# -- churn ------------------------------------------------------------------------------------------


class Churn:
    """One churn run: the random steps, the attempters and the residents, filling a :class:`ChurnHistory`."""

    def __init__(self, grace_ms: float, admin: AdminClient, controller: ScenarioClient, seed: int, fixed: set[int]) -> None:
        self.admin = admin
        self.controller = controller
        self.seed = seed
        self.rng = random.Random(seed)
        self.h = ChurnHistory(model=PortHistory(grace_ms))
        self.ports = pick_free_ports(N_PORTS, seed=seed)
        self.listed: dict[int, dict[str, Any]] = {}  # port -> the options it was listened with
        self.residents: dict[int, list[ScenarioClient]] = {}
        self.pending: set[asyncio.Task] = set()
        self.fixed = fixed
        self.stop = asyncio.Event()
        self.all_clients: list[ScenarioClient] = []

    async def attempter(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/attempter {index}")
        while not self.stop.is_set():
            self.h.attempts.append(await attempt(rng.choice(self.ports)))
            await asyncio.sleep(ATTEMPT_PACING_S)

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
        self.h.model.record(Change(port, True, sent, done, how, opts, ok, None if ok else answer))
        if not ok:
            self.h.change_failures.append({"listen": opts, "how": how, "answer": answer})
            return
        self.listed[port] = opts
        probe = bind_probe(port, reuse_port=True)
        expected = None if opts["reuse_port"] else "EADDRINUSE"
        self.h.reuse_probes.append({"port": port, "reuse_port": opts["reuse_port"], "probe": probe, "ok": probe == expected})
        try:
            client = await ScenarioClient.connect(f"ws://127.0.0.1:{port}/", f"resident-{port}", timeout=RESIDENT_BOUND_S)
        except Exception as exc:  # any failure to connect is the finding
            self.h.resident_connect_failed.append({"port": port, "error": f"{type(exc).__name__}: {exc}"})
            return
        self.all_clients.append(client)
        self.residents.setdefault(port, []).append(client)

    async def unlisten(self, port: int) -> None:
        policy = self.listed[port]["on_remove"]
        override = None
        if self.rng.random() < 0.25:
            override = "close" if policy == "keep" else "keep"
        body: dict[str, Any] = {"port": port, **({"on_remove": override} if override else {})}
        how = self.rng.choice(["admin", "admin", "app"])
        sent = time.monotonic()
        ok, answer = await self._change(how, "unlisten", body)
        done = time.monotonic()
        self.h.model.record(Change(port, False, sent, done, how, body, ok, None if ok else answer))
        if not ok:
            self.h.change_failures.append({"unlisten": body, "how": how, "answer": answer})
            return
        probe = bind_probe(port)
        self.h.bind_after_unlisten.append(
            {"port": port, "probe": probe, "ms_after_answer": round((time.monotonic() - done) * 1000, 2)})
        del self.listed[port]
        effective = override or policy
        for client in self.residents.pop(port, []):
            task = asyncio.create_task(self.observe_resident(client, port, effective))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def observe_resident(self, client: ScenarioClient, port: int, policy: str) -> None:
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
        self.h.residents.append(record)

    async def compare_model(self, when: str) -> None:
        diff = model_mismatch(self.listed, await listeners(self.admin), self.fixed)
        if diff:
            self.h.mismatches.append({"when": when, **diff})

    async def step(self, index: int) -> None:
        port = self.rng.choice(self.ports)
        if port in self.listed:
            await self.unlisten(port)
        else:
            await self.listen(port)
        await self.compare_model(f"after step {index} (port {port})")

    async def reload_in_the_middle(self) -> dict[str, Any]:
        """A full reload while the attempts go on; the listeners and the residents must come through."""
        before = {p: settings(e) for p, e in (await listeners(self.admin)).items()}
        residents = [c for cs in self.residents.values() for c in cs]
        answer = await self.admin.call("POST", "/v1/reload", {"scope": "all", "wait": True, "timeout_ms": 30_000})
        after = {p: settings(e) for p, e in (await listeners(self.admin)).items()}
        replies = await asyncio.gather(*(c.request("echo", seq=1, timeout=RESIDENT_BOUND_S) for c in residents))
        closed = [c.name for c, r in zip(residents, replies, strict=True) if not r.get("ok")]
        return {"same": before == after, "listeners": len(before), "reload": answer.get("reload"),
                "duration_ms": answer.get("duration_ms"), "residents": len(residents), "residents_closed": closed,
                **({"before": before, "after": after} if before != after else {})}


async def drive_churn(target: Any, admin: AdminClient, seed: int) -> ChurnHistory:
    """Random listens and unlistens (with a reload in the middle when the target has one) under attempts."""
    baseline = await warm_up(target, admin)
    fixed = set(await listeners(admin))
    controller = await ScenarioClient.connect(target.ws_url, "controller")
    churn = Churn(target.manifest.ports_grace_ms, admin, controller, seed, fixed)
    h = churn.h
    stats_before = await admin.stats()
    attempters = [asyncio.create_task(churn.attempter(i)) for i in range(ATTEMPTERS)]
    steps = 0
    try:
        deadline = time.monotonic() + CHURN_BUDGET_S
        for i in range(STEPS):
            if i == STEPS // 2 and "reload" in target.capabilities:
                h.reload = await churn.reload_in_the_middle()
            await churn.step(i)
            steps += 1
            if time.monotonic() > deadline and i > STEPS // 2:
                break  # a target that hangs makes each step slow: the evidence is in by now
        # Leave nothing listed: every port removed once more, the last ones under churn too.
        for port in list(churn.listed):
            await churn.unlisten(port)
        await churn.compare_model("at the end")
    finally:
        churn.stop.set()
        await asyncio.gather(*attempters, return_exceptions=True)
        await asyncio.gather(*list(churn.pending), return_exceptions=True)
    stats_after = await admin.stats()
    await dispose_all([controller, *churn.all_clients])
    h.leftovers = await observe_leftovers(admin, baseline)

    outcomes: dict[str, int] = {}
    for a in h.attempts:
        outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
    changes = h.changes()
    _, decided, doubtful = h.model.violations(h.attempts)
    answer_ms = sorted((c.done - c.sent) * 1000 for c in changes)
    h.facts = {
        "seed": seed,
        "ports": churn.ports,
        "steps": steps,
        "attempts": outcomes,
        "changes": {"listen": sum(c.listed for c in changes), "unlisten": sum(not c.listed for c in changes),
                    "by_app_op": sum(c.how == "app" for c in changes)},
        "attempts_decided_vs_in_grace_window": {"decided": decided, "in_grace_window": doubtful},
        "connections_accepted_during_churn": int(stats_after["counters"]["connections_accepted"])
        - int(stats_before["counters"]["connections_accepted"]),
    }
    if answer_ms:
        h.facts["change_answer_ms"] = {"p50": round(answer_ms[len(answer_ms) // 2], 2), "max": round(answer_ms[-1], 2)}
    return h


@pytest.mark.scenario("port_churn", seed=SEED)
@pytest.mark.requires("dynamic_ports")
def test_port_churn(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "port-churn")
    admin = AdminClient(target.admin_url, target.admin_token)
    seed = evidence.rng().randrange(1 << 30)
    history = run_async(drive_churn(target, admin, seed), timeout=240)
    evidence.add_facts(history.facts)
    evidence.figure(churn_figure(history))
    evidence.record(check_churn(history, attempt_bound_s=ATTEMPT_BOUND_S))
    evidence.verdict()


# -- errors ---------------------------------------------------------------------------------------


def error_cases(own: int, held: int, main_port: int) -> list[tuple[str, dict[str, Any], int]]:
    """(what, the listen request, the contract error code it must fail with)."""
    return [
        ("a port another process listens on", {"port": held}, 3001),
        ("a port this server already listens on", {"port": own}, 3004),
        ("the server's main port", {"port": main_port}, 3004),
        ("a host that is not an IP address", {"port": own + 1, "host": "no.such.host"}, 3003),
        ("an address not of this machine", {"port": own + 1, "host": "192.0.2.1"}, 3003),
        ("a port out of range", {"port": 70000}, 4400),
        ("a handler set that does not exist", {"port": own + 1, "handler": "no-such-set"}, 3007),
        ("an unknown option", {"port": own + 1, "colour": "blue"}, 4400),
    ]


async def drive_errors(target: Any, admin: AdminClient) -> PortErrorsHistory:
    """Every conflicting and invalid listen, through the admin API and a worker, among bystanders."""
    h = PortErrorsHistory()
    await warm_up(target, admin)
    own = pick_free_ports(1, seed=7)[0]
    await admin.call("POST", "/v1/listeners", {"port": own})
    foreign = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process's port
    foreign.bind(("127.0.0.1", 0))
    foreign.listen(8)
    clients: list[ScenarioClient] = []
    try:
        clients = [await ScenarioClient.connect(target.ws_url, f"bystander-{i}") for i in range(4)]
        asker = await ScenarioClient.connect(target.ws_url, "asker")
        clients.append(asker)
        for c in clients:
            await c.whoami()
        h.processes_before = sorted((p["name"], p["pid"]) for p in await admin.processes())
        h.listeners_before = {p: settings(e) for p, e in (await listeners(admin)).items()}
        cases = error_cases(own, foreign.getsockname()[1], target.port)
        privileged = privileged_port_free()
        if privileged is not None:
            cases.append(("a privileged port", {"port": privileged}, 3002))
        h.facts["privileged_port_checked"] = privileged is not None
        for label, spec, code in cases:
            ok, answer = await admin_listen(admin, spec)
            h.refusals.append(Refusal(label, "admin", code, not ok, error_code(answer), answer=answer))
            reply = await asker.request("listen", timeout=5, **spec)
            message = (reply.get("error") or {}).get("message", "")
            h.refusals.append(Refusal(label, "app", code, not reply.get("ok"), error_code(reply),
                                      names_port=str(spec["port"]) in message, answer=reply))
        ok, answer = await admin_unlisten(admin, own + 2)
        h.refusals.append(Refusal("unlisten of a port not listened", "admin", 3005, not ok, error_code(answer), answer=answer))
        status, body = await admin.request("POST", "/v1/listeners", raw=b"{not json")
        h.refusals.append(Refusal("garbage body", "admin", 4400, status == 400, error_code(body), answer=body))
        alive = await asyncio.gather(*(c.request("whoami", timeout=5) for c in clients))
        h.clients, h.clients_answering = len(alive), sum(bool(r.get("ok")) for r in alive)
        h.processes_after = sorted((p["name"], p["pid"]) for p in await admin.processes())
        h.listeners_after = {p: settings(e) for p, e in (await listeners(admin)).items()}
        h.own_port_attempt = (await attempt(own)).outcome
        h.main_port_attempt = (await attempt(target.port)).outcome
    finally:
        foreign.close()
        await dispose_all(clients)
    await admin_unlisten(admin, own)
    return h


@pytest.mark.scenario("port_errors", seed=SEED)
@pytest.mark.requires("dynamic_ports")
def test_port_errors(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "port-errors")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_errors(target, admin), timeout=120)
    evidence.add_facts(history.facts)
    evidence.figure(errors_figure(history))
    evidence.record(check_port_errors(history))
    evidence.verdict()


# -- limits and handler sets --------------------------------------------------------------------


async def drive_limits(target: Any, admin: AdminClient) -> LimitsHistory:
    """Port A full (LIMIT sessions) and attempted over; port B (echo) filled past A's limit meanwhile."""
    await warm_up(target, admin)
    tenant_a, tenant_b = pick_free_ports(2, seed=11)
    h = LimitsHistory(limit=LIMIT, port_a=tenant_a)
    await admin.call("POST", "/v1/listeners", {"port": tenant_a, "max_connections": LIMIT})
    await admin.call("POST", "/v1/listeners", {"port": tenant_b, "handler": "echo"})
    a_clients: list[ScenarioClient] = []
    b_clients: list[ScenarioClient] = []
    try:
        a_clients = [await ScenarioClient.connect(f"ws://127.0.0.1:{tenant_a}/", f"a-{i}") for i in range(LIMIT)]
        h.over = [(a.outcome, a.detail) for a in [await attempt(tenant_a) for _ in range(3)]]
        b_clients = [await ScenarioClient.connect(f"ws://127.0.0.1:{tenant_b}/", f"b-{i}") for i in range(LIMIT + 3)]
        h.b_sessions, h.b_open = len(b_clients), sum(not c.is_closed for c in b_clients)
        h.who_a = await a_clients[0].request("whoami")
        await b_clients[0].send({"op": "whoami", "id": 77})
        h.echoed_b = await until(
            lambda: next((e for e in b_clients[0].events if e.get("id") == 77), None), timeout=5,
            what="the echo handler's answer",
        )
        await a_clients[0].close()
        # The client sees its close before the server has released the session: wait for the release.
        await settle(lambda: _connections(admin, tenant_a, LIMIT - 1), timeout=5, interval=0.02)
        freed = await attempt(tenant_a)
        h.freed = (freed.outcome, freed.detail)

        async def figures_settled() -> bool:
            figures = await listeners(admin)
            h.figures_a, h.figures_b = figures.get(tenant_a, {}), figures.get(tenant_b, {})
            return h.figures_a.get("connections") == LIMIT - 1 and h.figures_b.get("connections") == LIMIT + 3

        await settle(figures_settled, timeout=5, interval=0.05)
    finally:
        await dispose_all([*a_clients, *b_clients])
    for port in (tenant_a, tenant_b):
        await admin_unlisten(admin, port)
    return h


@pytest.mark.scenario("port_limits", seed=SEED)
@pytest.mark.requires("dynamic_ports")
def test_port_limits(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "port-limits")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_limits(target, admin), timeout=120)
    evidence.fact("over_limit_attempts", history.over)
    checks = check_limits(history)
    evidence.figure(steps_figure("steps", "port_limits: each step (a port at its limit, another port's handler set), as the contract says?", checks))
    evidence.record(checks)
    evidence.verdict()


# -- the ports file --------------------------------------------------------------------------------


def first_file(p: list[int]) -> str:
    """Three valid entries, then the four FILE_REJECTED ones (entries 3 to 6)."""
    return "\n".join([
        f"[[listen]]\nport = {p[0]}\n",
        f"[[listen]]\nport = {p[1]}\nhandler = \"echo\"\nmax_connections = 3\n",
        f"[[listen]]\nport = {p[2]}\nreuse_port = true\non_remove = \"close\"\n",
        "[[listen]]\nport = 70000\n",  # entry 3: out of range
        f"[[listen]]\nport = {p[3]}\nhost = \"no.such.host\"\n",  # entry 4: bad address
        f"[[listen]]\nport = {p[0]}\n",  # entry 5: listed twice
        f"[[listen]]\nport = {p[5]}\n",  # entry 6: the API holds it
    ])


def second_file(p: list[int]) -> str:
    """p0 removed, p1's limit changed in place, p2 re-bound without SO_REUSEPORT, p4 added."""
    return "\n".join([
        f"[[listen]]\nport = {p[1]}\nhandler = \"echo\"\nmax_connections = 9\n",
        f"[[listen]]\nport = {p[2]}\non_remove = \"close\"\n",
        f"[[listen]]\nport = {p[4]}\n",
    ])


async def drive_file(target: Any, admin: AdminClient) -> FileHistory:
    """Four files in turn (mixed, changed, handler only, not TOML, empty); reports and listeners after each."""

    async def write(text: str) -> dict[str, Any]:
        """Write the file atomically; the target's report once it says it applied exactly this text."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        tmp = target.ports_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target.ports_file)
        status = await until(lambda: _status_for(admin, digest), timeout=10, what="the ports file applied")
        return status["last"]

    async def now() -> dict[int, dict[str, Any]]:
        return await listeners(admin)

    baseline = await warm_up(target, admin)
    p = pick_free_ports(6, seed=23)
    h = FileHistory(main_port=target.port, ports=p)
    await admin.call("POST", "/v1/listeners", {"port": p[5]})
    clients: list[ScenarioClient] = []
    try:
        h.report1 = await write(first_file(p))
        h.listeners1 = await now()
        h.served1 = [(q, (await attempt(q)).outcome) for q in (p[0], p[1], p[2])]
        resident = await ScenarioClient.connect(f"ws://127.0.0.1:{p[2]}/", "resident")
        clients.append(resident)

        second = second_file(p)
        h.report2 = await write(second)
        h.listeners2 = await now()
        h.removed_port_attempt = (await attempt(p[0])).outcome
        try:
            await resident.wait_closed(5)
        except TimeoutError:
            pass
        h.rebound_resident_close = resident.close_frame

        # Only p1's handler changes (echo -> default): updated in place, its sessions untouched (9.4).
        echo_resident = await ScenarioClient.connect(f"ws://127.0.0.1:{p[1]}/", "echo-resident")
        clients.append(echo_resident)
        h.added_at_before = h.listeners2.get(p[1], {}).get("added_at")
        h.report3 = await write(second.replace(f"port = {p[1]}\nhandler = \"echo\"\n", f"port = {p[1]}\n"))
        h.listeners3 = await now()
        h.served3 = (await attempt(p[1])).outcome
        h.echo_resident_closed = echo_resident.is_closed
        await dispose_all([echo_resident])

        before_invalid = {q: settings(e) for q, e in (await now()).items()}
        h.invalid_error = (await write("[[listen]\nport = = 1\n")).get("error")
        h.invalid_unchanged = before_invalid == {q: settings(e) for q, e in (await now()).items()}

        h.report_empty = await write("# nothing\n")
        h.listeners_empty = sorted(await now())
    finally:
        await dispose_all(clients)
    await admin_unlisten(admin, p[5])
    h.leftovers = await observe_leftovers(admin, baseline)
    return h


@pytest.mark.scenario("ports_file", seed=SEED)
@pytest.mark.requires("dynamic_ports", "ports_file")
def test_ports_file(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "ports-file")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_file(target, admin), timeout=120)
    evidence.fact("reports", {"first": history.report1, "second": history.report2, "third": history.report3})
    checks = check_file(history)
    evidence.figure(steps_figure("steps", "ports_file: each file applied and each effect of it, as the contract says?", checks))
    evidence.record(checks)
    evidence.verdict()


async def _connections(admin: AdminClient, port: int, n: int) -> bool:
    return (await listeners(admin))[port]["connections"] == n


async def _status_for(admin: AdminClient, digest: str) -> dict[str, Any] | None:
    status = await admin.get("/v1/ports-file")
    if status.get("sha256") == digest and status.get("last"):
        return status
    return None
