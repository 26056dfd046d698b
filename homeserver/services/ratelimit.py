"""Leaky-bucket rate limiting, keyed per action and requester (Synapse's rc_* semantics)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from homeserver.core.clock import Clock
from homeserver.core.errors import limit_exceeded


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst_count: float


class Ratelimiter:
    """Allows ``burst_count`` actions at once, refilled at ``per_second``.

    Buckets that have drained completely are dropped, so memory stays bounded by the number
    of keys active within the last ``burst_count / per_second`` seconds.
    """

    def __init__(self, clock: Clock, rate: Rate) -> None:
        self._clock = clock
        self._rate = rate
        # key -> (level, time of last update)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._last_prune = 0.0

    def _level(self, key: str, now: float) -> float:
        level, then = self._buckets.get(key, (0.0, now))
        return max(0.0, level - (now - then) * self._rate.per_second)

    def check(self, key: str, *, update: bool = True, n: float = 1.0) -> None:
        """Raise M_LIMIT_EXCEEDED if the action is not allowed now; count it if ``update``."""
        if self._rate.per_second <= 0 and self._rate.burst_count <= 0:
            return
        now = self._clock.time()
        self._prune(now)
        level = self._level(key, now)
        if level + n > self._rate.burst_count:
            wait = (level + n - self._rate.burst_count) / max(self._rate.per_second, 1e-9)
            raise limit_exceeded(int(math.ceil(wait * 1000)))
        if update:
            self._buckets[key] = (level + n, now)

    def record(self, key: str, n: float = 1.0) -> None:
        """Count an action without checking (e.g. a failed login, counted after the fact)."""
        now = self._clock.time()
        self._buckets[key] = (self._level(key, now) + n, now)

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def _prune(self, now: float) -> None:
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        for key in [k for k in self._buckets if self._level(k, now) <= 0]:
            del self._buckets[key]
