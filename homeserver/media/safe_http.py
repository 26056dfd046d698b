"""An outbound HTTP client for URL previews that cannot be steered into private networks.

Every hop (the first URL and each redirect) is handled the same way: resolve the host,
check *every* address against the IP policy (refusing the whole name if any one is
blocked, so DNS round-robin cannot slip a private address in), then connect to the
checked address itself: the connection is pinned, so a second DNS answer (DNS
rebinding) is never consulted.  TLS still verifies the certificate for the host name.
Bodies are read up to a size limit, and the whole fetch has a deadline.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from homeserver.core.errors import Codes, MatrixError

# Never connectable, whatever the configuration says (0.0.0.0 reaches the local host).
ALWAYS_BLOCKED = ("0.0.0.0/8", "::/128")
_REDIRECTS = (301, 302, 303, 307, 308)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class IPPolicy:
    """A blacklist of ranges with a whitelist of exceptions (Synapse's semantics).

    IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4) are also
    checked as that IPv4 address, so ``::ffff:127.0.0.1`` is loopback too.
    """

    def __init__(self, blacklist: Iterable[str], whitelist: Iterable[str] = ()) -> None:
        self._always = [ipaddress.ip_network(r) for r in ALWAYS_BLOCKED]
        self._blocked = [ipaddress.ip_network(r, strict=False) for r in blacklist]
        self._allowed = [ipaddress.ip_network(r, strict=False) for r in whitelist]

    @staticmethod
    def _forms(address: IPAddress) -> list[IPAddress]:
        forms: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                forms.append(address.ipv4_mapped)
            if address.sixtofour is not None:
                forms.append(address.sixtofour)
            if address.packed[:12] == bytes(12) and int(address) > 1:
                forms.append(ipaddress.IPv4Address(address.packed[12:]))
        return forms

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        forms = self._forms(ip)

        def listed(networks: list[IPNetwork]) -> bool:
            return any(f in n for f in forms for n in networks if f.version == n.version)

        if listed(self._always):
            return False
        return listed(self._allowed) or not listed(self._blocked)


Resolver = Callable[[str, int], Awaitable[list[str]]]


def threaded_resolver(run_in_thread: Callable[..., Any]) -> Resolver:
    """Resolve with the system resolver (getaddrinfo) in a thread: every address, both families."""

    async def resolve(host: str, port: int) -> list[str]:
        def lookup() -> list[str]:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                return []
            return list(dict.fromkeys(str(info[4][0]) for info in infos))

        result: list[str] = await run_in_thread(lookup)
        return result

    return resolve


@dataclass(frozen=True, slots=True)
class FetchResult:
    url: str  # after redirects
    code: int
    media_type: str | None  # the Content-Type header, as sent
    body: bytes
    disposition: str | None = None  # the Content-Disposition header, as sent


class _PinnedEndpoints:
    """An endpoint factory that connects to one checked address whatever the URI says."""

    def __init__(self, reactor: Any, address: str, hostname: str, timeout: float) -> None:
        self._reactor = reactor
        self._address = address
        self._hostname = hostname
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 (Twisted's interface)
        ip = ipaddress.ip_address(self._address.split("%", 1)[0])
        make = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
        endpoint = make(self._reactor, self._address, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(optionsForClientTLS(self._hostname), endpoint)
        return endpoint


class _LimitedBody(protocol.Protocol):
    def __init__(self, limit: int, done: defer.Deferred[bytes], too_large: str) -> None:
        self._limit = limit
        self._too_large = too_large
        self._done = done
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(MatrixError(502, Codes.TOO_LARGE, self._too_large))
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(MatrixError(502, Codes.UNKNOWN, "The connection broke while reading the page"))


class SafeHttpClient:
    def __init__(
        self,
        *,
        reactor: Any,
        policy: IPPolicy,
        resolve: Resolver,
        max_size: int,
        timeout: float = 15.0,
        max_redirects: int = 5,
        user_agent: str = "homeserver URL preview",
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._resolve = resolve
        self._max_size = max_size
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._user_agent = user_agent

    async def get(self, url: str, *, max_size: int | None = None) -> FetchResult:
        """GET ``url``, following redirects; raises MatrixError (403 for blocked addresses).

        ``max_size`` overrides the client's size limit for this one fetch."""
        d = defer.ensureDeferred(self._get(url, max_size))
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except defer.TimeoutError:
            raise MatrixError(504, Codes.UNKNOWN, "Timed out fetching the URL") from None

    async def _get(self, url: str, max_size: int | None) -> FetchResult:
        for _ in range(self._max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise MatrixError(400, Codes.INVALID_PARAM, "Only http and https URLs can be previewed")
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid port in URL") from None
            address = await self._checked_address(parts.hostname, port)
            response = await self._request(url, address, parts.hostname)
            location = response.headers.getRawHeaders(b"Location")
            if response.code in _REDIRECTS and location:
                response.deliverBody(_Discard())
                url = urljoin(url, location[0].decode("latin-1"))
                continue
            done: defer.Deferred[bytes] = defer.Deferred()
            if max_size is None:
                response.deliverBody(_LimitedBody(self._max_size, done, "The page is larger than max_spider_size"))
            else:
                response.deliverBody(_LimitedBody(max_size, done, "The response is larger than the size limit"))
            body = await done
            content_type = response.headers.getRawHeaders(b"Content-Type")
            media_type = content_type[0].decode("latin-1") if content_type else None
            disposition = response.headers.getRawHeaders(b"Content-Disposition")
            return FetchResult(
                url, response.code, media_type, body, disposition[0].decode("latin-1") if disposition else None
            )
        raise MatrixError(502, Codes.UNKNOWN, "Too many redirects")

    async def _checked_address(self, host: str, port: int) -> str:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses = [host]
        except ValueError:
            addresses = await self._resolve(host, port)
        if not addresses:
            raise MatrixError(502, Codes.UNKNOWN, "DNS resolution failure during URL preview generation")
        blocked = [a for a in addresses if not self._policy.allows(a)]
        if blocked:
            raise MatrixError(403, Codes.FORBIDDEN, "IP address blocked by IP blacklist entry")
        return addresses[0]

    async def _request(self, url: str, address: str, hostname: str) -> IResponse:
        agent = Agent.usingEndpointFactory(
            self._reactor, _PinnedEndpoints(self._reactor, address, hostname, self._timeout)
        )
        headers = Headers(
            {b"User-Agent": [self._user_agent.encode()], b"Accept": [b"text/html, image/*;q=0.9, */*;q=0.5"]}
        )
        try:
            response: IResponse = await agent.request(b"GET", url.encode("ascii", "strict"), headers)
        except UnicodeEncodeError:
            raise MatrixError(400, Codes.INVALID_PARAM, "URL must be ASCII (IDNA and percent-encoded)") from None
        except MatrixError:
            raise
        except defer.CancelledError:
            raise
        except Exception as e:
            raise MatrixError(502, Codes.UNKNOWN, f"Could not fetch the URL: {type(e).__name__}") from None
        return response


class _Discard(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
