"""What every contract server needs, whatever its engine (docs/contract-v1.md, section 3).

Pure helpers: the error codes and names, reply builders, request field
validation, the sweep rule of section 4.3, and the channel names of section
10. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

#: Error codes of the contract (section 3.2 and 10.2), by name.
CODES: dict[str, int] = {
    "SESSION_CLOSED": 1004,
    "SESSION_NOT_EXIST": 1005,
    "NOT_ESTABLISHED": 8503,
    "UNKNOWN_PROCESS": 2003,
    "BAD_REQUEST": 4400,
    "UNAUTHORIZED": 4401,
    "NOT_FOUND": 4404,
    "METHOD_NOT_ALLOWED": 4405,
    "LENGTH_REQUIRED": 4411,
    "TOO_LARGE": 4413,
    "LIMIT_REACHED": 4429,
    "INTERNAL": 4500,
    "UNSUPPORTED": 4501,
    "BROADCAST_OFF": 5001,
    "BAD_CHANNEL": 5002,
    "HISTORY_UNAVAILABLE": 5003,
    "BROKER_UNAVAILABLE": 5005,
}
NAMES = {code: name for name, code in CODES.items()}

SWEPT = 4001
HEARTBEAT = 4408
SLOW_CONSUMER = 4429
ALL = "@all"
_CHANNEL = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class ContractError(Exception):
    """A request refused with one of the contract's codes (the session stays open)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.code = CODES[name]
        self.name = name
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message}


#: Contract 12.1: the bounds of the application protocol's values.
MAX_INT = 2**53 - 1
MAX_INTERVAL_MS = 3_600_000
MAX_SLEEP_MS = 60_000
#: Contract 12.2: what one session may hold.
MAX_TIMERS = 100
MAX_TASKS = 100


def ok(req_id: Any, **fields: Any) -> str:
    return json.dumps({"re": req_id, "ok": True, **fields}, allow_nan=False)


def fail(req_id: Any, code: int, message: str) -> str:
    error = {"code": code, "name": NAMES.get(code, "ERROR"), "message": message}
    return json.dumps({"re": req_id, "ok": False, "error": error}, allow_nan=False)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"the number {text[:40]} is past a double's range")
    return value


def parse_request(text: str | bytes) -> tuple[Any, str, dict[str, Any]]:
    """``(id, op, message)`` of a request; :class:`ContractError` (id in ``.req_id``) if malformed.

    Strict JSON (contract 12.1): ``NaN`` and ``Infinity`` are malformed, and so is nesting
    deeper than the parser goes.
    """
    try:
        msg = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise _bad(None, "the message is nested too deep") from None
    except (ValueError, UnicodeDecodeError):
        raise _bad(None, "the message is not JSON") from None
    if not isinstance(msg, dict):
        raise _bad(None, "a request must be a JSON object")
    req_id = msg.get("id")
    op = msg.get("op")
    if not isinstance(op, str):
        raise _bad(req_id, "'op' must be a string")
    return req_id, op, msg


def _bad(req_id: Any, message: str) -> ContractError:
    err = ContractError("BAD_REQUEST", message)
    err.req_id = req_id  # type: ignore[attr-defined]
    return err


def int_field(
    msg: dict[str, Any], key: str, default: int | None = None, *, low: int | None = None, high: int = MAX_INT
) -> int:
    value = msg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ContractError("BAD_REQUEST", f"{key!r} must be an integer")
    if low is not None and value < low:
        raise ContractError("BAD_REQUEST", f"{key!r} must be >= {low}")
    if value > high:
        raise ContractError("BAD_REQUEST", f"{key!r} must be <= {high}")
    return value


def limit(what: str, bound: int) -> ContractError:
    """The refusal of a request past a per-session bound (contract 12.2)."""
    return ContractError("LIMIT_REACHED", f"a session holds at most {bound} {what}")


