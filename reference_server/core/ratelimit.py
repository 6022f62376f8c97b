"""Log rate limiting (pure): a dead session must never cause a warning storm.

Two tools:

* :class:`OncePerKey` says yes the first time it sees a key (a session id)
  and no afterwards, remembering a bounded number of keys (LRU).
* :class:`Summariser` counts what was suppressed and, at most once per
  interval, hands back a summary to log instead of the suppressed lines.

Both take the current time as an argument, so tests drive them with a fake clock.
"""

from __future__ import annotations

from collections import OrderedDict


class OncePerKey:
    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[object, None] = OrderedDict()
        self._capacity = capacity

    def first(self, key: object) -> bool:
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


class Summariser:
    """Count suppressed events per name; release a summary once per interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._counts: dict[str, int] = {}
        self._keys: dict[str, set[object]] = {}
        self._last_flush: float | None = None

    def suppressed(self, name: str, key: object = None) -> None:
        self._counts[name] = self._counts.get(name, 0) + 1
        if key is not None:
            keys = self._keys.setdefault(name, set())
            if len(keys) < 1000:
                keys.add(key)

    def due(self, now: float) -> list[tuple[str, int, int]]:
        """``(name, suppressed count, distinct keys)`` to log now, if the interval passed."""
        if self._last_flush is None:
            self._last_flush = now
        if not self._counts or now - self._last_flush < self.interval:
            return []
        out = [(n, c, len(self._keys.get(n, ()))) for n, c in sorted(self._counts.items())]
        self._counts.clear()
        self._keys.clear()
        self._last_flush = now
        return out
