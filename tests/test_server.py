"""Integration tests of the reference server: process model, bad input, CLI, broker.

Each test starts real servers through the harness's Target (own process group),
and every one is stopped, with a check that nothing of it outlived the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

from scenarios.harness.admin import AdminClient
from scenarios.harness.client import ScenarioClient
from scenarios.harness.manifest import load_manifest
from scenarios.harness.target import Target
from scenarios.harness.waiting import until

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "reference_server" / "target.toml"


def start_target(
    tmp_path: Path, label: str, extra: tuple[str, ...] = (), *, drop: tuple[str, ...] = (), **profile
) -> Target:
    """The reference from its manifest, without broker; ``drop``: options (with their value) to leave out."""
    target = Target(load_manifest(MANIFEST), profile=profile, redis_url="", log_path=tmp_path / f"{label}.log")
    # No broker for these tests: drop "--redis-url {redis_url}" and disable the embedded one.
    cmd = target.manifest.command
    for option in ("--redis-url", *drop):
        i = cmd.index(option)
        del cmd[i : i + 2]
    cmd += ["--no-embedded-broker", *extra]
    if "--no-app-admin-ops" in extra:
        cmd.remove("--app-admin-ops")
        cmd.remove("--no-app-admin-ops")
    target.start()
    return target


@pytest.fixture
def server(tmp_path):
    target = start_target(tmp_path, "server", workers=2, task_workers=1)
    yield target
    report = target.stop()
    assert report.exit_code == 0 and not report.forced and not report.leftover_pids, report


def admin_of(target: Target) -> AdminClient:
    return AdminClient(target.admin_url, target.admin_token)


def test_crashed_worker_is_replaced_within_a_second(server):
    admin = admin_of(server)

    async def main():
        procs = await admin.processes()
        victim = next(p for p in procs if p["name"] == "worker-1")
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()

        async def replaced():
            now = await admin.processes()
            new = [p for p in now if p["name"] == "worker-1" and p["pid"] != victim["pid"] and p["state"] == "ready"]
            return new and time.monotonic() - killed_at

        elapsed = await until(replaced, timeout=5, what="worker-1 replaced", interval=0.01)
        assert elapsed < 1.0, f"replacement took {elapsed:.3f}s"
        client = await ScenarioClient.connect(server.ws_url, "after-crash")
        await client.whoami()
        await client.close()
        return victim["pid"]

    dead_pid = asyncio.run(main())
    died = [json.loads(line) for line in server.log_lines() if '"process.died"' in line]
    assert any(d["pid"] == dead_pid and d["cause"] == "killed by SIGKILL" and d["name"] == "worker-1" for d in died), died


def test_sigterm_closes_every_client_with_1001_and_everything_exits(tmp_path):
    target = start_target(tmp_path, "term", workers=2, task_workers=1)

    async def main():
        clients = [await ScenarioClient.connect(target.ws_url, f"c{i}") for i in range(6)]
        await asyncio.gather(*(c.whoami() for c in clients))
        started = time.monotonic()
        report = await asyncio.to_thread(target.stop)
        await asyncio.gather(*(c.wait_closed() for c in clients))
        return clients, report, time.monotonic() - started

    clients, report, took = asyncio.run(main())
    assert report.exit_code == 0 and not report.forced and not report.leftover_pids, report
    assert all(c.close_frame == (1001, "server shutting down") for c in clients), [c.close_frame for c in clients]
    assert took < 5.0


def test_administrative_app_ops_are_off_unless_asked_for(tmp_path):
    """Without --app-admin-ops any client could unlisten the main port or stall a worker: refused."""
    target = start_target(tmp_path, "no-admin-ops", ("--no-app-admin-ops",), workers=1)
    try:

        async def ask() -> dict[str, dict]:
            client = await ScenarioClient.connect(target.ws_url, "asker")
            try:
                return {op: await client.request(op, **fields) for op, fields in (
                    ("unlisten", {"port": target.port}), ("listen", {"port": 1}), ("reload", {}),
                    ("block", {"ms": 10}), ("ping", {}))}
            finally:
                await client.dispose()

        answers = asyncio.run(ask())
        for op in ("unlisten", "listen", "reload", "block"):
            assert answers[op]["error"]["code"] == 4501 and "--app-admin-ops" in answers[op]["error"]["message"], answers
        assert answers["ping"]["ok"] is True
    finally:
        report = target.stop()
    assert report.exit_code == 0 and not report.forced, report


def test_admin_connections_are_bounded_and_idle_ones_closed(tmp_path):
    """An admin connection that sends nothing is closed after --admin-idle-ms; past
    --admin-max-connections a new one is closed at once; the API keeps answering."""
    target = start_target(tmp_path, "admin-bounds", ("--admin-idle-ms", "300", "--admin-max-connections", "4"), workers=1)
    try:
        port = int(target.admin_url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert extra.recv(1) == b""  # closed at once: four are open
        extra.close()
        for s in idle:  # each closed by the server (EOF), not by our timeout
            assert s.recv(1) == b""
            s.close()
        stats = asyncio.run(admin_of(target).stats())
        assert int(stats["counters"]["admin_refused"]) == 1
    finally:
        report = target.stop()
    assert report.exit_code == 0 and not report.forced, report


def test_admin_api_rejects_garbage_clearly_and_keeps_serving(server):
    admin = admin_of(server)
    cases = [
        (("GET", "/v1/stats"), {"token": "wrong"}, 401, "UNAUTHORIZED"),
        (("GET", "/v1/nope"), {}, 404, "NOT_FOUND"),
        (("DELETE", "/v1/stats"), {}, 405, "METHOD_NOT_ALLOWED"),
        (("POST", "/v1/sessions/1/push"), {"raw": b"{not json"}, 400, "BAD_REQUEST"),
        (("POST", "/v1/sessions/1/push"), {"raw": b'{"data": 5}'}, 400, "BAD_REQUEST"),
        (("POST", "/v1/sessions/99999/push"), {"raw": b'{"data": "x"}'}, 404, "SESSION_NOT_EXIST"),
        (("PUT", "/v1/sweep"), {"raw": b'{"uids": "all"}'}, 400, "BAD_REQUEST"),
        (("POST", "/v1/sessions/1/close"), {"raw": b'{"code": 1006}'}, 400, "BAD_REQUEST"),
    ]
    for (method, path), kw, status, name in cases:
        got, body = admin.request_sync(method, path, **kw)
        assert (got, body["error"]["name"]) == (status, name), (method, path, got, body)
    # Raw garbage on the socket: a clear 400, and the server still answers afterwards.
    with socket.create_connection(("127.0.0.1", server.admin_port)) as s:
        s.sendall(b"\x00\xffgarbage\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    with socket.create_connection(("127.0.0.1", server.admin_port)) as s:
        s.sendall(b"POST /v1/shutdown HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert admin.request_sync("GET", "/v1/stats")[0] == 200
    metrics = admin.request_sync("GET", "/metrics", token="")[1]
    assert "refsrv_dead_session_pushes_total" in metrics


def test_bad_websocket_input_closes_only_the_offender(server):
    async def main():
        bystander = await ScenarioClient.connect(server.ws_url, "bystander")
        await bystander.whoami()
        # A message over max_message_size (1 MiB): 1009.
        big = await ScenarioClient.connect(server.ws_url, "big")
        await big.ws.send("x" * (1024 * 1024 + 1))
        await big.wait_closed()
        # Invalid UTF-8 in a text frame, built by hand (masked): 1007.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await reader.readuntil(b"\r\n\r\n")
        writer.write(bytes([0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]))  # masked with zeros
        frame = await asyncio.wait_for(reader.read(64), 5)
        writer.close()
        # Not a WebSocket request at all: an HTTP error response.
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        w2.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        rejected = await asyncio.wait_for(r2.read(200), 5)
        w2.close()
        echo = await bystander.request("echo", seq=1, data="still fine")
        await bystander.close()
        return big.close_frame, frame, rejected, echo

    big_close, frame, rejected, echo = asyncio.run(main())
    assert big_close is not None and big_close[0] == 1009, big_close
    assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1007, frame
    assert rejected.startswith(b"HTTP/1.1 4"), rejected
    assert echo["ok"] and echo["data"] == "still fine"


def test_bad_options_and_busy_ports_fail_clearly(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "reference_server", *args], cwd=REPO, capture_output=True, text=True, timeout=30
        )

    bad = run("--workers", "0")
    assert bad.returncode == 2 and "--workers=0" in bad.stderr, bad.stderr
    unknown = run("--no-such-option")
    assert unknown.returncode == 2 and "--no-such-option" in unknown.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run("--port", str(port), "--no-embedded-broker")
    assert res.returncode == 3, res.stderr
    line = json.loads(res.stderr.strip().splitlines()[-1])
    assert line["event"] == "bind.failed" and f"127.0.0.1:{port}" in line["error"] and "EADDRINUSE" in line["error"]


def test_custom_process_sees_and_pushes_to_every_session(tmp_path):
    target = start_target(tmp_path, "custom", ("--app", "tests.apps:greeter_app"), workers=2, task_workers=0)
    try:

        async def main():
            clients = [await ScenarioClient.connect(target.ws_url, f"c{i}") for i in range(4)]
            await asyncio.gather(*(c.whoami() for c in clients))
            await until(lambda: all(c.evs("greeting") for c in clients), timeout=5, what="greetings")
            result = [(c.session, c.evs("greeting")[0]) for c in clients]
            for c in clients:
                await c.close()
            return result

        for sid, greeting in asyncio.run(main()):
            assert greeting["to"] == sid and greeting["from"] == "custom-greeter"
    finally:
        report = target.stop()
    assert report.exit_code == 0 and not report.leftover_pids


def test_embedded_broker_serves_pubsub_to_several_processes(tmp_path):
    target = Target(load_manifest(MANIFEST), profile={}, redis_url="", log_path=tmp_path / "b.log")
    cmd = target.manifest.command
    i = cmd.index("--redis-url")
    del cmd[i : i + 2]  # no URL: the server starts its embedded broker
    target.start()
    try:
        url = asyncio.run(
            until(
                lambda: next(
                    (json.loads(x)["url"] for x in target.log_lines() if '"broker.listening"' in x), None
                ),
                timeout=10,
                what="broker.listening",
            )
        )
        check_pubsub(url)
    finally:
        report = target.stop()
    assert report.exit_code == 0 and not report.leftover_pids


@pytest.mark.skipif(not os.environ.get("TEST_REDIS_URL"), reason="no real Redis (TEST_REDIS_URL) on this machine")
def test_real_redis_serves_the_same_pubsub():
    check_pubsub(os.environ["TEST_REDIS_URL"])


def check_pubsub(url: str) -> None:
    """A subscriber in another process receives what this one publishes."""
    script = (
        "import redis,sys; r=redis.Redis.from_url(sys.argv[1]); p=r.pubsub(); p.subscribe('t');"
        "m=p.get_message(timeout=10); assert m and m['type']=='subscribe', m;"  # confirmed by the broker
        "print('SUB', flush=True);"
        "[print(m['data'].decode(), flush=True) or sys.exit(0) for m in p.listen() if m['type']=='message']"
    )
    sub = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == "SUB"
        assert redis.Redis.from_url(url).publish("t", "hello") == 1  # the confirmed subscriber
        assert sub.stdout.readline().strip() == "hello"
        assert sub.wait(timeout=10) == 0
    finally:
        if sub.poll() is None:
            sub.kill()
        sub.wait()
        sub.stdout.close()


def test_websockets_client_sees_proper_handshake(server):
    async def main():
        async with connect(server.ws_url, compression=None) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # no deflate negotiated
            await ws.send(json.dumps({"op": "whoami", "id": 1}))
            return json.loads(await ws.recv())

    reply = asyncio.run(main())
    assert reply["ok"] and reply["session"] > 0 and reply["worker"] in (0, 1)


def test_keepalive_pings_and_closes_a_client_that_never_pongs(tmp_path):
    target = start_target(
        tmp_path, "keepalive", ("--ping-interval-ms", "100", "--ping-timeout-ms", "300"), workers=1, task_workers=0
    )
    try:

        async def main():
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await reader.readuntil(b"\r\n\r\n")
            opcodes = []
            while not opcodes or opcodes[-1] != 0x8:  # read frames, never answer a ping
                head = await asyncio.wait_for(reader.readexactly(2), 5)
                payload = await reader.readexactly(head[1] & 0x7F)
                opcodes.append(head[0] & 0x0F)
            writer.close()
            return opcodes, payload

        opcodes, close_payload = asyncio.run(main())
        assert opcodes[0] == 0x9, opcodes  # a ping first
        assert int.from_bytes(close_payload[:2], "big") == 1011, close_payload
    finally:
        assert target.stop().exit_code == 0
