"""Synapse's media admin API (server admins only): quarantine, protect, delete, purge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError, missing_param
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.server import Router, query_param
from homeserver.media.repository import LocalMedia
from homeserver.media.service import MediaService
from homeserver.services.auth import Requester

_ADMIN = "^/_synapse/admin/v1"
_IDS = "/(?P<server_name>[^/]*)/(?P<media_id>[^/]*)"


def _int(request: server.Request, name: str, default: int | None) -> int:
    raw = query_param(request, name)
    if raw is None:
        if default is None:
            raise missing_param(name)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be an integer") from None
    if value < 0:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Query parameter {name} must be >= 0")
    return value


def _media_json(m: LocalMedia) -> dict[str, Any]:
    return {
        "media_id": m.media_id,
        "media_type": m.media_type,
        "media_length": m.media_length,
        "upload_name": m.upload_name,
        "created_ts": m.created_ts,
        "last_access_ts": m.last_access_ts,
        "quarantined_by": m.quarantined_by,
        "safe_from_quarantine": m.safe_from_quarantine,
    }


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    require_admin: Callable[[Requester], Awaitable[None]],
    media: MediaService,
) -> None:
    async def admin(request: server.Request) -> Requester:
        requester = await authenticate(request)
        await require_admin(requester)
        return requester

    async def quarantine(request: server.Request, server_name: str, media_id: str) -> tuple[int, Any]:
        requester = await admin(request)
        await media.set_quarantine(server_name, media_id, requester.user_id)
        return 200, {}

    async def unquarantine(request: server.Request, server_name: str, media_id: str) -> tuple[int, Any]:
        await admin(request)
        await media.set_quarantine(server_name, media_id, None)
        return 200, {}

    async def protect(request: server.Request, media_id: str) -> tuple[int, Any]:
        await admin(request)
        await media.set_protected(media_id, True)
        return 200, {}

    async def unprotect(request: server.Request, media_id: str) -> tuple[int, Any]:
        await admin(request)
        await media.set_protected(media_id, False)
        return 200, {}

    async def delete_one(request: server.Request, server_name: str, media_id: str) -> tuple[int, Any]:
        await admin(request)
        deleted = await media.delete_local_media(server_name, media_id)
        return 200, {"deleted_media": deleted, "total": len(deleted)}

    async def list_user_media(request: server.Request, user_id: str) -> tuple[int, Any]:
        await admin(request)
        start, limit = _int(request, "from", 0), _int(request, "limit", 100)
        found = await media.list_user_media(user_id)
        body: dict[str, Any] = {"media": [_media_json(m) for m in found[start : start + limit]], "total": len(found)}
        if start + limit < len(found):
            body["next_token"] = start + limit
        return 200, body

    async def delete_user_media(request: server.Request, user_id: str) -> tuple[int, Any]:
        await admin(request)
        deleted = await media.delete_user_media(
            user_id, start=_int(request, "from", 0), limit=_int(request, "limit", 100)
        )
        return 200, {"deleted_media": deleted, "total": len(deleted)}

    async def purge_media_cache(request: server.Request) -> tuple[int, Any]:
        await admin(request)
        deleted = await media.purge_remote_cache(_int(request, "before_ts", None))
        return 200, {"deleted": deleted}

    router.add("POST", f"{_ADMIN}/media/quarantine{_IDS}$", quarantine)
    router.add("POST", f"{_ADMIN}/media/unquarantine{_IDS}$", unquarantine)
    router.add("POST", f"{_ADMIN}/media/protect/(?P<media_id>[^/]*)$", protect)
    router.add("POST", f"{_ADMIN}/media/unprotect/(?P<media_id>[^/]*)$", unprotect)
    router.add("DELETE", f"{_ADMIN}/media{_IDS}$", delete_one)
    router.add("GET", f"{_ADMIN}/users/(?P<user_id>[^/]*)/media$", list_user_media)
    router.add("DELETE", f"{_ADMIN}/users/(?P<user_id>[^/]*)/media$", delete_user_media)
    router.add("POST", f"{_ADMIN}/purge_media_cache$", purge_media_cache)
