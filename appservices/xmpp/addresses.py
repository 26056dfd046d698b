"""Matrix user IDs <-> JIDs of the component, and presence states both ways (pure)."""

from __future__ import annotations

# Characters a JID localpart cannot hold (RFC 7622 and XEP-0106) get "=xx"; "=" itself too.
_FORBIDDEN = set(" \"&'/:<>@=%")


def matrix_user_jid(mxid: str, component: str) -> str:
    """``@anne:hs.example`` -> ``anne%hs.example@component`` (``%`` replaces the colon)."""
    localpart, _, server = mxid[1:].partition(":")
    return f"{_escape(localpart)}%{_escape(server)}@{component}"


def mxid_of_jid(local: str) -> str | None:
    """The inverse, from a component JID's localpart; None if it is not one of ours."""
    localpart, sep, server = local.partition("%")
    if not sep or not localpart or not server:
        return None
    return f"@{_unescape(localpart)}:{_unescape(server)}"


def _escape(text: str) -> str:
    return "".join(f"={ord(c):02x}" if c in _FORBIDDEN else c for c in text)


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "=" and i + 3 <= len(text):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def matrix_presence(xmpp_type: str, show: str) -> str:
    """XMPP presence (type, show) -> Matrix presence."""
    if xmpp_type == "unavailable":
        return "offline"
    return "unavailable" if show in ("away", "xa", "dnd") else "online"


def xmpp_presence(matrix: str) -> tuple[str | None, str | None]:
    """Matrix presence -> (XMPP presence type, show): None type is "available"."""
    if matrix == "offline":
        return "unavailable", None
    if matrix == "unavailable":
        return None, "away"
    return None, None
