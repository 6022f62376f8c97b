"""Redis outages as every process of the uvicorn target logs them: once when it starts, once when it ends.

A process that polls Redis in a loop would otherwise log one line per
attempt for as long as Redis is away (a warning storm).
"""

from __future__ import annotations

import logging
import time

from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

#: Retries of one Redis command whose connection broke (e.g. Redis restarted): 50 ms doubling to 500 ms, 6 times.
RETRY_ON = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]


def async_retry() -> AsyncRetry:
    return AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 6)


def sync_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 6)


class OutageLog:
    """``failed`` logs the first failure of an outage; ``ok`` logs its end, with how long and how many."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log, self.what = log, what
        self.since: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s: Redis unreachable (%r); retrying, logged again when it is back", self.what, exc)

    def ok(self) -> None:
        if self.since is not None:
            self.log.warning("%s: Redis back after %.0f ms (%d failed attempts)", self.what, (time.monotonic() - self.since) * 1000, self.failures)
            self.since, self.failures = None, 0
