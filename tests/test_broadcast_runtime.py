"""Broadcast in the running reference: the embedded broker, moves and reloads, a broadcaster crash, bad input.

These start the reference with its own embedded fakeredis (no ``--redis-url``),
or with the real Redis of ``TEST_REDIS_URL`` when CI provides one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.broadcast import BroadcastClient, Publisher, check_histories
from scenarios.harness.manifest import load_manifest
from scenarios.harness.target import Target
from scenarios.harness.waiting import until

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "reference_server" / "target.toml"
REAL_REDIS = os.environ.get("TEST_REDIS_URL", "")


def start(tmp_path: Path, label: str, mode: str = "pubsub", **profile) -> Target:
    """The reference from its manifest; with no TEST_REDIS_URL it starts its own embedded broker."""
    target = Target(
        load_manifest(MANIFEST),
        profile={"broadcast_mode": mode, **profile},
        redis_url=REAL_REDIS,
        log_path=tmp_path / f"{label}.log",
    )
    if not REAL_REDIS:
        cmd = target.manifest.command
        i = cmd.index("--redis-url")
        del cmd[i : i + 2]
    target.start()
    return target


def broker_url(target: Target) -> str:
    for line in target.log_lines():
        if '"server.start"' in line:
            return json.loads(line)["broker"]
    raise AssertionError("no server.start line")


@pytest.fixture
def targets():
    started: list[Target] = []
    yield started
    for t in started:
        report = t.stop()
        assert report.exit_code == 0 and not report.leftover_pids, report


async def connect(target: Target, n: int, prefix: str = "c") -> list[BroadcastClient]:
    return list(await asyncio.gather(*(BroadcastClient.connect("127.0.0.1", target.port, f"{prefix}{i}") for i in range(n))))


def test_embedded_broker_serves_every_worker_and_the_publish_op(tmp_path, targets):
    target = start(tmp_path, "embedded", workers=2)
    targets.append(target)

    async def main():
        clients = await connect(target, 6)
        try:
            await asyncio.gather(*(c.subscribe("room") for c in clients))
            workers = {(await c.request("whoami"))["worker"] for c in clients}
            assert workers == {0, 1}, workers
            for i in range(50):
                reply = await clients[0].request("publish", channel="room", data={"p": "op", "s": i + 1})
                assert reply["ok"], reply
            await clients[1].request("publish", channel="@all", data={"p": "all", "s": 1})
            await until(lambda: all(len(c.received) == 51 for c in clients), timeout=10, what="51 messages each")
            for c in clients:
                room = [r[3] for r in c.received if r[1] == "room"]
                assert room == list(range(1, 51)), (c.name, room[:5])
                assert [r[1] for r in c.received].count("@all") == 1
            assert (await clients[2].request("channels"))["channels"] == ["room"]
        finally:
            for c in clients:
                c.abort()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["pubsub", "durable"])
def test_channels_follow_moves_and_reloads_without_gap_or_repeat(tmp_path, targets, mode):
    target = start(tmp_path, f"moves-{mode}", mode, workers=3)
    targets.append(target)
    admin = AdminClient(target.admin_url, target.admin_token)

    async def main():
        clients = await connect(target, 12)
        publisher = Publisher("pub", broker_url(target), "bc:", mode)
        try:
            await asyncio.gather(*(c.subscribe("t") for c in clients))
            stop = asyncio.Event()

            async def publish():
                while not stop.is_set():
                    await publisher.publish("t")
                    await asyncio.sleep(0.004)  # the publisher's pace

            task = asyncio.ensure_future(publish())
            rng = random.Random(7)
            sessions = [s["session"] for s in await admin.sessions()]
            for sid in rng.sample(sessions, 6):
                info = next(s for s in await admin.sessions() if s["session"] == sid)
                to = (info["worker"] + 1) % 3
                status, body = await admin.request("POST", f"/v1/sessions/{sid}/migrate", {"worker": to})
                assert status == 200, body
            status, body = await admin.request("POST", "/v1/reload", {"wait": True})
            assert status == 200, body
            await until(lambda: len(publisher.log) > 150, timeout=15, what="150 messages published")
            stop.set()
            await task
            end = time.time()
            last = publisher.log[-1].seq
            await until(
                lambda: all(c.received and c.received[-1][3] >= last for c in clients), timeout=15, what="the last message"
            )
            verdict = check_histories(clients, publisher.log, end=end)
            assert verdict.summary()["required"] > 12 * 100
            assert not (verdict.missing or verdict.duplicates or verdict.out_of_order or verdict.forbidden), (
                verdict.summary(), verdict.missing[:3], verdict.duplicates[:3])
            stats = await admin.stats()
            assert stats["counters"].get("bc_catchup_incomplete", 0) == 0, stats["counters"]
            assert stats["counters"].get("migrations_in", 0) >= 6 + 12
        finally:
            for c in clients:
                c.abort()
            await publisher.close()

    asyncio.run(main())


def test_a_crashed_broadcaster_is_replaced_and_durable_mode_loses_nothing(tmp_path, targets):
    target = start(tmp_path, "crash", "durable", workers=2)
    targets.append(target)
    admin = AdminClient(target.admin_url, target.admin_token)

    async def main():
        clients = await connect(target, 6)
        publisher = Publisher("pub", broker_url(target), "bc:", "durable")
        try:
            await asyncio.gather(*(c.subscribe("d") for c in clients))
            for _ in range(20):
                await publisher.publish("d")
            victim = next(p for p in await admin.processes() if p["name"] == "broadcaster")
            os.kill(victim["pid"], signal.SIGKILL)
            for _ in range(40):  # published while no broadcaster runs
                await publisher.publish("d")

            async def replaced():
                procs = await admin.processes()
                return any(p["name"] == "broadcaster" and p["pid"] != victim["pid"] and p["state"] == "ready" for p in procs)

            await until(replaced, timeout=10, what="a new broadcaster")
            for _ in range(20):
                await publisher.publish("d")
            await until(lambda: all(len(c.received) >= 80 for c in clients), timeout=15, what="80 messages each")
            for c in clients:
                assert [r[3] for r in c.received] == list(range(1, 81)), c.name
        finally:
            for c in clients:
                c.abort()
            await publisher.close()

    asyncio.run(main())


def test_bad_payloads_are_dropped_counted_and_logged_once(tmp_path, targets):
    target = start(tmp_path, "payloads", workers=1)
    targets.append(target)
    admin = AdminClient(target.admin_url, target.admin_token)

    async def main():
        import redis.asyncio as aioredis

        (client,) = await connect(target, 1)
        r = aioredis.Redis.from_url(broker_url(target))
        try:
            await client.subscribe("x")
            for _ in range(5):
                await r.publish("bc:x", "not json")
            await r.publish("bc:x", json.dumps({"p": "good", "s": 1}))
            await until(lambda: client.received, timeout=10, what="the good message")
            stats = await admin.stats()
            assert stats["counters"]["bc_rejected"] == 5
            assert [x[2] for x in client.received] == ["good"] and not client.errors
        finally:
            client.abort()
            await r.aclose()

    asyncio.run(main())
    assert sum('"broadcast.rejected"' in line for line in target.log_lines()) == 1


@pytest.mark.parametrize(
    "option, value",
    [("--broadcast-mode", "loud"), ("--broadcast-buffer-bytes", "10"), ("--broadcast-prefix", "a b"),
     ("--broadcast-ring", "0")],
)
def test_bad_broadcast_options_are_refused_by_name(option, value):
    proc = subprocess.run(
        [sys.executable, "-m", "reference_server", "--port", "0", option, value],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert option in proc.stderr
