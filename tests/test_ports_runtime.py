"""Integration tests of dynamic ports in the reference server (reference-specific).

The scenarios check what any target must do; these check the reference's own
parts: listening from a custom process and a task worker, the backlog drain
of ``unlisten``, the privileged-port error, ports and handler sets across a
reload, the ports file at start-up, and a clean stop with run-time ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import socket
import subprocess
import sys

import pytest

from reference_server.config import Config
from reference_server.core.ports import OnRemove, RefusalReason
from reference_server.logs import Log
from reference_server.master.listeners import ListenerSet, open_listener
from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.ports import Outcome, attempt, bind_probe
from scenarios.harness.waiting import until
from tests.test_server import admin_of, start_target


def _events(target, name: str) -> list[dict]:
    return [json.loads(line) for line in target.log_lines() if f'"{name}"' in line]


def test_unlisten_drains_the_backlog_then_releases_the_port() -> None:
    """Connections waiting in the backlog are handed on (served or refused), then the port is free."""
    dispatched: list[tuple[int, RefusalReason | None]] = []

    def dispatch(conn, addr, port, refusal):
        dispatched.append((port, refusal))
        conn.close()

    selector = selectors.DefaultSelector()
    ports = ListenerSet(Config(), selector, Log("test", level="error"), ["default"], dispatch, lambda sids, port: None)
    try:
        for policy, expected in ((OnRemove.KEEP, None), (OnRemove.CLOSE, RefusalReason.REMOVED)):
            listener = ports.listen(ports.parse({"port": 0, "on_remove": policy.value}), "api")
            port = listener["port"]
            waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # in the backlog
            dispatched.clear()
            answer = ports.unlisten(port)
            assert answer["drained"] == 3 and dispatched == [(port, expected)] * 3
            assert bind_probe(port) is None
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2)
            for s in waiting:
                s.close()
    finally:
        ports.close_all()
        selector.close()


def test_a_privileged_port_is_named_as_such() -> None:
    """EACCES becomes PORT_PRIVILEGED; as root, the check runs in a child that drops to nobody."""
    code = (  # everything is imported before privileges are dropped
        "import os, sys\n"
        "from reference_server.master.listeners import open_listener\n"
        "from reference_server.core.ports import PortError\n"
        "if os.getuid() == 0: os.setgid(65534); os.setuid(65534)\n"
        "try:\n    open_listener('127.0.0.1', 81, 16)\nexcept PortError as e:\n    print(e.code.name, e.message)\n"
        "else:\n    print('BOUND')\n"
    )
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 81:
            pytest.skip("this machine lets anyone bind port 81")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.startswith("PORT_PRIVILEGED") and "127.0.0.1:81" in out.stdout and "EACCES" in out.stdout, out


def test_open_listener_reports_a_port_in_use() -> None:
    holder = open_listener("127.0.0.1", 0, 8)
    try:
        port = holder.getsockname()[1]
        with pytest.raises(Exception) as info:
            open_listener("127.0.0.1", port, 8)
        assert info.value.code.name == "PORT_IN_USE" and f"127.0.0.1:{port}" in info.value.message
    finally:
        holder.close()


@pytest.fixture
def ports_server(tmp_path):
    target = start_target(tmp_path, "ports", ("--app", "tests.apps:ports_app"), workers=2, task_workers=1)
    yield target
    report = target.stop()
    assert report.exit_code == 0 and not report.forced and not report.leftover_pids, report


def test_listen_from_a_custom_process_and_a_task_worker_and_across_a_reload(ports_server):
    target = ports_server
    admin = admin_of(target)

    async def main():
        porter = await until(lambda: _events(target, "porter.listening"), timeout=10, what="the porter's port")
        porter_port = porter[0]["port"]
        asker = await ScenarioClient.connect(target.ws_url, "asker")
        await asker.request("task", data="listen")
        result = await until(lambda: asker.evs("task_result"), timeout=10, what="the task's listener")
        task_port = result[0]["result"]["port"]
        echo = await ScenarioClient.connect(f"ws://127.0.0.1:{porter_port}/", "echo")
        on_task_port = await ScenarioClient.connect(f"ws://127.0.0.1:{task_port}/", "t")
        await on_task_port.whoami()
        before = (await admin.get("/v1/listeners"))["listeners"]
        await admin.call("POST", "/v1/reload", {"wait": True, "timeout_ms": 20000})
        after = (await admin.get("/v1/listeners"))["listeners"]
        await echo.send({"op": "whoami", "id": 5})
        echoed = await until(lambda: [e for e in echo.events if e.get("id") == 5], timeout=5, what="echo")
        who = await on_task_port.request("whoami")
        fresh = await attempt(porter_port, message='{"x": 1}')
        removed = await admin.call("DELETE", f"/v1/listeners/{task_port}")
        await on_task_port.wait_closed(5)
        await dispose_all([asker, echo, on_task_port])
        return before, after, echoed, who, fresh, removed, on_task_port.close_frame, task_port

    before, after, echoed, who, fresh, removed, frame, task_port = asyncio.run(main())
    strip = [{k: v for k, v in e.items() if k not in ("connections", "accepted")} for e in before]
    assert strip == [{k: v for k, v in e.items() if k not in ("connections", "accepted")} for e in after]
    assert {e["source"] for e in before} == {"config", "api"} and len(before) == 3
    assert echoed and who["ok"] and who["generation"] == 2 and who["port"] == task_port  # handler kept by the move
    assert fresh.outcome == Outcome.OK
    assert removed["policy"] == "close" and removed["closing"] == 1 and frame == (1001, f"port {task_port} was removed")


def test_ports_file_at_start_up_and_without_one(tmp_path):
    bad = tmp_path / "ports.toml"
    bad.write_text("[[listen]\n")
    target = start_target(tmp_path, "bad-file", ("--ports-file", str(bad)), workers=1, task_workers=0)
    admin = admin_of(target)
    try:
        status = asyncio.run(admin.get("/v1/ports-file"))
        assert status["last"]["error"]["name"] == "BAD_REQUEST" and "not valid TOML" in status["last"]["error"]["message"]
        assert asyncio.run(attempt(target.port)).outcome == Outcome.OK
    finally:
        assert target.stop().exit_code == 0
    plain = start_target(tmp_path, "no-file", drop=("--ports-file",), workers=1, task_workers=0)
    try:
        code, body = admin_of(plain).request_sync("GET", "/v1/ports-file")
        assert code == 501 and body["error"]["name"] == "UNSUPPORTED" and "--ports-file" in body["error"]["message"]
        code, body = admin_of(plain).request_sync("POST", "/v1/listeners", {"port": plain.admin_port})
        assert code == 409 and body["error"]["name"] == "PORT_IN_USE" and "admin API" in body["error"]["message"]
    finally:
        assert plain.stop().exit_code == 0


def test_stop_with_run_time_ports_releases_them(tmp_path):
    target = start_target(tmp_path, "stop", workers=1, task_workers=0)
    admin = admin_of(target)
    listener = asyncio.run(admin.call("POST", "/v1/listeners", {"port": 0, "reuse_port": True}))
    client = asyncio.run(attempt(listener["port"]))
    assert client.outcome == Outcome.OK
    report = target.stop()
    assert report.exit_code == 0 and not report.forced
    assert bind_probe(listener["port"]) is None
