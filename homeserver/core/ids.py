"""Matrix identifiers: grammar checks and typed values.

See the spec appendix "Identifier Grammar".  Parsing never raises anything but
:class:`InvalidID` (a ``ValueError``), so callers can turn it into the right Matrix error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_ID_LENGTH = 255

# Server names: hostname | IPv4 literal | "[" IPv6 literal "]", optionally ":" port.
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9\-.]{1,255}$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")

# User ID localparts allowed for new registrations (the spec's current grammar).
_USER_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
# Historical user IDs: any printable ASCII except ":" (accepted over the wire, never created).
_HISTORICAL_LOCALPART_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
# Opaque IDs (room, event, alias localparts): anything but the empty string; we keep it printable.
_OPAQUE_RE = re.compile(r"^[\x21-\x7e]+$")


class InvalidID(ValueError):
    """An identifier that does not follow the grammar."""


def split_host_port(server_name: str) -> tuple[str, int | None]:
    """Split a server name into host and optional port, validating both.

    Raises :class:`InvalidID` when the name is not a valid server name.
    """
    if not server_name or len(server_name) > MAX_ID_LENGTH:
        raise InvalidID(f"invalid server name {server_name!r}")
    if server_name.startswith("["):
        end = server_name.find("]")
        if end < 0:
            raise InvalidID(f"unterminated IPv6 literal in {server_name!r}")
        host = server_name[: end + 1]
        rest = server_name[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as e:
            raise InvalidID(f"invalid IPv6 literal in {server_name!r}") from e
    else:
        host, sep, port_part = server_name.partition(":")
        rest = sep + port_part
        if not _HOSTNAME_RE.match(host):
            raise InvalidID(f"invalid host in server name {server_name!r}")
    port: int | None = None
    if rest:
        if not rest.startswith(":") or not _PORT_RE.match(rest[1:]):
            raise InvalidID(f"invalid port in server name {server_name!r}")
        port = int(rest[1:])
        if not 0 < port < 65536:
            raise InvalidID(f"port out of range in server name {server_name!r}")
    return host, port


def is_valid_server_name(server_name: str) -> bool:
    try:
        split_host_port(server_name)
    except InvalidID:
        return False
    return True


def is_valid_user_localpart(localpart: str) -> bool:
    """True if ``localpart`` may be used for a *new* user on this server."""
    return bool(_USER_LOCALPART_RE.match(localpart))


def _split(sigil: str, value: str, kind: str, *, domain_required: bool = True) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value.startswith(sigil):
        raise InvalidID(f"{kind} must start with {sigil!r}: {value!r}")
    if len(value.encode("utf-8")) > MAX_ID_LENGTH:
        raise InvalidID(f"{kind} is longer than {MAX_ID_LENGTH} bytes")
    body = value[1:]
    localpart, sep, domain = body.partition(":")
    if not sep:
        if domain_required:
            raise InvalidID(f"{kind} has no server name: {value!r}")
        return localpart, None
    split_host_port(domain)
    return localpart, domain


@dataclass(frozen=True, slots=True)
class UserID:
    localpart: str
    domain: str

    @classmethod
    def parse(cls, value: str) -> UserID:
        localpart, domain = _split("@", value, "user ID")
        assert domain is not None
        if not localpart or not _HISTORICAL_LOCALPART_RE.match(localpart):
            raise InvalidID(f"invalid user ID localpart in {value!r}")
        return cls(localpart, domain)

    def to_string(self) -> str:
        return f"@{self.localpart}:{self.domain}"

    __str__ = to_string


@dataclass(frozen=True, slots=True)
class RoomAlias:
    localpart: str
    domain: str

    @classmethod
    def parse(cls, value: str) -> RoomAlias:
        localpart, domain = _split("#", value, "room alias")
        assert domain is not None
        if not localpart or not _OPAQUE_RE.match(localpart):
            raise InvalidID(f"invalid room alias {value!r}")
        return cls(localpart, domain)

    def to_string(self) -> str:
        return f"#{self.localpart}:{self.domain}"

    __str__ = to_string


@dataclass(frozen=True, slots=True)
class RoomID:
    """A room ID; ``domain`` is None for room version 12's server-less IDs."""

    opaque: str
    domain: str | None

    @classmethod
    def parse(cls, value: str) -> RoomID:
        opaque, domain = _split("!", value, "room ID", domain_required=False)
        if not opaque or not _OPAQUE_RE.match(opaque):
            raise InvalidID(f"invalid room ID {value!r}")
        return cls(opaque, domain)

    def to_string(self) -> str:
        return f"!{self.opaque}" if self.domain is None else f"!{self.opaque}:{self.domain}"

    __str__ = to_string


def is_valid_event_id(value: str) -> bool:
    if not isinstance(value, str) or not value.startswith("$") or len(value) < 2:
        return False
    return len(value.encode("utf-8")) <= MAX_ID_LENGTH and bool(_OPAQUE_RE.match(value[1:]))
