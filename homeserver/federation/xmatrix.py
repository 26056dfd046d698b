"""The X-Matrix ``Authorization`` scheme (spec: server-server API, "Request Authentication").

Pure functions, no I/O: :func:`sign_request` builds the header for an outbound request;
:func:`parse_x_matrix` reads one inbound header and :func:`request_to_verify` rebuilds
the signed JSON that the origin's key must have signed.  The network-facing part
(checking the allowlist, fetching keys) is :class:`homeserver.federation.auth.FederationAuthenticator`.

The signed object is ``{"method", "uri", "origin", "destination", "content"?}`` with
``uri`` the request target as sent (path and query, no scheme or host) and the server
names *before* delegation.

Replay protection: X-Matrix has no nonce or timestamp, so a captured header is valid for
the same method, URI and body for as long as the key is.  It is not captured, because
federation only travels over TLS, end to end between the two servers (or the proxies
they operate).  And a replay changes nothing, because every state-changing federation
request is idempotent by an ID chosen by the origin: ``PUT /send/{txnId}`` is
deduplicated per origin by transaction ID, PDUs by event ID, and invites, joins, leaves
and knocks are keyed by event ID too.  Servlets that change state must keep that
property (deduplicate on the request's IDs) rather than count on the header being fresh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from homeserver.core.ids import is_valid_server_name
from homeserver.events.signing import SigningKey, key_id, sign_json

SCHEME = "X-Matrix"

# An RFC 9110 "token": the grammar of parameter names.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9]+:[A-Za-z0-9_]+$")


class XMatrixError(ValueError):
    """An Authorization header that is not a well-formed X-Matrix credential."""


@dataclass(frozen=True, slots=True)
class XMatrixCredentials:
    """One parsed X-Matrix header."""

    origin: str
    key_id: str
    signature: str
    destination: str | None = None


def request_json(*, method: str, uri: str, origin: str, destination: str, content: Any | None = None) -> dict[str, Any]:
    """The object an X-Matrix signature covers (``content`` only when there is a body)."""
    obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def _quote(value: str) -> str:
    # Senders should avoid backslashes; we still escape so the header always parses.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_x_matrix(credentials: XMatrixCredentials) -> str:
    """The header value, written the way the spec asks senders to for old servers:
    one space after the scheme, lower-case names, quoted values, no spaces around commas."""
    params = [("origin", credentials.origin)]
    if credentials.destination is not None:
        params.append(("destination", credentials.destination))
    params += [("key", credentials.key_id), ("sig", credentials.signature)]
    return SCHEME + " " + ",".join(f"{name}={_quote(value)}" for name, value in params)


def sign_request(
    signing_key: SigningKey,
    *,
    origin: str,
    destination: str,
    method: str,
    uri: str,
    content: Any | None = None,
) -> str:
    """The ``Authorization`` header value for an outbound request signed by ``signing_key``.

    ``uri`` is the request target exactly as it will be sent (percent-encoded path and
    query); ``content`` the JSON body, or ``None`` for a request without one.
    """
    signed = sign_json(
        request_json(method=method, uri=uri, origin=origin, destination=destination, content=content),
        origin,
        signing_key,
    )
    kid = key_id(signing_key)
    return format_x_matrix(XMatrixCredentials(origin, kid, signed["signatures"][origin][kid], destination))


def _parse_params(text: str) -> dict[str, str]:
    """``name=value`` pairs separated by commas (RFC 9110 auth-params), names lower-cased."""
    params: dict[str, str] = {}
    pos, length = 0, len(text)
    while True:
        while pos < length and text[pos] in " \t":
            pos += 1
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise XMatrixError(f"expected a parameter name at position {pos}")
        name = match.group(0).lower()
        pos = match.end()
        while pos < length and text[pos] in " \t":
            pos += 1
        if pos >= length or text[pos] != "=":
            raise XMatrixError(f"expected '=' after parameter {name!r}")
        pos += 1
        while pos < length and text[pos] in " \t":
            pos += 1
        if pos < length and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= length:
                    raise XMatrixError(f"unterminated quoted value for {name!r}")
                char = text[pos]
                if char == "\\":
                    if pos + 1 >= length:
                        raise XMatrixError(f"unterminated quoted value for {name!r}")
                    chars.append(text[pos + 1])
                    pos += 2
                elif char == '"':
                    pos += 1
                    break
                else:
                    chars.append(char)
                    pos += 1
            value = "".join(chars)
        else:
            # A token; for old servers we also accept ':' (and anything else but the
            # separators) unquoted, as in origin=example.com:8448.
            start = pos
            while pos < length and text[pos] not in ', \t"':
                pos += 1
            value = text[start:pos]
            if not value:
                raise XMatrixError(f"empty value for {name!r}")
        if name in params:
            raise XMatrixError(f"parameter {name!r} given twice")
        params[name] = value
        while pos < length and text[pos] in " \t":
            pos += 1
        if pos >= length:
            return params
        if text[pos] != ",":
            raise XMatrixError(f"expected ',' at position {pos}")
        pos += 1


def parse_x_matrix(header: str | bytes) -> XMatrixCredentials:
    """Parse one ``Authorization`` header value of the X-Matrix scheme.

    Accepts what RFC 9110 allows (any case of names and scheme, quoted or token values,
    backslash escapes, spaces and tabs around commas) plus unquoted values containing
    ``:``.  Unknown parameters are ignored.  Raises :class:`XMatrixError`.
    """
    if isinstance(header, bytes):
        try:
            header = header.decode("utf-8")
        except UnicodeDecodeError:
            raise XMatrixError("header is not UTF-8") from None
    scheme, sep, rest = header.partition(" ")
    if scheme.lower() != SCHEME.lower() or not sep:
        raise XMatrixError("not an X-Matrix header")
    params = _parse_params(rest)
    for required in ("origin", "key", "sig"):
        if not params.get(required):
            raise XMatrixError(f"missing {required!r} parameter")
    origin, kid, destination = params["origin"], params["key"], params.get("destination")
    if not is_valid_server_name(origin):
        raise XMatrixError(f"origin {origin!r} is not a valid server name")
    if destination is not None and not is_valid_server_name(destination):
        raise XMatrixError(f"destination {destination!r} is not a valid server name")
    if not _KEY_ID_RE.match(kid):
        raise XMatrixError(f"key {kid!r} is not a key ID such as ed25519:abc")
    return XMatrixCredentials(origin=origin, key_id=kid, signature=params["sig"], destination=destination)


def is_x_matrix(header: str | bytes) -> bool:
    """True when an Authorization header value uses the X-Matrix scheme (any case)."""
    prefix = header[: len(SCHEME) + 1]
    text = prefix.decode("latin-1") if isinstance(prefix, bytes) else prefix
    return text.lower() == SCHEME.lower() + " "


def request_to_verify(
    credentials: list[XMatrixCredentials],
    *,
    method: str,
    uri: str,
    destination: str,
    content: Any | None,
) -> tuple[str, dict[str, Any]]:
    """The origin and the signed request JSON rebuilt from one or more X-Matrix headers.

    All headers must name the same origin, and any destination they name must be
    ``destination`` (our server name); raises :class:`XMatrixError` otherwise.  The
    returned object carries every header's signature, ready for signature checking.
    """
    if not credentials:
        raise XMatrixError("no X-Matrix credentials")
    origins = {c.origin for c in credentials}
    if len(origins) > 1:
        raise XMatrixError(f"X-Matrix headers name several origins: {', '.join(sorted(origins))}")
    (origin,) = origins
    for cred in credentials:
        if cred.destination is not None and cred.destination != destination:
            raise XMatrixError(f"request is for {cred.destination!r}, not this server")
    signatures: dict[str, str] = {}
    for cred in credentials:
        signatures[cred.key_id] = cred.signature
    signed = request_json(method=method, uri=uri, origin=origin, destination=destination, content=content)
    signed["signatures"] = {origin: signatures}
    return origin, signed
