"""BUG: text messages are decoded leniently: invalid UTF-8 is replaced, not refused with 1007.

RFC 6455 8.1: an endpoint that receives a text message that is not valid UTF-8 fails the
connection (1007). Many servers decode with replacement characters and serve the request.
Caught by scenarios/test_protocol.py (protocol_conformance).
"""

from websockets.frames import Opcode

from reference_server.session.session import Session
from tests.variants import patch


def apply() -> None:
    def lenient(self: Session, opcode: Opcode, data: bytes) -> None:
        if self.closing:
            return
        if opcode is Opcode.TEXT:
            self.host.session_message(self, data.decode("utf-8", errors="replace"))
        else:
            self.host.session_message(self, bytes(data))

    patch(Session, "_deliver", lenient)
