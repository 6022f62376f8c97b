"""BUG: when the broadcaster dies, nobody reports the time no process heard Redis.

The seed: killing the broadcaster in pub/sub mode loses what is published until its
replacement subscribes, with no outage in /v1/stats (contract 10.5): the losses look like bugs.
Caught by scenarios/test_broadcast.py (fault_broadcaster[pubsub]).
"""

from reference_server.child.api import Server
from tests.variants import patch


def apply() -> None:
    async def none(self: Server) -> list:
        return []

    patch(Server, "broadcaster_outages", none)
