"""rc_federation (FederationRateLimiter), on a fake clock: requests past sleep_limit in the
window wait sleep_delay, at most `concurrent` run at once per origin, and a request that
finds more than reject_limit waiting is refused with 429; other origins are unaffected."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task

from homeserver.config.ratelimiting import FederationRateLimitConfig
from homeserver.core.clock import Clock
from homeserver.core.errors import MatrixError
from homeserver.federation.ratelimit import FederationRateLimiter


def start(limiter: FederationRateLimiter, origin: str) -> defer.Deferred[Any]:
    return defer.ensureDeferred(limiter.enter(origin))


def test_sleep_concurrency_and_reject() -> None:
    reactor = task.Clock()
    reactor.advance(1_000_000)
    config = FederationRateLimitConfig(window_size=1000, sleep_limit=2, sleep_delay=500, reject_limit=3, concurrent=2)
    limiter = FederationRateLimiter(Clock(reactor), config)

    first, second = start(limiter, "a.gouv.fr"), start(limiter, "a.gouv.fr")
    assert first.called and second.called  # within sleep_limit and concurrency
    third = start(limiter, "a.gouv.fr")  # past sleep_limit: sleeps, then waits for a slot
    assert not third.called
    other = start(limiter, "b.gouv.fr")
    assert other.called  # another origin has its own budget
    reactor.advance(0.5)
    assert not third.called  # slept; both slots are still taken
    first.result()  # release the first slot
    assert third.called

    # Three waiting: one more may queue (3 is not more than reject_limit), a fifth is refused.
    waiting = [start(limiter, "a.gouv.fr") for _ in range(4)]
    assert not any(d.called for d in waiting)
    errors: list[Exception] = []
    start(limiter, "a.gouv.fr").addErrback(lambda f: errors.append(f.value))
    (error,) = errors
    assert isinstance(error, MatrixError) and error.code == 429
    assert error.to_json()["errcode"] == "M_LIMIT_EXCEEDED"

    # Releasing is idempotent and wakes one waiter per slot.
    release_second = second.result
    release_second()
    release_second()
    reactor.advance(0.5)
    assert sum(d.called for d in waiting) == 1


def test_window_slides_and_idle_hosts_are_forgotten() -> None:
    reactor = task.Clock()
    reactor.advance(1_000_000)
    config = FederationRateLimitConfig(window_size=1000, sleep_limit=1, sleep_delay=500, reject_limit=10, concurrent=5)
    limiter = FederationRateLimiter(Clock(reactor), config)
    start(limiter, "a.gouv.fr").result()
    reactor.advance(1.5)  # the first request left the window: no sleep for the next one
    d = start(limiter, "a.gouv.fr")
    assert d.called
    d.result()
    reactor.advance(120)
    start(limiter, "b.gouv.fr").result()
    assert "a.gouv.fr" not in limiter._hosts


@pytest.mark.parametrize("bad", [{"concurrent": 0}, {"window_size": "x"}])
def test_bad_rc_federation_config_is_refused(bad: dict[str, Any], tmp_path: Any) -> None:
    from tests.unit.config.test_config_parse import parse

    with pytest.raises(Exception) as err:
        parse(tmp_path, rc_federation=bad)
    assert "rc_federation" in str(err.value)
