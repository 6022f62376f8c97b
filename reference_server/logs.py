"""Structured logging: one JSON object per line on stderr.

Every line carries ``ts``, ``level``, ``proc`` (e.g. ``worker-1``), ``pid`` and
``event`` (a dotted name such as ``session.close``), then the event's fields.
Lifecycle events let a user follow one session across processes with
``grep '"sid": 123'``. Warnings that a misbehaving peer could trigger over and
over go through :class:`RateLimitedLog`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from .core.ratelimit import OncePerKey, Summariser

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    def __init__(
        self,
        proc: str,
        *,
        level: str = "info",
        fmt: str = "json",
        stream: TextIO | None = None,
    ) -> None:
        self.proc = proc
        self.threshold = LEVELS[level]
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.pid = os.getpid()

    def rebind(self, proc: str) -> None:
        """Called in a freshly forked child."""
        self.proc = proc
        self.pid = os.getpid()

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {
            "ts": round(time.time(), 6),
            "level": level,
            "proc": self.proc,
            "pid": self.pid,
            "event": event,
        }
        record.update(fields)
        if self.fmt == "json":
            line = json.dumps(record, default=str, separators=(", ", ": "))
        else:
            extras = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{record['ts']:.6f} {level.upper():7} {self.proc}[{self.pid}] {event} {extras}"
        data = (line + "\n").encode("utf-8", "replace")
        try:
            if self.stream is sys.stderr:
                # One write() per line: lines from many processes never interleave.
                os.write(2, data)
            else:
                self.stream.write(data.decode("utf-8"))
                self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nothing sensible to do

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)


class RateLimitedLog:
    """Log an event once per key, and summarise the rest once per interval."""

    def __init__(self, log: Log, counters: Any, interval: float = 10.0) -> None:
        self.log = log
        self.counters = counters
        self._once = OncePerKey()
        self._summary = Summariser(interval)

    def once(self, level: str, event: str, key: object, **fields: Any) -> None:
        if self._once.first((event, key)):
            fields.setdefault("note", "logged once per session; later ones are summarised")
            self.log.emit(level, event, **fields)
        else:
            self.counters["log_suppressed"] += 1
            self._summary.suppressed(event, key)

    def flush(self, now: float | None = None) -> None:
        for event, count, keys in self._summary.due(time.monotonic() if now is None else now):
            self.log.warning(f"{event}.summary", suppressed=count, sessions=keys)
