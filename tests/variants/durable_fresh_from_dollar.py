"""BUG: durable mode reads a channel new to the node with ``XREAD ... $`` until it gets a message.

``$`` means "what is added from this call on": whatever is added between the
subscribe reply and the reader's next ``XREAD`` is never read. Caught by
scenarios/test_broadcast.py (broadcast_history).
"""

from reference_server.roles import broadcaster
from tests.variants import patch

FRESH = -7  # a position no stream id has: "not read yet, start at $"


def apply() -> None:
    read_histories = broadcaster.Broadcaster._read_histories
    stream_id = broadcaster.stream_id

    async def from_dollar(self, client, wanted, history, covered) -> None:
        new = [c for c, since in wanted.items() if since is None and c not in self.pos]
        await read_histories(self, client, wanted, history, covered)
        for channel in new:
            self.pos[channel] = FRESH

    patch(broadcaster.Broadcaster, "_read_histories", from_dollar)
    patch(broadcaster, "stream_id", lambda pos: "$" if pos == FRESH else stream_id(pos))
