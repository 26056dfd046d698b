"""Federation media (spec: Server-Server API, "Content Repository"): ``/_matrix/federation/v1/media``.

``GET /media/download/{mediaId}`` and ``GET /media/thumbnail/{mediaId}`` serve this
server's own media to other servers.  Both authenticate the X-Matrix signature first (a
server outside the allowlist gets 403 ``M_FORBIDDEN`` before anything is read) and answer
``multipart/mixed``: a JSON metadata part (always ``{}`` for now), then the bytes with
their Content-Type and Content-Disposition.  Only local media is served (a server asks the
origin itself), and quarantined media is a 404 as for clients.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from twisted.protocols.basic import FileSender
from twisted.web import server

from homeserver.api.media.media import bool_param, int_param
from homeserver.api.media.responses import content_disposition, served_content_type
from homeserver.core.errors import Codes, MatrixError
from homeserver.http.server import Router, query_param
from homeserver.media.service import DEFAULT_TIMEOUT_MS, MediaDownload

MEDIA_PREFIX = "/_matrix/federation/v1/media"


class Authenticator(Protocol):
    async def authenticate(self, request: server.Request) -> str: ...


class LocalMedia(Protocol):
    """The media service's download and thumbnail (homeserver.media.service.MediaService)."""

    server_name: str

    async def download(
        self, server_name: str, media_id: str, *, authenticated: bool, timeout_ms: int = ..., allow_remote: bool = ...
    ) -> MediaDownload: ...

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        width: int,
        height: int,
        method: str,
        *,
        authenticated: bool,
        timeout_ms: int = ...,
        allow_remote: bool = ...,
    ) -> MediaDownload: ...


class _Sender(FileSender):
    CHUNK_SIZE = 2**16


def multipart_parts(media: MediaDownload, filename: str | None, boundary: str) -> tuple[bytes, bytes]:
    """The bytes before and after the media in the multipart/mixed answer."""
    _, inline = served_content_type(media.media_type)
    head = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Type: {media.media_type}\r\n"
        f"Content-Disposition: {content_disposition(inline, filename)}\r\n\r\n"
    ).encode("ascii")
    return head, f"\r\n--{boundary}--\r\n".encode("ascii")


async def send_multipart(request: server.Request, media: MediaDownload, filename: str | None) -> None:
    """Stream ``media`` as a two-part multipart/mixed response (closing its file)."""
    try:
        boundary = secrets.token_hex(16)
        head, tail = multipart_parts(media, filename, boundary)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", f"multipart/mixed; boundary={boundary}".encode("ascii"))
        request.setHeader(b"Content-Length", str(len(head) + media.length + len(tail)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(head)
            if media.length:
                await _Sender().beginFileTransfer(media.body, request)  # type: ignore[no-untyped-call]
            if not request._disconnected:
                request.write(tail)
        if not request.finished and not request._disconnected:
            request.finish()
    finally:
        media.body.close()


def register(router: Router, *, authenticator: Authenticator, media: LocalMedia) -> None:
    authenticate = authenticator.authenticate

    async def download(request: server.Request, media_id: str) -> tuple[int, Any]:
        await authenticate(request)
        found = await media.download(
            media.server_name,
            media_id,
            authenticated=True,
            timeout_ms=int_param(request, "timeout_ms", DEFAULT_TIMEOUT_MS),
            allow_remote=False,
        )
        await send_multipart(request, found, found.upload_name)
        return 0, None

    async def thumbnail(request: server.Request, media_id: str) -> tuple[int, Any]:
        await authenticate(request)
        width = int_param(request, "width", minimum=1)
        height = int_param(request, "height", minimum=1)
        method = query_param(request, "method") or "scale"
        if method not in ("crop", "scale"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter method must be crop or scale")
        # We make no animated thumbnails: animated=true behaves as false, as the spec allows.
        bool_param(request, "animated", False)
        found = await media.thumbnail(
            media.server_name,
            media_id,
            width,
            height,
            method,
            authenticated=True,
            timeout_ms=int_param(request, "timeout_ms", DEFAULT_TIMEOUT_MS),
            allow_remote=False,
        )
        await send_multipart(request, found, None)
        return 0, None

    router.add("GET", f"^{MEDIA_PREFIX}/download/(?P<media_id>[^/]*)$", download)
    router.add("GET", f"^{MEDIA_PREFIX}/thumbnail/(?P<media_id>[^/]*)$", thumbnail)
