"""Checks of loadtests/broadcast.py that need Locust imported.

Importing locust monkey-patches the process with gevent, so these run in a
child process of their own (``python -m tests.locust_checks``), never inside
the pytest process whose other tests use asyncio and threads.
"""

from __future__ import annotations

import json


def check_loss_accounting() -> None:
    """The receive path of a user: stamps read by slicing, a gap counts each missing message, a repeat once."""
    from argparse import Namespace

    from locust.env import Environment

    from loadtests.broadcast import BroadcastUser

    env = Environment(user_classes=[BroadcastUser])
    env.parsed_options = Namespace(channels="bench", life_s=10.0, shape="steady", run_time=None)
    seen: list[tuple[str, str, float, object]] = []
    env.events.request.add_listener(
        lambda request_type, name, response_time, exception, **_: seen.append((request_type, name, response_time, exception))
    )
    user = BroadcastUser(env)
    user.channel = "bench"
    user.last = None
    now = 1_700_000_000_000_000_000

    def frame(seq: int, sent_ns: int) -> str:
        return json.dumps(
            {"ev": "broadcast", "channel": "bench", "id": None, "data": {"t": sent_ns, "s": seq, "p": "locust"}},
            separators=(",", ":"),
        )

    for seq in (1, 2, 5, 5, 6):
        user._on_message(frame(seq, now - 1_500_000), now)  # sent 1.5 ms before
    user._on_message('{"re":1,"ok":true}', now)  # a reply: not a broadcast
    # another target may lay its JSON out differently: parsed the slow way
    user._on_message(json.dumps({"ev": "broadcast", "channel": "bench", "data": {"s": 7, "t": now - 1_500_000}}), now)
    bcast = [s for s in seen if s[0] == "BCAST"]
    assert len(bcast) == 6 and all(abs(s[2] - 1.5) < 1e-9 for s in bcast)
    missing = [s for s in seen if s[:2] == ("LOSS", "missing")]
    duplicate = [s for s in seen if s[:2] == ("LOSS", "duplicate")]
    assert len(missing) == 2 and len(duplicate) == 1
    assert all(s[3] is not None for s in missing + duplicate)
    assert user.last == 7


def check_latency_buckets() -> None:
    import locust.stats

    import loadtests.broadcast  # noqa: F401  (installs the finer buckets)

    bucket = locust.stats.bucket_response_time
    assert bucket(1.234) == 1.23 and bucket(42.37) == 42.4 and bucket(1234) == 1200


if __name__ == "__main__":
    import loadtests.broadcast  # noqa: F401  (locust first: it patches the process before anything else runs)

    check_loss_accounting()
    check_latency_buckets()
    print("ok")
