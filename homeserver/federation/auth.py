"""Authenticating inbound federation requests (X-Matrix), for the federation servlets.

``origin = await authenticator.authenticate(request)`` in a servlet, as
``RequestAuthenticator`` is for clients.  In order:

1. the ``Authorization: X-Matrix ...`` headers are parsed (401 ``M_UNAUTHORIZED`` when
   absent or malformed);
2. the origin must be allowed by the allowlist: otherwise 403 ``M_FORBIDDEN``
   "Federation denied with <origin>." and nothing else happens (no key is fetched);
3. a ``destination`` that is not our server name is refused (401);
4. the signature over {method, uri, origin, destination, content} is checked with the
   origin's key, valid now, from the Keyring (401 when no key or a bad signature).

See :mod:`homeserver.federation.xmatrix` for why replays are not a concern.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from twisted.web import server

from homeserver.core.clock import Clock
from homeserver.core.errors import Codes, MatrixError
from homeserver.events.signing import SignatureError
from homeserver.federation.keyring import KeyLookupError
from homeserver.federation.ratelimit import FederationRateLimiter
from homeserver.federation.xmatrix import (
    XMatrixCredentials,
    XMatrixError,
    is_x_matrix,
    parse_x_matrix,
    request_to_verify,
)
from homeserver.http.params import parse_json_value, read_body_bytes
from homeserver.http.server import on_handler_done

logger = logging.getLogger(__name__)


class SignatureVerifier(Protocol):
    async def verify_json_for_server(
        self, server_name: str, json_object: Mapping[str, Any], minimum_valid_until_ts: int
    ) -> None: ...


def unauthorized(message: str) -> MatrixError:
    return MatrixError(401, Codes.UNAUTHORIZED, message)


def federation_denied(origin: str) -> MatrixError:
    return MatrixError(403, Codes.FORBIDDEN, f"Federation denied with {origin}.")


def parse_authorization(headers: Sequence[bytes]) -> list[XMatrixCredentials]:
    """The X-Matrix credentials among ``Authorization`` header values (others are ignored)."""
    credentials = []
    for value in headers:
        if not is_x_matrix(value):
            continue
        try:
            credentials.append(parse_x_matrix(value))
        except XMatrixError as e:
            raise unauthorized(f"Invalid X-Matrix Authorization header: {e}") from None
    if not credentials:
        raise unauthorized("Missing X-Matrix Authorization header")
    return credentials


class FederationAuthenticator:
    def __init__(
        self,
        *,
        server_name: str,
        clock: Clock,
        keyring: SignatureVerifier,
        is_allowed: Callable[[str], bool],
        ratelimiter: FederationRateLimiter | None = None,
    ) -> None:
        self._server_name = server_name
        # rc_federation: per origin, held until the servlet that authenticated is done
        self._ratelimiter = ratelimiter
        self._clock = clock
        self._keyring = keyring
        self._is_allowed = is_allowed

    async def authenticate(self, request: server.Request) -> str:
        """The verified origin server name of ``request``, or a :class:`MatrixError`."""
        content = None
        if request.method in (b"PUT", b"POST"):
            raw = read_body_bytes(request)
            if request.content is not None:
                request.content.seek(0)  # the servlet reads the body again
            if raw.strip():
                content = parse_json_value(raw)
        try:
            method = request.method.decode("ascii")
            uri = request.uri.decode("ascii")
        except UnicodeDecodeError:
            raise unauthorized("Request target is not ASCII") from None
        origin = await self.authenticate_parts(
            method=method,
            uri=uri,
            authorization=request.requestHeaders.getRawHeaders(b"Authorization") or [],
            content=content,
        )
        if self._ratelimiter is not None:
            on_handler_done(request, await self._ratelimiter.enter(origin))
        return origin

    async def authenticate_parts(
        self, *, method: str, uri: str, authorization: Collection[bytes], content: Any | None
    ) -> str:
        """:meth:`authenticate` over an already-read request (for tests and non-HTTP callers)."""
        credentials = parse_authorization(list(authorization))
        origins = {c.origin for c in credentials}
        if len(origins) > 1:
            raise unauthorized("X-Matrix headers name more than one origin")
        (origin,) = origins
        if not self._is_allowed(origin):
            logger.info("refusing a %s request from %s: not on the federation allowlist", method, origin)
            raise federation_denied(origin)
        try:
            origin, signed = request_to_verify(
                credentials, method=method, uri=uri, destination=self._server_name, content=content
            )
        except XMatrixError as e:
            raise unauthorized(str(e)) from None
        try:
            await self._keyring.verify_json_for_server(origin, signed, self._clock.time_msec())
        except KeyLookupError as e:
            raise unauthorized(f"Cannot verify the request signature: {e}") from None
        except SignatureError as e:
            raise unauthorized(f"Invalid request signature: {e}") from None
        return origin
