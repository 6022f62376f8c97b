"""The broadcaster: one process per node that hears Redis and feeds the workers.

Why a process of its own rather than a subscription in each worker
(``docs/architecture.md``, "Broadcast", has the long form):

* a worker never waits on Redis, so an outage or a slow Redis cannot stall a
  session (the seed's bug: a blocking subscribe in a worker freezes it);
* the node holds one subscription, whatever its number of workers, so Redis
  sends each message once per node, and each frame is encoded once per node;
* reconnecting, re-subscribing, counting outages and serving history live in
  one place, and the order of a channel's messages on the node is the order
  in which this one process read them.

What it does:

* **reads** Redis: ``PSUBSCRIBE prefix*`` (mode ``pubsub``), or ``XREAD`` over
  the streams of the channels some worker here is interested in (mode
  ``durable``), from the position it last read;
* gives each message a **position** and builds its **frame** once
  (:mod:`..core.broadcast`), then sends it, in batches, to each worker that
  registered an interest in its channel (every worker is interested in
  :data:`~..core.broadcast.ALL`);
* answers **registrations** (``bc_register``): a worker names channels, each
  with the position it has seen (or none). The answer holds the messages after
  that position up to the current one (from the ring in pub/sub mode, from the
  stream in durable mode) and the current position; from the answer on, the
  worker gets every later message of those channels live. The answer and the
  live messages travel on the same link, so nothing falls between them;
* survives **outages**: on a lost connection it reconnects with doubling
  delays (50 ms to 500 ms, with jitter) and subscribes again. Each outage is kept
  (its window, from the last time Redis was heard from until the subscription
  was confirmed again) and counted: in pub/sub mode what was published then
  may be lost, in durable mode reading resumes where it stopped.

When it (re)starts it says ``bc_hello`` to every worker; workers register
again with what they have seen, so a durable node loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from typing import TYPE_CHECKING, Any

from ..core.broadcast import (
    ALL,
    BadChannel,
    BadPayload,
    BroadcastMode,
    Clock,
    Outage,
    Ring,
    backoff_delays,
    check_channel,
    check_payload,
    encode_frame,
    next_stream_id,
    stream_id,
    stream_pos,
)
from ..core.proctable import ProcKind, ProcState
from ..ipc import messages as msg

if TYPE_CHECKING:
    from ..child.context import ChildContext

SYNC_PING = b"bc-sync"  # the PING payload of an unsubscribe barrier
#: What was published this long before the broadcaster looked may still have been on its way to it.
HEARD_MARGIN = 0.1
SYNC_TIMEOUT = 2.0
READ_BATCH = 512  # messages read before a batch goes out
BLOCK_MS = 100  # XREAD BLOCK: also how long a channel new to the node may wait for its first read
RING_IDLE_S = 30.0  # a channel's recent messages are kept this long after its last interest left
HELLO_EVERY_S = 1.0
OUTAGES_KEPT = 64


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError, TimeoutError)


class Broadcaster:
    def __init__(self, rt: ChildContext) -> None:
        cfg = rt.config
        self.rt = rt
        self.mode = cfg.broadcast_mode
        self.prefix = cfg.broadcast_prefix
        self.url = rt.boot.broker_url
        self.history_max = cfg.broadcast_history_max
        self.interest: dict[str, set[int]] = {}  # channel -> worker pids
        self.pos: dict[str, int] = {}  # channel -> last position read
        self.ring = Ring(cfg.broadcast_ring)
        self.clock = Clock()
        self.floor = self.clock.next()  # positions below were given by an earlier broadcaster
        self.idle_since: dict[str, float] = {}
        self.outages: list[Outage] = []
        self.outage: Outage | None = None
        self.connected = False
        self.heard = time.time()
        self.workers: set[int] = set()  # pids that registered (they know us)
        self._batches: dict[int, list[tuple[str, int, bytes]]] = {}
        self._changed = asyncio.Event()
        self.subscribed = asyncio.Event()  # set at the first confirmed subscription
        self._client: Any = None
        self._pubsub: Any = None
        self._syncs: collections.deque[tuple[int, int]] = collections.deque()  # (token, pid) per PING sent
        self._read_event = asyncio.Event()  # set after each flush (durable syncs wait on it)
        # Durable mode: registrations and barriers use one command connection, one at a time,
        # besides the reader's (a burst of joins must not grow the connection pool).
        self._cmd_lock = asyncio.Lock()
        self._rejected_logged: set[str] = set()

    # -- life ----------------------------------------------------------------------------

    async def run(self) -> None:
        rt = self.rt
        rt.log.info("broadcast.start", mode=self.mode, prefix=self.prefix, url=self.url)
        housekeeping = asyncio.ensure_future(self._housekeeping())
        errors = _redis_errors()
        delays = backoff_delays()
        try:
            while not rt.stopping.is_set():
                try:
                    if self.mode == BroadcastMode.PUBSUB:
                        await self._read_pubsub()
                    else:
                        await self._read_streams()
                except errors as exc:
                    self._lost(exc)
                    delay = next(delays)
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))  # backoff with jitter
                    continue
                delays = backoff_delays()
        finally:
            housekeeping.cancel()
            if self._client is not None:
                await self._client.aclose()

    def _connect(self) -> Any:
        import redis.asyncio as aioredis

        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url, health_check_interval=1, socket_connect_timeout=1.0, socket_keepalive=True
            )
        return self._client

    def _lost(self, exc: BaseException) -> None:
        rt = self.rt
        if self.outage is None:
            self.outage = Outage(start=self.heard, error=f"{type(exc).__name__}: {exc}")
            self.outages.append(self.outage)
            del self.outages[:-OUTAGES_KEPT]
            rt.counters["bc_outages"] += 1
            rt.log.warning("broadcast.redis_lost", error=self.outage.error, mode=self.mode)
        self.outage.attempts += 1
        rt.counters["bc_reconnect_attempts"] += 1
        self.connected = False

    def _back(self) -> None:
        self.connected = True
        self.subscribed.set()
        self.heard = time.time()
        if self.outage is not None:
            self.outage.end = self.heard
            self.rt.log.warning("broadcast.redis_back", **self.outage.as_dict(), mode=self.mode)
            self.outage = None
            self.rt.counters["bc_reconnects"] += 1

    # -- pub/sub mode ------------------------------------------------------------------------

    async def _read_pubsub(self) -> None:
        client = self._connect()
        pubsub = client.pubsub()
        try:
            self._answer_syncs()  # pings sent on a lost connection will never be answered
            await pubsub.psubscribe(self.prefix + "*")
            while True:  # the confirmation: from it on, every publish reaches us
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "psubscribe":
                    break
            self._back()
            self._pubsub = pubsub
            cut = len(self.prefix)
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                self.heard = time.time()
                n = 0
                while msg is not None:
                    kind = msg["type"]
                    if kind == "pmessage":
                        self._take(msg["channel"][cut:], None, msg["data"])
                    elif kind == "pong" and msg["data"] == SYNC_PING:
                        self.flush()  # everything Redis sent before the PONG goes first
                        self._answer_syncs(1)
                    n += 1
                    if n >= READ_BATCH:
                        break
                    msg = await pubsub.get_message(timeout=0)
                self.flush()
                if msg is None:  # drained: all that Redis published before we looked has gone to the workers
                    self._forwarded(self.heard - HEARD_MARGIN)
        finally:
            self._pubsub = None
            await pubsub.aclose()

    # -- durable mode ------------------------------------------------------------------------

    async def _read_streams(self) -> None:
        client = self._connect()
        await client.ping()
        self._back()
        prefix = self.prefix
        cut = len(prefix)
        while True:
            keys = {prefix + c: stream_id(self.pos[c]) for c in self.interest if c in self.pos}
            if not keys:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                except TimeoutError:
                    await client.ping()
                self.heard = time.time()
                self._forwarded(self.heard - HEARD_MARGIN)
                continue
            result = await client.xread(keys, count=READ_BATCH, block=BLOCK_MS)
            self.heard = time.time()
            for key, entries in result or ():
                channel = key[cut:]
                for entry_id, fields in entries:
                    self._take(channel, entry_id, fields.get(b"data", b""))
            self.flush()
            self._forwarded(self.heard - HEARD_MARGIN)

    def _forwarded(self, when: float) -> None:
        """Tell the master (shared memory) that what was published before ``when`` reached the workers:
        if this process dies, the outage of its death starts there (contract 13.5)."""
        writer = self.rt.boot.extras.get("broadcast_heard")
        if writer is not None:
            writer(when)

    # -- one message --------------------------------------------------------------------------

    def _take(self, raw_channel: bytes | str, entry_id: bytes | None, payload: bytes) -> None:
        rt = self.rt
        rt.counters["bc_received"] += 1
        try:
            channel = raw_channel.decode("utf-8") if isinstance(raw_channel, bytes) else raw_channel
            check_channel(channel, joinable=False)
            text = check_payload(payload)
        except (BadChannel, BadPayload, UnicodeDecodeError) as exc:
            rt.counters["bc_rejected"] += 1
            key = str(raw_channel)[:80]
            if key not in self._rejected_logged and len(self._rejected_logged) < 1000:
                self._rejected_logged.add(key)  # once per channel: a bad publisher makes no log storm
                rt.log.warning("broadcast.rejected", channel=key, error=str(exc))
            return
        if entry_id is None:
            pos = self.clock.next()
            msg_id = None
        else:
            pos = stream_pos(entry_id)
            if pos <= self.pos.get(channel, 0):
                return  # read twice (a retried XREAD): already sent on
            msg_id = entry_id.decode("ascii")
        pids = self.interest.get(channel)
        if not pids and channel not in self.idle_since:
            rt.counters["bc_unrouted"] += 1  # nobody on this node is in that channel
            if entry_id is None:
                return
        frame = encode_frame(channel, msg_id, text)
        self.pos[channel] = pos
        if self.mode == BroadcastMode.PUBSUB:
            self.ring.add(channel, pos, frame)
        if pids:
            item = (channel, pos, frame)
            for pid in pids:
                batch = self._batches.get(pid)
                if batch is None:
                    self._batches[pid] = [item]
                else:
                    batch.append(item)

    def flush(self) -> None:
        """Send every worker its batch (called with no await between reading and sending)."""
        self._read_event.set()
        if not self._batches:
            return
        rt = self.rt
        batches, self._batches = self._batches, {}
        for pid, batch in batches.items():
            if rt.links.send(pid, msg.Broadcast(batch)):
                rt.counters["bc_forwarded"] += len(batch)
            else:
                self._forget_worker(pid)

    # -- registrations ---------------------------------------------------------------------------

    def on_register(self, token: int, pid: int, wanted: dict[str, int | None]) -> None:
        """A worker's ``bc_register``: answer at once (pub/sub) or after reading the streams."""
        if self.mode == BroadcastMode.PUBSUB:
            self._answer(token, pid, wanted, {})
        else:
            self.rt.spawn(self._register_durable(token, pid, wanted))

    def on_sync(self, token: int, pid: int, channel: str) -> None:
        """A worker's unsubscribe barrier: answer once everything published before it was sent on.

        Pub/sub: a PING on the subscription; Redis answers it after every
        message it queued for us before, so at the PONG those have been sent on.
        Durable: once the reader has read the channel's stream up to the tip
        it had when the barrier arrived. Not connected: at once (nothing more
        can come before the answer anyway).
        """
        if not self.connected:
            self._send_synced(pid, token)
        elif self.mode == BroadcastMode.PUBSUB:
            self.rt.spawn(self._ping(token, pid))
        else:
            self.rt.spawn(self._sync_stream(token, pid, channel))

    async def _ping(self, token: int, pid: int) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            self._send_synced(pid, token)
            return
        self._syncs.append((token, pid))
        try:
            await pubsub.ping(SYNC_PING)
        except _redis_errors():
            pass  # the connection is lost: the reader answers the syncs when it comes back

    async def _sync_stream(self, token: int, pid: int, channel: str) -> None:
        try:
            async with self._cmd_lock:
                tip = await self._connect().xrevrange(self.prefix + channel, "+", "-", count=1)
            target = stream_pos(tip[0][0]) if tip else 0
            deadline = time.monotonic() + SYNC_TIMEOUT
            while self.pos.get(channel, target) < target and time.monotonic() < deadline:
                self._read_event.clear()
                await asyncio.wait_for(self._read_event.wait(), max(0.001, deadline - time.monotonic()))
        except _redis_errors():  # TimeoutError among them
            pass
        self.flush()
        self._send_synced(pid, token)

    def _answer_syncs(self, count: int | None = None) -> None:
        while self._syncs and (count is None or count > 0):
            token, pid = self._syncs.popleft()
            self._send_synced(pid, token)
            if count is not None:
                count -= 1

    def _send_synced(self, pid: int, token: int) -> None:
        self.rt.links.send(pid, msg.BcSynced(token))

    def on_unregister(self, pid: int, channel: str) -> None:
        pids = self.interest.get(channel)
        if pids is not None:
            pids.discard(pid)
            if not pids and channel != ALL:
                del self.interest[channel]
                self.idle_since[channel] = time.monotonic()
                if self.mode == BroadcastMode.DURABLE:
                    self.pos.pop(channel, None)

    async def _register_durable(self, token: int, pid: int, wanted: dict[str, int | None]) -> None:
        """Read what each channel needs from its stream, then answer in one synchronous step.

        The reader may send more of a channel on while this reads its history;
        so the history is read again from where it stopped until it reaches
        the reader's position, checked with no await before the answer.
        """
        client = self._connect()
        history: dict[str, Any] = {}
        covered: dict[str, int] = {}  # channel -> position the history reaches
        try:
            async with self._cmd_lock:
                await self._read_histories(client, wanted, history, covered)
        except _redis_errors() as exc:
            self.rt.log.warning("broadcast.register_failed", error=repr(exc), channels=sorted(wanted)[:20])
            for channel in covered:
                history[channel] = "unavailable"
        self._answer(token, pid, wanted, history)

    async def _read_histories(
        self, client: Any, wanted: dict[str, int | None], history: dict[str, Any], covered: dict[str, int]
    ) -> None:
        for channel, since in wanted.items():
            if since is None and channel not in self.pos:
                tip = await client.xrevrange(self.prefix + channel, "+", "-", count=1)
                if channel not in self.pos:  # nobody registered it meanwhile
                    self.pos[channel] = stream_pos(tip[0][0]) if tip else 0
            elif since is not None:
                history[channel] = []
                covered[channel] = since
        for _ in range(1000):
            behind = [c for c in covered if not isinstance(history[c], str) and covered[c] < self.pos.get(c, -1)]
            fresh = [c for c in covered if c not in self.pos]
            if not behind and not fresh:
                break
            for channel in behind + fresh:
                await self._read_history(client, channel, history, covered)
                if channel not in self.pos:  # nobody reads it yet: reading starts where the history ends
                    self.pos[channel] = covered[channel]

    async def _read_history(self, client: Any, channel: str, history: dict[str, Any], covered: dict[str, int]) -> None:
        got = history[channel]
        while True:
            left = self.history_max + 1 - len(got)
            entries = await client.xrange(self.prefix + channel, next_stream_id(covered[channel]), "+", count=left)
            for entry_id, fields in entries:
                pos = stream_pos(entry_id)
                covered[channel] = pos
                try:
                    text = check_payload(fields.get(b"data", b""))
                except BadPayload:
                    self.rt.counters["bc_rejected"] += 1
                    continue
                got.append((pos, encode_frame(channel, entry_id.decode("ascii"), text)))
            if len(got) > self.history_max:
                history[channel] = "too_long"
                return
            if len(entries) < left:
                return  # the end of the stream, as it was when read

    def _answer(
        self, token: int, pid: int, wanted: dict[str, int | None], history: dict[str, Any]
    ) -> None:
        """Register ``pid`` for the channels and send the answer, with no await in between."""
        self.flush()  # what was read before this answer reaches the worker before it
        now_known = pid not in self.workers
        self.workers.add(pid)
        result: dict[str, dict[str, Any]] = {}
        for channel, since in wanted.items():
            self.interest.setdefault(channel, set()).add(pid)
            self.idle_since.pop(channel, None)
            pos = self.pos.get(channel)
            if pos is None:
                pos = self.floor if self.mode == BroadcastMode.PUBSUB else 0
                if self.mode == BroadcastMode.PUBSUB:
                    self.pos[channel] = pos
            entry: dict[str, Any] = {"pos": pos, "frames": [], "complete": True}
            if since is not None:
                if self.mode == BroadcastMode.PUBSUB:
                    frames, complete = self.ring.since(channel, since, pos)
                    if since < self.floor:
                        complete = False
                    entry.update(frames=frames, complete=complete)
                else:
                    got = history.get(channel, [])
                    if isinstance(got, str):
                        entry.update(error=got, complete=False)
                    else:
                        entry.update(frames=[(p, f) for p, f in got if p <= pos])
            if self.mode == BroadcastMode.PUBSUB:
                self.ring.open(channel, pos)
            result[channel] = entry
        self._changed.set()
        if not self.rt.links.send(pid, msg.BcRegistered(token, result)):
            self._forget_worker(pid)
        elif now_known:
            self.rt.log.debug("broadcast.worker_registered", pid=pid)

    def _forget_worker(self, pid: int) -> None:
        self.workers.discard(pid)
        for channel in [c for c, pids in self.interest.items() if pid in pids]:
            self.on_unregister(pid, channel)

    # -- housekeeping ---------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Say hello to workers that do not know us; forget the dead and idle channels."""
        rt = self.rt
        me = os.getpid()
        while True:
            live = set()
            for entry in rt.procs.entries():
                if entry.kind is ProcKind.WORKER and entry.state is ProcState.READY:
                    live.add(entry.pid)
                    if entry.pid not in self.workers:
                        rt.links.send(entry.pid, msg.BcHello(me))
            for pid in list(self.workers):
                if pid not in live and not rt.process_alive(pid):
                    self._forget_worker(pid)
            now = time.monotonic()
            for channel, since in list(self.idle_since.items()):
                if now - since > RING_IDLE_S:
                    del self.idle_since[channel]
                    self.ring.forget(channel)
                    if channel not in self.interest:
                        self.pos.pop(channel, None)
            await asyncio.sleep(HELLO_EVERY_S)

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "prefix": self.prefix,
            "connected": self.connected,
            "channels": len(self.interest),
            "workers": len(self.workers),
            "outages": [o.as_dict() for o in self.outages],
        }


async def serve_broadcaster(rt: ChildContext) -> None:
    rt.broadcaster = Broadcaster(rt)
    await rt.broadcaster.run()
