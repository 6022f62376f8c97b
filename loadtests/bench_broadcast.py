"""Benchmark: Redis broadcast, the reference server next to python-websockets' ``broadcast()``.

    python -m loadtests.bench_broadcast [--clients 1000] [--rates 40 100] [--seconds 5]
                                        [--workers 2] [--client-procs 2] [--out reports/bench_broadcast]
                                        [--sweep 100 500 1000 2000 5000] [--sweep-rate 10]

Both servers run in the same invocation, one after the other, against the same
Redis (a real ``redis-server`` run by the benchmark if there is one, else the
embedded fakeredis), with the same clients (``--client-procs`` processes of
lean receivers, :mod:`loadtests.bcastclient`) subscribed to one channel, and
the same published messages (``--rates`` messages per second for ``--seconds``
each, every one stamped with its publish time and a sequence number):

* **reference**: started from its manifest by the harness's ``Target``
  (``--workers`` workers, no task worker, its broadcaster process, pub/sub
  mode), which waits for ``GET /ready`` as the scenarios do: every worker
  serves before a client connects;
* **python-websockets**: :mod:`loadtests.peers.pw_broadcast`, one process,
  ``websockets.broadcast()``; ready once a WebSocket handshake succeeds.

For each server and rate it prints deliveries per second, loss (expected
deliveries not received), messages out of order or repeated,
publish-to-receive latency (p50, p99, max), and the server's CPU time per
delivery in µs: user plus system time of all its processes (from
``/proc``, via psutil) over the measured phase, divided by the deliveries, and for the
reference where that time went: the same per process (workers summed, the broadcaster, the
master, the admin process).
The headline is the ratio of CPU per delivery, reference over
python-websockets. Then the **sweep**: both servers at each client count of ``--sweep`` (as
far as the open-file limit allows) at ``--sweep-rate`` messages per second; the curve (CPU
per message published, and per delivery, against clients) goes to ``--out`` ``.png``.
Results go to ``--out`` ``.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from loadtests.bench_migration import pct
from loadtests.curves import within_limit, write_curve
from loadtests.floor import measure as measure_floor
from scenarios.harness.admin import AdminClient
from scenarios.harness.broker import EmbeddedBroker, RedisServer
from scenarios.harness.manifest import load_manifest
from scenarios.harness.target import Target, free_port
from scenarios.harness.waiting import until

REPO = Path(__file__).resolve().parents[1]
CHANNEL = "bench"
PREFIX = "bc:"


class Clients:
    """``procs`` receiver processes sharing ``n`` clients."""

    def __init__(self, port: int, n: int, procs: int) -> None:
        share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "loadtests.bcastclient", "--port", str(port), "--clients", str(k), "--channel", CHANNEL],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for k in share if k
        ]
        self.n = n

    def ask(self, line: str) -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()
        return self.read()

    def read(self) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            assert p.stdout is not None
            text = p.stdout.readline()
            if not text:
                raise RuntimeError(f"receiver process exited with {p.wait()}")
            out.append(json.loads(text))
        return out

    def stop(self) -> None:
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    return sum(cpu_by_pid(pid).values())


def cpu_by_pid(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and of each of its descendants, by pid."""
    root = psutil.Process(pid)
    out: dict[int, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


async def process_names(server: Server) -> dict[int, str]:
    """pid -> the name the target gives it (GET /v1/processes); empty for the peer (one process)."""
    if server.target is None:
        return {}
    admin = AdminClient(server.target.admin_url, server.target.admin_token)
    return {int(p["pid"]): str(p["name"]) for p in await admin.processes()}


def by_role(before: dict[int, float], after: dict[int, float], names: dict[int, str], deliveries: int) -> dict[str, float]:
    """µs of CPU per delivery spent in each process (workers summed by role: ``worker``), largest first."""
    spent: dict[str, float] = {}
    for pid, cpu in after.items():
        name = names.get(pid, "other")
        role = "worker" if name.startswith("worker") else name
        spent[role] = spent.get(role, 0.0) + cpu - before.get(pid, 0.0)
    return {k: round(v * 1e6 / max(1, deliveries), 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


class Server:
    """One server under test: its main pid (for CPU), its WebSocket port, and how it stops."""

    def __init__(self, kind: str, args: argparse.Namespace, redis_url: str) -> None:
        self.kind = kind
        self.target: Target | None = None
        self.proc: subprocess.Popen | None = None
        if kind == "reference":
            manifest = load_manifest(REPO / "reference_server" / "target.toml")
            profile = {"workers": args.workers, "task_workers": 0, "broadcast_mode": "pubsub", "log_level": "warning"}
            self.target = Target(manifest, profile=profile, redis_url=redis_url, log_path=Path(args.out).parent / "bench_broadcast-reference.log")
            self.target.start()  # returns once GET /ready answers 200, as in the scenarios
            assert self.target.proc is not None
            self.pid, self.port = self.target.proc.pid, self.target.port
        else:
            self.port = free_port()
            cmd = [sys.executable, "-m", "loadtests.peers.pw_broadcast", "--port", str(self.port), "--redis-url", redis_url, "--prefix", PREFIX]
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            self.pid = self.proc.pid

    async def ready(self) -> None:
        """The peer has no readiness route: it is ready once a WebSocket handshake succeeds."""
        if self.proc is None:
            return

        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}")
            try:
                async with connect(f"ws://127.0.0.1:{self.port}/", open_timeout=2, compression=None):
                    return True
            except (OSError, TimeoutError, WebSocketException):
                return False

        await until(up, timeout=30, what=f"{self.kind} to complete a handshake on port {self.port}")

    def stop(self) -> None:
        if self.target is not None:
            self.target.stop()
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def publish(redis_url: str, rate: float, seconds: float, seq0: int) -> tuple[int, float, float]:
    """Publish ``rate`` messages/s for ``seconds``; returns (count, first, last publish time)."""
    client = aioredis.Redis.from_url(redis_url)
    total = int(rate * seconds)
    start = time.monotonic()
    sent = 0
    first = time.time()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        if due > sent:
            pipe = client.pipeline(transaction=False)
            for s in range(seq0 + sent, seq0 + due):
                pipe.publish(PREFIX + CHANNEL, json.dumps({"t": time.time_ns(), "s": s}, separators=(",", ":")))
            await pipe.execute()
            sent = due
        await asyncio.sleep(0.002)  # pacing the publisher, not synchronisation
    last = time.time()
    await client.aclose()
    return total, first, last


async def run_server(
    kind: str, args: argparse.Namespace, redis_url: str, n_clients: int, rates: list[float]
) -> list[dict[str, Any]]:
    server = Server(kind, args, redis_url)
    results = []
    clients = None
    try:
        await server.ready()
        clients = Clients(server.port, n_clients, args.client_procs)
        ready = await asyncio.to_thread(clients.read)
        assert sum(r["ready"] for r in ready) == n_clients, ready
        seq = 0
        n, _, _ = await publish(redis_url, 50, 1.0, seq)  # warm-up
        seq += n

        async def warm() -> bool:
            return sum(r["received"] for r in await asyncio.to_thread(clients.ask, "report")) >= n * n_clients

        await until(warm, timeout=60, interval=0.2, what="warm-up deliveries")
        for rate in rates:
            await asyncio.to_thread(clients.ask, "reset")
            names = await process_names(server)
            per_pid0 = cpu_by_pid(server.pid)
            cpu0 = sum(per_pid0.values())
            ccpu0 = sum(tree_cpu(p.pid) for p in clients.procs)
            n, first, _ = await publish(redis_url, rate, args.seconds, seq)
            seq += n
            expected = n * n_clients
            progress = {"received": -1, "at": time.monotonic()}

            async def all_in(progress=progress, expected=expected) -> bool:
                got = sum(r["received"] for r in await asyncio.to_thread(clients.ask, "report"))
                if got != progress["received"]:
                    progress.update(received=got, at=time.monotonic())
                return got >= expected or time.monotonic() - progress["at"] > 3.0

            await until(all_in, timeout=120, interval=0.2, what="deliveries")
            done = time.time()
            per_pid = cpu_by_pid(server.pid)
            cpu = sum(per_pid.values()) - cpu0
            client_cpu = sum(tree_cpu(p.pid) for p in clients.procs) - ccpu0
            reports = await asyncio.to_thread(clients.ask, "report")
            received = sum(r["received"] for r in reports)
            lat = sorted(x for r in reports for x in r["lat_us"])
            results.append({
                "server": kind,
                "rate_msgs_per_s": rate,
                "messages": n,
                "clients": n_clients,
                "expected": expected,
                "received": received,
                "loss": expected - received,
                "bad_order": sum(r["bad_order"] for r in reports),
                "closed": sum(r["closed"] for r in reports),
                "deliveries_per_s": round(received / max(1e-9, done - first), 1),
                "p50_ms": round(pct(lat, 0.50) / 1000, 3),
                "p99_ms": round(pct(lat, 0.99) / 1000, 3),
                "max_ms": round((lat[-1] if lat else float("nan")) / 1000, 3),
                "cpu_s": round(cpu, 3),
                "cpu_us_per_delivery": round(cpu * 1e6 / max(1, received), 3),
                "client_cpu_s": round(client_cpu, 3),
                #: where the server's time went: µs per delivery in each process (workers summed)
                "cpu_us_per_delivery_by_process": by_role(per_pid0, per_pid, names, received) if names else {},
            })
            print(format_row(results[-1]), flush=True)
            if names:
                split = ", ".join(f"{k} {v:.2f}" for k, v in results[-1]["cpu_us_per_delivery_by_process"].items())
                print(f"{'':<18} where the time went, µs per delivery: {split}", flush=True)
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    return results


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['server']:<18} {r['rate_msgs_per_s']:>6} msg/s x {r['clients']} clients: "
        f"{r['deliveries_per_s']:>9.0f} deliveries/s, loss {r['loss']}, order {r['bad_order']}, "
        f"latency p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms max {r['max_ms']:.2f} ms, "
        f"CPU {r['cpu_us_per_delivery']:.2f} µs/delivery"
    )


