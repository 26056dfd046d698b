"""The outbound federation HTTP client: signed JSON requests over TLS.

``FederationClient.get_json / post_json / put_json(destination, path, ...)``:

* refuses a destination the allowlist does not accept, before any DNS or connection
  (:class:`FederationDeniedError`);
* signs the request with X-Matrix (origin, destination, method, URI, content);
* finds where to connect with :class:`~homeserver.federation.discovery.ServerDiscovery`
  (delegation per request, then routes per connection), resolves host names, refuses
  addresses in ``ip_range_blacklist`` (:class:`~homeserver.federation.tls.IPRangeFilter`)
  and checks TLS per :class:`~homeserver.federation.tls.TLSPolicy`;
* gives up after ``timeout`` seconds (connecting and reading included) and caps the
  response size.

Retries and backoff are the caller's business (the per-destination sender decides
what to retry and when); errors say whether the request may have been delivered:
:class:`RequestSendFailed` means it was not answered, :class:`HttpResponseError` that
the server answered with an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol
from urllib.parse import urlencode, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from homeserver import __version__
from homeserver.core.clock import Clock
from homeserver.core.ids import InvalidID, split_host_port
from homeserver.events.signing import SigningKey
from homeserver.federation.discovery import (
    DiscoveryError,
    HttpResponse,
    Route,
    ServerDiscovery,
    is_ip_literal,
)
from homeserver.federation.dns import HostResolver
from homeserver.federation.tls import IPRangeFilter, TLSPolicy
from homeserver.federation.xmatrix import sign_request

logger = logging.getLogger(__name__)

FEDERATION_SCHEME = b"matrix-federation"
DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
MAX_RESPONSE_SIZE = 100 * 2**20
USER_AGENT = f"homeserver/{__version__}".encode()

_T = TypeVar("_T")


class FederationError(Exception):
    """A federation request that did not succeed."""


class FederationDeniedError(FederationError):
    """The allowlist does not accept the destination; nothing was sent."""

    def __init__(self, destination: str) -> None:
        super().__init__(f"Federation denied with {destination}.")
        self.destination = destination


class RequestSendFailed(FederationError):
    """No answer: discovery, DNS, a refused address, connection, TLS or a timeout failed."""


class HttpResponseError(FederationError):
    """The destination answered with a non-2xx status."""

    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        self.errcode: str | None = None
        self.error: str | None = None
        if isinstance(parsed, dict):
            errcode, error = parsed.get("errcode"), parsed.get("error")
            self.errcode = errcode if isinstance(errcode, str) else None
            self.error = error if isinstance(error, str) else None
        super().__init__(f"HTTP {code}: {self.errcode or ''} {self.error or body[:200]!r}".strip())


class InvalidResponseError(FederationError):
    """A 2xx answer that is not the JSON we asked for, or too large."""


# -- the connection layer ------------------------------------------------------------------


class Connector:
    """Opens TLS connections to a route's addresses, skipping addresses the policy refuses."""

    def __init__(
        self,
        *,
        reactor: Any,
        host_resolver: HostResolver,
        ip_filter: IPRangeFilter,
        tls: TLSPolicy,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._resolver = host_resolver
        self._ip_filter = ip_filter
        self._tls = tls
        self._connect_timeout = connect_timeout

    async def addresses(self, route: Route) -> list[str]:
        """The addresses we may connect to for ``route``; raises if there are none."""
        if is_ip_literal(route.host):
            candidates = [route.host]
        else:
            try:
                candidates = await self._resolver.resolve(route.host, route.port)
            except Exception as e:
                raise RequestSendFailed(f"cannot resolve {route.host}: {e}") from e
            if not candidates:
                raise RequestSendFailed(f"{route.host} has no address")
        allowed = [a for a in candidates if self._ip_filter.allows(a)]
        if not allowed:
            raise RequestSendFailed(
                f"refusing to connect to {route.host} ({', '.join(candidates)}): address not allowed by ip_range_blacklist"
            )
        return allowed

    async def connect(self, routes: Sequence[Route], factory: IProtocolFactory) -> IProtocol:
        """Connect to the first route and address that accepts, over TLS."""
        errors: list[str] = []
        for route in routes:
            try:
                addresses = await self.addresses(route)
            except RequestSendFailed as e:
                errors.append(str(e))
                continue
            for address in addresses:
                tcp_endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
                tcp = tcp_endpoint_type(self._reactor, address, route.port, timeout=self._connect_timeout)
                endpoint = wrapClientTLS(self._tls.creator_for(route.tls_server_name), tcp)
                try:
                    protocol: IProtocol = await endpoint.connect(factory)
                    return protocol
                except defer.CancelledError:
                    raise
                except Exception as e:
                    errors.append(f"{address}:{route.port}: {e}")
        raise RequestSendFailed("; ".join(errors) or "nowhere to connect")


@implementer(IStreamClientEndpoint)
class _DeferredEndpoint:
    """An endpoint whose targets are found (asynchronously) when it connects."""

    def __init__(self, routes: Callable[[], Awaitable[list[Route]]], connector: Connector) -> None:
        self._routes = routes
        self._connector = connector

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        async def connect() -> IProtocol:
            try:
                routes = await self._routes()
            except DiscoveryError as e:
                raise RequestSendFailed(str(e)) from e
            return await self._connector.connect(routes, protocolFactory)

        return defer.Deferred.fromCoroutine(connect())


def _netloc(delegated: str) -> bytes:
    """The delegated server name as a URI authority; port 0 stands for "no port given"."""
    host, port = split_host_port(delegated)
    return f"{host}:{port or 0}".encode("ascii")


def _delegated_from_uri(uri: URI) -> str:
    host = uri.host.decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    return host if uri.port == 0 else f"{host}:{uri.port}"


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    """``matrix-federation://<delegated name>/`` through discovery; ``https://`` directly (well-known)."""

    def __init__(self, discovery: ServerDiscovery | None, connector: Connector) -> None:
        self._discovery = discovery
        self._connector = connector

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme == FEDERATION_SCHEME and self._discovery is not None:
            discovery, delegated = self._discovery, _delegated_from_uri(uri)
            return _DeferredEndpoint(lambda: discovery.routes(delegated), self._connector)
        if uri.scheme == b"https":
            host = uri.host.decode("ascii")
            route = Route(host=host, port=uri.port, host_header=host, tls_server_name=host)

            async def direct() -> list[Route]:
                return [route]

            return _DeferredEndpoint(direct, self._connector)
        raise RequestSendFailed(f"unsupported URI scheme {uri.scheme!r}")


# -- bodies ----------------------------------------------------------------------------------


@implementer(IBodyProducer)
class _BytesProducer:
    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BodyCollector(Protocol):
    def __init__(self, done: defer.Deferred[bytes], limit: int) -> None:
        self._done = done
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(InvalidResponseError(f"response larger than {self._limit} bytes"))
            if self.transport is not None:
                self.transport.loseConnection()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


def _read_body(response: IResponse, limit: int) -> defer.Deferred[bytes]:
    collector: _BodyCollector | None = None

    def cancel(_: defer.Deferred[bytes]) -> None:
        if collector is not None and collector.transport is not None:
            collector.transport.loseConnection()

    done: defer.Deferred[bytes] = defer.Deferred(cancel)
    collector = _BodyCollector(done, limit)
    response.deliverBody(collector)
    return done


# -- the clients -----------------------------------------------------------------------------


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    noisy = False


class _Requester:
    """An Agent with discovery (for matrix-federation:// URLs), the connection policy and timeouts."""

    def __init__(self, *, reactor: Any, clock: Clock, discovery: ServerDiscovery | None, connector: Connector) -> None:
        self._clock = clock
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = _QuietHTTP11ClientFactory  # no "Starting factory" log line per connection
        self.pool.maxPersistentPerHost = 5
        self.pool.cachedConnectionTimeout = 120
        self._agent = Agent.usingEndpointFactory(reactor, _EndpointFactory(discovery, connector), pool=self.pool)

    async def _with_timeout(self, d: defer.Deferred[_T], deadline: float, what: str) -> _T:
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._clock.call_later(max(0.0, deadline - self._clock.time()), expire)
        try:
            return await d
        except BaseException:
            # Cancelling shows up as CancelledError or wrapped in the Agent's own errors.
            if timed_out:
                raise RequestSendFailed(f"{what}: timed out") from None
            raise
        finally:
            if call.active():
                call.cancel()

    async def request(
        self,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: bytes | None,
        *,
        timeout: float,
        max_size: int,
        what: str,
    ) -> tuple[int, Headers, bytes]:
        deadline = self._clock.time() + timeout
        producer = _BytesProducer(body) if body is not None else None
        try:
            response = await self._with_timeout(self._agent.request(method, url, headers, producer), deadline, what)
            content = await self._with_timeout(_read_body(response, max_size), deadline, what)
        except (FederationError, defer.CancelledError):
            raise
        except Exception as e:
            raise RequestSendFailed(f"{what}: {_describe(e)}") from e
        return response.code, response.headers, content


def _describe(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)  # ResponseNeverReceived and friends wrap Failures
    if reasons:
        return "; ".join(str(r.value) or type(r.value).__name__ for r in reasons)
    return str(error) or type(error).__name__


class WellKnownClient:
    """``GET https://host/.well-known/matrix/server`` under the same connection policy."""

    def __init__(self, *, reactor: Any, clock: Clock, connector: Connector, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._requester = _Requester(reactor=reactor, clock=clock, discovery=None, connector=connector)

    async def close(self) -> None:
        await self._requester.pool.closeCachedConnections()

    async def get(self, url: str) -> HttpResponse:
        code, headers, body = await self._requester.request(
            b"GET",
            url.encode("ascii"),
            Headers({b"User-Agent": [USER_AGENT], b"Host": [urlsplit(url).netloc.encode("ascii")]}),
            None,
            timeout=self._timeout,
            max_size=64 * 1024,
            what=f"GET {url}",
        )
        return HttpResponse(
            code=code,
            headers={
                k.decode("latin-1").lower(): [v.decode("latin-1") for v in vs] for k, vs in headers.getAllRawHeaders()
            },
            body=body,
        )


class FederationRequests(TypingProtocol):
    """The JSON requests of :class:`FederationClient` that most federation code needs (a Protocol, for fakes in tests)."""

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> Any: ...

    async def post_json(
        self,
        destination: str,
        path: str,
        content: Any,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> Any: ...



class FederationClient:
    def __init__(
        self,
        *,
        reactor: Any,
        clock: Clock,
        server_name: str,
        signing_key: SigningKey,
        is_allowed: Callable[[str], bool],
        discovery: ServerDiscovery,
        connector: Connector,
        default_timeout: float = DEFAULT_TIMEOUT,
        max_response_size: int = MAX_RESPONSE_SIZE,
    ) -> None:
        self._server_name = server_name
        self._signing_key = signing_key
        self._is_allowed = is_allowed
        self._discovery = discovery
        self._default_timeout = default_timeout
        self._max_response_size = max_response_size
        self.requester = _Requester(reactor=reactor, clock=clock, discovery=discovery, connector=connector)

    async def close(self) -> None:
        """Close pooled connections (at shutdown)."""
        await self.requester.pool.closeCachedConnections()

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.request_json("GET", destination, path, args=args, timeout=timeout)

    async def post_json(
        self,
        destination: str,
        path: str,
        content: Any,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.request_json("POST", destination, path, args=args, content=content, timeout=timeout)

    async def put_json(
        self,
        destination: str,
        path: str,
        content: Any,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.request_json("PUT", destination, path, args=args, content=content, timeout=timeout)

    async def request_json(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        content: Any | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a signed request and return the parsed JSON of a 2xx answer.

        ``path`` is the percent-encoded path (``/_matrix/federation/v1/...``); ``args``
        become the query string.  Raises :class:`FederationDeniedError`,
        :class:`RequestSendFailed`, :class:`HttpResponseError` or
        :class:`InvalidResponseError`.
        """
        code, body = await self.request(method, destination, path, args=args, content=content, timeout=timeout)
        if not 200 <= code < 300:
            raise HttpResponseError(code, body)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidResponseError(f"{method} {path} on {destination}: response is not JSON") from None

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        content: Any | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """Send a signed request; return the status and raw body whatever the status."""
        code, _, body = await self.request_with_headers(
            method, destination, path, args=args, content=content, timeout=timeout
        )
        return code, body

    async def request_with_headers(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        args: Mapping[str, str | Sequence[str]] | None = None,
        content: Any | None = None,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> tuple[int, Headers, bytes]:
        """As :meth:`request`, with the response headers and an optional smaller size cap
        (media downloads need the Content-Type, and a limit of their own)."""
        if not self._is_allowed(destination):
            raise FederationDeniedError(destination)
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        try:
            split_host_port(destination)
        except InvalidID as e:
            raise RequestSendFailed(str(e)) from None
        uri = path + ("?" + urlencode(args, doseq=True) if args else "")
        what = f"{method} {destination}{path}"
        try:
            delegated = await self._discovery.delegate(destination)
        except DiscoveryError as e:
            raise RequestSendFailed(f"{what}: {e}") from e
        headers = Headers(
            {
                b"User-Agent": [USER_AGENT],
                b"Host": [delegated.encode("ascii")],
                b"Authorization": [
                    sign_request(
                        self._signing_key,
                        origin=self._server_name,
                        destination=destination,
                        method=method,
                        uri=uri,
                        content=content,
                    ).encode("utf-8")
                ],
            }
        )
        body = None
        if content is not None:
            body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers.addRawHeader(b"Content-Type", b"application/json")
        url = FEDERATION_SCHEME + b"://" + _netloc(delegated) + uri.encode("ascii")
        code, response_headers, response_body = await self.requester.request(
            method.encode("ascii"),
            url,
            headers,
            body,
            timeout=self._default_timeout if timeout is None else timeout,
            max_size=self._max_response_size if max_size is None else max_size,
            what=what,
        )
        return code, response_headers, response_body
