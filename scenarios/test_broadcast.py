"""Scenarios: Redis broadcast to every established session, across workers and nodes (seed: Swoole + Redis).

The seed: a custom process subscribes to a Redis channel and pushes each
message to every connection, checking that each is an established WebSocket
first, without blocking the workers. Contract section 10.

* ``broadcast_fanout`` (both modes): two nodes of the target (3 workers each)
  on one Redis; 200 clients, each in two of four channels, plus ``@all``;
  three publishers (two straight to Redis, one through a session's
  ``publish`` op); 1,200 messages; meanwhile clients leave and join channels,
  some are cut off (TCP abort), new ones arrive; ten connections per node sit
  in the middle of their handshake. Checked against the model of
  :mod:`scenarios.harness.broadcast`.
* ``broadcast_outage`` (both modes): Redis restarts in the middle of a
  stream of messages. Pub/sub mode must report the outage window, and
  everything published outside it arrives; durable mode delivers everything.
* ``broadcast_history`` (durable): a client asks for a channel's messages
  since an id while more are being published, and gets each exactly once, in
  order, with no gap between history and live.
* ``broadcast_slow_consumer``: a client that stops reading is closed with 4429
  once its output passes the declared bound; the others get everything; the
  stats count it.
* ``broadcast_errors``: bad channel names, history in pub/sub mode, ``@all`` in
  ``subscribe``: each answered with its code; the session goes on.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from scenarios.harness import nemesis
from scenarios.harness.admin import AdminClient
from scenarios.harness.broadcast import (
    ALL,
    BroadcastClient,
    OpPublisher,
    Publisher,
    StuckClient,
    Violations,
    check_histories,
)
from scenarios.harness.checkers.broadcast import (
    ErrorsHistory,
    FanoutHistory,
    HistoryHistory,
    OutageHistory,
    SlowHistory,
    check_errors,
    check_fanout,
    check_history,
    check_outage,
    check_slow,
    errors_figure,
    latency_figure,
    sequence_figure,
)
from scenarios.harness.common import check_no_leaks, counter_delta, warm_up
from scenarios.harness.waiting import WaitTimeout, settle

CHANNELS = ["news", "sport", "tech", "chat"]
CLIENTS_PER_NODE = 100
STUCK_PER_NODE = 10
MESSAGES_PER_PUBLISHER = 400
PUBLISH_RATE = 150.0  # messages per second, per publisher
ALL_SHARE = 0.05  # share of messages sent to @all
REQUEST_TIMEOUT = 5.0  # a target that does not answer fails the scenario in bounded time


def _host_port(target) -> tuple[str, int]:
    return "127.0.0.1", target.port


async def _connect(name: str, target, node: str) -> BroadcastClient:
    client = await BroadcastClient.connect(*_host_port(target), name)
    client.node = node
    return client


async def _connect_many(prefix: str, target, node: str, n: int) -> list[BroadcastClient]:
    out: list[BroadcastClient] = []
    for start in range(0, n, 50):
        out += await asyncio.gather(*(_connect(f"{prefix}{i}", target, node) for i in range(start, min(n, start + 50))))
    return out


def offered_mode(manifest) -> str:
    """The mode a scenario about something else runs in: pub/sub if the target offers it, else its first."""
    return "pubsub" if "pubsub" in manifest.broadcast_modes else manifest.broadcast_modes[0]


def outage_windows(stats: dict) -> list[tuple[float, float]]:
    """The outage windows ``/v1/stats`` reports (section 10.5); one still open runs to now."""
    now = time.time()
    return [(w["start"], w.get("end") or now) for w in (stats.get("broadcast") or {}).get("outages", [])]


def _published_after(missing: dict, instant: float) -> bool:
    """Whether a missing message (a record of ``check_histories``) was published after ``instant``."""
    return missing["published"][0] > instant


def _mode_or_skip(manifest, mode: str) -> None:
    if mode not in manifest.broadcast_modes:
        pytest.skip(f"unsupported: target {manifest.name!r} does not offer broadcast mode {mode!r}")


def _dispose(clients: list) -> None:
    for c in clients:
        c.abort()


async def _publish_paced(publisher, rng: random.Random, count: int, rate: float, channels: list[str]) -> None:
    start = time.monotonic()
    for i in range(count):
        if getattr(publisher, "gave_up", False):
            break
        channel = ALL if rng.random() < ALL_SHARE else rng.choice(channels)
        await publisher.publish(channel)
        ahead = start + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)  # the publisher's own pace, not a synchronisation


def _stats_sum(stats: list[dict], name: str) -> int:
    return sum(int(s["counters"].get(name, 0)) for s in stats)


# -- fan-out -------------------------------------------------------------------------------


async def drive_fanout(nodes, scenario_run, mode: str, evidence) -> FanoutHistory | list[str]:
    """Clients on two nodes, churn, three publishers; the history (or, if the target serves no
    subscribe at all, the warm-up's failures)."""
    manifest = scenario_run.manifest
    rng = evidence.rng()
    admins = [AdminClient(t.admin_url, t.admin_token) for t in nodes]
    names = ["A", "B"]

    failures: list[str] = []
    timeouts = 0  # of the failures, requests with no answer in time

    async def exercise(warm: list) -> None:  # links to the broadcaster, each worker's Redis connection
        try:
            for w in warm:
                await w.request("subscribe", channel="news", timeout=REQUEST_TIMEOUT)
                await w.request("publish", channel="warm", data={"warm": True}, timeout=REQUEST_TIMEOUT)
        except (ConnectionError, TimeoutError, WaitTimeout) as exc:
            failures.append(f"warm-up: {exc}")

    fds_before = []
    for t, a in zip(nodes, admins, strict=True):
        fds_before.append(await warm_up(t, a, exercise))
        if failures:  # the target does not serve subscribe at all: nothing else can be observed
            return failures
    before = [await a.stats() for a in admins]
    clients: list[BroadcastClient] = []
    stuck: list[StuckClient] = []
    others: list[BroadcastClient] = []  # publish through the op; not checked as receivers
    publishers: list = []
    try:
        for node, t in zip(names, nodes, strict=True):
            clients += await _connect_many(f"{node}-c", t, node, CLIENTS_PER_NODE)
            stuck += await asyncio.gather(*(StuckClient.connect(*_host_port(t)) for _ in range(STUCK_PER_NODE)))
        joins = []
        for c in clients:
            for channel in rng.sample(CHANNELS, 2):
                joins.append(c.subscribe(channel, timeout=REQUEST_TIMEOUT))
        replies = await asyncio.gather(*joins, return_exceptions=True)
        failures += [repr(r) for r in replies if isinstance(r, BaseException) or not r.get("ok")]
        timeouts += sum(isinstance(r, TimeoutError) for r in replies)
        op_client = await _connect("B-publisher", nodes[1], "B")
        others.append(op_client)
        publishers = [
            Publisher("redis-1", scenario_run.redis_url, manifest.broadcast_prefix, mode),
            Publisher("redis-2", scenario_run.redis_url, manifest.broadcast_prefix, mode),
            OpPublisher("op-B", op_client),
        ]
        stop_churn = asyncio.Event()
        churn_log = {"left": 0, "joined": 0, "aborted": 0, "arrived": 0}

        async def churn() -> None:
            nonlocal timeouts
            n = 0
            while not stop_churn.is_set() and len(failures) < 10:
                n += 1
                action = rng.random()
                doing = "choosing"
                live = [c for c in clients if not c.is_closed]
                try:
                    if action < 0.45:
                        c = rng.choice(live)
                        mine = [m.channel for m in c.memberships if c.member_of(m.channel)]
                        if mine:
                            channel = rng.choice(mine)
                            doing = f"unsubscribe {c.name} from {channel}"
                            r = await c.unsubscribe(channel, timeout=REQUEST_TIMEOUT)
                            churn_log["left"] += 1
                            if not r.get("ok"):
                                failures.append(f"unsubscribe {c.name} {channel}: {r}")
                            other = rng.choice([x for x in CHANNELS if not c.member_of(x)])
                            doing = f"subscribe {c.name} to {other}"
                            r = await c.subscribe(other, timeout=REQUEST_TIMEOUT)
                            churn_log["joined"] += 1
                            if not r.get("ok"):
                                failures.append(f"subscribe {c.name} {other}: {r}")
                    elif action < 0.6 and churn_log["aborted"] < 20:
                        rng.choice(live).abort()
                        churn_log["aborted"] += 1
                    elif action < 0.75 and churn_log["arrived"] < 20:
                        node = rng.randrange(2)
                        doing = f"connect {names[node]}-new{n}"
                        c = await _connect(f"{names[node]}-new{n}", nodes[node], names[node])
                        clients.append(c)
                        churn_log["arrived"] += 1
                        for channel in rng.sample(CHANNELS, 2):
                            doing = f"subscribe {c.name} to {channel}"
                            r = await c.subscribe(channel, timeout=REQUEST_TIMEOUT)
                            if not r.get("ok"):
                                failures.append(f"subscribe {c.name} {channel}: {r}")
                except (ConnectionError, TimeoutError) as exc:
                    failures.append(f"churn, {doing} at {time.time():.3f}: {exc!r}")
                    timeouts += isinstance(exc, TimeoutError)
                await asyncio.sleep(0.02)  # churn pace

        churner = asyncio.ensure_future(churn())
        await asyncio.gather(
            *(
                _publish_paced(p, evidence.rng(f"publisher {i}"), MESSAGES_PER_PUBLISHER, PUBLISH_RATE, CHANNELS)
                for i, p in enumerate(publishers)
            )
        )
        stop_churn.set()
        await churner
        end = time.time()
        published = [rec for p in publishers for rec in p.log]

        async def all_in() -> bool:
            return not check_histories(clients, published, end=end, until_missing=True).missing

        await settle(all_in, timeout=15 if not failures else 3, interval=0.2)
        verdict = check_histories(clients, published, end=end)
        after = [await a.stats() for a in admins]
        stuck_bytes = [(s.bytes_received, s.first_bytes) for s in stuck if s.bytes_received]
    finally:
        _dispose(clients + stuck + others)
        for p in publishers:
            if isinstance(p, Publisher):
                await p.close()

    upper = verdict.received
    for c in clients:
        if c.aborted_at:
            chans = {m.channel for m in c.memberships} | {ALL}
            first = min((m.join_sent for m in c.memberships), default=c.opened_at)
            upper += sum(1 for p in published if p.ok and p.channel in chans and p.end >= first)
    evidence.fact("mode", mode)
    evidence.fact("histories", verdict.summary())
    evidence.fact("churn", churn_log)
    history = FanoutHistory(
        verdict,
        published=len(published),
        published_ok=sum(1 for p in published if p.ok),
        failures=failures,
        timeouts=timeouts,
        stuck_bytes=stuck_bytes,
        push_errors={
            names[i]: {k: counter_delta(before[i], after[i], k) for k in ("dead_session_pushes", "push_failed")}
            for i in range(2)
        },
        delivered=sum(counter_delta(b, a, "bc_deliveries") for b, a in zip(before, after, strict=True)),
        upper=upper,
        figure=latency_figure(clients, published, verdict),
    )
    evidence.fact("published", {"ok": history.published_ok, "failed": history.published - history.published_ok})
    for i, a in enumerate(admins):
        await check_no_leaks(a, evidence, fds_before[i])
    return history


@pytest.mark.scenario("broadcast_fanout", seed="swoole + redis: a custom process pushes every message to every established session")
@pytest.mark.requires("redis_broadcast")
@pytest.mark.heavy("1,200 messages to 200 clients in about ten seconds: 240,000 deliveries for the harness to read")
@pytest.mark.parametrize("mode", ["pubsub", "durable"])
def test_broadcast_fanout(target_factory, scenario_run, evidence, run_async, mode):
    _mode_or_skip(scenario_run.manifest, mode)
    profile = {"workers": 3, "broadcast_mode": mode}
    nodes = [target_factory(profile, f"fanout-{mode}-A"), target_factory(profile, f"fanout-{mode}-B")]
    history = run_async(drive_fanout(nodes, scenario_run, mode, evidence), timeout=150)
    if isinstance(history, list):
        evidence.check("every subscribe and unsubscribe is answered ok", False, expected="answers", observed=history)
    else:
        evidence.figure(history.figure)
        evidence.record(check_fanout(history))
    evidence.verdict()


# -- outage --------------------------------------------------------------------------------------


async def _kill_broadcaster(admin: AdminClient) -> tuple[float, float]:
    """SIGKILL the target's broadcaster; (killed at, a replacement listed at): the fault's window."""
    victim = next(p for p in await admin.processes() if p.get("kind") == "broadcaster")
    window = await nemesis.kill(str(victim.get("name") or victim["pid"]), int(victim["pid"]))

    listed: list[float] = []

    async def replaced() -> bool:
        for p in await admin.processes():
            if p.get("kind") == "broadcaster" and int(p["pid"]) != int(victim["pid"]):
                listed.append(time.time())
                return True
        return False

    await settle(replaced, timeout=15, interval=0.05)
    return window.start, (listed[0] if listed else time.time())


async def drive_outage(target, scenario_run, mode: str, *, fault: str = "broker") -> OutageHistory:
    """Clients subscribed while a publisher runs; the broker restarts (or the broadcaster is killed); the history."""
    manifest = scenario_run.manifest
    admin = AdminClient(target.admin_url, target.admin_token)
    clients = await _connect_many("o", target, "A", 30)
    publisher = Publisher("redis", scenario_run.redis_url, manifest.broadcast_prefix, mode)
    try:
        await asyncio.gather(*(c.subscribe("live") for c in clients))
        stats0 = await admin.stats()
        stop = asyncio.Event()

        async def publish() -> None:
            while not stop.is_set():
                await publisher.publish("live")
                await asyncio.sleep(0.01)  # the publisher's pace

        task = asyncio.ensure_future(publish())
        await settle(lambda: len([p for p in publisher.log if p.ok]) >= 60, timeout=10)
        if fault == "broker":
            down_at, up_at = await asyncio.to_thread(scenario_run.broker.restart, 0.6)
        else:
            down_at, up_at = await _kill_broadcaster(admin)
        ok_after = len([p for p in publisher.log if p.ok])
        await settle(lambda: len([p for p in publisher.log if p.ok]) >= ok_after + 60, timeout=15)
        stop.set()
        await task
        end = time.time()

        async def reported() -> bool:
            outages = (await admin.stats())["broadcast"].get("outages", [])
            return len(outages) > len(stats0["broadcast"].get("outages", [])) and all(w.get("end") for w in outages)

        # A broker restart may take the target several reconnect attempts; a replacement broadcaster,
        # already listed, only has to subscribe.
        await settle(reported, timeout=15 if fault == "broker" else 5, interval=0.1)
        stats = await admin.stats()
        windows = [(w["start"], w["end"]) for w in stats["broadcast"].get("outages", []) if w.get("end")]
        excuse = windows if mode == "pubsub" else []

        async def all_in() -> bool:
            return not check_histories(clients, publisher.log, end=end, outages=excuse, until_missing=True).missing

        await settle(all_in, timeout=15 if fault == "broker" else 8, interval=0.2)
        verdict = check_histories(clients, publisher.log, end=end, outages=excuse)
    finally:
        _dispose(clients)
        await publisher.close()
    ok = [p for p in publisher.log if p.ok]
    return OutageHistory(
        mode,
        verdict,
        down_at,
        up_at,
        windows=windows,
        published_ok=len(ok),
        published_after_restart=sum(1 for p in ok if p.start > up_at),
        lost_after_restart=[m for m in verdict.missing if _published_after(m, up_at)],
        clients=len(clients),
        figure=latency_figure(
            clients, publisher.log, verdict,
            windows=[(down_at, up_at, "broker down" if fault == "broker" else "broadcaster killed -> replacement listed"),
                     *((a, b, "outage reported") for a, b in windows)],
        ),
    )


@pytest.mark.scenario("broadcast_outage", seed="redis pub/sub is at-most-once: messages published while the subscriber is away are lost")
@pytest.mark.requires("redis_broadcast")
@pytest.mark.parametrize("mode", ["pubsub", "durable"])
def test_broadcast_outage(target_factory, scenario_run, evidence, run_async, mode):
    _mode_or_skip(scenario_run.manifest, mode)
    if not scenario_run.broker.restartable:
        pytest.skip(f"the broker ({scenario_run.broker.kind}) cannot be restarted by the harness")
    target = target_factory({"workers": 2, "broadcast_mode": mode}, f"outage-{mode}")
    history = run_async(drive_outage(target, scenario_run, mode), timeout=90)
    evidence.fact("mode", mode)
    evidence.fact("restart", {"down_at": history.down_at, "up_at": history.up_at, "windows": history.windows})
    evidence.fact("histories", history.verdict.summary())
    evidence.figure(history.figure)
    evidence.record(check_outage(history))
    evidence.verdict()


@pytest.mark.scenario("fault_broadcaster", seed="the process that hears Redis dies: messages lost with no outage reported")
@pytest.mark.requires("redis_broadcast")
@pytest.mark.parametrize("mode", ["pubsub", "durable"])
def test_fault_broadcaster(target_factory, scenario_run, evidence, run_async, mode):
    """Contract 13.5: as broadcast_outage, but the broadcaster process is killed instead of Redis restarted."""
    _mode_or_skip(scenario_run.manifest, mode)
    target = target_factory({"workers": 2, "broadcast_mode": mode}, f"fault-broadcaster-{mode}")
    admin = AdminClient(target.admin_url, target.admin_token)
    kinds = {p.get("kind") for p in run_async(admin.processes(), timeout=10)}
    if "broadcaster" not in kinds:
        pytest.skip("unsupported: the target lists no broadcaster process (its workers hear Redis themselves)")
    history = run_async(drive_outage(target, scenario_run, mode, fault="broadcaster"), timeout=90)
    evidence.fact("mode", mode)
    evidence.fact("timeline", {"windows": [{"fault": "kill", "process": "broadcaster", "start": history.down_at,
                                            "end": None}], "replacement_listed_at": history.up_at,
                               "reported": history.windows})
    evidence.fact("histories", history.verdict.summary())
    evidence.figure(history.figure)
    evidence.record(check_outage(history))
    evidence.verdict()


# -- history ----------------------------------------------------------------------------------------


async def drive_history(target, scenario_run) -> HistoryHistory:
    """A late subscriber with ``since``, a live one, and channels new to the worker; the history."""
    manifest = scenario_run.manifest
    publisher = Publisher("hist", scenario_run.redis_url, manifest.broadcast_prefix, "durable")
    clients: list[BroadcastClient] = []
    try:
        for _ in range(40):
            await publisher.publish("hist")
        since = publisher.log[9]
        stop = asyncio.Event()

        async def publish() -> None:
            while not stop.is_set() and publisher.seq < 400:
                await publisher.publish("hist")
                await asyncio.sleep(0.003)  # the publisher's pace

        task = asyncio.ensure_future(publish())
        late = await _connect("late", target, "A")
        live = await _connect("live", target, "A")
        clients = [late, live]
        reply = await late.subscribe("hist", since=since.msg_id)
        await live.subscribe("hist")
        await task
        last = publisher.log[-1].seq

        async def complete() -> bool:
            return bool(late.received) and late.received[-1][3] >= last and bool(live.received) and live.received[-1][3] >= last

        await settle(complete, timeout=15, interval=0.05)
        verdict = check_histories([live], publisher.log, end=time.time())
        fresh_missing = await fresh_channels(target, scenario_run, clients)
    finally:
        _dispose(clients)
        await publisher.close()
    return HistoryHistory(
        reply,
        since.seq,
        last,
        seqs=[r[3] for r in late.received],
        ids=[r[4] for r in late.received],
        published_ids=[p.msg_id for p in publisher.log if p.seq > since.seq],
        fresh_channels=FRESH,
        fresh_missing=fresh_missing,
        live=verdict,
        figure=sequence_figure([late, live], publisher.log, since.seq),
    )


FRESH = 8  # channels new to every worker, each published to right after its subscribe reply


async def fresh_channels(target, scenario_run, clients: list[BroadcastClient]) -> list[dict]:
    """Subscribe to channels no worker has seen, XADD right after each reply; what did not arrive (10.2)."""
    tag = f"{int(time.time() * 1000) % 10**8}"
    publisher = Publisher("fresh", scenario_run.redis_url, scenario_run.manifest.broadcast_prefix, "durable")
    subs = [await _connect(f"fresh{i}", target, "A") for i in range(FRESH)]
    clients += subs
    sent = []
    try:
        for i, client in enumerate(subs):
            channel = f"fresh-{tag}-{i}"
            reply = await client.subscribe(channel)
            sent.append((client, channel, await publisher.publish(channel), reply))
        await settle(lambda: all(any(r[1] == ch for r in c.received) for c, ch, _, _ in sent), timeout=5, interval=0.02)
    finally:
        await publisher.close()
    return [
        {"client": c.name, "channel": ch, "published": p.ok, "subscribe": r.get("ok")}
        for c, ch, p, r in sent
        if not any(x[1] == ch for x in c.received)
    ]


@pytest.mark.scenario("broadcast_history", seed="durable broadcast: history since an id, then live, without gap or duplicate")
@pytest.mark.requires("redis_broadcast")
def test_broadcast_history(target_factory, scenario_run, evidence, run_async):
    _mode_or_skip(scenario_run.manifest, "durable")
    target = target_factory({"workers": 2, "broadcast_mode": "durable"}, "history")
    history = run_async(drive_history(target, scenario_run), timeout=60)
    evidence.fact("history_reply", history.reply)
    evidence.fact("late", {"first": history.seqs[:3], "last": history.seqs[-3:], "count": len(history.seqs)})
    evidence.figure(history.figure)
    evidence.record(check_history(history))
    evidence.verdict()


# -- slow consumer -----------------------------------------------------------------------------------


async def drive_slow_consumer(target, scenario_run, mode: str) -> tuple[SlowHistory, dict]:
    """Readers and one client that stops reading, under a firehose; the history and its facts."""
    manifest = scenario_run.manifest
    admin = AdminClient(target.admin_url, target.admin_token)
    bound = manifest.broadcast_buffer_bytes
    size = 16 * 1024
    # Enough to fill the kernel's buffers on both sides (a few MB on loopback) and then the bound, twice over.
    count = (2 * bound + 16 * 1024 * 1024) // size
    publisher = Publisher("big", scenario_run.redis_url, manifest.broadcast_prefix, mode)
    readers = await _connect_many("r", target, "readers", 4)  # (the node label names the series of its figure)
    slow = await _connect("slow", target, "the slow client")
    try:
        await asyncio.gather(*(c.subscribe("firehose") for c in [*readers, slow]))
        before = await admin.stats()
        assert slow.transport is not None
        paused = time.time()
        slow.transport.pause_reading()
        pad = "x" * size

        async def slow_closed() -> bool:
            return counter_delta(before, await admin.stats(), "bc_slow_closed") >= 1

        sent = 0
        while sent < count and not (sent % 64 == 0 and await slow_closed()):
            await publisher.publish("firehose", {"pad": pad})
            sent += 1
        await settle(slow_closed, timeout=20, interval=0.1)
        resumed = time.time()
        slow.transport.resume_reading()
        await settle(lambda: slow.is_closed, timeout=20, interval=0.05)
        await settle(lambda: all(len(r.received) >= sent for r in readers), timeout=30, interval=0.1)
        after = await admin.stats()
    finally:
        _dispose([*readers, slow])
        await publisher.close()
    # Pub/sub is at most once: a message whose publish overlaps a reported outage may be lost (10.5).
    windows = outage_windows(after) if mode == "pubsub" else []
    history = SlowHistory(
        sent,
        slow_close_code=slow.close_code,
        slow_closed=slow.is_closed,
        slow_received=len(slow.received),
        readers={r.name: [x[3] for x in r.received] for r in readers},
        excused={p.seq for p in publisher.log if any(p.start <= end and start <= (p.end or p.start) for start, end in windows)},
        slow_closed_counted=counter_delta(before, after, "bc_slow_closed"),
        figure=latency_figure([*readers, slow], publisher.log, Violations(),
                              windows=[(paused, resumed, "the slow client does not read"),
                                       *((a, b, "outage reported") for a, b in windows)],
                              title="Latency of each delivery to the readers and to the client that stops reading"),
    )
    facts = {
        "published": {"messages": sent, "bytes": sent * size, "bound": bound, "mode": mode},
        "outages_reported": windows,
    }
    return history, facts


@pytest.mark.scenario("broadcast_slow_consumer", seed="a client that cannot keep up must not grow the server's memory")
@pytest.mark.requires("redis_broadcast")
def test_broadcast_slow_consumer(target_factory, scenario_run, evidence, run_async):
    mode = offered_mode(scenario_run.manifest)
    target = target_factory({"workers": 2, "broadcast_mode": mode}, "slow-consumer")
    history, facts = run_async(drive_slow_consumer(target, scenario_run, mode), timeout=120)
    evidence.add_facts(facts)
    evidence.figure(history.figure)
    evidence.record(check_slow(history))
    evidence.verdict()


# -- errors ---------------------------------------------------------------------------------------------


async def drive_errors(target, mode: str) -> ErrorsHistory:
    """Bad broadcast requests on one session, then a good one; the history."""
    c = await _connect("e", target, "A")
    try:
        cases = {
            "subscribe to a bad channel name": (("subscribe",), {"channel": "no spaces allowed"}, 5002),
            "subscribe to @all": (("subscribe",), {"channel": ALL}, 5002),
            "subscribe with a non-string channel": (("subscribe",), {"channel": 7}, 5002),
            "publish to a bad channel name": (("publish",), {"channel": "x" * 300, "data": 1}, 5002),
            "unsubscribe from @all": (("unsubscribe",), {"channel": ALL}, 5002),
        }
        if mode == "pubsub":  # durable mode keeps history: there, since is no error
            cases["history in pub/sub mode"] = (("subscribe",), {"channel": "news", "since": "0-0"}, 5003)
        seen = {}
        for what, ((op,), fields, _code) in cases.items():
            reply = await c.request(op, **fields)
            seen[what] = (reply.get("ok"), (reply.get("error") or {}).get("code"), (reply.get("error") or {}).get("name"))
        still = await c.request("subscribe", channel="news")
    finally:
        _dispose([c])
    return ErrorsHistory({w: cases[w][2] for w in cases}, seen, still)


@pytest.mark.scenario("broadcast_errors", seed="bad input gets a clear error; the session keeps working")
@pytest.mark.requires("redis_broadcast")
def test_broadcast_errors(target_factory, scenario_run, evidence, run_async):
    mode = offered_mode(scenario_run.manifest)
    target = target_factory({"workers": 1, "broadcast_mode": mode}, "broadcast-errors")
    evidence.fact("mode", mode)
    history = run_async(drive_errors(target, mode), timeout=30)
    evidence.figure(errors_figure(history))
    evidence.record(check_errors(history))
    evidence.verdict()
