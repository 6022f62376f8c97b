"""Sessions that only watch: they tick and echo while something else happens to the target.

A fault or a flood must not disturb the sessions it is not about. :class:`Watch` keeps a set
of ticking sessions echoing every ``echo_every_s`` until it is stopped, and turns what each saw
into a :class:`~.checkers.faults.Bystander` (ticks, longest gap, echoes, failures).
"""

from __future__ import annotations

import asyncio
import itertools
import time

from .admin import AdminClient
from .checkers.faults import Bystander
from .hostile import HostileClient
from .waiting import settle

REPLY_BOUND_S = 5.0


def tick_times(client: HostileClient) -> list[float]:
    """When each tick event arrived (Unix seconds)."""
    return [r.at for r in client.received if isinstance(r.value, dict) and r.value.get("ev") == "tick"]


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch without a tick between ``start`` and ``end`` (inf with no tick at all)."""
    inside = [t for t in times if start <= t <= end]
    if not inside:
        return float("inf")
    return max(b - a for a, b in itertools.pairwise([start, *inside, end]))


class Watch:
    """Echo on every watched session every ``echo_every_s`` while running; failures are recorded."""

    def __init__(self, clients: list[tuple[HostileClient, Bystander]], echo_every_s: float = 0.1) -> None:
        self.clients = clients
        self.echo_every_s = echo_every_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.started = 0.0

    @classmethod
    async def open(cls, port: int, n: int, *, tick_ms: int = 50, echo_every_s: float = 0.1) -> Watch:
        """``n`` new sessions, each ticking every ``tick_ms``, with a tick seen on each."""
        clients = []
        for i in range(n):
            client = await HostileClient.connect("127.0.0.1", port, f"bystander-{i}")
            who = await client.request("whoami", timeout=REPLY_BOUND_S)
            await client.request("timer_start", interval_ms=tick_ms, timeout=REPLY_BOUND_S)
            clients.append((client, Bystander(int(who["session"]), int(who.get("worker", 0)))))
        await settle(lambda: all(tick_times(c) for c, _ in clients), timeout=REPLY_BOUND_S, interval=0.02)
        return cls(clients, echo_every_s)

    def start(self) -> None:
        self.started = time.time()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            for client, rec in self.clients:
                try:
                    reply = await client.request("echo", seq=n, data="bystander", timeout=REPLY_BOUND_S)
                    rec.echoes += 1
                    if reply.get("ok") is not True:
                        rec.echo_failures.append(str(reply)[:120])
                except (ConnectionError, TimeoutError) as exc:
                    rec.echo_failures.append(repr(exc)[:120])
            try:
                await asyncio.wait_for(self._stop.wait(), self.echo_every_s)
            except TimeoutError:
                pass

    def ticked_after(self, when: float) -> bool:
        """Every watched session has a tick later than ``when`` (or is closed: that shows as a gap)."""
        return all(tick_times(c)[-1:] > [when] or c.is_closed for c, _ in self.clients)

    async def stop(self, since: float) -> list[Bystander]:
        """Stop echoing; each session's record, its longest tick gap measured from ``since``."""
        self._stop.set()
        if self._task is not None:
            await self._task
        end = time.time()
        for client, rec in self.clients:
            times = tick_times(client)
            rec.ticks = len(times)
            rec.max_gap_s = longest_gap(times, max(since, times[0] if times else since), end)
        return [rec for _, rec in self.clients]

    def abort(self) -> None:
        for client, _ in self.clients:
            client.abort()


class AdminWatch:
    """``GET`` some admin routes every ``every_s`` while running: (route, status, seconds) each."""

    def __init__(self, admin: AdminClient, routes: tuple[str, ...] = ("/ready", "/v1/stats"), every_s: float = 0.2,
                 bound_s: float = 10.0) -> None:
        self.admin = admin
        self.routes = routes
        self.every_s = every_s
        self.bound_s = bound_s
        self.answers: list[tuple[str, int, float]] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            for route in self.routes:
                start = time.monotonic()
                try:
                    status, _ = await asyncio.wait_for(self.admin.request("GET", route), self.bound_s)
                except (TimeoutError, OSError) as exc:
                    status = 0
                    self.errors.append(repr(exc)[:120])
                self.answers.append((route, status, round(time.monotonic() - start, 3)))
            try:
                await asyncio.wait_for(self._stop.wait(), self.every_s)
            except TimeoutError:
                pass

    async def stop(self) -> list[tuple[str, int, float]]:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.answers
