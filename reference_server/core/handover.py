"""The bookkeeping of a session hand-over (live migration), without I/O.

``session/mover.py`` runs the protocol (its module docstring has the four steps: freeze,
adopt, forward with a barrier, drain); this module holds every rule about *where an
operation on a moving session goes* and *when a move's phases change*, so that the rules
can be read in one place and checked by simulation (``tests/test_handover.py`` runs three
processes over FIFO links and checks that each operation is applied exactly once, in each
sender's order, whatever the interleaving).

One :class:`Handover` per process. Inputs are method calls; outputs are :class:`Route`
decisions and the operations they release. Nothing here sends, sleeps or reads a clock:
times are passed in.

A session's phases at its **source** (:class:`MovePhase`):

* ``QUEUEING``: the session is detached and ``adopt`` is on its way; operations that reach
  the source are queued in arrival order.
* ``FORWARDING``: the target adopted it; the queue has been released to be forwarded, and
  later operations are forwarded as they come; the move waits for its barrier round.
* after the round: a *tombstone* (the new owner, until an expiry) forwards any operation
  that still reaches the source, while the source does not own the session again.

At its **target**, an adopted session is *held* (:class:`Hold`) until ``drained``:
operations sent to it directly wait, in arrival order, while operations forwarded by the
source are applied at once (they were issued before the held ones, or concurrently from
another sender). ``drained`` releases the held ones. One exception: an operation the target
issues itself (*local*: the session's own timer, say) is applied at once if this process has
sent no operation on that session to another process recently (:meth:`Handover.sent`, kept
until an expiry): nothing of its own can then be on its way through the source, so no
earlier operation of the same sender can be overtaken. A session's ticks resume the moment
it lands, without waiting for the barrier round.

Barrier rounds: a move that reaches ``FORWARDING`` joins the round under way if there is
none, else the next one (a round that began before the switch cannot vouch for it). A round
ends when every process it asked has answered (or is gone, or the round timed out); then
the target of each of its moves is sent ``drained``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Op = TypeVar("Op")


class MovePhase(enum.Enum):
    """Where a move stands at its source."""

    QUEUEING = "queueing"
    FORWARDING = "forwarding"


class Route(enum.Enum):
    """What a process does with an operation on one of its sessions (or one that was)."""

    APPLY = "apply"  # the session is here and not held: apply it now
    QUEUE = "queue"  # the session is leaving: keep it until the move succeeds or fails
    FORWARD = "forward"  # the session belongs elsewhere now: send it on (to ``Handover.where``)
    HOLD = "hold"  # the session just arrived: keep it until ``drained``


@dataclass
class Outbound(Generic[Op]):
    """A session leaving this process."""

    sid: int
    target: int
    phase: MovePhase = MovePhase.QUEUEING
    queue: list[Op] = field(default_factory=list)


@dataclass
class Hold(Generic[Op]):
    """A session adopted by this process whose source has not said ``drained`` yet."""

    sid: int
    source: int
    since: float
    held: list[Op] = field(default_factory=list)


@dataclass
class Round:
    """One barrier round: the processes asked, and the moves it vouches for."""

    token: int
    waiting: set[int]
    sids: list[int]


class HandoverError(Exception):
    """A call that the protocol does not allow in the current phase (a bug of the caller)."""


class Handover(Generic[Op]):
    """One process's moves, holds, tombstones and barrier rounds."""

    def __init__(self) -> None:
        self.outbound: dict[int, Outbound[Op]] = {}
        self.holds: dict[int, Hold[Op]] = {}
        self.tombstones: dict[int, tuple[int, float]] = {}  # sid -> (new owner, expiry)
        self.round: Round | None = None
        self.next_round: list[int] = []
        #: sid -> until when this process counts as having sent an operation on it elsewhere.
        self.sent_away: dict[int, float] = {}

    # -- routing ----------------------------------------------------------------------------

    def sent(self, sid: int, expiry: float) -> None:
        """This process sent an operation on ``sid`` to another process; remember it until ``expiry``
        (long enough for it to have been applied or forwarded)."""
        self.sent_away[sid] = expiry

    def route(self, sid: int, op: Op, *, forwarded: bool, owned: bool, local: bool = False) -> Route:
        """Where ``op`` on session ``sid`` goes; QUEUE and HOLD keep it here.

        ``forwarded``: it came from the session's previous owner. ``owned``: the session
        is attached to this process now. ``local``: this process issued it.
        """
        out = self.outbound.get(sid)
        if out is not None:
            if out.phase is MovePhase.FORWARDING:
                return Route.FORWARD
            out.queue.append(op)
            return Route.QUEUE
        if not forwarded:
            hold = self.holds.get(sid)
            if hold is not None:
                if local and sid not in self.sent_away:
                    return Route.APPLY  # none of this sender's operations can be behind it
                hold.held.append(op)
                return Route.HOLD
        if sid in self.tombstones and not owned:
            return Route.FORWARD
        return Route.APPLY

    def where(self, sid: int) -> int:
        """The process a FORWARD decision for ``sid`` sends to."""
        out = self.outbound.get(sid)
        if out is not None and out.phase is MovePhase.FORWARDING:
            return out.target
        if sid in self.tombstones:
            return self.tombstones[sid][0]
        raise HandoverError(f"session {sid} is not forwarded from here")

    # -- source side --------------------------------------------------------------------------

    def leaving(self, sid: int) -> MovePhase | None:
        """The phase of ``sid``'s move out of here, if it is moving."""
        out = self.outbound.get(sid)
        return out.phase if out is not None else None

    def begin(self, sid: int, target: int) -> None:
        """Step 1: ``sid`` is detached and ``adopt`` is sent to ``target``."""
        if sid in self.outbound:
            raise HandoverError(f"session {sid} is already leaving")
        self.outbound[sid] = Outbound(sid, target)

    def adopted(self, sid: int) -> list[Op]:
        """Step 3: the target owns ``sid``. The queued operations, to forward in this order."""
        out = self._outbound(sid, MovePhase.QUEUEING)
        out.phase = MovePhase.FORWARDING
        queued, out.queue = out.queue, []
        return queued

    def failed(self, sid: int) -> list[Op]:
        """The move failed before the adoption: ``sid`` stays. The queued operations, to apply here."""
        out = self._outbound(sid, MovePhase.QUEUEING)
        del self.outbound[sid]
        return out.queue

    def join_round(self, sid: int) -> bool:
        """A move in FORWARDING wants a barrier. True: no round is under way, start one with :meth:`start_round`."""
        self._outbound(sid, MovePhase.FORWARDING)
        if self.round is None:
            self.next_round.append(sid)
            return True
        self.next_round.append(sid)
        return False

    def start_round(self, token: int, asked: Iterable[int]) -> Round:
        """Begin the round of the moves waiting for one; ``asked``: the processes sent ``barrier``."""
        if self.round is not None:
            raise HandoverError("a barrier round is already under way")
        self.round = Round(token, set(asked), self.next_round)
        self.next_round = []
        return self.round

    def ack(self, token: int, pid: int) -> bool:
        """Process ``pid`` answered round ``token`` (or is gone). True: the round is complete."""
        rnd = self.round
        if rnd is None or rnd.token != token:
            return False
        rnd.waiting.discard(pid)
        return not rnd.waiting

    def end_round(self, expiry: float) -> list[tuple[int, int]]:
        """The round is complete (or timed out): ``(sid, target)`` pairs to send ``drained``.

        Each move becomes a tombstone until ``expiry``. If moves joined meanwhile, the caller
        starts the next round (:attr:`next_round` is not empty).
        """
        rnd = self.round
        if rnd is None:
            raise HandoverError("no barrier round is under way")
        self.round = None
        drained = []
        for sid in rnd.sids:
            out = self.outbound.pop(sid, None)
            if out is None:
                continue
            self.tombstones[sid] = (out.target, expiry)
            drained.append((sid, out.target))
        return drained

    @property
    def idle(self) -> bool:
        """No move out of here is under way (barrier rounds included)."""
        return not (self.outbound or self.round is not None or self.next_round)

    # -- target side --------------------------------------------------------------------------

    def arrived(self, sid: int, source: int, now: float) -> None:
        """Step 2: ``sid`` was adopted here from ``source``; hold direct operations until drained."""
        self.tombstones.pop(sid, None)
        self.holds[sid] = Hold(sid, source, now)

    def drained(self, sid: int) -> list[Op]:
        """Step 4: the held operations of ``sid``, to apply in this order (none if it was not held)."""
        hold = self.holds.pop(sid, None)
        return hold.held if hold is not None else []

    def holding(self, sid: int) -> bool:
        return sid in self.holds

    def overdue_holds(self, now: float, timeout: float) -> list[int]:
        """Sessions held for longer than ``timeout`` (their source went silent): release them."""
        return [sid for sid, hold in self.holds.items() if now - hold.since > timeout]

    def expire(self, now: float) -> None:
        """Forget tombstones past their expiry."""
        for sid, (_, expiry) in list(self.tombstones.items()):
            if now > expiry:
                del self.tombstones[sid]
        for sid, until in list(self.sent_away.items()):
            if now > until:
                del self.sent_away[sid]

    def _outbound(self, sid: int, phase: MovePhase) -> Outbound[Op]:
        out = self.outbound.get(sid)
        if out is None or out.phase is not phase:
            raise HandoverError(f"session {sid} is not leaving in phase {phase.value} (it is {out and out.phase.value})")
        return out

    def describe(self) -> dict[str, Any]:
        """The state, for logs and stats."""
        return {
            "outbound": {sid: out.phase.value for sid, out in self.outbound.items()},
            "holds": sorted(self.holds),
            "tombstones": len(self.tombstones),
            "sent_away": len(self.sent_away),
            "round": None if self.round is None else {"token": self.round.token, "waiting": sorted(self.round.waiting)},
            "next_round": list(self.next_round),
        }
