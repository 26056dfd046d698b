"""The HTTP glue: routing, JSON responses, Matrix errors, CORS and body limits.

Servlets are ``async def handler(request, **path_params) -> (status, json_body)``
registered on a :class:`Router` for a method and a path regex.  Everything a handler raises
that is not a :class:`MatrixError` is logged and reported as a 500 ``M_UNKNOWN``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource, server

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.response_json import LargeJSON, encode_json

logger = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[tuple[int, Any]]]

CLIENT_PREFIX = "/_matrix/client"
_CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, POST, PUT, DELETE, OPTIONS",
    b"Access-Control-Allow-Headers": b"X-Requested-With, Content-Type, Authorization, Date",
    b"Access-Control-Expose-Headers": b"Synapse-Trace-Id, Server",
}
# Past this many times the limit we stop reading and drop the connection.
_ABORT_FACTOR = 4


def client_path(path: str, versions: tuple[str, ...] = ("r0", "v3")) -> str:
    """A client API path regex for the given version prefixes (and unstable)."""
    alternatives = "|".join(re.escape(v) for v in versions + ("unstable",))
    return f"^{CLIENT_PREFIX}/(?:{alternatives}){path}$"


@dataclass
class _Route:
    pattern: re.Pattern[str]
    handlers: dict[bytes, Handler]


class Router:
    """Maps (method, path) to handlers; knows the difference between 404 and 405."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        self._by_pattern: dict[str, _Route] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        route = self._by_pattern.get(pattern)
        if route is None:
            route = _Route(re.compile(pattern), {})
            self._by_pattern[pattern] = route
            self._routes.append(route)
        key = method.upper().encode("ascii")
        if key in route.handlers:
            raise ValueError(f"duplicate route {method} {pattern}")
        route.handlers[key] = handler
        if key == b"GET":
            route.handlers.setdefault(b"HEAD", handler)

    def match(self, path: str) -> tuple[dict[bytes, Handler], dict[str, str]] | None:
        for route in self._routes:
            m = route.pattern.match(path)
            if m:
                params = {k: urllib.parse.unquote(v, errors="strict") for k, v in m.groupdict().items()}
                return route.handlers, params
        return None


class MatrixRequest(server.Request):
    """A request that refuses over-large bodies instead of buffering them."""

    too_large = False
    _received = 0
    _limit = 0

    def gotLength(self, length: int | None) -> None:
        site = getattr(self.channel, "site", None)
        path = getattr(self.channel, "_path", b"") or b""
        self._limit = site.max_body_size_for(path) if isinstance(site, HomeserverSite) else 10 * 2**20
        if length is not None and length > self._limit:
            self.too_large = True
            if length > self._limit * _ABORT_FACTOR:
                self._reject_now()
        super().gotLength(length if not self.too_large else 0)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit:
            self.too_large = True
            if self._received > self._limit * _ABORT_FACTOR:
                self._reject_now()
            return
        if not self.too_large:
            super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _reject_now(self) -> None:
        # The client is streaming far more than allowed: answer and close the connection
        # rather than read it all.
        transport = self.channel.transport if self.channel else None
        if transport is None:
            return
        body = json.dumps(
            {"errcode": Codes.TOO_LARGE, "error": f"Request body is larger than {self._limit} bytes"}
        ).encode()
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()


class HomeserverSite(server.Site):
    """A Site that counts in-flight requests so shutdown can wait for them."""

    requestFactory = MatrixRequest

    def __init__(
        self, root: resource.Resource, *, max_request_size: int, max_upload_size: int, x_forwarded: bool = False
    ) -> None:
        super().__init__(root)  # type: ignore[no-untyped-call]
        self.x_forwarded = x_forwarded
        self.max_request_size = max_request_size
        self.max_upload_size = max_upload_size
        self.in_flight = 0
        self._idle_waiters: list[defer.Deferred[None]] = []
        self.noisy = False

    def max_body_size_for(self, path: bytes) -> int:
        if path.startswith(b"/_matrix/media/"):
            return self.max_upload_size
        return self.max_request_size

    def request_started(self) -> None:
        self.in_flight += 1

    def request_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def wait_idle(self) -> defer.Deferred[None]:
        if self.in_flight == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d


