"""The hand-over rules (reference_server/core/handover.py), checked by simulation.

Three processes share one session. Each runs a :class:`Handover` and the protocol of
``session/mover.py`` (freeze, adopt, forward, barrier, drain) over FIFO links, one per
ordered pair of processes; every process also issues operations on the session, sending each
to the owner the registry names at that moment (as ``Server.push`` does). Hypothesis chooses
everything else: who issues, which link delivers next, when a move starts and where to, and
whether the target refuses it. At the end every link is drained, and the history must show:

* each operation applied exactly once, by the process that owned the session at that moment;
* each sender's operations applied in the order it issued them.

A mutant of the rules (a target that does not hold) must be caught by the same checks, so
the simulation is shown to be able to fail.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_server.core.handover import Handover, HandoverError, MovePhase, Route

SID = 1
PROCS = ("A", "B", "C")
Op = tuple[str, int]  # (sender, sequence number)


@dataclass
class Proc:
    name: str
    book: Handover[Op]
    owned: bool = False
    sent: int = 0


@dataclass
class World:
    """Three processes, their links, the registry's owner, and what happened."""

    make_book: Callable[[], Handover[Op]]
    procs: dict[str, Proc] = field(default_factory=dict)
    links: dict[tuple[str, str], collections.deque] = field(default_factory=dict)
    owner: str = "A"
    tokens: int = 0
    applied: list[tuple[str, Op]] = field(default_factory=list)  # (where, op)
    issued: list[Op] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    routes: collections.Counter = field(default_factory=collections.Counter)  # what the rules decided
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in PROCS:
            self.procs[name] = Proc(name, self.make_book())
        self.procs["A"].owned = True
        for a in PROCS:
            for b in PROCS:
                if a != b:
                    self.links[(a, b)] = collections.deque()

    # -- the protocol, as session/mover.py runs it ---------------------------------------------

    def send(self, src: str, dst: str, message: tuple[Any, ...]) -> None:
        self.links[(src, dst)].append(message)

    def handle_op(self, p: Proc, op: Op, forwarded: bool, local: bool = False) -> None:
        held = p.book.holding(SID)
        route = p.book.route(SID, op, forwarded=forwarded, owned=p.owned, local=local)
        self.routes[route] += 1
        if local and held and route is Route.APPLY:
            self.routes["local_through_hold"] += 1
        if route is Route.FORWARD:
            self.send(p.name, p.book.where(SID), ("op", op, True))
        elif route is Route.APPLY:
            if not p.owned:
                self.violations.append(f"{op} applied at {p.name}, which does not own the session")
            self.applied.append((p.name, op))

    def issue(self, name: str) -> None:
        p = self.procs[name]
        p.sent += 1
        op = (name, p.sent)
        self.issued.append(op)
        self.trace.append(f"{name} issues {op} (registry: {self.owner})")
        if self.owner == name:
            self.handle_op(p, op, forwarded=False, local=True)
        else:
            p.book.sent(SID, float("inf"))  # as Mover.send_to_owner does
            self.send(name, self.owner, ("op", op, False))

    def can_move(self, name: str) -> bool:
        p = self.procs[name]
        return p.owned and not p.book.holding(SID) and p.book.leaving(SID) is None

    def move(self, src: str, dst: str) -> None:
        p = self.procs[src]
        self.trace.append(f"{src} moves the session to {dst}")
        p.owned = False
        p.book.begin(SID, dst)
        self.send(src, dst, ("adopt", SID, src))

    def start_round(self, p: Proc) -> None:
        self.tokens += 1
        targets = {p.book.outbound[s].target for s in p.book.next_round if s in p.book.outbound}
        asked = [q for q in PROCS if q != p.name and q not in targets]
        for q in asked:
            self.send(p.name, q, ("barrier", self.tokens, p.name))
        p.book.start_round(self.tokens, asked)
        if not asked:
            self.end_round(p)

    def end_round(self, p: Proc) -> None:
        for sid, target in p.book.end_round(float("inf")):
            self.send(p.name, target, ("drained", sid))
        if p.book.next_round:
            self.start_round(p)

    def deliver(self, src: str, dst: str, refuse: bool) -> None:
        message = self.links[(src, dst)].popleft()
        self.trace.append(f"{src} -> {dst}: {message}")
        p = self.procs[dst]
        kind = message[0]
        if kind == "op":
            self.handle_op(p, message[1], message[2])
        elif kind == "adopt":
            if refuse:
                self.send(dst, src, ("adopted", SID, False))
            else:
                self.owner = dst  # one registry write names the new owner
                p.owned = True
                p.book.arrived(SID, src, 0.0)
                self.send(dst, src, ("adopted", SID, True))
        elif kind == "adopted":
            if message[2]:
                for op in p.book.adopted(SID):
                    self.send(dst, p.book.where(SID), ("op", op, True))
                if p.book.join_round(SID):
                    self.start_round(p)
            else:
                p.owned = True  # the session is re-attached where it was
                for op in p.book.failed(SID):
                    self.handle_op(p, op, forwarded=False)
        elif kind == "barrier":
            self.send(dst, message[2], ("ack", message[1], dst))
        elif kind == "ack":
            if p.book.ack(message[1], message[2]):
                self.end_round(p)
        elif kind == "drained":
            self.routes["drained"] += 1
            for op in p.book.drained(SID):
                self.handle_op(p, op, forwarded=False)

    # -- the checks ------------------------------------------------------------------------------

    def check(self) -> list[str]:
        problems = list(self.violations)
        counts = collections.Counter(op for _, op in self.applied)
        for op in self.issued:
            if counts[op] != 1:
                problems.append(f"{op} applied {counts[op]} times")
        last: dict[str, int] = {}
        for where, (sender, seq) in self.applied:
            if seq < last.get(sender, 0):
                problems.append(f"{sender}'s op {seq} applied at {where} after its op {last[sender]}")
            last[sender] = max(last.get(sender, 0), seq)
        return problems