async def main(args: argparse.Namespace) -> int:
    broker = RedisServer() if RedisServer.available() and not args.fakeredis else EmbeddedBroker()
    redis_url = broker.start()
    # a client socket and a server socket per client, in different processes: one each here
    sweep, too_many = within_limit(args.sweep)
    print(f"broker: {broker.kind} at {redis_url}; {args.clients} clients in {args.client_procs} processes; "
          f"rates {args.rates} msg/s for {args.seconds} s; {os.cpu_count()} CPUs", flush=True)
    curve: dict[str, list[dict[str, Any]]] = {"reference": [], "python-websockets": []}
    try:
        ref = await run_server("reference", args, redis_url, args.clients, args.rates)
        pw = await run_server("python-websockets", args, redis_url, args.clients, args.rates)
        if too_many:
            print(f"sweep: {too_many} clients left out: the open-file limit allows {sweep[-1] if sweep else 0}")
        for n in sweep:
            for kind in curve:
                curve[kind] += await run_server(kind, args, redis_url, n, [args.sweep_rate])
    finally:
        broker.stop()
    floor = await asyncio.to_thread(measure_floor, args.clients)
    lines = [format_row(r) for r in ref + pw]
    lines.append(
        f"floor (loadtests/floor.py): one send() per recipient, {args.clients} loopback connections:"
        f" {floor['cpu_us_per_send']} µs CPU per send; a delivery that is its own send() costs at least that"
    )
    ratios = []
    for a, b in zip(ref, pw, strict=True):
        ratio = a["cpu_us_per_delivery"] / b["cpu_us_per_delivery"]
        ratios.append({"rate_msgs_per_s": a["rate_msgs_per_s"], "cpu_ratio_ref_over_pw": round(ratio, 3),
                       "floor_over_pw": round(floor["cpu_us_per_send"] / b["cpu_us_per_delivery"], 3),
                       "p99_ms_ref": a["p99_ms"], "p99_ms_pw": b["p99_ms"]})
        lines.append(
            f"CPU per delivery, reference / python-websockets at {a['rate_msgs_per_s']} msg/s: {ratio:.3f} "
            f"(goal <= 0.5; the one-send floor is {floor['cpu_us_per_send'] / b['cpu_us_per_delivery']:.3f});"
            f" latency p99 {a['p99_ms']} / {b['p99_ms']} ms"
        )
    for a, b in zip(curve["reference"], curve["python-websockets"], strict=True):
        lines.append(
            f"sweep {a['clients']:>5} clients at {args.sweep_rate:g} msg/s: CPU per delivery {a['cpu_us_per_delivery']:.2f}"
            f" / {b['cpu_us_per_delivery']:.2f} µs = {a['cpu_us_per_delivery'] / b['cpu_us_per_delivery']:.3f};"
            f" p99 {a['p99_ms']} / {b['p99_ms']} ms"
        )
    print("\n".join(lines[len(ref + pw):]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"floor": floor, "broker": broker.kind, "cpus": os.cpu_count(), "workers": args.workers, "client_procs": args.client_procs,
            "sweep_rate": args.sweep_rate, "sweep_left_out": too_many}
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": ref + pw, "ratios": ratios, "sweep": curve}, indent=2)
    )
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    written = [str(out.with_suffix(".json")), str(out.with_suffix(".txt"))]
    if sweep:
        written.append(str(write_curve(
            out.with_suffix(".png"),
            title=f"Broadcast: server CPU against clients ({args.sweep_rate:g} msg/s, {os.cpu_count()} CPUs)",
            scale_label="clients in the channel",
            cost_label="server CPU ms per message published",
            series={kind: [(r["clients"], r["cpu_us_per_delivery"] * r["clients"] / 1000.0) for r in rows]
                    for kind, rows in curve.items()},
            per_unit_label="µs per delivery",
            per_unit_factor=1000.0,
            note="reference: 2 workers and a broadcaster process; python-websockets: one process, websockets.broadcast()",
        )))
    print(f"written: {', '.join(written)}")
    rows = ref + curve["reference"]
    return 0 if all(r["loss"] == 0 and r["bad_order"] == 0 for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="+", default=[40, 100])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--sweep", type=int, nargs="*", default=[100, 500, 1000, 2000, 5000],
                        help="client counts of the curve (none: no curve)")
    parser.add_argument("--sweep-rate", type=float, default=10.0, help="messages per second at each point of the curve")
    parser.add_argument("--fakeredis", action="store_true", help="use the embedded fakeredis even if redis-server exists")
    parser.add_argument("--out", default=str(REPO / "reports" / "bench_broadcast"))
    sys.exit(asyncio.run(main(parser.parse_args())))
