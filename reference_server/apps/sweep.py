"""The contract application's sweep (contract section 4.3), in task worker 0.

The admin API's ``/v1/sweep`` reaches the application's ``on_admin`` in the admin process,
which asks task worker 0 (``Server.request``); there the rule runs on a timer, using only
the public API: it lists ``connections`` (every worker's sessions, handshaking ones
included), reads each session's info, and for each one that matches the rule (a uid in
``uids``, or idle for more than ``idle_ms``) sends a notice as its last message and closes
it with 4001, atomically (``close(..., last_message=...)``). Each pass writes a report
(seen, matched, closed, info missing, close failures, errors); the last 200 are kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from ..child.api import Server
from ..errors import CloseCode, ErrorCode, ServerError

SWEEPER = "task-0"


class Sweeper:
    """Mixed into the contract application."""

    _server: Server

    def init_sweeper(self) -> None:
        self.rule: dict[str, Any] | None = None
        self.rule_timer: int | None = None
        self.sweeping = False
        self.sweep_no = 0
        self.reports: deque[dict[str, Any]] = deque(maxlen=200)

    def on_admin(self, server: Server, op: str, body: dict[str, Any]) -> Any:
        return self._admin(server, op, body)

    async def _admin(self, server: Server, op: str, body: dict[str, Any]) -> Any:
        if op == "sweep.set":
            body = validate_rule(body)
        return await server.request(SWEEPER, {"op": op, "body": body})

    async def on_request(self, server: Server, src: str, data: Any) -> Any:
        op = data.get("op")
        if op == "sweep.set":
            self.rule = data["body"]
            if self.rule_timer is not None:
                server.clear(self.rule_timer)
            self.rule_timer = server.tick(self.rule["interval_ms"], self._sweep_tick, label="sweep")
            return {"ok": True, "rule": self.rule}
        if op == "sweep.clear":
            if self.rule_timer is not None:
                server.clear(self.rule_timer)
            self.rule, self.rule_timer = None, None
            return {"ok": True}
        if op == "sweep.reports":
            since = int(data.get("body", {}).get("since", 0) or 0)
            return {"rule": self.rule, "running": self.sweeping, "reports": [r for r in self.reports if r["sweep"] > since]}
        raise ServerError(ErrorCode.NOT_FOUND, f"unknown sweep operation {op!r}")

    def _sweep_tick(self, tid: int) -> Any:
        if self.sweeping or self.rule is None:
            return None
        return self.sweep(self._server, self.rule)

    async def sweep(self, server: Server, rule: dict[str, Any]) -> dict[str, Any]:
        """One pass over every session of every worker (contract section 4.3)."""
        self.sweeping = True
        self.sweep_no += 1
        uids = set(rule.get("uids", []))
        idle = rule.get("idle_ms")
        pace = rule.get("pace_ms", 0) / 1000.0
        notice = rule.get("notice", "swept")
        report: dict[str, Any] = {
            "sweep": self.sweep_no,
            "process": server.name,
            "started": time.time(),
            "seen": [],
            "matched": [],
            "closed": [],
            "info_missing": [],
            "close_failed": [],
            "errors": [],
        }
        try:
            for sid in server.connections:
                report["seen"].append(sid)
                try:
                    info = server.get_client_info(sid)
                    if info is None:  # closed between being listed and being read
                        report["info_missing"].append(sid)
                        continue
                    idle_for = (time.time() - info.last_recv_time) * 1000.0
                    if (info.uid and info.uid in uids) or (idle is not None and idle_for > idle):
                        report["matched"].append(sid)
                        text = json.dumps({"ev": "notice", "reason": notice, "session": sid, "sweep": self.sweep_no})
                        # The notice must be the session's last message: send it with the close, atomically.
                        if server.close(sid, CloseCode.SWEPT, notice, last_message=text):
                            report["closed"].append(sid)
                            server.counters["sweep_closes"] += 1
                        else:
                            report["close_failed"].append([sid, server.last_error.name])
                except Exception as exc:  # a bug: reported, never fatal to the sweep
                    report["errors"].append([sid, repr(exc)])
                if pace:
                    await asyncio.sleep(pace)
        finally:
            report["ended"] = time.time()
            self.reports.append(report)
            self.sweeping = False
        server.log.info(
            "sweep.done",
            sweep=self.sweep_no,
            seen=len(report["seen"]),
            closed=len(report["closed"]),
            info_missing=len(report["info_missing"]),
            errors=len(report["errors"]),
        )
        return report


def validate_rule(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ServerError(ErrorCode.BAD_REQUEST, "sweep rule must be a JSON object")
    rule: dict[str, Any] = {}
    uids = body.get("uids", [])
    if not isinstance(uids, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in uids):
        raise ServerError(ErrorCode.BAD_REQUEST, "'uids' must be a list of integers")
    rule["uids"] = uids
    for key, default, low in (("interval_ms", 1000, 10), ("pace_ms", 0, 0)):
        value = body.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ServerError(ErrorCode.BAD_REQUEST, f"{key!r} must be an integer >= {low}")
        rule[key] = value
    if "idle_ms" in body:
        if not isinstance(body["idle_ms"], int) or body["idle_ms"] < 0:
            raise ServerError(ErrorCode.BAD_REQUEST, "'idle_ms' must be an integer >= 0")
        rule["idle_ms"] = body["idle_ms"]
    notice = body.get("notice", "swept")
    if not isinstance(notice, str) or len(notice.encode()) > 123:
        raise ServerError(ErrorCode.BAD_REQUEST, "'notice' must be a string of at most 123 bytes")
    rule["notice"] = notice
    if not uids and "idle_ms" not in rule:
        raise ServerError(ErrorCode.BAD_REQUEST, "a rule needs 'uids' or 'idle_ms'")
    return rule
