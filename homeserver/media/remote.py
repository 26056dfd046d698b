"""Fetching media from the server that owns it (spec: Server-Server API, "Content Repository").

:class:`FederationMediaFetcher` is the :class:`~homeserver.media.service.RemoteMediaFetcher`
behind ``mxc://<other server>/<id>``:

* a server the federation allowlist does not accept is refused with 403 ``M_FORBIDDEN``
  before any request (as Synapse's ``FederationDeniedError``);
* ``GET /_matrix/federation/v1/media/download/{mediaId}`` (signed), whose answer is
  ``multipart/mixed``: a JSON metadata part, then either the bytes or a ``Location`` that
  is fetched with a plain HTTP GET through a :class:`~homeserver.media.safe_http.SafeHttpClient`
  (the federation ``ip_range_blacklist`` applies to it and to each of its redirects);
* a server without that endpoint (404 ``M_UNRECOGNIZED``) is asked the legacy
  ``GET /_matrix/media/v3/download/{serverName}/{mediaId}?allow_remote=false``;
* at most ``max_size`` bytes are read; every failure of the remote side becomes a clean
  Matrix error (404 when the origin has no such media, 502/504 otherwise), never a 500.

Caching, thumbnails and coalescing of concurrent requests are the media service's job.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.web.http_headers import Headers

from homeserver.config import HomeserverConfig
from homeserver.core.errors import Codes, MatrixError, forbidden, not_found
from homeserver.federation.transport import (
    FederationDeniedError,
    HttpResponseError,
    InvalidResponseError,
    RequestSendFailed,
)
from homeserver.media.safe_http import FetchResult, IPPolicy, SafeHttpClient, threaded_resolver
from homeserver.media.service import NOT_YET_UPLOADED, FetchedMedia, is_valid_media_type
from homeserver.media.storage import is_valid_media_id

logger = logging.getLogger(__name__)

FEDERATION_DOWNLOAD = "/_matrix/federation/v1/media/download/"
LEGACY_DOWNLOAD = "/_matrix/media/v3/download/"
# Headers and the JSON part around the media bytes: what a response may add to max_size.
MULTIPART_OVERHEAD = 64 * 1024
DEFAULT_TIMEOUT = 60.0
# How long the origin may wait for a pending upload (the spec's timeout_ms).
REMOTE_TIMEOUT_MS = 20_000


class SignedRequests(Protocol):
    """The federation client's raw signed request (homeserver.federation.transport)."""

    async def request_with_headers(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        args: dict[str, str] | None = None,
        content: Any | None = None,
        timeout: float | None = None,
        max_size: int | None = None,
    ) -> tuple[int, Headers, bytes]: ...


class PlainHttp(Protocol):
    """A GET under an IP policy (homeserver.media.safe_http.SafeHttpClient)."""

    async def get(self, url: str, *, max_size: int | None = None) -> FetchResult: ...


class BadMultipart(ValueError):
    """A multipart/mixed body that is not what the spec describes."""


@dataclass(frozen=True, slots=True)
class MediaPart:
    """The second part of a federation media response: bytes, or where to get them."""

    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


_BOUNDARY_RE = re.compile(r"""boundary=(?:"([^"]{1,200})"|([^\s;"]{1,200}))""", re.IGNORECASE)


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a ``multipart/mixed`` Content-Type header."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/mixed":
        raise BadMultipart(f"expected multipart/mixed, got {content_type[:100]!r}")
    found = _BOUNDARY_RE.search(content_type)
    if found is None:
        raise BadMultipart("multipart/mixed without a boundary")
    return found.group(1) or found.group(2)


