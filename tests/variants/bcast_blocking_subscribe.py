"""BUG: a worker subscribes to Redis itself, with a blocking client, on its first subscribe.

The seed's warning: a blocking subscribe in a worker freezes its event loop,
so every session of that worker stops being served.
Caught by scenarios/test_broadcast.py (broadcast_fanout).
"""

from reference_server.session.channels import Channels
from tests.variants import patch


def apply() -> None:
    original = Channels.join

    async def join(self, sess, channel, since=None):
        import redis

        if not getattr(self, "_blocking_started", False):
            self._blocking_started = True
            client = redis.Redis.from_url(self.rt.boot.broker_url)
            pubsub = client.pubsub()
            pubsub.subscribe(self.rt.config.broadcast_prefix + channel)
            for _message in pubsub.listen():  # never returns: the event loop is stuck here
                pass
        return await original(self, sess, channel, since)

    patch(Channels, "join", join)
