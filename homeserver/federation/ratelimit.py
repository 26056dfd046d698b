"""``rc_federation``: how much one remote server may ask of us at once (Synapse's semantics).

Per origin server, over the last ``window_size`` milliseconds: past ``sleep_limit``
requests, each new request first waits ``sleep_delay`` milliseconds; at most
``concurrent`` requests are processed at once, the others queue; a request arriving while
more than ``reject_limit`` are already waiting (sleeping or queued) is refused with 429
``M_LIMIT_EXCEEDED``.  A busy or misbehaving peer slows itself down, not the server.

A request holds its processing slot until its response is finished (or its connection
lost), so the whole servlet counts, as in Synapse.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer

from homeserver.config.ratelimiting import FederationRateLimitConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import limit_exceeded

# Origins idle for this long (seconds) are forgotten.
_PRUNE_EVERY = 60.0


@dataclass
class _Host:
    times: deque[int] = field(default_factory=deque)  # request arrivals within the window (ms)
    waiting: int = 0  # sleeping or queued for a slot
    active: int = 0  # being processed
    queue: deque[defer.Deferred[None]] = field(default_factory=deque)


class FederationRateLimiter:
    def __init__(self, clock: Clock, config: FederationRateLimitConfig) -> None:
        self._clock = clock
        self._config = config
        self._hosts: dict[str, _Host] = {}
        self._last_prune = clock.time()

    async def enter(self, origin: str) -> Callable[[], None]:
        """Wait until a request from ``origin`` may be processed; returns the function that
        gives its slot back (call it once, when the response is done)."""
        config = self._config
        now_ms = self._clock.time_msec()
        self._prune()
        host = self._hosts.setdefault(origin, _Host())
        while host.times and now_ms - host.times[0] >= config.window_size:
            host.times.popleft()
        if host.waiting > config.reject_limit:
            raise limit_exceeded(config.window_size // max(config.sleep_limit, 1))
        host.times.append(now_ms)
        host.waiting += 1
        try:
            if len(host.times) > config.sleep_limit:
                await self._clock.sleep(config.sleep_delay / 1000)
            while host.active >= config.concurrent:
                turn: defer.Deferred[None] = defer.Deferred()
                host.queue.append(turn)
                await turn
        finally:
            host.waiting -= 1
        host.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            host.active -= 1
            while host.queue:
                turn = host.queue.popleft()
                if not turn.called:
                    turn.callback(None)
                    break

        return release

    def _prune(self) -> None:
        now = self._clock.time()
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        horizon = int(now * 1000) - self._config.window_size
        for origin, host in list(self._hosts.items()):
            if not host.active and not host.waiting and (not host.times or host.times[-1] < horizon):
                del self._hosts[origin]
