"""Locust load test of broadcast: ``locust -f loadtests/broadcast.py``.

Works against any target with the contract's ``redis_broadcast`` capability
(docs/contract-v1.md section 10): the reference, or your own server.

    # web UI (http://localhost:8089), the target at --host
    locust -f loadtests/broadcast.py --host ws://127.0.0.1:9501 --redis-url redis://127.0.0.1:6379/0
    # headless, with reports under reports/
    locust -f loadtests/broadcast.py --headless -u 1000 -r 200 -t 60s --host ws://127.0.0.1:9501 \\
        --redis-url redis://127.0.0.1:6379/0 --publish-rate 40 --csv reports/locust --html reports/locust.html
    # distributed: several load processes on this machine, or --master / --worker on several
    locust -f loadtests/broadcast.py --processes 2 --headless ...

What a run records (Locust's own statistics, so its UI, CSV and HTML show them):

* ``BCAST <channel>``: one request per broadcast received; its response time
  is the publish-to-receive latency, from the publisher's timestamp in the
  message (sub-millisecond: the response-time buckets are made finer below).
* ``WS connect``: the connection and subscription of a user; a failure is a
  connection that failed or a subscribe that was refused.
* ``WS closed``: a failure when a connection ends without the user asking.
* ``LOSS missing`` / ``LOSS duplicate``: failures, counted per message, when a
  user sees a gap or a repeat in the publisher's sequence numbers, and, when a
  user stops, the messages published after its last one (the publisher stops
  ``--drain-s`` before the end of a timed run, so nothing is still in flight).
* ``PUBLISH <channel>``: one request per message the publisher wrote to
  Redis (its response time is Redis's answer time), so the published count is
  in the same table.

Shapes: steady load (``-u N -r N``: everyone at once), a ramp to saturation
(``-u N -r R`` with a small ``R``: watch where the delivery rate stops
growing and latency takes off), and connection churn (``--shape churn``:
each user leaves and comes back as a new session every ``--life-s`` seconds on
average).

Headless runs also write ``reports/locust_broadcast.png``: latency percentiles
and delivery rate over time.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections import deque
from pathlib import Path

import gevent
import locust.stats
import websocket
from locust import User, constant, events, task
from locust.runners import WorkerRunner

from scenarios.harness.rawclient import cut_server_frames

REPORTS = Path(__file__).resolve().parents[1] / "reports"
_original_bucket = locust.stats.bucket_response_time


def _fine_bucket(response_time: float) -> float:
    """Keep 0.01 ms under 10 ms and 0.1 ms under 100 ms (Locust rounds to whole ms there)."""
    if response_time < 10:
        return round(response_time, 2)
    if response_time < 100:
        return round(response_time, 1)
    return _original_bucket(response_time)


locust.stats.bucket_response_time = _fine_bucket


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the Redis the target listens to")
    parser.add_argument("--prefix", default="bc:", help="the manifest's [broadcast] prefix")
    parser.add_argument("--mode", choices=["pubsub", "durable"], default="pubsub", help="the target's broadcast mode")
    parser.add_argument("--channels", default="bench", help="comma-separated channels; each user joins one")
    parser.add_argument("--publish-rate", type=float, default=20.0, help="messages per second, per channel")
    parser.add_argument("--payload-bytes", type=int, default=0, help="padding added to each message")
    parser.add_argument("--drain-s", type=float, default=2.0, help="the publisher stops this long before -t ends")
    parser.add_argument("--shape", choices=["steady", "churn"], default="steady", help="churn: sessions come and go")
    parser.add_argument("--life-s", type=float, default=10.0, help="churn: mean session life")
    parser.add_argument("--no-plot", action="store_true", help="headless: do not write the PNG")


# -- the publisher (one per run: on the master, or the local runner) ------------------------------------


class Publisher:
    def __init__(self, environment) -> None:
        import redis

        opts = environment.parsed_options
        self.env = environment
        self.opts = opts
        self.channels = [c for c in opts.channels.split(",") if c]
        self.client = redis.Redis.from_url(opts.redis_url, socket_timeout=5)
        self.seq = {c: 0 for c in self.channels}
        self.greenlet: gevent.Greenlet | None = None
        self.stop_at = float("inf")

    def start(self) -> None:
        run_time = getattr(self.opts, "run_time", None)
        if run_time:
            self.stop_at = time.monotonic() + max(0.0, run_time - self.opts.drain_s)
        self.client.set(self._last_key(), json.dumps(self.seq))
        self.greenlet = gevent.spawn(self._run)

    def _last_key(self) -> str:
        return f"{self.opts.prefix}@locust:last"

    def _run(self) -> None:
        rate = self.opts.publish_rate
        pad = "x" * self.opts.payload_bytes
        started = time.monotonic()
        sent = 0
        while time.monotonic() < self.stop_at:
            due = int((time.monotonic() - started) * rate) + 1
            if due > sent:
                t0 = time.perf_counter()
                pipe = self.client.pipeline(transaction=False)
                before = dict(self.seq)
                count = 0
                for _ in range(sent, due):
                    for channel in self.channels:
                        self.seq[channel] += 1
                        msg = {"t": time.time_ns(), "s": self.seq[channel], "p": "locust"}
                        if pad:
                            msg["pad"] = pad
                        text = json.dumps(msg, separators=(",", ":"))
                        if self.opts.mode == "durable":
                            pipe.xadd(self.opts.prefix + channel, {"data": text})
                        else:
                            pipe.publish(self.opts.prefix + channel, text)
                        count += 1
                pipe.set(self._last_key(), json.dumps(self.seq))
                try:
                    pipe.execute()
                    exc = None
                except Exception as e:  # Redis away: counted as failed publishes, and their numbers reused
                    exc = e
                    self.seq = before
                elapsed = (time.perf_counter() - t0) * 1000.0
                for _ in range(count):
                    events.request.fire(
                        request_type="PUBLISH", name=",".join(self.channels), response_time=elapsed / max(1, count),
                        response_length=0, exception=exc, context={},
                    )
                sent = due
            gevent.sleep(0.005)  # the publisher's pace

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill()
            self.greenlet = None


_publisher: Publisher | None = None


@events.test_start.add_listener
def _start_publisher(environment, **_kw) -> None:
    global _publisher
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) publishes, once for the whole run
    _publisher = Publisher(environment)
    _publisher.start()
    if not getattr(environment.parsed_options, "no_plot", False) and environment.parsed_options.headless:
        gevent.spawn(_sample, environment)


@events.test_stop.add_listener
def _stop_publisher(environment, **_kw) -> None:
    if _publisher is not None:
        _publisher.stop()


def _fast_stamp(text: str) -> tuple[int, int] | None:
    """``(t, s)`` from ``..."data":{"t":T,"s":S...`` without parsing the JSON; None if laid out otherwise."""
    i = text.find('"data":{"t":')
    if i < 0:
        return None
    j = text.find(',"s":', i)
    if j < 0:
        return None
    end = j + 5
    while end < len(text) and text[end].isdigit():
        end += 1
    try:
        return int(text[i + 12 : j]), int(text[j + 5 : end])
    except ValueError:
        return None


# -- the receivers ---------------------------------------------------------------------------------------


class Missing(Exception):
    pass


class Duplicate(Exception):
    pass


class UnexpectedClose(Exception):
    pass


class BroadcastUser(User):
    """A WebSocket session in one channel that records every broadcast it receives."""

    wait_time = constant(0.5)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        channels = [c for c in opts.channels.split(",") if c]
        self.channel = random.choice(channels)
        self.ws: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet | None = None
        self._connect()

    def _connect(self) -> None:
        self.stopping = False
        self.last: int | None = None
        self.born = time.monotonic()
        self.life = random.expovariate(1.0 / self.environment.parsed_options.life_s)
        t0 = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self.host, timeout=10, enable_multithread=True, sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
            )
            ws.send(json.dumps({"op": "subscribe", "id": 1, "channel": self.channel}))
            while True:
                reply = json.loads(ws.recv())
                if reply.get("re") == 1:
                    break
                self._on_message(json.dumps(reply), time.time_ns())  # a broadcast before the reply
            if not reply.get("ok"):
                raise ConnectionError(f"subscribe refused: {reply.get('error')}")
        except Exception as exc:
            self._fire("WS", "connect", (time.perf_counter() - t0) * 1000.0, exc)
            self.ws = self.receiver = None  # the task tries again after its wait
            return
        self._fire("WS", "connect", (time.perf_counter() - t0) * 1000.0, None)
        ws.settimeout(None)
        self.ws = ws
        self.receiver = gevent.spawn(self._receive, ws)

    def _receive(self, ws: websocket.WebSocket) -> None:
        """The user's receive greenlet: reads the socket in large chunks and cuts the frames itself.

        websocket-client's ``recv()`` makes several system calls per frame;
        at tens of thousands of messages per second that, not the server, is
        what saturates a load process. Server frames are unmasked, so cutting
        them is a few slices. The handshake and what the user sends still go
        through websocket-client.
        """
        sock = ws.sock
        buf = b""
        while True:
            try:
                data = sock.recv(262144)
            except Exception as exc:
                data, error = b"", exc
            else:
                error = None
            if not data:
                if not self.stopping:
                    self._fire("WS", "closed", 0.0, UnexpectedClose(repr(error) if error else "EOF"))
                    self.ws = None
                return
            now_ns = time.time_ns()
            buf += data
            frames, used = cut_server_frames(buf)
            buf = buf[used:]
            for opcode, payload in frames:
                if opcode == 1:
                    self._on_message(payload.decode("utf-8", "replace"), now_ns)
                elif opcode == 9:
                    ws.pong(payload)
                elif opcode == 8:
                    if not self.stopping:
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                        self._fire("WS", "closed", 0.0, UnexpectedClose(f"close frame {code}"))
                        self.ws = None
                    return

    def _on_message(self, text: str, now_ns: int) -> None:
        """One broadcast: the publisher's stamp, read by slicing when the frame is laid out as the
        reference lays it out (a JSON parse per message costs the load process), else parsed."""
        stamp = _fast_stamp(text) if text.startswith('{"ev":"broadcast"') else None
        if stamp is None:
            if '"broadcast"' not in text:
                return  # a reply, or another event
            try:
                msg = json.loads(text)
                data = msg["data"] if msg.get("ev") == "broadcast" else None
                stamp = (int(data["t"]), int(data["s"])) if isinstance(data, dict) else None
            except (ValueError, KeyError, TypeError):
                stamp = None
            if stamp is None:
                return
        sent_ns, seq = stamp
        self._fire("BCAST", self.channel, (now_ns - sent_ns) / 1e6, None, len(text))
        if self.last is not None:
            if seq == self.last + 1:
                pass
            elif seq > self.last + 1:
                self._loss("missing", seq - self.last - 1, Missing)
            else:
                self._loss("duplicate", 1, Duplicate)
                return
        self.last = seq

    def _loss(self, what: str, n: int, kind: type[Exception]) -> None:
        for _ in range(n):
            self._fire("LOSS", what, 0.0, kind(f"{self.channel}: {what}"))

    def _fire(self, kind: str, name: str, ms: float, exc: Exception | None, length: int = 0) -> None:
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=ms, response_length=length, exception=exc, context={}
        )

    @task
    def live(self) -> None:
        """Reconnect a lost connection; under ``--shape churn``, leave and come back as a new session."""
        if self.ws is None:
            self._connect()
        elif self.environment.parsed_options.shape == "churn" and time.monotonic() - self.born > self.life:
            self._disconnect(check_tail=False)  # mid-run: what follows its last message may be in flight
            self._connect()

    def _disconnect(self, check_tail: bool) -> None:
        self.stopping = True
        if check_tail and self.last is not None:
            self._check_tail()
        if self.receiver is not None:
            self.receiver.kill()
            self.receiver = None
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None

    def _check_tail(self) -> None:
        """At a stop after the publisher's end: what was published after our last message is missing."""
        if _tail_checked_after_drain(self.environment):
            last = _published_last(self.environment).get(self.channel)
            if last is not None and self.last is not None and last > self.last:
                self._loss("missing", last - self.last, Missing)

    def on_stop(self) -> None:
        self._disconnect(check_tail=True)


def _published_last(environment) -> dict[str, int]:
    import redis

    opts = environment.parsed_options
    try:
        raw = redis.Redis.from_url(opts.redis_url, socket_timeout=2).get(f"{opts.prefix}@locust:last")
        return json.loads(raw) if raw else {}
    except Exception:
        return {}


def _tail_checked_after_drain(environment) -> bool:
    """Only a timed run stops its publisher early enough for a tail to mean loss."""
    return bool(getattr(environment.parsed_options, "run_time", None))


# -- the plot ---------------------------------------------------------------------------------------------

_series: deque[tuple[float, float, float, float, float]] = deque()


def _sample(environment) -> None:
    """Once a second: deliveries/s and latency percentiles of the BCAST requests so far (for the PNG)."""
    started = time.monotonic()
    previous = 0
    while True:
        gevent.sleep(1.0)  # the sampling period
        entries = [e for (name, kind), e in environment.stats.entries.items() if kind == "BCAST"]
        count = sum(e.num_requests for e in entries)
        cur = environment.stats.total
        rate = count - previous
        previous = count
        p50 = max((e.get_current_response_time_percentile(0.5) or 0) for e in entries) if entries else 0
        p99 = max((e.get_current_response_time_percentile(0.99) or 0) for e in entries) if entries else 0
        _series.append((time.monotonic() - started, rate, p50, p99, cur.max_response_time or 0))


@events.quitting.add_listener
def _plot(environment, **_kw) -> None:
    if isinstance(environment.runner, WorkerRunner) or not _series:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in _series]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.plot(t, [s[2] for s in _series], label="p50")
    a.plot(t, [s[3] for s in _series], label="p99")
    a.set_ylabel("publish-to-receive latency (ms)")
    a.legend()
    b.plot(t, [s[1] for s in _series], color="tab:green")
    b.set_ylabel("deliveries / s")
    b.set_xlabel("seconds")
    fig.suptitle("broadcast under Locust")
    REPORTS.mkdir(exist_ok=True)
    fig.savefig(REPORTS / "locust_broadcast.png", dpi=100)
    plt.close(fig)

