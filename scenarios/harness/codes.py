"""The contract's codes, in one table (docs/contract-v1.md, sections 3.2 and 3.3).

Every error code a target may answer, by name, and the close codes the
scenarios expect. ``tests/test_contract_codes.py`` checks that the document,
the schema (``docs/contract/app.schema.json``), the reference's
``reference_server/errors.py`` and ``targets/kit.py`` agree with this table.
"""

from __future__ import annotations

#: Error codes (``{"error": {"code", "name", "message"}}``), by name.
ERRORS: dict[str, int] = {
    # sessions (Swoole's numbering)
    "SESSION_CLOSED": 1004,
    "SESSION_NOT_EXIST": 1005,
    "NOT_ESTABLISHED": 8503,
    # processes and migration
    "OWNER_UNREACHABLE": 2001,
    "NO_TASK_WORKER": 2002,
    "UNKNOWN_PROCESS": 2003,
    "TASK_LOST": 2004,
    "ALREADY_THERE": 2010,
    "MIGRATION_IN_PROGRESS": 2011,
    "MIGRATION_FAILED": 2012,
    "NOT_MOVABLE": 2013,
    # dynamic ports
    "PORT_IN_USE": 3001,
    "PORT_PRIVILEGED": 3002,
    "BAD_ADDRESS": 3003,
    "ALREADY_LISTENING": 3004,
    "NOT_LISTENING": 3005,
    "PORT_LIMIT": 3006,
    "HANDLER_UNKNOWN": 3007,
    "PORT_REMOVED": 3008,
    "LISTEN_FAILED": 3009,
    # requests, and the admin API's own HTTP errors
    "BAD_REQUEST": 4400,
    "UNAUTHORIZED": 4401,
    "NOT_FOUND": 4404,
    "METHOD_NOT_ALLOWED": 4405,
    "LENGTH_REQUIRED": 4411,
    "TOO_LARGE": 4413,
    "LIMIT_REACHED": 4429,
    "INTERNAL": 4500,
    "UNSUPPORTED": 4501,
    # broadcast
    "BROADCAST_OFF": 5001,
    "BAD_CHANNEL": 5002,
    "HISTORY_UNAVAILABLE": 5003,
    "HISTORY_TOO_LONG": 5004,
    "BROKER_UNAVAILABLE": 5005,
    "BROADCASTER_UNREACHABLE": 5006,
}
NAMES: dict[int, str] = {code: name for name, code in ERRORS.items()}

#: The HTTP status of the admin API's own errors, and the code each carries.
HTTP_ERRORS: dict[int, int] = {401: 4401, 405: 4405, 411: 4411, 413: 4413}

#: Close codes a target sends (section 3.3).
CLOSES: dict[str, int] = {
    "NORMAL": 1000,
    "GOING_AWAY": 1001,
    "SWEPT": 4001,
    "IDLE_TIMEOUT": 4408,
    "SLOW_CONSUMER": 4429,
}

SESSION_CLOSED = ERRORS["SESSION_CLOSED"]
SESSION_NOT_EXIST = ERRORS["SESSION_NOT_EXIST"]
BAD_REQUEST = ERRORS["BAD_REQUEST"]
UNSUPPORTED = ERRORS["UNSUPPORTED"]
LIMIT_REACHED = ERRORS["LIMIT_REACHED"]
