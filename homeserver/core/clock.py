"""Time, injected.  No module outside app.py/cli.py touches the global reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Clock:
    """Wall-clock time and timers over an ``IReactorTime``.

    Tests pass ``twisted.internet.task.Clock`` and advance it by hand.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def time(self) -> float:
        """Seconds since the epoch."""
        return float(self._reactor.seconds())

    def time_msec(self) -> int:
        """Milliseconds since the epoch, as Matrix timestamps are."""
        return int(self._reactor.seconds() * 1000)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        return self._reactor.callLater(delay, fn, *args)

    async def sleep(self, seconds: float) -> None:
        d: defer.Deferred[None] = defer.Deferred()
        self._reactor.callLater(seconds, d.callback, None)
        await d
