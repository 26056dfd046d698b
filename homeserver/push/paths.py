"""Dot-separated property paths (spec appendix "Dot-separated property paths").

A path such as ``content.m\\.relates_to.rel_type`` names the ``rel_type`` property of the
``m.relates_to`` object in ``content``.  A literal dot or backslash inside a property name
is escaped with a backslash; any other backslash sequence (``\\x``) is kept as it is, a
backslash followed by the character.

Used by the push-rule conditions and by the ``event_fields`` of filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_MISSING: Any = object()


@lru_cache(maxsize=1024)
def split_dotted_path(path: str) -> tuple[str, ...]:
    """Split a dot-separated path into its property names, undoing the escapes.

    >>> split_dotted_path("content.m\\\\.mentions.user_ids")
    ('content', 'm.mentions', 'user_ids')
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "\\" and i + 1 < len(path) and path[i + 1] in ".\\":
            current.append(path[i + 1])
            i += 2
            continue
        if char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


def escape_property_name(name: str) -> str:
    """Escape one property name for use as a segment of a dot-separated path."""
    return name.replace("\\", "\\\\").replace(".", "\\.")


def lookup_path(obj: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    """Follow ``path`` into nested JSON objects: ``(True, value)`` or ``(False, None)``.

    Only objects are traversed: a path through a list or a scalar is "absent".
    """
    value: Any = obj
    for name in path:
        if not isinstance(value, Mapping):
            return False, None
        value = value.get(name, _MISSING)
        if value is _MISSING:
            return False, None
    return True, value
