"""Observations shared by several scenarios: process fds and session counts of a target."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from . import conformance
from .admin import AdminClient
from .client import connect_many, dispose_all
from .spec import check_leftovers, fd_snapshot, observe_leftovers
from .waiting import settle


def standard_counters() -> list[str]:
    """The counters every target lists in ``/v1/stats`` (contract 4.2), from the OpenAPI document."""
    return list(conformance.contract().openapi["components"]["schemas"]["Stats"]["properties"]["counters"]["required"])


def counters_decreased(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each standard counter that went down from one ``/v1/stats`` snapshot to the next."""
    out = []
    for i in range(1, len(snapshots)):
        before, after = snapshots[i - 1].get("counters", {}), snapshots[i].get("counters", {})
        for name in standard_counters():
            if isinstance(before.get(name), int) and isinstance(after.get(name), int) and after[name] < before[name]:
                out.append({"snapshot": i, "counter": name, "from": before[name], "to": after[name]})
    return out


#: What a session carries that a move or a reload must keep (contract 7, 8, 9.3).
KEPT_FIELDS = ("uid", "protected", "group", "handler")


async def mark_sessions(clients: list[Any], first_uid: int, *, groups: bool) -> None:
    """Give each client's session a uid of its own, protect every other one and (``groups``) join a group."""

    async def mark(i: int, client: Any) -> None:
        await client.request("bind", uid=first_uid + i)
        await client.request("protect", on=i % 2 == 0)
        if groups:
            await client.request("join", group=i % 3)

    await asyncio.gather(*(mark(i, c) for i, c in enumerate(clients)))


def state_changes(before: list[dict[str, Any]], after: list[dict[str, Any]], sessions: list[int]) -> list[dict[str, Any]]:
    """Sessions whose uid, protection, group or handler set differ between two ``/v1/sessions`` reads."""
    old = {s.get("session"): s for s in before}
    new = {s.get("session"): s for s in after}
    out = []
    for sid in sessions:
        a, b = old.get(sid), new.get(sid)
        if a is None or b is None:
            out.append({"session": sid, "listed": [a is not None, b is not None]})
            continue
        changed = {k: [a.get(k), b.get(k)] for k in KEPT_FIELDS if k in a and a.get(k) != b.get(k)}
        if changed:
            out.append({"session": sid, **changed})
    return out


def counter_delta(before: dict[str, Any], after: dict[str, Any], name: str) -> int:
    """How much a standard counter of ``/v1/stats`` grew between two snapshots."""
    return int(after["counters"].get(name, 0)) - int(before["counters"].get(name, 0))


async def check_no_leaks(admin: AdminClient, evidence: Any, baseline_fds: dict[str, int], *, timeout: float = 10.0) -> None:
    """After every client is gone: no session left, and every process back to its fd baseline."""
    evidence.record(check_leftovers(await observe_leftovers(admin, baseline_fds, timeout=timeout)))


async def warm_up(
    target: Any,
    admin: AdminClient,
    extra: Callable[[list[Any]], Awaitable[None]] | None = None,
) -> dict[str, int]:
    """Exercise every cross-process path once, then return the fd baseline.

    Implementations may open inter-process links lazily and keep them (the
    reference does); a baseline taken before they exist would read as a leak.
    ``extra(clients)`` runs scenario-specific paths on the warm-up clients.
    """
    workers = int(target.profile.get("workers", 1))
    clients = await connect_many(target.ws_url, "warm", max(2, 2 * workers))
    try:
        for a in clients:
            for b in clients:
                if a is not b:
                    await a.request("push", to=b.session, data="warm")
        await asyncio.gather(*(c.request("task", data="warm") for c in clients), return_exceptions=True)
        await admin.stats()
        if extra is not None:
            await extra(clients)
    finally:
        await dispose_all(clients)
    await settle(lambda: _no_sessions(admin), timeout=10, interval=0.05)
    return await fd_snapshot(admin)


async def _no_sessions(admin: AdminClient) -> bool:
    return not await admin.sessions()
