"""Bounds on what a caller may ask of the server: pure checks, one place (contract 12).

Every value a client or an operator can hand the server is checked here before anything is
written (the shared session table, a close frame): a check answers ``None`` or a sentence
naming what is wrong, which the caller turns into ``BAD_REQUEST``.
"""

from __future__ import annotations

#: The session table stores uids and groups as signed 64-bit integers.
INT64_MAX = 2**63 - 1
#: RFC 6455 5.5: a control frame's payload is at most 125 bytes, two of them the close code.
MAX_CLOSE_REASON_BYTES = 123


#: Close codes a server may send (RFC 6455 7.4): 1004-1006 and 1015 are reserved, never sent.
SERVER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})


def close_problem(code: object, reason: object, *, client: bool = True) -> str | None:
    """Why ``close(code, reason)`` cannot be sent, or None; the reason is UTF-8 of at most 123 bytes.

    ``client``: the code comes from a client or an operator (the ``close`` op, the admin API):
    1000 or 3000..4999 (contract 3.1). Otherwise (the server's own API) any code a server may
    send: 1001 for a removed port, 4408 for the heartbeat, ...
    """
    if not isinstance(code, int) or isinstance(code, bool):
        return f"close code {code!r} is not an integer"
    if client and not (code == 1000 or 3000 <= code <= 4999):
        return f"close code {code} is not 1000 or 3000..4999"
    if code not in SERVER_CLOSE_CODES:
        return f"close code {code} may not be sent (RFC 6455 7.4)"
    if not isinstance(reason, str):
        return "the close reason must be a string"
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        return "the close reason is not valid UTF-8 (it holds a lone surrogate)"
    if size > MAX_CLOSE_REASON_BYTES:
        return f"the close reason is {size} bytes of UTF-8; at most {MAX_CLOSE_REASON_BYTES}"
    return None


def int64_problem(name: str, value: object, *, low: int = 0) -> str | None:
    """Why ``value`` cannot be stored as ``name`` in the session table, or None."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{name} must be an integer"
    if not low <= value <= INT64_MAX:
        return f"{name} must be in {low}..{INT64_MAX}"
    return None


#: Descriptors a process keeps for what it opens itself (peer links, /proc reads, logs, the
#: descriptor a handed-over connection arrives in): at least this many, or 1/16 of its limit.
FD_RESERVE_MIN = 48


def descriptor_capacity(limit: int, in_use: int) -> int:
    """How many connections a process may hold with ``limit`` descriptors and ``in_use`` open already.

    Past it a worker refuses new connections (closes them at once) instead of running out of
    descriptors, which would break what it needs to serve the connections it has. At least 1.
    """
    reserve = max(FD_RESERVE_MIN, limit // 16)
    return max(1, limit - in_use - reserve)


def room_again(capacity: int) -> int:
    """A full worker takes connections again once it holds this many or fewer (hysteresis: 90 %)."""
    return max(0, capacity - max(1, capacity // 10))
