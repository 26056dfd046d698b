"""Synapse's ``federation:`` section: how long to wait before retrying a destination that
did not answer.

``destination_min_retry_interval`` is the wait after the first failure in a row, multiplied
by ``destination_retry_multiplier`` after each further failure up to
``destination_max_retry_interval`` (each wait is also jittered by 0.8-1.4x).  Our defaults
are shorter than Synapse's (10m, 2, 7d): in a closed federation of a few known servers a
peer that restarts should get its messages within seconds, not after ten minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.config.reader import Reader

# Keys Synapse reads in this section that we do not (request timeouts and retries).
_UNSUPPORTED = (
    "client_timeout",
    "max_short_retry_delay",
    "max_long_retry_delay",
    "max_short_retries",
    "max_long_retries",
)


@dataclass(frozen=True, slots=True)
class FederationSection:
    """The ``federation:`` section (durations in milliseconds)."""

    destination_min_retry_interval: int = 5_000
    destination_retry_multiplier: float = 2.0
    destination_max_retry_interval: int = 24 * 3600 * 1000


def read_federation_section(r: Reader) -> FederationSection:
    """Read ``federation:`` from the top-level reader."""
    section = r.section("federation")
    defaults = FederationSection()
    minimum = section.duration("destination_min_retry_interval", defaults.destination_min_retry_interval)
    multiplier = section.number("destination_retry_multiplier", defaults.destination_retry_multiplier, min=1)
    maximum = section.duration("destination_max_retry_interval", defaults.destination_max_retry_interval)
    if minimum <= 0:
        section.error("destination_min_retry_interval", "must be longer than 0")
        minimum = defaults.destination_min_retry_interval
    if maximum < minimum:
        section.error("destination_max_retry_interval", "must not be shorter than destination_min_retry_interval")
        maximum = minimum
    section.finish(unsupported=_UNSUPPORTED)
    return FederationSection(minimum, multiplier, maximum)
