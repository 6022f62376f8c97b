"""Benchmark: live session migration on the reference server (a benchmark, not a test).

    python -m loadtests.bench_migration [--sessions 1000] [--workers 3]
                                        [--sweep 100 500 1000 2000 5000] [--out reports/bench_migration]

Starts the reference server on loopback, connects ``--sessions`` clients, and
moves every one of them to another worker through the admin API's batch
route (``POST /v1/migrations``, one move after the other), twice:

1. idle: the sessions are connected and silent;
2. under traffic: a tenth of the clients stream echo requests (one every
   ``--echo-period-ms``, 50 by default), and every session gets a tick from
   its own timer every 500 ms (timers move with their sessions).

For each phase it prints migrations per second and the p50/p99 time per
migration, measured two ways: at the source (freeze until the target owns
the session) and at the requester (the admin process, RPC to the owner
included). As a peer measured in the same run it prints what the
alternative costs: dropping the client and having it reconnect (TCP connect
plus the WebSocket handshake, p50/p99 over the same number of clients).

Afterwards it checks what a migration must not break: no session closed,
every echo answered, the stats counting every move. It exits non-zero if
one of those fails (the figures are reported either way).

Then the **sweep** (``--sweep``, as far as the open-file limit allows): the same at each
session count, with at most 100 streaming clients and ticks every ``max(500, sessions / 2)``
ms, so that the traffic stays what one harness process can drive. The curve (time per
migration at the requester, p50 and p99, idle and under traffic, and the reconnect peer,
against sessions) goes to ``--out`` ``.png``, the figures to ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.curves import within_limit, write_curve
from loadtests.reference import ReferenceServer
from scenarios.harness.admin import AdminClient
from scenarios.harness.client import ScenarioClient

REPO = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def migrate_all(admin: AdminClient, clients: list[ScenarioClient], workers: int, where: dict[int, int]) -> dict[str, Any]:
    moves = []
    for c in clients:
        assert c.session is not None
        dst = (where[c.session] + 1) % workers
        moves.append([c.session, dst])
    started = time.perf_counter()
    results = []
    for i in range(0, len(moves), 500):
        body = await admin.call("POST", "/v1/migrations", {"moves": moves[i : i + 500]})
        results += body["results"]
    wall = time.perf_counter() - started
    ok = [r for r in results if r.get("ok")]
    for r in ok:
        where[r["session"]] = r["to"]
    source = [r["elapsed_ms"] for r in ok]
    requester = [r["total_ms"] for r in ok]
    return {
        "moves": len(moves),
        "ok": len(ok),
        "failed": [r for r in results if not r.get("ok")][:5],
        "wall_s": round(wall, 3),
        "migrations_per_s": round(len(ok) / wall, 1),
        "source_ms": {"p50": round(pct(source, 0.5), 3), "p99": round(pct(source, 0.99), 3), "mean": round(statistics.fmean(source), 3) if source else None},
        "requester_ms": {"p50": round(pct(requester, 0.5), 3), "p99": round(pct(requester, 0.99), 3)},
    }


async def reconnect_peer(url: str, n: int) -> dict[str, Any]:
    """The alternative to moving a session: a fresh TCP connect + WebSocket handshake."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        c = await ScenarioClient.connect(url, f"peer{i}")
        times.append((time.perf_counter() - t0) * 1000.0)
        c.abort()
        await c.dispose()
    return {"connects": n, "p50_ms": round(pct(times, 0.5), 3), "p99_ms": round(pct(times, 0.99), 3)}


async def stream(client: ScenarioClient, stop: asyncio.Event, counts: dict[str, Any], period: float) -> None:
    seq = 0
    while not stop.is_set() and not client.is_closed:
        seq += 1
        t0 = time.perf_counter()
        reply = await client.request("echo", seq=seq, data="x" * 200, timeout=30)
        counts["rtt_ms"].append((time.perf_counter() - t0) * 1000.0)
        if reply.get("ok"):
            counts["echoes"] += 1
        else:
            counts["echo_failures"] += 1
        await asyncio.sleep(period)  # the client's pace


