"""The uvicorn + Starlette target: its reload book, its outage log, and the run-time facts of its findings.

The scenarios judge the target through the contract (``tests/test_targets.py``).
These check what the manifest's reasons claim and what the contract cannot
see: uvicorn's own reload signal drops the sessions and says how many; a
stopped server leaves no process and no Redis key behind; bad options are
refused by name.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from scenarios.harness.admin import AdminClient
from scenarios.harness.broker import EmbeddedBroker
from scenarios.harness.client import connect_many, dispose_all
from scenarios.harness.manifest import load_manifest
from scenarios.harness.target import Target
from scenarios.harness.waiting import until
from targets.uvicorn_starlette.outage import OutageLog
from targets.uvicorn_starlette.reloads import ReloadBook

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "targets" / "uvicorn_starlette" / "target.toml"


# -- the reload book (pure) ----------------------------------------------------------------


def test_a_request_starts_a_reload_and_the_next_ones_join_and_widen_it() -> None:
    book = ReloadBook()
    first, merged = book.request("task_workers", "admin", now=10.0)
    assert (first.id, first.generation, merged, sorted(first.kinds)) == (1, 2, False, ["task_workers"])
    joined, merged = book.request("all", "worker:0", now=10.5)
    assert joined is first and merged is True
    assert sorted(first.kinds) == ["task_workers", "workers"]  # widened
    done = book.finish(now=12.0)
    doc = done.as_dict()
    assert doc["state"] == "done" and doc["duration_ms"] == 2000.0 and doc["merged_requests"] == 1
    assert book.doc()["counters"] == {"requested": 2, "merged": 1, "completed": 1, "forced_kills": 0}
    second, merged = book.request("all", "signal:SIGHUP")
    assert (second.id, second.generation, merged) == (2, 3, False)
    assert book.doc()["running"]["reload"] == 2 and book.doc()["generation"] == 3


def test_a_bad_scope_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'everything'"):
        ReloadBook().request("everything", "admin")


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog) -> None:
    log = logging.getLogger("test.outage")
    outage = OutageLog(log, "bus worker-0")
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for _ in range(500):
            outage.failed(ConnectionError("refused"))
        outage.ok()
        outage.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "back after" in lines[1] and "500 failed attempts" in lines[1]


# -- the running target ---------------------------------------------------------------------


@pytest.fixture
def broker():
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


def start(tmp_path: Path, broker: EmbeddedBroker, **profile) -> Target:
    target = Target(load_manifest(MANIFEST), profile={"workers": 2, **profile}, redis_url=broker.url, log_path=tmp_path / "uvs.log")
    target.start()
    return target


def test_sighup_is_uvicorns_rolling_restart_and_its_record_counts_the_sessions_it_closed(tmp_path, broker) -> None:
    target = start(tmp_path, broker)
    try:

        async def scenario() -> dict:
            admin = AdminClient(target.admin_url, target.admin_token)
            clients = await connect_many(target.ws_url, "c", 6)
            old = {p["pid"] for p in (await admin.get("/v1/processes"))["processes"] if p["kind"] == "worker"}
            try:
                target.signal(signal.SIGHUP)

                async def done() -> dict | None:
                    status = await admin.get("/v1/reloads")
                    return status["history"][-1] if status["history"] else None

                record = await until(done, timeout=30, what="the SIGHUP reload to finish")
                await until(lambda: all(c.is_closed for c in clients), timeout=10, what="every client closed")
                assert {c.close_frame[0] for c in clients if c.close_frame} == {1012}  # "service restart"
                new = {p["pid"] for p in (await admin.get("/v1/processes"))["processes"] if p["kind"] == "worker"}
                assert len(new) == 2 and not new & old
                return record
            finally:
                await dispose_all(clients)

        record = asyncio.run(scenario())
        assert record["requests"][0]["source"] == "signal:SIGHUP"
        assert record["generation"] == 2 and record["sessions_lost"] == 6, record
        assert sorted(r["name"] for r in record["retired"]) == ["task-0", "worker-0", "worker-1"]
    finally:
        report = target.stop()
    assert report.exit_code == 0 and not report.forced and not report.leftover_pids, report
    keys = redis.Redis.from_url(broker.url).keys("uvs:*")
    assert keys == [], f"the stopped server left keys in Redis: {keys[:5]}"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "targets.uvicorn_starlette", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_port_in_use_is_refused_by_name(broker) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run_cli("--port", str(port), "--admin-port", "1", "--admin-token", "t", "--redis-url", broker.url)
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} (WebSocket port)" in proc.stderr


def test_an_unreachable_redis_is_refused_by_name() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nobody listens there once closed
    proc = run_cli("--port", "1", "--admin-port", "2", "--admin-token", "t", "--redis-url", f"redis://127.0.0.1:{dead}/0")
    assert proc.returncode == 2 and f"--redis-url 'redis://127.0.0.1:{dead}/0' cannot be reached" in proc.stderr
