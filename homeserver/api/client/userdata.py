"""Profiles, presence, account data, tags, typing, receipts and read markers."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path
from homeserver.services.ephemeral import ReceiptService, TypingService
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.presence import PresenceService
from homeserver.services.userdata import AccountDataService, ProfileService

_USER = "/user/(?P<user_id>[^/]+)"
_ROOM = "/rooms/(?P<room_id>[^/]+)"


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    profiles: ProfileService,
    account_data: AccountDataService,
    typing: TypingService,
    receipts: ReceiptService,
    presence: PresenceService,
    presence_limiter: MessageRateLimiter | None = None,
) -> None:
    async def get_profile(request: server.Request, user_id: str) -> tuple[int, Any]:
        await authenticate(request, allow_guest=True)
        return 200, await profiles.get_profile(user_id)

    async def get_profile_field(request: server.Request, user_id: str, field: str) -> tuple[int, Any]:
        await authenticate(request, allow_guest=True)
        profile = await profiles.get_profile(user_id)
        if field not in profile:
            raise MatrixError(404, Codes.NOT_FOUND, f"Profile field {field} not set")
        return 200, {field: profile[field]}

    async def put_profile_field(request: server.Request, user_id: str, field: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        if field not in body.data:
            raise MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {field}")
        await profiles.set_field(requester.user_id, user_id, field, body.data[field])
        return 200, {}

    async def put_account_data(request: server.Request, user_id: str, data_type: str, room_id: str = "") -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        await account_data.put(requester.user_id, user_id, room_id, data_type, body.data)
        return 200, {}

    async def get_account_data(request: server.Request, user_id: str, data_type: str, room_id: str = "") -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await account_data.get(requester.user_id, user_id, room_id, data_type)

    async def get_tags(request: server.Request, user_id: str, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await account_data.get_tags(requester.user_id, user_id, room_id)

    async def put_tag(request: server.Request, user_id: str, room_id: str, tag: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        await account_data.set_tag(requester.user_id, user_id, room_id, tag, body.data)
        return 200, {}

    async def delete_tag(request: server.Request, user_id: str, room_id: str, tag: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        await account_data.delete_tag(requester.user_id, user_id, room_id, tag)
        return 200, {}

    async def put_typing(request: server.Request, room_id: str, user_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        if requester.user_id != user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "Cannot set typing for other users")
        body = parse_json_object(request)
        typing_flag = body.data.get("typing")
        if not isinstance(typing_flag, bool):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter typing must be a boolean")
        await typing.set_typing(room_id, user_id, typing_flag, body.int("timeout", minimum=0))
        return 200, {}

    async def post_receipt(request: server.Request, room_id: str, receipt_type: str, event_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        thread_id = body.str("thread_id")
        if receipt_type == "m.fully_read":
            await account_data.put_internal(requester.user_id, room_id, "m.fully_read", {"event_id": event_id})
            return 200, {}
        await receipts.send_receipt(room_id, requester.user_id, receipt_type, event_id, thread_id)
        return 200, {}

    async def read_markers(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        fully_read = body.str("m.fully_read")
        if fully_read is not None:
            await account_data.put_internal(requester.user_id, room_id, "m.fully_read", {"event_id": fully_read})
        for receipt_type in ("m.read", "m.read.private"):
            event_id = body.str(receipt_type)
            if event_id is not None:
                await receipts.send_receipt(room_id, requester.user_id, receipt_type, event_id, None)
        return 200, {}

    async def get_presence(request: server.Request, user_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await presence.get_presence(requester, user_id)

    async def put_presence(request: server.Request, user_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        if requester.user_id != user_id:
            raise MatrixError(403, Codes.FORBIDDEN, "Cannot set presence for other users")
        body = parse_json_object(request)
        state, status_msg = body.required_str("presence"), body.str("status_msg", max_length=1000)
        if presence_limiter is not None:
            await presence_limiter.check(requester)  # rc_presence.per_user
        await presence.set_presence(user_id, state, status_msg)
        return 200, {}

    router.add("GET", client_path("/presence/(?P<user_id>[^/]+)/status"), get_presence)
    router.add("PUT", client_path("/presence/(?P<user_id>[^/]+)/status"), put_presence)
    router.add("GET", client_path("/profile/(?P<user_id>[^/]+)"), get_profile)
    router.add("GET", client_path("/profile/(?P<user_id>[^/]+)/(?P<field>displayname|avatar_url)"), get_profile_field)
    router.add("PUT", client_path("/profile/(?P<user_id>[^/]+)/(?P<field>displayname|avatar_url)"), put_profile_field)
    router.add("PUT", client_path(f"{_USER}/account_data/(?P<data_type>[^/]+)"), put_account_data)
    router.add("GET", client_path(f"{_USER}/account_data/(?P<data_type>[^/]+)"), get_account_data)
    router.add("PUT", client_path(f"{_USER}{_ROOM}/account_data/(?P<data_type>[^/]+)"), put_account_data)
    router.add("GET", client_path(f"{_USER}{_ROOM}/account_data/(?P<data_type>[^/]+)"), get_account_data)
    router.add("GET", client_path(f"{_USER}{_ROOM}/tags"), get_tags)
    router.add("PUT", client_path(f"{_USER}{_ROOM}/tags/(?P<tag>[^/]+)"), put_tag)
    router.add("DELETE", client_path(f"{_USER}{_ROOM}/tags/(?P<tag>[^/]+)"), delete_tag)
    router.add("PUT", client_path(f"{_ROOM}/typing/(?P<user_id>[^/]+)"), put_typing)
    router.add("POST", client_path(f"{_ROOM}/receipt/(?P<receipt_type>[^/]+)/(?P<event_id>[^/]+)"), post_receipt)
    router.add("POST", client_path(f"{_ROOM}/read_markers"), read_markers)
