"""Integration tests of migration failures in the reference server (reference-specific).

The scenarios check what any target must do; these check the reference's own
recovery: a target worker that dies while a session is in flight to it.
"""

from __future__ import annotations

import asyncio
import os
import signal

from scenarios.harness.client import ScenarioClient, dispose_all
from scenarios.harness.waiting import until
from tests.test_server import admin_of, server  # noqa: F401 - the fixture


async def _on_worker(url: str, admin, name: str, worker: int) -> ScenarioClient:
    client = await ScenarioClient.connect(url, name)
    await client.whoami()
    if client.worker != worker:
        await admin.call("POST", f"/v1/sessions/{client.session}/migrate", {"worker": worker})
        client.worker = worker
    return client


def test_target_dying_before_adoption_leaves_the_session_where_it_was(server):  # noqa: F811
    admin = admin_of(server)

    async def main():
        moving = await _on_worker(server.ws_url, admin, "moving", 0)
        blocker = await _on_worker(server.ws_url, admin, "blocker", 1)
        try:
            await moving.request("timer_start", interval_ms=10)
            await until(lambda: len(moving.evs("tick")) >= 3, timeout=5, what="ticks")
            target_pid = next(p["pid"] for p in await admin.processes() if p["name"] == "worker-1")
            await blocker.send({"op": "block", "id": "b", "ms": 4000})
            move = asyncio.create_task(
                admin.request("POST", f"/v1/sessions/{moving.session}/migrate", {"worker": 1})
            )

            async def in_flight() -> bool:
                status, rec = await admin.request("GET", f"/v1/sessions/{moving.session}")
                return status == 200 and rec["migrating"]

            await until(in_flight, timeout=3, what="the move to be in flight", interval=0.005)
            os.kill(target_pid, signal.SIGKILL)
            status, body = await asyncio.wait_for(move, 10)
            assert (status, body["error"]["name"]) == (503, "MIGRATION_FAILED"), body
            reply = await moving.request("echo", seq=1, data="still here")
            assert reply["ok"] and reply["worker"] == 0, reply
            record = await admin.get(f"/v1/sessions/{moving.session}")
            assert record["worker"] == 0 and not record["migrating"], record
            seen = len(moving.evs("tick"))
            await until(lambda: len(moving.evs("tick")) >= seen + 3, timeout=5, what="ticks after the failed move")
            seqs = [e["seq"] for e in moving.evs("tick")]
            assert seqs == list(range(1, len(seqs) + 1)), "the timer came back with its state"
            assert not moving.is_closed
        finally:
            await dispose_all([moving, blocker])

    asyncio.run(main())
    failed = [line for line in server.log_lines() if '"migration.failed"' in line]
    assert failed and "died before adopting" in failed[0], failed
