"""Room aliases, the room directory, the user directory and server-side search."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.directory import DirectoryService
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.rooms import RoomService
from homeserver.services.search import SearchService


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    rooms: RoomService,
    directory: DirectoryService,
    is_admin: Callable[[str], Awaitable[bool]],
    search: SearchService | None = None,
    user_directory_limiter: MessageRateLimiter | None = None,
) -> None:
    async def put_alias(request: server.Request, alias: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        await rooms.create_alias(requester.user_id, alias, body.required_str("room_id"))
        return 200, {}

    async def get_alias(request: server.Request, alias: str) -> tuple[int, Any]:
        return 200, await rooms.get_alias(alias)

    async def delete_alias(request: server.Request, alias: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        await rooms.delete_alias(requester.user_id, alias, await is_admin(requester.user_id))
        return 200, {}

    async def room_aliases(request: server.Request, room_id: str) -> tuple[int, Any]:
        await authenticate(request)
        return 200, {"aliases": await rooms.aliases(room_id)}

    async def get_visibility(request: server.Request, room_id: str) -> tuple[int, Any]:
        return 200, {"visibility": await directory.get_visibility(room_id)}

    async def put_visibility(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        await directory.set_visibility(
            requester.user_id, room_id, body.str("visibility") or "public", await is_admin(requester.user_id)
        )
        return 200, {}

    async def get_public_rooms(request: server.Request) -> tuple[int, Any]:
        limit_raw = query_param(request, "limit")
        try:
            limit = int(limit_raw) if limit_raw is not None else None
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter limit must be an integer") from None
        return 200, await directory.public_rooms(limit=limit, since=query_param(request, "since"), search=None)

    async def post_public_rooms(request: server.Request) -> tuple[int, Any]:
        await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        search_filter = body.object("filter")
        term = search_filter.str("generic_search_term") if search_filter else None
        return 200, await directory.public_rooms(
            limit=body.int("limit", minimum=0), since=body.str("since"), search=term
        )

    async def search_users(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        term = body.required_str("search_term")
        limit = body.int("limit", minimum=0)
        if user_directory_limiter is not None:
            await user_directory_limiter.check(requester)  # rc_user_directory
        return 200, await directory.search_users(requester.user_id, term, 10 if limit is None else limit)

    if search is not None:
        searcher = search

        async def do_search(request: server.Request) -> tuple[int, Any]:
            requester = await authenticate(request)
            body = parse_json_object(request)
            return 200, await searcher.search(requester, body.data, query_param(request, "next_batch"))

        router.add("POST", client_path("/search"), do_search)
    router.add("PUT", client_path("/directory/room/(?P<alias>[^/]+)"), put_alias)
    router.add("GET", client_path("/directory/room/(?P<alias>[^/]+)"), get_alias)
    router.add("DELETE", client_path("/directory/room/(?P<alias>[^/]+)"), delete_alias)
    router.add("GET", client_path("/rooms/(?P<room_id>[^/]+)/aliases"), room_aliases)
    router.add("GET", client_path("/directory/list/room/(?P<room_id>[^/]+)"), get_visibility)
    router.add("PUT", client_path("/directory/list/room/(?P<room_id>[^/]+)"), put_visibility)
    router.add("GET", client_path("/publicRooms"), get_public_rooms)
    router.add("POST", client_path("/publicRooms"), post_public_rooms)
    router.add("POST", client_path("/user_directory/search"), search_users)
