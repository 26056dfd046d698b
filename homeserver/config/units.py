"""Durations and byte sizes written the way Synapse's configuration writes them.

A duration is an integer number of milliseconds or a string of digits with an optional
unit suffix: ``s`` (second), ``m`` (minute), ``h`` (hour), ``d`` (day), ``w`` (week) or
``y`` (365 days); ``"1500"`` without a suffix means 1500 ms.

A size is an integer number of bytes or a string of digits with an optional suffix
``K``, ``M``, ``G`` or ``T`` (powers of 1024); ``"512"`` means 512 bytes.  We also accept
the lower-case suffixes, which Synapse rejects.

Both parsers raise :class:`ValueError` saying what was expected; callers add the key path.
"""

from __future__ import annotations

import re
from typing import Any

_SECOND = 1000
DURATION_UNITS_MS: dict[str, int] = {
    "s": _SECOND,
    "m": 60 * _SECOND,
    "h": 3600 * _SECOND,
    "d": 86400 * _SECOND,
    "w": 7 * 86400 * _SECOND,
    "y": 365 * 86400 * _SECOND,
}

SIZE_UNITS: dict[str, int] = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

_DURATION_RE = re.compile(r"^([0-9]+)([smhdwy]?)$")
_SIZE_RE = re.compile(r"^([0-9]+)([KMGTkmgt]?)$")

DURATION_EXPECTED = 'a duration such as "30s", "5m", "12h", "1d", "2w", "1y" or a number of milliseconds'
SIZE_EXPECTED = 'a size such as "512K", "10M", "1G" or a number of bytes'


def parse_duration(value: Any) -> int:
    """Return ``value`` (an int in milliseconds or a suffixed string) in milliseconds."""
    if type(value) is int and value >= 0:  # type(): bool is an int subclass
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match:
            number, unit = match.groups()
            return int(number) * (DURATION_UNITS_MS[unit] if unit else 1)
    raise ValueError(f"expected {DURATION_EXPECTED}")


def parse_size(value: Any) -> int:
    """Return ``value`` (an int in bytes or a suffixed string) in bytes."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip())
        if match:
            number, unit = match.groups()
            return int(number) * (SIZE_UNITS[unit.upper()] if unit else 1)
    raise ValueError(f"expected {SIZE_EXPECTED}")
