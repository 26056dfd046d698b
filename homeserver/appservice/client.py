"""Requests from the homeserver to application services (``/_matrix/app/v1/...``).

Every request carries ``Authorization: Bearer <hs_token>``; a service that is down, slow
(past ``timeout_s``) or answering garbage raises :class:`AppServiceUnavailable`, never more.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from homeserver.appservice.registration import ApplicationService

APP_PREFIX = "/_matrix/app/v1"
# Answers larger than this are garbage as far as we are concerned.
MAX_RESPONSE_BYTES = 2 * 2**20


class AppServiceUnavailable(Exception):
    """The service could not be reached, timed out or answered with an error or garbage."""

    def __init__(self, message: str, *, kind: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connection", "timeout", "status", "garbage"
        self.status = status
        self.body = body


@implementer(IBodyProducer)
class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class AppServiceClient:
    def __init__(self, reactor: Any, *, timeout_s: float = 30.0) -> None:
        self._reactor = reactor
        self._timeout_s = timeout_s
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._agent = Agent(reactor, connectTimeout=min(10.0, timeout_s), pool=self._pool)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()

    async def request(
        self,
        service: ApplicationService,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str | list[str]] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or None); raises only :class:`AppServiceUnavailable`."""
        if service.url is None:
            raise AppServiceUnavailable(f"application service {service.id} has no url", kind="connection")
        url = service.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        headers = Headers({b"Authorization": [f"Bearer {service.hs_token}".encode()], b"User-Agent": [b"homeserver"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = _Bytes(json.dumps(body, ensure_ascii=False).encode("utf-8"))
        try:
            d = self._agent.request(method.encode("ascii"), url.encode("utf-8"), headers, producer)
            d.addTimeout(self._timeout_s, self._reactor)
            response = await d
            d2 = readBody(response)
            d2.addTimeout(self._timeout_s, self._reactor)
            raw = await d2
        except (defer.TimeoutError, TimeoutError, defer.CancelledError):
            raise AppServiceUnavailable(f"{service.id}: {method} {path} timed out", kind="timeout") from None
        except (ConnectError, DNSLookupError) as e:
            raise AppServiceUnavailable(f"{service.id}: cannot connect: {e}", kind="connection") from None
        except Exception as e:  # a reset connection, a broken response: the service is not usable now
            raise AppServiceUnavailable(f"{service.id}: {method} {path} failed: {e!r}", kind="connection") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AppServiceUnavailable(f"{service.id}: answer too large", kind="garbage", status=response.code)
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
                if 200 <= response.code < 300:
                    raise AppServiceUnavailable(
                        f"{service.id}: {method} {path} answered {response.code} with a body that is not JSON",
                        kind="garbage",
                        status=response.code,
                        body=raw[:200].decode("utf-8", "replace"),
                    ) from None
        return response.code, parsed

    async def _ok(self, service: ApplicationService, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        code, parsed = await self.request(service, method, path, body, **kw)
        if not 200 <= code < 300:
            raise AppServiceUnavailable(
                f"{service.id}: {method} {path} answered {code}", kind="status", status=code, body=parsed
            )
        return parsed

    # -- the AS API ----------------------------------------------------------------------

    async def push_transaction(self, service: ApplicationService, txn_id: str, body: dict[str, Any]) -> None:
        await self._ok(service, "PUT", f"{APP_PREFIX}/transactions/{urllib.parse.quote(txn_id, safe='')}", body)

    async def ping(self, service: ApplicationService, transaction_id: str | None) -> None:
        body = {} if transaction_id is None else {"transaction_id": transaction_id}
        await self._ok(service, "POST", f"{APP_PREFIX}/ping", body)

    async def query_user(self, service: ApplicationService, user_id: str) -> bool:
        """True when the service says it created (or now knows) ``user_id``."""
        return await self._exists(service, f"{APP_PREFIX}/users/{urllib.parse.quote(user_id, safe='')}")

    async def query_alias(self, service: ApplicationService, alias: str) -> bool:
        return await self._exists(service, f"{APP_PREFIX}/rooms/{urllib.parse.quote(alias, safe='')}")

    async def _exists(self, service: ApplicationService, path: str) -> bool:
        try:
            code, parsed = await self.request(service, "GET", path)
        except AppServiceUnavailable:
            return False
        return 200 <= code < 300 and isinstance(parsed, dict)

    async def thirdparty(
        self, service: ApplicationService, path: str, query: dict[str, str | list[str]] | None = None
    ) -> Any:
        """A third-party lookup; None when the service fails or answers garbage."""
        try:
            return await self._ok(service, "GET", f"{APP_PREFIX}/thirdparty/{path}", query=query)
        except AppServiceUnavailable:
            return None
