"""BUG: a push to a session that is closing fails with 1005, as if it were gone (not 1004).

The session's close frame is out and its reply awaited: it is closing, not
gone. Caught by scenarios/test_closing.py (closing_session).
"""

from reference_server.core.registry import SessionTable
from reference_server.errors import ErrorCode
from tests.variants import patch


def apply() -> None:
    push_error = SessionTable.push_error

    def wrong(self: SessionTable, sid: int):
        code, info = push_error(self, sid)
        return (ErrorCode.SESSION_NOT_EXIST, None) if code is ErrorCode.SESSION_CLOSED else (code, info)

    patch(SessionTable, "push_error", wrong)
