"""A worker's side of broadcast: who is in which channel here, and writing the frames.

The broadcaster (:mod:`.broadcaster`) sends this worker batches of
``(channel, position, frame)`` for the channels it registered. This module:

* keeps the **members** of each channel among this worker's sessions. A
  session enters :data:`~..core.broadcast.ALL` when its handshake completes
  and joins named channels through :meth:`Channels.join`; it leaves them all
  the moment its close is known (:meth:`Channels.drop`), so no frame is ever
  written for a session that is closing, closed, or still in its handshake;
* **coalesces**: batches that arrive in the same read of the link are written
  together, one write per session and channel, the channel's frames joined
  once for all its members (:class:`~..core.broadcast.Run`);
* remembers per session and channel the last position given
  (``Session.channels``) and never gives a position twice;
* **bounds** each session's output: a session with more than
  ``broadcast_buffer_bytes`` waiting to be written is closed with 4429
  (``SLOW_CONSUMER``) and counted in ``bc_slow_closed``; what it had queued is
  dropped (a frame half written is finished first), so memory stays bounded;
* **catches up** a session that missed messages through no fault of its own:
  one that arrived by migration, one whose move failed, one that asked for
  history. Its channels are registered again with the position it has seen,
  the broadcaster answers with what came since, and live frames for those
  channels are skipped until that answer (they are all in it; later ones come
  after it on the same link).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..core.broadcast import ALL, Run, group_runs
from ..core.proctable import ProcKind, ProcState
from ..errors import ErrorCode, ServerError
from ..ipc import messages as msg

if TYPE_CHECKING:
    from ..child.context import ChildContext
    from .session import Session

REGISTER_TIMEOUT = 5.0
START_WAIT = 5.0
START_POLL = 0.01
SYNC_TIMEOUT = 3.0


class Registration:
    """One ``bc_register`` on its way: the sessions that wait for its answer, per channel."""

    __slots__ = ("done", "sessions", "wanted")

    def __init__(self, wanted: dict[str, int | None], loop: asyncio.AbstractEventLoop) -> None:
        self.wanted = wanted
        self.sessions: dict[str, list[Session]] = {}
        self.done: asyncio.Future = loop.create_future()


class Channels:
    def __init__(self, rt: ChildContext) -> None:
        self.rt = rt
        self.enabled = rt.config.broadcast_mode != "off" and bool(rt.boot.broker_url)
        self.limit = rt.config.broadcast_buffer_bytes
        self.members: dict[str, dict[int, Session]] = {ALL: {}}
        self.seen: dict[str, int] = {}  # channel -> last position this worker received
        self.registered: set[str] = set()
        self.broadcaster = 0  # its pid, once it answered
        self.pending: list[list[tuple[str, int, bytes]]] = []
        self._scheduled = False
        self._tokens = itertools.count(1)
        self._waiting: dict[int, Registration] = {}
        self._registering: dict[str, asyncio.Future] = {}
        self._syncs: dict[int, asyncio.Future] = {}

    # -- finding the broadcaster --------------------------------------------------------

    def _broadcaster_pid(self) -> int:
        for entry in self.rt.procs.entries():
            if entry.kind is ProcKind.BROADCASTER and entry.state is ProcState.READY:
                return entry.pid
        return 0

    async def start(self) -> None:
        """Register for ``@all`` before the worker says ready (bounded: a hello will ask later)."""
        if not self.enabled:
            return
        deadline = self.rt.loop.time() + START_WAIT
        while not self._broadcaster_pid() and self.rt.loop.time() < deadline:
            await asyncio.sleep(START_POLL)  # the process directory has no change notification
        if not self._broadcaster_pid():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._register({ALL: None}).done), deadline - self.rt.loop.time())
        except (ServerError, TimeoutError):
            pass  # counted and logged by _expire; the broadcaster's hello retries

    def on_hello(self, pid: int) -> None:
        """A (new) broadcaster: register every channel again, from what this worker has seen."""
        if not self.enabled:
            return
        self.broadcaster = pid
        wanted: dict[str, int | None] = {c: self.seen.get(c) for c in self.members if self.members[c] or c == ALL}
        self.registered.clear()
        reg = self._register(wanted)
        if reg.done.done():
            return  # it is gone again: its successor will say hello
        for channel in wanted:
            members = list(self.members.get(channel, {}).values())
            for sess in members:
                sess.catching.add(channel)  # live frames wait for the answer, which holds what they missed
            reg.sessions[channel] = members

    # -- registering ------------------------------------------------------------------------

    def _register(self, wanted: dict[str, int | None]) -> Registration:
        rt = self.rt
        reg = Registration(wanted, rt.loop)
        pid = self.broadcaster or self._broadcaster_pid()
        token = next(self._tokens)
        if not pid or not rt.links.send(pid, msg.BcRegister(token, os.getpid(), wanted)):
            reg.done.set_exception(
                ServerError(ErrorCode.BROADCASTER_UNREACHABLE, "the broadcaster is not running")
            )
            reg.done.exception()  # retrieved: nobody may be waiting
            return reg
        self.broadcaster = pid
        self._waiting[token] = reg
        rt.loop.call_later(REGISTER_TIMEOUT, self._expire, token)
        return reg

    def _expire(self, token: int) -> None:
        reg = self._waiting.pop(token, None)
        if reg is None:
            return
        self.rt.counters["bc_register_timeouts"] += 1
        self.rt.log.warning("broadcast.register_timeout", channels=sorted(reg.wanted)[:20])
        for sessions in reg.sessions.values():
            for sess in sessions:
                sess.catching.clear()  # go on live; what they missed is counted below
                self.rt.counters["bc_catchup_incomplete"] += 1
        if not reg.done.done():
            reg.done.set_exception(ServerError(ErrorCode.BROADCASTER_UNREACHABLE, "the broadcaster did not answer"))
            reg.done.exception()

    def on_registered(self, token: int, result: dict[str, dict[str, Any]]) -> None:
        """The broadcaster's answer: apply it before any later frame (called inline)."""
        self.flush()
        reg = self._waiting.pop(token, None)
        if reg is None:
            return
        rt = self.rt
        for channel, entry in result.items():
            self.registered.add(channel)
            pos = entry["pos"]
            if pos > self.seen.get(channel, -1):
                self.seen[channel] = pos
            frames = entry.get("frames") or ()
            if frames:
                run = Run(channel)
                for p, f in frames:
                    run.add(p, f)
            else:
                run = None
            for sess in reg.sessions.get(channel, ()):
                if channel not in sess.catching:
                    continue
                sess.catching.discard(channel)
                if not entry.get("complete", True):
                    rt.counters["bc_catchup_incomplete"] += 1
                last = sess.channels.get(channel)
                if last is None:
                    continue  # it left meanwhile
                n = self._write(sess, channel, run, last) if run is not None else 0
                if n:
                    rt.counters["bc_deliveries"] += n
                    rt.counters["bc_writes"] += 1
                    self._close_slow(sess)
                if sess.channels.get(channel) is not None and sess.channels[channel] < pos:
                    sess.channels[channel] = pos
        if not reg.done.done():
            reg.done.set_result(result)

    # -- membership ---------------------------------------------------------------------------

    def opened(self, sess: Session) -> None:
        """A session's handshake completed: it is in ``@all`` from now on."""
        if not self.enabled:
            return
        sess.channels[ALL] = self.seen.get(ALL, 0)
        self.members[ALL][sess.sid] = sess

    async def join(self, sess: Session, channel: str, since: int | None = None) -> dict[str, Any]:
        """Put a session in a channel; with ``since``, give it what came after that position first.

        The answer comes once the session is a member: a message published
        after it reaches the session. Raises :class:`ServerError`.
        """
        if not self.enabled:
            raise ServerError(ErrorCode.BROADCAST_OFF, "broadcast is off on this server")
        if since is not None:
            sess.channels[channel] = since
            sess.catching.add(channel)
            self.members.setdefault(channel, {})[sess.sid] = sess
            reg = self._register({channel: since})
            reg.sessions[channel] = [sess]
            try:
                result = await reg.done
            except ServerError:
                self._leave_one(sess, channel)
                raise
            entry = result[channel]
            if entry.get("error"):
                self._leave_one(sess, channel)
                code = ErrorCode.HISTORY_TOO_LONG if entry["error"] == "too_long" else ErrorCode.BROKER_UNAVAILABLE
                raise ServerError(code, f"channel {channel!r}: history since that id is {entry['error']}")
            return {"history": len(entry["frames"]), "complete": entry["complete"], "pos": entry["pos"]}
        if channel in sess.channels and channel not in sess.catching:
            return {"history": 0, "complete": True, "pos": sess.channels[channel]}
        if channel not in self.registered:
            fut = self._registering.get(channel)
            if fut is None:
                reg = self._register({channel: None})
                fut = self._registering[channel] = reg.done
                def forget(_f: asyncio.Future, c: str = channel) -> None:
                    self._registering.pop(c, None)

                fut.add_done_callback(forget)
            await asyncio.shield(fut)
        if sess.lost or sess.closing:
            raise ServerError(ErrorCode.SESSION_CLOSED, f"session {sess.sid} closed while joining")
        sess.channels[channel] = self.seen.get(channel, 0)
        self.members.setdefault(channel, {})[sess.sid] = sess
        return {"history": 0, "complete": True, "pos": sess.channels[channel]}

    async def leave(self, sess: Session, channel: str) -> bool:
        """Take a session out of a channel, after a barrier with the broadcaster.

        Everything published before the request reached this worker is still
        given to the session (it may be on its way through Redis and the
        broadcaster); nothing published after the answer is. False if the
        session was not in the channel.
        """
        if channel not in sess.channels:
            return False
        pid = self.broadcaster or self._broadcaster_pid()
        if pid:
            token = next(self._tokens)
            fut = self.rt.loop.create_future()
            self._syncs[token] = fut
            if self.rt.links.send(pid, msg.BcSync(token, os.getpid(), channel)):
                try:
                    await asyncio.wait_for(fut, SYNC_TIMEOUT)
                except TimeoutError:
                    self.rt.counters["bc_sync_timeouts"] += 1
            self._syncs.pop(token, None)
        if channel in sess.channels:
            self._leave_one(sess, channel)
        return True

    def on_synced(self, token: int) -> None:
        """The broadcaster's barrier answer; frames before it were flushed first (called inline)."""
        fut = self._syncs.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _leave_one(self, sess: Session, channel: str) -> None:
        sess.channels.pop(channel, None)
        sess.catching.discard(channel)
        self._remove_member(sess.sid, channel)

    def drop(self, sess: Session) -> None:
        """The session closes or leaves this worker: out of every channel (its positions stay)."""
        for channel in sess.channels:
            self._remove_member(sess.sid, channel)

    def _remove_member(self, sid: int, channel: str) -> None:
        members = self.members.get(channel)
        if members is None or members.pop(sid, None) is None or members or channel == ALL:
            return
        del self.members[channel]  # the last member here: the broadcaster need not send it any more
        if channel in self.registered and channel not in self._registering:
            self.registered.discard(channel)
            if self.broadcaster:
                self.rt.links.send(self.broadcaster, msg.BcUnregister(channel, os.getpid()))

    def catch_up(self, sess: Session) -> None:
        """A session that missed frames (it arrived by migration, or its move failed)."""
        self.catch_up_many([sess])

    def catch_up_many(self, sessions: Iterable[Session]) -> None:
        """Sessions that missed frames (a batch that arrived together): one registration asks
        for each channel from the earliest position any of them has seen; each session is then
        given only what came after its own position."""
        if not self.enabled:
            return
        wanted: dict[str, int | None] = {}
        by_channel: dict[str, list[Session]] = {}
        for sess in sessions:
            for channel, pos in sess.channels.items():
                known = wanted.get(channel, pos)
                wanted[channel] = pos if known is None or pos is None else min(known, pos)
                by_channel.setdefault(channel, []).append(sess)
                sess.catching.add(channel)
                self.members.setdefault(channel, {})[sess.sid] = sess
        if not wanted:
            return
        reg = self._register(wanted)
        if reg.done.done():  # no broadcaster: go on live
            for members in by_channel.values():
                for sess in members:
                    sess.catching.clear()
            return
        reg.sessions.update(by_channel)

    # -- delivering ------------------------------------------------------------------------------

    def on_batch(self, batch: list[tuple[str, int, bytes]]) -> None:
        self.pending.append(batch)
        if not self._scheduled:
            self._scheduled = True
            self.rt.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what arrived: per channel, each member gets the frames it has not had, in one write.

        The loop is the hot path of broadcast (it runs once per recipient): a
        member that has had nothing of the run (the common case) gets the
        run's frames joined once for all, written straight to its stream.
        Members are open by construction (a session leaves its channels when
        its close is known, or when it is frozen for a move), so no state is
        looked up per recipient beyond its last position.
        """
        self._scheduled = False
        if not self.pending:
            return
        batches, self.pending = self.pending, []
        runs = group_runs(batches[0] if len(batches) == 1 else _chain(batches))
        deliveries = writes = 0
        limit = self.limit
        slow: list[Session] = []
        for channel, run in runs.items():
            if run.last > self.seen.get(channel, -1):
                self.seen[channel] = run.last
            members = self.members.get(channel)
            if not members:
                continue
            first, newest, count = run.first, run.last, len(run.frames)
            joined = None
            for sess in list(members.values()):
                positions = sess.channels
                if positions[channel] < first and not sess.catching:
                    if joined is None:
                        joined = run.after(-1)[0]
                    positions[channel] = newest
                    stream = sess.stream
                    assert stream is not None  # a member joined after its handshake: it has its stream
                    stream.write(joined)
                    deliveries += count
                    writes += 1
                    if stream._out_size > limit:
                        slow.append(sess)
                elif not (sess.catching and channel in sess.catching):
                    n = self._write(sess, channel, run, positions[channel])
                    if n:
                        deliveries += n
                        writes += 1
                        if sess.stream is not None and sess.stream.buffered > limit:
                            slow.append(sess)
        counters = self.rt.counters
        counters["bc_batches"] += 1
        counters["bc_deliveries"] += deliveries
        counters["bc_writes"] += writes
        for sess in slow:
            self._close_slow(sess)

    def _write(self, sess: Session, channel: str, run: Run, last: int) -> int:
        """Give ``sess`` the frames of ``run`` after ``last``; how many."""
        data, n = run.after(last)
        stream = sess.stream
        if not n or stream is None or not sess.is_open:
            return 0  # closing sessions left their channels already: this is only a guard
        sess.channels[channel] = run.last
        stream.write(data)
        return n

    def _close_slow(self, sess: Session) -> None:
        stream = sess.stream
        if stream is None or sess.closing or stream.buffered <= self.limit:
            return
        if sess.close_slow():
            self.rt.counters["bc_slow_closed"] += 1

    def status(self) -> dict[str, Any]:
        return {
            "channels": {c: len(m) for c, m in self.members.items()},
            "registered": sorted(self.registered),
        }


def _chain(batches: list[list[tuple[str, int, bytes]]]) -> Iterable[tuple[str, int, bytes]]:
    for batch in batches:
        yield from batch
