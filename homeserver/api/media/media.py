"""The media API: upload, create, download, thumbnail, config and preview_url.

Both generations of paths are served: the legacy ``/_matrix/media/{r0,v1,v3}`` ones
(downloads and thumbnails without authentication, as clients before Matrix 1.11 expect)
and the authenticated ``/_matrix/client/v1/media`` ones.  With
``enable_authenticated_media`` media uploaded from then on is served only by the latter.
"""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.api.media.responses import send_media, set_security_headers
from homeserver.core.errors import Codes, MatrixError, missing_param
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import read_body_bytes
from homeserver.http.server import Router, query_param
from homeserver.media.preview import PreviewService
from homeserver.media.service import DEFAULT_TIMEOUT_MS, MediaService, is_valid_media_type

LEGACY = "^/_matrix/media/(?:r0|v1|v3)"
AUTHENTICATED = "^/_matrix/client/v1/media"
_IDS = "/(?P<server_name>[^/]*)/(?P<media_id>[^/]*)"
MAX_FILENAME_LENGTH = 255


def int_param(request: server.Request, name: str, default: int | None = None, *, minimum: int = 0) -> int:
    raw = query_param(request, name)
    if raw is None:
        if default is None:
            raise missing_param(name)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be an integer") from None
    if value < minimum:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be >= {minimum}")
    return value


def bool_param(request: server.Request, name: str, default: bool) -> bool:
    raw = query_param(request, name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be true or false")
    return raw == "true"


def parse_filename(value: str | None, what: str = "filename") -> str | None:
    """A client-given file name: kept for the Content-Disposition header only (never a
    path), so only control characters and over-long names are refused."""
    if not value:
        return None
    if len(value) > MAX_FILENAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {what}")
    return value


def _upload_media_type(request: server.Request) -> str:
    raw = request.requestHeaders.getRawHeaders(b"Content-Type")
    if not raw:
        return "application/octet-stream"
    try:
        value = raw[0].decode("ascii").strip()
    except UnicodeDecodeError:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid Content-Type") from None
    if not is_valid_media_type(value):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid Content-Type")
    return value


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    media: MediaService,
    previews: PreviewService | None,
) -> None:
    """Add the media routes; preview_url only when ``previews`` is given (enabled)."""

    async def config(request: server.Request) -> tuple[int, Any]:
        await authenticate(request, allow_guest=True)
        return 200, {"m.upload.size": media.rules.max_upload_size}

    async def upload(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        media_type = _upload_media_type(request)
        name = parse_filename(query_param(request, "filename"))
        mxc = await media.upload(requester.user_id, read_body_bytes(request), media_type, name)
        return 200, {"content_uri": mxc}

    async def upload_to(request: server.Request, server_name: str, media_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        media_type = _upload_media_type(request)
        name = parse_filename(query_param(request, "filename"))
        await media.upload_to(requester.user_id, server_name, media_id, read_body_bytes(request), media_type, name)
        return 200, {}

    async def create(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        mxc, expires = await media.create_media_id(requester.user_id)
        return 200, {"content_uri": mxc, "unused_expires_at": expires}

    async def download(
        request: server.Request, server_name: str, media_id: str, file_name: str | None = None, *, authed: bool
    ) -> tuple[int, Any]:
        if authed:
            await authenticate(request, allow_guest=True)
        set_security_headers(request)
        name = parse_filename(file_name, "file name")
        found = await media.download(
            server_name,
            media_id,
            authenticated=authed,
            timeout_ms=int_param(request, "timeout_ms", DEFAULT_TIMEOUT_MS),
            allow_remote=bool_param(request, "allow_remote", True),
        )
        await send_media(request, found, name or found.upload_name)
        return 0, None

    async def thumbnail(request: server.Request, server_name: str, media_id: str, *, authed: bool) -> tuple[int, Any]:
        if authed:
            await authenticate(request, allow_guest=True)
        set_security_headers(request)
        width = int_param(request, "width", minimum=1)
        height = int_param(request, "height", minimum=1)
        method = query_param(request, "method") or "scale"
        if method not in ("crop", "scale"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter method must be crop or scale")
        found = await media.thumbnail(
            server_name,
            media_id,
            width,
            height,
            method,
            authenticated=authed,
            timeout_ms=int_param(request, "timeout_ms", DEFAULT_TIMEOUT_MS),
            allow_remote=bool_param(request, "allow_remote", True),
        )
        await send_media(request, found, None)
        return 0, None

    async def legacy_download(request: server.Request, **ids: str) -> tuple[int, Any]:
        return await download(request, **ids, authed=False)

    async def authed_download(request: server.Request, **ids: str) -> tuple[int, Any]:
        return await download(request, **ids, authed=True)

    async def legacy_thumbnail(request: server.Request, **ids: str) -> tuple[int, Any]:
        return await thumbnail(request, **ids, authed=False)

    async def authed_thumbnail(request: server.Request, **ids: str) -> tuple[int, Any]:
        return await thumbnail(request, **ids, authed=True)

    for prefix in (LEGACY, AUTHENTICATED):
        router.add("GET", f"{prefix}/config$", config)
    router.add("POST", f"{LEGACY}/upload$", upload)
    router.add("PUT", f"^/_matrix/media/v3/upload{_IDS}$", upload_to)
    router.add("POST", "^/_matrix/media/v1/create$", create)
    for prefix, get_file, get_thumbnail in (
        (LEGACY, legacy_download, legacy_thumbnail),
        (AUTHENTICATED, authed_download, authed_thumbnail),
    ):
        router.add("GET", f"{prefix}/download{_IDS}$", get_file)
        router.add("GET", f"{prefix}/download{_IDS}/(?P<file_name>[^/]*)$", get_file)
        router.add("GET", f"{prefix}/thumbnail{_IDS}$", get_thumbnail)

    if previews is not None:
        preview_service = previews

        async def preview_url(request: server.Request) -> tuple[int, Any]:
            requester = await authenticate(request)
            url = query_param(request, "url")
            if not url:
                raise missing_param("url")
            return 200, await preview_service.preview(requester.user_id, url)

        for prefix in (LEGACY, AUTHENTICATED):
            router.add("GET", f"{prefix}/preview_url$", preview_url)