async def one_size(sessions: int, workers: int, echo_period_ms: float, streamers: int, tick_ms: int) -> dict[str, Any]:
    """Both phases at one scale; the report holds ``ok`` (the checks) as well as the figures."""
    server = ReferenceServer({"workers": workers, "task_workers": 1}, label=f"bench_migration-{sessions}")
    report: dict[str, Any] = {"sessions": sessions, "workers": workers, "cpus": os.cpu_count(), "tick_ms": tick_ms,
                              "streamers": streamers}
    clients: list[ScenarioClient] = []
    try:
        server.start()
        assert server.admin is not None
        url = f"ws://127.0.0.1:{server.port}/"
        for i in range(0, sessions, 100):
            batch = await asyncio.gather(*(ScenarioClient.connect(url, f"b{j}") for j in range(i, min(sessions, i + 100))))
            await asyncio.gather(*(c.whoami() for c in batch))
            clients += batch
        where = {c.session: c.worker for c in clients}
        stats_before = await server.admin.stats()

        report["idle"] = await migrate_all(server.admin, clients, workers, where)

        await asyncio.gather(*(c.request("timer_start", interval_ms=tick_ms) for c in clients))
        stop = asyncio.Event()
        counts: dict[str, Any] = {"echoes": 0, "echo_failures": 0, "rtt_ms": []}
        streaming = [asyncio.create_task(stream(c, stop, counts, echo_period_ms / 1000.0)) for c in clients[:streamers]]
        t0 = time.perf_counter()
        report["traffic"] = await migrate_all(server.admin, clients, workers, where)
        elapsed = time.perf_counter() - t0
        stop.set()
        await asyncio.gather(*streaming)
        report["traffic"]["echo_per_s_during"] = round(counts["echoes"] / elapsed, 1)
        report["traffic"]["echo_failures"] = counts["echo_failures"]
        # The same traffic's own tail: an echo waits behind the same queues a move does.
        report["traffic"]["echo_rtt_ms"] = {"p50": round(pct(counts["rtt_ms"], 0.5), 3),
                                            "p99": round(pct(counts["rtt_ms"], 0.99), 3)}
        report["peer_reconnect"] = await reconnect_peer(url, min(sessions, 300))

        stats_after = await server.admin.stats()
        moved = report["idle"]["ok"] + report["traffic"]["ok"]
        counted = int(stats_after["counters"].get("migrations_in", 0)) - int(stats_before["counters"].get("migrations_in", 0))
        closed = sum(1 for c in clients if c.is_closed)
        report["checks"] = {
            "sessions_closed": closed,
            "moves_counted": counted,
            "moves_ok": moved,
            "echo_failures": counts["echo_failures"],
        }
        report["ok"] = closed == 0 and counted == moved and counts["echo_failures"] == 0 and moved == 2 * sessions
    finally:
        await asyncio.gather(*(c.dispose() for c in clients), return_exceptions=True)
        server.stop()
    return report


async def run(args: argparse.Namespace) -> int:
    goal = await one_size(args.sessions, args.workers, args.echo_period_ms, max(1, args.sessions // 10), 500)
    print_report(goal)
    sweep, too_many = within_limit(args.sweep, per_unit_fds=2)
    if too_many:
        print(f"sweep: {too_many} sessions left out: the open-file limit allows {sweep[-1] if sweep else 0}")
    curve = []
    for n in sweep:
        r = await one_size(n, args.workers, args.echo_period_ms, min(100, max(1, n // 10)), max(500, n // 2))
        print_report(r)
        curve.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"goal": goal, "sweep": curve, "sweep_left_out": too_many}, indent=1))
    written = [str(out.with_suffix(".json"))]
    if curve:
        written.append(str(write_curve(
            out.with_suffix(".png"),
            title=f"Live migration: time per move at the requester ({args.workers} workers, {os.cpu_count()} CPUs)",
            scale_label="sessions (each moved twice: idle, then under traffic)",
            cost_label="ms per migration",
            series={
                "idle p50": [(r["sessions"], r["idle"]["requester_ms"]["p50"]) for r in curve],
                "idle p99": [(r["sessions"], r["idle"]["requester_ms"]["p99"]) for r in curve],
                "traffic p50": [(r["sessions"], r["traffic"]["requester_ms"]["p50"]) for r in curve],
                "traffic p99": [(r["sessions"], r["traffic"]["requester_ms"]["p99"]) for r in curve],
                "peer: reconnect p50": [(r["sessions"], r["peer_reconnect"]["p50_ms"]) for r in curve],
            },
            note="flat = each move costs the same whatever the number of sessions",
        )))
    print(f"written: {', '.join(written)}")
    return 0 if goal["ok"] and all(r["ok"] for r in curve) else 1


def print_report(r: dict[str, Any]) -> None:
    print(f"live migration, reference server: {r['sessions']} sessions, {r['workers']} workers, {r['cpus']} CPUs")
    for phase in ("idle", "traffic"):
        p = r[phase]
        print(
            f"  {phase:<8} {p['ok']}/{p['moves']} moved in {p['wall_s']} s = {p['migrations_per_s']} migrations/s;"
            f" per migration at the source p50 {p['source_ms']['p50']} ms, p99 {p['source_ms']['p99']} ms;"
            f" at the requester p50 {p['requester_ms']['p50']} ms, p99 {p['requester_ms']['p99']} ms"
        )
    rtt = r["traffic"]["echo_rtt_ms"]
    print(f"  traffic during the moves: {r['traffic']['echo_per_s_during']} echo round trips/s from {r['streamers']}"
          f" clients, ticks every {r['tick_ms']} ms on every session; an echo's round trip meanwhile p50 {rtt['p50']} ms,"
          f" p99 {rtt['p99']} ms (the load's own tail, that a move waits behind too)")
    peer = r["peer_reconnect"]
    ratio = r["idle"]["source_ms"]["p50"] / peer["p50_ms"] if peer["p50_ms"] else float("nan")
    print(f"  peer: reconnect (TCP + WebSocket handshake) p50 {peer['p50_ms']} ms, p99 {peer['p99_ms']} ms;"
          f" a migration costs {ratio:.2f}x a reconnect at p50 (and the client notices nothing)")
    print(f"  checks: {r['checks']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--echo-period-ms", type=float, default=50.0, help="pause between one streaming client's echoes")
    parser.add_argument("--sweep", type=int, nargs="*", default=[100, 500, 1000, 2000, 5000],
                        help="session counts of the curve (none: no curve)")
    parser.add_argument("--out", default=str(REPO / "reports" / "bench_migration"), help="writes .json and .png")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
