"""Hostile clients (contract section 12): raw requests, strict JSON, a client that stops reading.

:class:`HostileClient` is a :class:`~.leanclient.LeanClient` that sends any text as a message
(invalid JSON included), keeps every text frame it receives with whether it is strict JSON
(RFC 8259: no ``NaN``/``Infinity``), and can stop reading (a paused transport) and start
again. :data:`BAD_REQUESTS` is the table of bad requests the scenario sends;
:func:`rss_bytes` reads a process's resident memory from ``/proc``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from .leanclient import LeanClient
from .rawclient import text_frame

#: Nesting the scenario sends (contract 12.1 lets a target refuse past 32).
DEEP = 5000
MAX_INT = 2**53 - 1


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(payload: bytes) -> tuple[Any, str]:
    """``(value, "")`` for strict JSON (RFC 8259), else ``(None, why)``."""
    try:
        return json.loads(payload, parse_constant=_not_json), ""
    except RecursionError:
        return None, "nested too deep for the harness"
    except ValueError as exc:
        return None, str(exc)[:200]


@dataclass
class Received:
    at: float
    text: str  # the first 300 characters
    value: Any  # parsed (None if not strict JSON)
    invalid: str  # why it is not strict JSON ("" if it is)


class HostileClient(LeanClient):
    """Sends raw text; keeps every text frame it gets, judged as strict JSON."""

    def __init__(self, host: str, port: int, name: str = "") -> None:
        super().__init__(host, port, name)
        self.received: list[Received] = []
        self.last_data = 0.0  # time.monotonic() of the last bytes received

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        super().data_received(data)

    def quiet_for(self) -> float:
        """Seconds since the last bytes arrived."""
        return time.monotonic() - self.last_data

    def on_text(self, payload: bytes, now_ns: int) -> None:
        value, invalid = strict_json(payload)
        self.received.append(Received(now_ns / 1e9, payload[:300].decode(errors="replace"), value, invalid))
        if invalid:  # still usable as a reply for the harness, leniently parsed
            try:
                value = json.loads(payload)
            except (ValueError, RecursionError):
                return
        if isinstance(value, dict) and "re" in value and "ev" not in value:  # a task_result's re is not a reply
            try:
                self.take_reply(value)
            except TypeError:  # an id that cannot be a key (a list...)
                pass

    def send_raw(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(text_frame(text))

    def replies_since(self, index: int) -> list[Received]:
        return [r for r in self.received[index:] if (isinstance(r.value, dict) and "re" in r.value) or r.invalid]

    def stop_reading(self) -> None:
        """Read nothing more: the kernel's buffers fill (a few MiB), then the server's output waits.

        The receive buffer keeps its size: a small one (SO_RCVBUF) would make reading again,
        to find the close frame, take minutes.
        """
        assert self.transport is not None
        self.transport.pause_reading()

    def start_reading(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()


@dataclass(frozen=True)
class BadRequest:
    """One bad request: the text sent, and what may answer it (codes; ``"ok"`` where it may succeed)."""

    what: str
    text: str
    answers: tuple[int | str, ...] = (4400,)
    re_null: bool = False  # the reply's re must be null (no id could be read)
    needs: str = ""  # a capability the op needs


def _req(op: str, rid: str, **fields: Any) -> str:
    return json.dumps({"op": op, "id": rid, **fields})


BAD_REQUESTS: tuple[BadRequest, ...] = (
    BadRequest("uid past 2^63", '{"op":"bind","id":"b1","uid":9223372036854775808}'),
    BadRequest("uid past 2^53", _req("bind", "b2", uid=MAX_INT + 1)),
    BadRequest("negative uid", _req("bind", "b3", uid=-1)),
    BadRequest("uid as a float", _req("bind", "b4", uid=1.5)),
    BadRequest("group past 2^63", '{"op":"join","id":"g1","group":9223372036854775808}', needs="migrate"),
    BadRequest("JSON nested 5,000 deep", "[" * DEEP + "]" * DEEP, re_null=True),
    BadRequest("a field nested 5,000 deep", '{"op":"echo","id":"d1","seq":1,"data":' + "[" * DEEP + "]" * DEEP + "}",
               answers=(4400, "ok")),
    BadRequest("interval_ms of 1e400", '{"op":"timer_start","id":"i1","interval_ms":1e400}'),
    BadRequest("a number past a double's range in a field", '{"op":"echo","id":"n1","seq":1,"data":1e400}'),
    BadRequest("interval_ms past an hour", _req("timer_start", "i2", interval_ms=3_600_001)),
    BadRequest("count as a string", _req("timer_start", "i3", interval_ms=1000, count="3")),
    BadRequest("sleep_ms past a minute", _req("task", "s1", sleep_ms=60_001)),
    BadRequest("block past 5 s", _req("block", "k1", ms=5001), needs="migrate"),
    BadRequest("close code 99999999999999999999", '{"op":"close","id":"c1","code":99999999999999999999}'),
    BadRequest("close reason with a lone surrogate", '{"op":"close","id":"c2","code":4000,"reason":"\\ud800"}'),
    BadRequest("close reason of 124 bytes", _req("close", "c3", code=4000, reason="r" * 124)),
    BadRequest("request id NaN", '{"op":"ping","id":NaN}', re_null=True),
    BadRequest("request id Infinity", '{"op":"ping","id":Infinity}', re_null=True),
    BadRequest("an op name of 10,000 characters", _req("x" * 10_000, "o1"), answers=(4501,)),
    BadRequest("echo of a lone surrogate", '{"op":"echo","id":"e1","seq":1,"data":"\\ud800"}', answers=(4400, "ok")),
)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a local process, from /proc (None if it is gone or not readable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the resident memory of some processes until stopped; keeps the first and the peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.first: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def _sample(self) -> None:
        self.samples += 1
        for name, pid in self.pids.items():
            rss = rss_bytes(pid)
            if rss is None:
                continue
            self.first.setdefault(name, rss)
            self.peak[name] = max(self.peak.get(name, 0), rss)

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    def start(self) -> None:
        self._sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, int]:
        """Stop; growth per process (peak minus first sample), in bytes."""
        self._stop.set()
        if self._task is not None:
            await self._task
        self._sample()
        return {name: self.peak[name] - self.first[name] for name in self.first}

