"""Matrix localparts for people of the legacy side (e-mail addresses, JIDs, user names)."""

from __future__ import annotations

import hashlib

_ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789._-/")


def escape_localpart(text: str) -> str:
    """Lower-case letters, digits and ``._-/`` stay; anything else becomes ``=xx`` (UTF-8 hex),
    so distinct inputs give distinct, reversible localparts (``Jean@x.fr`` -> ``=4aean=40x.fr``)."""
    out = []
    for char in text:
        if char in _ALLOWED:
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode())
    return "".join(out)


def unescape_localpart(localpart: str) -> str:
    data = bytearray()
    i = 0
    while i < len(localpart):
        if localpart[i] == "=" and i + 3 <= len(localpart):
            data.append(int(localpart[i + 1 : i + 3], 16))
            i += 3
        else:
            data.extend(localpart[i].encode())
            i += 1
    return data.decode()


def short_digest(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]
