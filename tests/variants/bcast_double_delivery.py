"""BUG: publish delivers to the local members at once, and again when Redis sends it back.

A "fast path" for subscribers of the publishing process: they get the frame
straight away, and a second time through Redis like every other node's
sessions. Nothing recognises the second copy.
Caught by scenarios/test_broadcast.py (broadcast_fanout).
"""

import json

from reference_server.child.api import Server
from reference_server.core.broadcast import encode_frame
from tests.variants import patch


def apply() -> None:
    original = Server.publish

    async def publish(self, channel, data):
        msg_id = await original(self, channel, data)
        frame = encode_frame(channel, msg_id, json.dumps(data, separators=(",", ":")))
        for sess in list(self._rt.channels.members.get(channel, {}).values()):
            if sess.stream is not None and sess.is_open:
                sess.stream.write(frame)
        return msg_id

    patch(Server, "publish", publish)
