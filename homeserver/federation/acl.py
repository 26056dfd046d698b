"""Server access control lists (``m.room.server_acl``), as the spec's client-server API
"Server Access Control Lists" section defines them.

A pure function: :func:`server_matches_acl` decides whether a server may take part in a
room given the content of the room's current ``m.room.server_acl`` event.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["server_matches_acl", "strip_port"]


def strip_port(server_name: str) -> str:
    """``server_name`` without its port: ``example.org:8448`` -> ``example.org``,
    ``[::1]:8448`` -> ``[::1]``."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    host, sep, port = server_name.rpartition(":")
    return host if sep and port.isdigit() else server_name


def _is_ip_literal(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches any run of characters, ``?`` exactly one; the rest is literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _patterns(content: Mapping[str, Any], key: str) -> list[str]:
    value = content.get(key)
    if not isinstance(value, list):
        return []
    return [p for p in value if isinstance(p, str)]


def server_matches_acl(acl_content: Mapping[str, Any], server_name: str) -> bool:
    """True when the ACL lets ``server_name`` (a port is ignored) take part in the room.

    The spec's steps: an IP literal is refused when ``allow_ip_literals`` is false (it
    defaults to true); then a match in ``deny`` refuses; then a match in ``allow``
    permits; anything else is refused (so a missing ``allow`` refuses everyone).
    Entries that are not strings, and ``allow``/``deny`` values that are not lists,
    are ignored, as is an ``allow_ip_literals`` that is not a boolean.
    """
    host = strip_port(server_name)
    allow_ip_literals = acl_content.get("allow_ip_literals", True)
    if allow_ip_literals is False and _is_ip_literal(host):
        return False
    if any(_glob(p).fullmatch(host) for p in _patterns(acl_content, "deny")):
        return False
    return any(_glob(p).fullmatch(host) for p in _patterns(acl_content, "allow"))
