"""Benchmark: reload under ticking sessions on the reference server (a benchmark, not a test).

    python -m loadtests.bench_reload [--sessions 100 1000] [--tick-ms 10 100] [--reloads 5]
                                     [--sweep 100 500 1000 2000 5000] [--out reports/bench_reload]

For each session count (paired with its tick interval), it starts the
reference server on loopback, connects the clients, subscribes each one to
its own tick, and runs ``--reloads`` full reloads one after the other
(``POST /v1/reload`` with ``wait``). For each it prints:

* reload time: from the request to the last old process gone, as the
  requester saw it and as the server recorded it;
* the longest silence in any session's ticks around the reload (and the
  median session's longest), i.e. what a client notices; and the *delay*:
  that silence less the tick interval (how much later than due the next tick came).

Then the **sweep** (``--sweep``, the session counts of the curve, as far as the open-file
limit allows): each count with two reloads and a tick interval that keeps the machine's
tick rate at 10,000 per second (every 100 ms, slower from 1,000 sessions up), and its peer.
The curve (delay and the peer's gap against sessions) goes to ``--out`` ``.png``, the figures
to ``.json``.

As a peer measured in the same run: the silence a client sees when a reload
drops it instead (close, reconnect, handshake, subscribe again, first tick),
for the same number of clients reconnecting at once.

It also checks what a reload must not break (no session closed, tick numbers
consecutive, no tick of an old generation after a newer one) and exits
non-zero if one of those fails; the figures are printed either way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.bench_migration import pct
from loadtests.curves import within_limit, write_curve
from loadtests.reference import REPO, ReferenceServer
from loadtests.tickclient import TickClient
from scenarios.harness.waiting import until


async def connect(port: int, n: int) -> list[TickClient]:
    clients: list[TickClient] = []
    for start in range(0, n, 100):  # in batches: the listen backlog and the handshakes
        clients += await asyncio.gather(*(TickClient.connect("127.0.0.1", port) for _ in range(start, min(n, start + 100))))
    return clients


async def subscribe(clients: list[TickClient], tick_ms: int) -> list[int]:
    replies = await asyncio.gather(*(c.request("timer_start", interval_ms=tick_ms) for c in clients))
    await until(lambda: all(c.ticks for c in clients), timeout=30, what="every client ticking")
    return [r["timer"] for r in replies]


def longest_gap(c: TickClient, start: float, end: float) -> float:
    times = [t[0] for t in c.ticks]
    return max((b - a for a, b in itertools.pairwise(times) if b >= start and a <= end), default=0.0)


def tick_problems(c: TickClient, last: int) -> bool:
    seqs = [t[1] for t in c.ticks]
    gens = [t[2] for t in c.ticks]
    return seqs != list(range(1, last + 1)) or gens != sorted(gens)


async def one_size(n: int, tick_ms: int, reloads: int, workers: int) -> dict[str, Any]:
    server = ReferenceServer({"workers": workers, "task_workers": 1}, label=f"bench_reload-{n}")
    try:
        server.start()
        assert server.admin is not None
        clients = await connect(server.port, n)
        timers = await subscribe(clients, tick_ms)
        runs = []
        for _ in range(reloads):
            wall = time.time()
            t0 = time.perf_counter()
            record = await server.admin.call("POST", "/v1/reload", {"wait": True})
            seen_ms = (time.perf_counter() - t0) * 1000.0
            done = time.time()
            gen = record["generation"]
            await until(  # a session lost to a forced kill is reported below, not waited for
                lambda gen=gen: all(c.closed or c.ticks[-1][2] == gen for c in clients),
                timeout=30,
                what="every session ticking from the new generation",
            )
            gaps = [longest_gap(c, wall, done) for c in clients]
            runs.append(
                {
                    "requester_ms": round(seen_ms, 1),
                    "server_ms": record["duration_ms"],
                    "forced_kills": record["forced_kills"],
                    "sessions_lost": record["sessions_lost"],
                    "gap_max_ms": round(max(gaps) * 1000, 1),
                    "delay_max_ms": round(max(gaps) * 1000 - tick_ms, 1),
                    "gap_median_session_ms": round(statistics.median(gaps) * 1000, 1),
                }
            )
        live = [(c, t) for c, t in zip(clients, timers, strict=True) if not c.closed]
        finals = await asyncio.gather(*(c.request("timer_stop", timer=t) for c, t in live))
        last = {id(c): f.get("seq", 0) for (c, _), f in zip(live, finals, strict=True)}
        await until(
            lambda: all(c.closed or len(c.ticks) >= last[id(c)] for c in clients),
            timeout=10,
            what="last ticks",
        )
        problems = {
            "closed": sum(1 for c in clients if c.closed),
            "order_loss_or_interleaving": sum(1 for c in clients if not c.closed and tick_problems(c, last[id(c)])),
        }
        # The peer: a reload that drops every client, which reconnects and subscribes again.
        for c in clients:
            c.abort()
        dropped = time.time()
        again = await connect(server.port, n)
        await subscribe(again, tick_ms)
        drop_gap = max(c.ticks[0][0] for c in again) - dropped
        for c in again:
            c.abort()
        return {
            "sessions": n,
            "tick_ms": tick_ms,
            "workers": workers,
            "reloads": runs,
            "reload_ms_p50": round(pct([r["requester_ms"] for r in runs], 0.5), 1),
            "reload_ms_max": round(max(r["requester_ms"] for r in runs), 1),
            "gap_ms_max": max(r["gap_max_ms"] for r in runs),
            "delay_ms_max": round(max(r["gap_max_ms"] for r in runs) - tick_ms, 1),
            "gap_ms_p50_of_reloads": round(statistics.median(r["gap_max_ms"] for r in runs), 1),
            "gap_ms_median_session": round(statistics.median(r["gap_median_session_ms"] for r in runs), 1),
            "peer_drop_and_reconnect_gap_ms": round(drop_gap * 1000, 1),
            "problems": problems,
        }
    finally:
        server.stop()


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{r['sessions']} sessions, tick every {r['tick_ms']} ms, {r['workers']} workers, {len(r['reloads'])} reloads")
    print("  reload   requester ms   server ms   longest tick gap ms   delay ms   median session's longest gap ms")
    for i, run in enumerate(r["reloads"], 1):
        print(
            f"  {i:>6}   {run['requester_ms']:>12.1f}   {run['server_ms']:>9.1f}   {run['gap_max_ms']:>19.1f}"
            f"   {run['delay_max_ms']:>8.1f}   {run['gap_median_session_ms']:>10.1f}"
        )
    peer = r["peer_drop_and_reconnect_gap_ms"]
    print(
        f"  reload time p50 {r['reload_ms_p50']} ms, max {r['reload_ms_max']} ms; longest tick gap {r['gap_ms_max']} ms"
        f" (delay {r['delay_ms_max']} ms past the {r['tick_ms']} ms interval)"
    )
    print(
        f"  peer (drop, reconnect, resubscribe, first tick): {peer} ms;"
        f" ratio longest gap / peer = {r['gap_ms_max'] / peer:.2f}"
    )
    print(f"  forced kills {sum(x['forced_kills'] for x in r['reloads'])}, sessions lost {sum(x['sessions_lost'] for x in r['reloads'])}")
    print(f"  problems: {r['problems']}")


#: The sweep keeps the machine's tick rate at this many ticks per second (or less).
SWEEP_TICKS_PER_S = 10_000


def sweep_tick_ms(sessions: int) -> int:
    return max(100, sessions * 1000 // SWEEP_TICKS_PER_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--tick-ms", type=int, nargs="+", default=[10, 100], help="one per session count")
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sweep", type=int, nargs="*", default=[100, 500, 1000, 2000, 5000],
                        help="session counts of the curve (none: no curve)")
    parser.add_argument("--out", default=str(REPO / "reports" / "bench_reload"), help="writes .json and .png")
    args = parser.parse_args()
    if len(args.tick_ms) != len(args.sessions):
        parser.error("give one --tick-ms per --sessions value")
    results = []
    for n, tick in zip(args.sessions, args.tick_ms, strict=True):
        result = asyncio.run(one_size(n, tick, args.reloads, args.workers))
        print_report(result)
        results.append(result)
    sweep, too_many = within_limit(args.sweep, per_unit_fds=2)  # a client and a server socket per session
    if too_many:
        print(f"\nsweep: {too_many} sessions left out: the open-file limit allows {sweep[-1] if sweep else 0}")
    curve = []
    for n in sweep:
        result = asyncio.run(one_size(n, sweep_tick_ms(n), 2, args.workers))
        print_report(result)
        curve.append(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"cpus": os.cpu_count(), "goals": results, "sweep": curve, "sweep_left_out": too_many}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    written = [str(out.with_suffix(".json"))]
    if curve:
        png = write_curve(
            out.with_suffix(".png"),
            title=f"Reload: how much later than due a session's next tick comes ({args.workers} workers, {os.cpu_count()} CPUs)",
            scale_label="sessions",
            cost_label="ms (longest, over 2 reloads)",
            series={
                "reference reload: delay past the tick interval": [(r["sessions"], r["delay_ms_max"]) for r in curve],
                "peer: drop, reconnect, first tick": [(r["sessions"], r["peer_drop_and_reconnect_gap_ms"]) for r in curve],
            },
            per_unit_label="ms per 1,000 sessions",
            per_unit_factor=1000.0,
            note="tick every 100 ms up to 1,000 sessions, then every sessions/10 ms (10,000 ticks/s in all)",
        )
        written.append(str(png))
    print(f"\nwritten: {', '.join(written)}")
    bad = [r["problems"] for r in results + curve if any(r["problems"].values())]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