def simulate(pick: Callable[[int], int], make_book: Callable[[], Handover[Op]] = Handover, steps: int = 60) -> World:
    """Run the world with ``pick(n)`` (0..n-1) making every choice; then drain the links."""
    world = World(make_book)
    moves = 0
    for _ in range(steps):
        busy = [key for key, q in world.links.items() if q]
        action = pick(4)
        if action == 0 or (action == 3 and not busy):
            world.issue(PROCS[pick(3)])
        elif action == 1 and moves < 4:
            owners = [n for n in PROCS if world.can_move(n)]
            if owners:
                src = owners[0]
                dst = [n for n in PROCS if n != src][pick(2)]
                world.move(src, dst)
                moves += 1
        elif busy:
            src, dst = busy[pick(len(busy))]
            world.deliver(src, dst, refuse=pick(4) == 0)
    while any(world.links.values()):
        busy = [key for key, q in world.links.items() if q]
        src, dst = busy[pick(len(busy))]
        world.deliver(src, dst, refuse=False)
    return world


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_each_operation_is_applied_once_in_each_senders_order(data: st.DataObject) -> None:
    world = simulate(lambda n: data.draw(st.integers(0, n - 1)))
    problems = world.check()
    assert not problems, "\n".join([*problems, "", "history:", *world.trace])
    assert all(not p.book.holds and p.book.idle for p in world.procs.values()), "a move or hold was left open"


def test_the_simulation_exercises_every_rule() -> None:
    """Not vacuous: over fixed seeds, operations are queued, forwarded, held and moves drained."""
    seen: collections.Counter = collections.Counter()
    for seed in range(300):
        world = simulate(random.Random(seed).randrange)
        assert not world.check(), seed
        seen.update(world.routes)
    assert all(
        seen[k] > 10 for k in (Route.QUEUE, Route.FORWARD, Route.HOLD, Route.APPLY, "drained", "local_through_hold")
    ), seen


class NoHold(Handover[Op]):
    """A mutant: the target applies direct operations at once instead of holding them."""

    def route(self, sid: int, op: Op, *, forwarded: bool, owned: bool, local: bool = False) -> Route:
        if not forwarded and sid in self.holds:
            return Route.APPLY
        return super().route(sid, op, forwarded=forwarded, owned=owned, local=local)


class NoQueue(Handover[Op]):
    """A mutant: the source applies operations that reach it while the session is leaving (it is gone)."""

    def route(self, sid: int, op: Op, *, forwarded: bool, owned: bool, local: bool = False) -> Route:
        if self.leaving(sid) is MovePhase.QUEUEING:
            return Route.APPLY
        return super().route(sid, op, forwarded=forwarded, owned=owned, local=local)


class LocalForgetsSent(Handover[Op]):
    """A mutant: a local operation passes the hold even when this process sent one elsewhere before."""

    def route(self, sid: int, op: Op, *, forwarded: bool, owned: bool, local: bool = False) -> Route:
        if local and not forwarded and sid in self.holds:
            return Route.APPLY
        return super().route(sid, op, forwarded=forwarded, owned=owned, local=local)


@pytest.mark.parametrize("mutant", [NoHold, NoQueue, LocalForgetsSent], ids=lambda m: m.__name__)
def test_the_simulation_catches_a_broken_rule(mutant: type[Handover[Op]]) -> None:
    """Fixed seeds: among 500 runs of a mutant, at least one breaks a check (so the checks can fail)."""
    caught = []
    for seed in range(500):
        rng = random.Random(seed)
        world = simulate(rng.randrange, mutant)
        if world.check():
            caught.append(seed)
    assert caught, f"{mutant.__name__} was never caught"


def test_the_core_refuses_a_step_out_of_phase() -> None:
    book: Handover[Op] = Handover()
    with pytest.raises(HandoverError):
        book.adopted(SID)  # no move began
    book.begin(SID, 2)
    with pytest.raises(HandoverError):
        book.join_round(SID)  # not adopted yet
    assert book.route(SID, ("x", 1), forwarded=False, owned=False) is Route.QUEUE
    assert book.adopted(SID) == [("x", 1)]
    assert book.route(SID, ("x", 2), forwarded=False, owned=False) is Route.FORWARD and book.where(SID) == 2
    assert book.join_round(SID) is True
    rnd = book.start_round(1, {7})
    assert not book.ack(1, 8) and book.ack(rnd.token, 7)
    assert book.end_round(expiry=10.0) == [(SID, 2)]
    assert book.route(SID, ("x", 3), forwarded=False, owned=False) is Route.FORWARD  # the tombstone
    assert book.route(SID, ("x", 4), forwarded=False, owned=True) is Route.APPLY  # it came back
    book.expire(11.0)
    assert book.idle and not book.tombstones
