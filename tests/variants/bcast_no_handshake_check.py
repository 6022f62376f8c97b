"""BUG: a broadcast to @all goes to every listed connection, without checking the handshake.

The seed's custom process must check ``isEstablished`` before pushing; this one
walks every connection the worker holds, so a client still in its handshake
gets WebSocket frames before (instead of) its HTTP 101 answer.
Caught by scenarios/test_broadcast.py (broadcast_fanout).
"""

from reference_server.core.broadcast import ALL
from reference_server.session.channels import Channels
from tests.variants import patch


def apply() -> None:
    original = Channels.flush

    def flush(self) -> None:
        pending = list(self.pending)
        original(self)
        for batch in pending:
            for channel, _pos, frame in batch:
                if channel != ALL:
                    continue
                for sess in list(self.rt.sessions.values()):
                    if not sess.established and sess.stream is not None:  # the established got it above
                        sess.stream.write(frame)

    patch(Channels, "flush", flush)