def close_args(msg: dict[str, Any]) -> tuple[int, str]:
    """The ``close`` op's code (1000 or 3000..4999) and reason (at most 123 bytes)."""
    code = int_field(msg, "code", 1000)
    if not (code == 1000 or 3000 <= code <= 4999):
        raise ContractError("BAD_REQUEST", f"close code {code} is not 1000 or 3000..4999")
    reason = msg.get("reason", "")
    if not isinstance(reason, str):
        raise ContractError("BAD_REQUEST", "'reason' must be a string")
    try:
        size = len(reason.encode())
    except UnicodeEncodeError:
        raise ContractError("BAD_REQUEST", "'reason' is not valid UTF-8 (a lone surrogate)") from None
    if size > 123:
        raise ContractError("BAD_REQUEST", "'reason' must be at most 123 bytes of UTF-8")
    return code, reason


def channel_name(value: Any, *, allow_all: bool = False) -> str:
    """A valid channel name (section 10.1), or BAD_CHANNEL."""
    if value == ALL and allow_all:
        return ALL
    if not isinstance(value, str) or not _CHANNEL.fullmatch(value):
        raise ContractError("BAD_CHANNEL", f"channel {value!r} does not match [A-Za-z0-9_.:-]{{1,128}}")
    return value


def broadcast_frame(channel: str, payload: str, msg_id: str | None = None) -> str | None:
    """The broadcast event for a published payload, or None if the payload is not JSON."""
    try:
        json.loads(payload)
    except ValueError:
        return None
    return f'{{"ev":"broadcast","channel":{json.dumps(channel)},"id":{json.dumps(msg_id)},"data":{payload}}}'


def sweep_rule(body: Any) -> dict[str, Any]:
    """Validate a sweep rule (section 4.3)."""
    if not isinstance(body, dict):
        raise ContractError("BAD_REQUEST", "the sweep rule must be a JSON object")
    uids = body.get("uids", [])
    if not isinstance(uids, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in uids):
        raise ContractError("BAD_REQUEST", "'uids' must be a list of integers")
    rule: dict[str, Any] = {"uids": uids}
    for key, default, low in (("interval_ms", 1000, 10), ("pace_ms", 0, 0)):
        rule[key] = int_field(body, key, default, low=low)
    if "idle_ms" in body:
        rule["idle_ms"] = int_field(body, "idle_ms", low=0)
    notice = body.get("notice", "swept")
    if not isinstance(notice, str) or len(notice.encode()) > 123:
        raise ContractError("BAD_REQUEST", "'notice' must be a string of at most 123 bytes")
    rule["notice"] = notice
    if not uids and "idle_ms" not in rule:
        raise ContractError("BAD_REQUEST", "a rule needs 'uids' or 'idle_ms'")
    return rule


def new_sweep_report(number: int, process: str, started: float) -> dict[str, Any]:
    return {
        "sweep": number, "process": process, "started": started, "seen": [], "matched": [], "closed": [],
        "info_missing": [], "close_failed": [], "errors": [],
    }


STANDARD_COUNTERS = (
    "connections_accepted", "sessions_opened", "sessions_closed", "messages_received", "pushes", "push_failed",
    "dead_session_pushes", "closes_requested", "heartbeat_closes", "sweep_closes", "tasks_dispatched",
    "tasks_done", "tasks_finished", "timers_created", "timers_cleared",
    "bc_deliveries", "bc_slow_closed", "bc_received", "bc_rejected",
)


@dataclass
class Timer:
    """A ``timer_start`` timer's record (section 3.1); ``handle`` is whatever the engine cancels it with."""

    id: int
    owner: int
    to: int
    interval_ms: int
    remaining: int | None
    seq: int = 0
    sent: int = 0
    failed: Counter = field(default_factory=Counter)
    last_error: str = ""
    handle: Any = None

    def status(self) -> dict[str, Any]:
        """The reply of ``timer_stop`` and ``timer_status``."""
        return {
            "timer": self.id, "to": self.to, "seq": self.seq, "sent": self.sent,
            "failed": {str(c): n for c, n in sorted(self.failed.items())}, "last_error": self.last_error,
        }


async def bounded(log: logging.Logger, who: str, step: str, aw: Awaitable[Any], timeout: float = 3.0) -> None:
    """One step of a shutdown, at most ``timeout`` s: past it, log which step hung and go on.

    A stop must end: a step that hangs (a Redis connection mid-read, a client that does
    not read) is named in the log, and the process exits all the same.
    """
    try:
        await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        log.warning("%s: shutdown step %r did not finish within %.0f s; going on", who, step, timeout)
    except Exception as exc:
        log.warning("%s: shutdown step %r failed: %r", who, step, exc)