def _part(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        if raw.startswith(b"\r\n"):  # a part without headers
            return {}, raw[2:]
        raise BadMultipart("a part has no end of headers")
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadMultipart("malformed part header")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers, body


def parse_multipart(body: bytes, boundary: str) -> tuple[dict[str, Any], MediaPart]:
    """The JSON metadata and the media part of a federation media response (RFC 2046)."""
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        body = b"\r\n" + body  # no preamble: the first delimiter still starts a line
    chunks = body.split(b"\r\n" + delimiter)
    if len(chunks) < 4:
        raise BadMultipart(f"expected two parts, found {max(len(chunks) - 2, 0)}")
    # chunks: preamble, part 1, part 2, "--" + epilogue (further parts are ignored)
    if not chunks[-1].startswith(b"--"):
        raise BadMultipart("the multipart body has no closing delimiter")
    first, second = (c.split(b"\r\n", 1) for c in chunks[1:3])
    if len(first) != 2 or len(second) != 2:
        raise BadMultipart("a delimiter line is not followed by a part")
    json_headers, json_body = _part(first[1])
    if json_headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadMultipart("the first part is not application/json")
    try:
        metadata = json.loads(json_body)
    except ValueError:
        raise BadMultipart("the first part is not JSON") from None
    if not isinstance(metadata, dict):
        raise BadMultipart("the metadata part is not a JSON object")
    media_headers, media_body = _part(second[1])
    return metadata, MediaPart(media_headers, media_body)


def filename_from_disposition(value: str | None) -> str | None:
    """The file name of a Content-Disposition header (``filename*=utf-8''...`` wins)."""
    if not value:
        return None
    plain: str | None = None
    for param in value.split(";")[1:]:
        key, eq, raw = param.strip().partition("=")
        if not eq:
            continue
        key = key.strip().lower()
        if key == "filename*":
            charset, _, rest = raw.partition("''")
            if charset.lower() in ("utf-8", "utf8") and rest:
                try:
                    return _clean_name(urllib.parse.unquote(rest, errors="strict"))
                except UnicodeDecodeError:
                    continue
        elif key == "filename":
            plain = _clean_name(raw.strip().strip('"'))
    return plain


def _clean_name(name: str) -> str | None:
    """A remote file name kept for our own Content-Disposition (control characters refused)."""
    if not name or len(name) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    return name


def _media_type(value: str | None) -> str:
    if value and is_valid_media_type(value.strip()):
        return value.strip()
    return "application/octet-stream"


def _header(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


class FederationMediaFetcher:
    """Downloads other servers' media over federation (see the module docstring)."""

    def __init__(
        self,
        *,
        federation: SignedRequests,
        is_allowed: Callable[[str], bool],
        http: PlainHttp,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._federation = federation
        self._is_allowed = is_allowed
        self._http = http
        self._timeout = timeout
        # How many requests went out, per server (operators' logs and the tests read it).
        self.requests: dict[str, int] = {}

    async def fetch(self, server_name: str, media_id: str, *, max_size: int) -> FetchedMedia:
        if not is_valid_media_id(media_id):
            raise not_found()
        if not self._is_allowed(server_name):
            raise forbidden(f"Federation denied with {server_name}.")
        try:
            return await self._fetch(server_name, media_id, max_size)
        except FederationDeniedError:
            raise forbidden(f"Federation denied with {server_name}.") from None
        except HttpResponseError as e:
            raise self._remote_error(server_name, e) from None
        except InvalidResponseError as e:  # the transport's size cap
            logger.info("remote media %s/%s: %s", server_name, media_id, e)
            raise MatrixError(502, Codes.TOO_LARGE, "Remote media is larger than max_upload_size") from None
        except RequestSendFailed as e:
            logger.info("remote media %s/%s: %s", server_name, media_id, e)
            if "timed out" in str(e):
                raise MatrixError(504, Codes.UNKNOWN, f"Timed out fetching remote media from {server_name}") from None
            raise MatrixError(502, Codes.UNKNOWN, f"Failed to fetch remote media from {server_name}") from None
        except BadMultipart as e:
            logger.info("remote media %s/%s: bad multipart answer: %s", server_name, media_id, e)
            raise MatrixError(502, Codes.UNKNOWN, f"{server_name} sent an invalid media response") from None

    async def _fetch(self, server_name: str, media_id: str, max_size: int) -> FetchedMedia:
        try:
            return await self._federation_download(server_name, media_id, max_size)
        except HttpResponseError as e:
            if e.code not in (404, 405) or e.errcode != Codes.UNRECOGNIZED:
                raise
        logger.info("%s has no federation media endpoint: using the legacy download", server_name)
        return await self._legacy_download(server_name, media_id, max_size)

    def _count(self, server_name: str) -> None:
        self.requests[server_name] = self.requests.get(server_name, 0) + 1

    async def _federation_download(self, server_name: str, media_id: str, max_size: int) -> FetchedMedia:
        self._count(server_name)
        code, headers, body = await self._federation.request_with_headers(
            "GET",
            server_name,
            FEDERATION_DOWNLOAD + urllib.parse.quote(media_id, safe=""),
            args={"timeout_ms": str(REMOTE_TIMEOUT_MS)},
            timeout=self._timeout,
            max_size=max_size + MULTIPART_OVERHEAD,
        )
        if not 200 <= code < 300:
            raise HttpResponseError(code, body)
        _, part = parse_multipart(body, boundary_of(_header(headers, b"Content-Type") or ""))
        if part.location is not None:
            return await self._follow(server_name, part.location, max_size)
        return self._checked(
            part.body, part.headers.get("content-type"), part.headers.get("content-disposition"), max_size
        )

    async def _follow(self, server_name: str, location: str, max_size: int) -> FetchedMedia:
        """The media at a ``Location``: a plain GET under the federation IP policy."""
        if urllib.parse.urlsplit(location).scheme not in ("http", "https"):
            raise BadMultipart(f"unusable Location {location[:100]!r}")
        try:
            got = await self._http.get(location, max_size=max_size)
        except MatrixError as e:
            logger.info("remote media from %s: redirect to %s failed: %s", server_name, location[:200], e.msg)
            if e.errcode == Codes.TOO_LARGE:
                raise MatrixError(502, Codes.TOO_LARGE, "Remote media is larger than max_upload_size") from None
            if e.code == 504:
                raise MatrixError(504, Codes.UNKNOWN, f"Timed out fetching remote media from {server_name}") from None
            raise MatrixError(502, Codes.UNKNOWN, f"Failed to fetch remote media from {server_name}") from None
        if got.code == 404:
            raise not_found("The remote server has no such media")
        if not 200 <= got.code < 300:
            raise MatrixError(502, Codes.UNKNOWN, f"Failed to fetch remote media from {server_name}")
        return self._checked(got.body, got.media_type, got.disposition, max_size)

    async def _legacy_download(self, server_name: str, media_id: str, max_size: int) -> FetchedMedia:
        self._count(server_name)
        path = f"{LEGACY_DOWNLOAD}{urllib.parse.quote(server_name, safe='')}/{urllib.parse.quote(media_id, safe='')}"
        code, headers, body = await self._federation.request_with_headers(
            "GET",
            server_name,
            path,
            args={"allow_remote": "false", "timeout_ms": str(REMOTE_TIMEOUT_MS)},
            timeout=self._timeout,
            max_size=max_size,
        )
        if not 200 <= code < 300:
            raise HttpResponseError(code, body)
        content_type = _header(headers, b"Content-Type")
        return self._checked(body, content_type, _header(headers, b"Content-Disposition"), max_size)

    @staticmethod
    def _checked(data: bytes, content_type: str | None, disposition: str | None, max_size: int) -> FetchedMedia:
        if len(data) > max_size:
            raise MatrixError(502, Codes.TOO_LARGE, "Remote media is larger than max_upload_size")
        return FetchedMedia(
            data=data, media_type=_media_type(content_type), upload_name=filename_from_disposition(disposition)
        )

    @staticmethod
    def _remote_error(server_name: str, e: HttpResponseError) -> MatrixError:
        if e.code == 404:
            return not_found("The remote server has no such media")
        if e.code == 504 and e.errcode == NOT_YET_UPLOADED:
            return MatrixError(504, NOT_YET_UPLOADED, "The remote media has not been uploaded yet")
        if e.errcode == Codes.TOO_LARGE:
            return MatrixError(502, Codes.TOO_LARGE, "Remote media is too large")
        logger.info("remote media from %s: %s", server_name, e)
        return MatrixError(502, Codes.UNKNOWN, f"Failed to fetch remote media from {server_name} (HTTP {e.code})")


def build_remote_fetcher(
    config: HomeserverConfig, *, reactor: Any, federation: SignedRequests, run_in_thread: Callable[..., Any]
) -> FederationMediaFetcher:
    """The fetcher ``app.build_homeserver`` gives the media service once federation exists.

    Redirects (``Location``) are fetched under the federation IP policy
    (``ip_range_blacklist`` / ``ip_range_whitelist``), not the URL preview one.
    """
    http = SafeHttpClient(
        reactor=reactor,
        policy=IPPolicy(config.ip_range_blacklist, config.ip_range_whitelist),
        resolve=threaded_resolver(run_in_thread),
        max_size=config.max_upload_size,
        timeout=DEFAULT_TIMEOUT,
        user_agent="homeserver media",
    )
    return FederationMediaFetcher(federation=federation, is_allowed=config.federation_allows, http=http)
