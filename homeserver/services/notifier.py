"""Waking waiting /sync requests when something they care about happens.

Each stream reports new positions with the users concerned; a /sync that finds nothing new
waits on its user's condition until then or until its timeout.  One in-memory object per
process; the per-user record holds only the latest token each user was woken at.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from twisted.internet import defer

from homeserver.core.clock import Clock
from homeserver.services.streams import StreamToken


class Notifier:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.current = StreamToken()
        self._user_latest: dict[str, StreamToken] = {}
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        # Called on every notification, e.g. to forward to application services; must not block.
        self.listeners: list[Callable[[str, int, Collection[str]], None]] = []

    def set_position(self, stream: str, position: int) -> None:
        """Record a position reached without waking anyone (start-up)."""
        self.current = self.current.advance(stream, position)

    def notify(self, stream: str, position: int, users: Collection[str]) -> None:
        """``stream`` reached ``position``; wake these users' /sync requests."""
        self.current = self.current.advance(stream, position)
        for listener in self.listeners:
            listener(stream, position, users)
        advanced: dict[StreamToken, StreamToken] = {}  # users woken together share tokens
        for user_id in users:
            latest = self._user_latest.get(user_id, StreamToken())
            new = advanced.get(latest)
            if new is None:
                new = advanced[latest] = latest.advance(stream, position)
            self._user_latest[user_id] = new
            for waiter in self._waiters.pop(user_id, []):
                if not waiter.called:
                    waiter.callback(None)

    def has_news(self, user_id: str, since: StreamToken) -> bool:
        latest = self._user_latest.get(user_id)
        return latest is not None and latest.is_after(since)

    async def wait_for_news(self, user_id: str, since: StreamToken, timeout_ms: int) -> None:
        """Return when the user has news after ``since``, or after ``timeout_ms``."""
        if timeout_ms <= 0 or self.has_news(user_id, since):
            return
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.setdefault(user_id, []).append(waiter)
        def expire() -> None:
            if not waiter.called:
                waiter.callback(None)

        timer = self._clock.call_later(timeout_ms / 1000.0, expire)
        try:
            await waiter
        finally:
            if timer.active():
                timer.cancel()
            waiters = self._waiters.get(user_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[user_id]