# Pieces of a LargeJSON are handed to the transport in writes of about this size.
_WRITE_SIZE = 65536


def send_json(request: server.Request, code: int, body: Any) -> None:
    if request.finished or request._disconnected:
        return
    pieces = body.encode() if isinstance(body, LargeJSON) else [encode_json(body)]
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
    request.setHeader(b"Content-Length", str(sum(len(p) for p in pieces)).encode())
    if request.method != b"HEAD":
        batch: list[bytes] = []
        size = 0
        for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= _WRITE_SIZE:
                request.write(b"".join(batch) if len(batch) > 1 else batch[0])
                batch, size = [], 0
        if batch:
            request.write(b"".join(batch) if len(batch) > 1 else batch[0])
    request.finish()


def send_error(request: server.Request, err: MatrixError) -> None:
    send_json(request, err.code, err.to_json())


_ON_HANDLER_DONE = "_homeserver_on_handler_done"


def on_handler_done(request: server.Request, fn: Callable[[], None]) -> None:
    """Call ``fn`` when the handler serving ``request`` returns or raises (a slot taken for
    the request's processing is given back then, whatever happens to the connection)."""
    callbacks = getattr(request, _ON_HANDLER_DONE, None)
    if callbacks is None:
        callbacks = []
        setattr(request, _ON_HANDLER_DONE, callbacks)
    callbacks.append(fn)


class RootResource(resource.Resource):
    """The single leaf resource serving every path through the router."""

    isLeaf = True

    def __init__(self, router: Router) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._router = router

    def render(self, request: server.Request) -> int:
        for name, value in _CORS_HEADERS.items():
            request.setHeader(name, value)
        site = getattr(request.channel, "site", None)
        if isinstance(site, HomeserverSite):
            site.request_started()
            request.notifyFinish().addBoth(lambda _: site.request_done())
        d = defer.ensureDeferred(self._dispatch(request))
        # A client that goes away cancels the work done for it (long polls above all).
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._unhandled, request)
        return server.NOT_DONE_YET

    async def _dispatch(self, request: server.Request) -> None:
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return
        if isinstance(request, MatrixRequest) and request.too_large:
            send_error(request, MatrixError(413, Codes.TOO_LARGE, "Request body is too large"))
            return
        try:
            path = request.path.decode("ascii")
            found = self._router.match(path)
        except (UnicodeDecodeError, ValueError):
            send_error(request, MatrixError(400, Codes.UNRECOGNIZED, "Invalid path encoding"))
            return
        if found is None:
            send_error(request, MatrixError(404, Codes.UNRECOGNIZED, "Unrecognized request"))
            return
        handlers, params = found
        handler = handlers.get(request.method)
        if handler is None:
            request.setHeader(b"Allow", b", ".join(sorted(handlers)))
            send_error(request, MatrixError(405, Codes.UNRECOGNIZED, "Method not allowed for this endpoint"))
            return
        try:
            code, body = await handler(request, **params)
        except MatrixError as e:
            if e.code >= 500:
                logger.warning("%s %s -> %s", request.method.decode(), path, e)
            send_error(request, e)
            return
        finally:
            for fn in getattr(request, _ON_HANDLER_DONE, ()):
                fn()
        if code == 0:
            return  # the handler wrote the response itself (media downloads)
        send_json(request, code, body)

    @staticmethod
    def _unhandled(failure: Failure, request: server.Request) -> None:
        if failure.check(defer.CancelledError):
            return
        logger.error(
            "unhandled error serving %s %r: %s",
            request.method.decode("ascii", "replace"),
            request.uri,
            failure.getTraceback(),
        )
        send_error(request, MatrixError(500, Codes.UNKNOWN, "Internal server error"))


def query_param(request: server.Request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii")) if request.args else None
    if not values:
        return None
    try:
        return str(values[0].decode("utf-8"))
    except UnicodeDecodeError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} is not valid UTF-8") from None


