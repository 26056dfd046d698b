"""Rooms: /createRoom, membership, sending, state, redaction and reading endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.core.ids import is_valid_server_name
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import Body, parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.auth import Requester
from homeserver.services.membership_ratelimit import MembershipRateLimits
from homeserver.services.message_ratelimit import MessageRateLimiter
from homeserver.services.messages import MessageService
from homeserver.services.rooms import PRESETS, CreateRoomRequest, RoomService

_ROOM = "/rooms/(?P<room_id>[^/]+)"
MAX_EVENT_TYPE_LENGTH = 255


def parse_create_room(body: Body) -> CreateRoomRequest:
    visibility = body.str("visibility") or "private"
    if visibility not in ("public", "private"):
        raise MatrixError(400, Codes.INVALID_PARAM, "Parameter visibility must be 'public' or 'private'")
    preset = body.str("preset")
    if preset is not None and preset not in PRESETS:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Parameter preset must be one of {', '.join(PRESETS)}")
    initial: list[tuple[str, str, dict[str, Any]]] = []
    raw_state = body.raw("initial_state")
    if raw_state is not None:
        if not isinstance(raw_state, list):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter initial_state must be a list")
        for i, item in enumerate(raw_state):
            if not isinstance(item, dict):
                raise MatrixError(400, Codes.BAD_JSON, f"Parameter initial_state[{i}] must be an object")
            sub = Body(item, prefix=f"initial_state[{i}].")
            content = sub.object("content", required=True)
            assert content is not None
            initial.append((sub.required_str("type"), sub.str("state_key") or "", content.data))
    invite_3pid: list[dict[str, Any]] = []
    raw_3pid = body.raw("invite_3pid")
    if raw_3pid is not None:
        if not isinstance(raw_3pid, list):
            raise MatrixError(400, Codes.BAD_JSON, "Parameter invite_3pid must be a list")
        for i, item in enumerate(raw_3pid):
            if not isinstance(item, dict):
                raise MatrixError(400, Codes.BAD_JSON, f"Parameter invite_3pid[{i}] must be an object")
            sub = Body(item, prefix=f"invite_3pid[{i}].")
            for key in ("medium", "address"):
                sub.required_str(key)
            for key in ("id_server", "id_access_token"):
                sub.str(key)
            invite_3pid.append(dict(item))
    creation = body.object("creation_content")
    override = body.object("power_level_content_override")
    version = body.raw("room_version")
    if version is not None and not isinstance(version, str):
        raise MatrixError(400, Codes.BAD_JSON, "Parameter room_version must be a string")
    return CreateRoomRequest(
        visibility=visibility,
        room_alias_name=body.str("room_alias_name"),
        name=body.str("name"),
        topic=body.str("topic"),
        invite=tuple(body.str_list("invite") or ()),
        room_version=version,
        creation_content=creation.data if creation else {},
        initial_state=tuple(initial),
        preset=preset,
        is_direct=body.bool("is_direct", False),
        power_level_content_override=override.data if override else None,
        invite_3pid=tuple(invite_3pid),
    )


def _check_event_type(event_type: str) -> None:
    if not event_type or len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise MatrixError(400, Codes.INVALID_PARAM, "Event type must be 1-255 characters")


def _via_servers(request: server.Request) -> list[str]:
    """The ``via`` (and older ``server_name``) query parameters: servers to join through."""
    servers: list[str] = []
    for name in (b"via", b"server_name"):
        for raw in (request.args or {}).get(name, []):
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"Query parameter {name.decode()} is not valid UTF-8"
                ) from None
            if not is_valid_server_name(value):
                raise MatrixError(
                    400, Codes.INVALID_PARAM, f"Query parameter {name.decode()} is not a server name: {value!r}"
                )
            servers.append(value)
    return list(dict.fromkeys(servers))


def _limit(request: server.Request, default: int) -> int:
    raw = query_param(request, "limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter limit must be an integer") from None
    if value < 0:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter limit must not be negative")
    return value


def _massaged_ts(request: server.Request, requester: Requester) -> int | None:
    """An application service's ``ts`` query parameter (history import); ignored for users."""
    raw = query_param(request, "ts")
    if raw is None or requester.app_service is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter ts must be an integer (ms)") from None
    if not 0 <= value < 2**53:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter ts is out of range")
    return value


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    rooms: RoomService,
    messages: MessageService,
    parse_filter: Callable[[str, str], Any],
    message_limiter: MessageRateLimiter | None = None,
    membership_limits: MembershipRateLimits | None = None,
) -> None:
    async def limit(requester: Requester) -> None:
        # rc_message: events a client creates (not memberships, which have their own limits)
        if message_limiter is not None:
            await message_limiter.check(requester)

    async def limit_membership(requester: Requester, room_id: str, action: str, target: str | None) -> None:
        # rc_joins, rc_joins_per_room, rc_invites
        if membership_limits is None:
            return
        if action == "join":
            await membership_limits.join(requester, room_id)
        elif action == "invite" and target is not None:
            await membership_limits.invite(requester, room_id, target)

    async def create_room(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        req = parse_create_room(parse_json_object(request, allow_empty=True))
        if membership_limits is not None:
            await membership_limits.room_creation(requester)  # rc_room_creation
        room_id, alias = await rooms.create_room(requester.user_id, req)
        body: dict[str, Any] = {"room_id": room_id}
        if alias:
            body["room_alias"] = alias
        return 200, body

    async def join(request: server.Request, room: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        via = _via_servers(request)
        room_id, alias_servers = await rooms.resolve_room_and_servers(room)
        await limit_membership(requester, room_id, "join", None)
        await rooms.update_membership(
            sender=requester.user_id,
            room_id=room_id,
            action="join",
            reason=body.str("reason"),
            servers=[*via, *alias_servers],
        )
        return 200, {"room_id": room_id}

    def membership_action(action: str) -> Callable[..., Any]:
        async def handler(request: server.Request, room_id: str) -> tuple[int, Any]:
            requester = await authenticate(request)
            body = parse_json_object(request, allow_empty=True)
            if action == "invite" and not body.has("user_id") and (body.has("medium") or body.has("address")):
                await rooms.invite_threepid(requester.user_id, room_id, body.data)  # an e-mail invite
                return 200, {}
            target = body.str("user_id") if action in ("invite", "kick", "ban", "unban") else None
            if action in ("invite", "kick", "ban", "unban") and target is None:
                raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: user_id")
            await limit_membership(requester, room_id, action, target)
            await rooms.update_membership(
                sender=requester.user_id, room_id=room_id, action=action, target=target, reason=body.str("reason")
            )
            return 200, {} if action != "join" else {"room_id": room_id}

        return handler

    async def knock(request: server.Request, room: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        via = _via_servers(request)
        room_id, alias_servers = await rooms.resolve_room_and_servers(room)
        await rooms.update_membership(
            sender=requester.user_id,
            room_id=room_id,
            action="knock",
            reason=body.str("reason"),
            servers=[*via, *alias_servers],
        )
        return 200, {"room_id": room_id}

    async def forget(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        await rooms.forget(requester.user_id, room_id)
        return 200, {}

    async def joined_rooms(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, {"joined_rooms": await rooms.joined_rooms(requester.user_id)}

    async def send_event(request: server.Request, room_id: str, event_type: str, txn_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        _check_event_type(event_type)
        body = parse_json_object(request)
        await limit(requester)
        sent = await messages.send(
            requester, room_id, event_type, body.data, txn_id=txn_id, origin_server_ts=_massaged_ts(request, requester)
        )
        return 200, {"event_id": sent.event.event_id}

    async def put_state(request: server.Request, room_id: str, event_type: str, state_key: str = "") -> tuple[int, Any]:
        requester = await authenticate(request)
        _check_event_type(event_type)
        body = parse_json_object(request)
        if event_type == "m.room.member":
            membership = body.data.get("membership")
            actions = {"join": "join", "invite": "invite", "leave": "leave", "ban": "ban", "knock": "knock"}
            if membership not in actions:
                raise MatrixError(400, Codes.BAD_JSON, "Parameter membership is invalid")
            action = actions[membership]
            if membership == "leave" and state_key != requester.user_id:
                action = "kick"
            await limit_membership(requester, room_id, action, state_key)
            sent = await rooms.update_membership(
                sender=requester.user_id, room_id=room_id, action=action, target=state_key,
                reason=body.str("reason"), extra_content=body.data,
            )
        else:
            await limit(requester)
            sent = await messages.send(
                requester, room_id, event_type, body.data, state_key=state_key,
                origin_server_ts=_massaged_ts(request, requester),
            )
        return 200, {"event_id": sent.event.event_id}

    async def get_state_event(request: server.Request, room_id: str, event_type: str, state_key: str = "") -> tuple[int, Any]:
        requester = await authenticate(request)
        stored = await messages.get_state_event(requester, room_id, event_type, state_key)
        if query_param(request, "format") == "event":
            return 200, (await messages.presenter.serialize([stored], user_id=None, device_id=None, with_relations=False))[0]
        if stored.redacted_by:
            return 200, {}
        return 200, dict(stored.event.content)

    async def get_state(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await messages.get_state(requester, room_id)

    async def redact(request: server.Request, room_id: str, event_id: str, txn_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request, allow_empty=True)
        reason = body.str("reason")
        content = {"reason": reason} if reason is not None else {}
        await limit(requester)
        sent = await messages.redact(requester, room_id, event_id, content, txn_id=txn_id)
        return 200, {"event_id": sent.event.event_id}

    async def get_event(request: server.Request, room_id: str, event_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await messages.get_event(requester, room_id, event_id)

    async def get_messages(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        direction = query_param(request, "dir") or "b"
        if direction not in ("b", "f"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter dir must be 'b' or 'f'")
        raw_filter = query_param(request, "filter")
        event_filter = parse_filter(requester.user_id, raw_filter) if raw_filter else None
        return 200, await messages.messages(
            requester, room_id,
            from_token=query_param(request, "from"), to_token=query_param(request, "to"),
            backwards=direction == "b", limit=_limit(request, 10), event_filter=event_filter,
        )

    async def context(request: server.Request, room_id: str, event_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        raw_filter = query_param(request, "filter")
        event_filter = parse_filter(requester.user_id, raw_filter) if raw_filter else None
        return 200, await messages.context(requester, room_id, event_id, limit=_limit(request, 10), event_filter=event_filter)

    async def members(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        chunk = await messages.members(
            requester, room_id, at=query_param(request, "at"),
            membership=query_param(request, "membership"), not_membership=query_param(request, "not_membership"),
        )
        return 200, {"chunk": chunk}

    async def joined_members(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, {"joined": await messages.joined_members(requester, room_id)}

    def relations_handler(**fixed: Any) -> Callable[..., Any]:
        async def handler(request: server.Request, room_id: str, event_id: str, rel_type: str | None = None, event_type: str | None = None) -> tuple[int, Any]:
            requester = await authenticate(request)
            direction = query_param(request, "dir") or "b"
            if direction not in ("b", "f"):
                raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter dir must be 'b' or 'f'")
            return 200, await messages.relations(
                requester, room_id, event_id, rel_type=rel_type, event_type=event_type,
                limit=_limit(request, 50), backwards=direction == "b", from_token=query_param(request, "from"),
            )

        return handler

    async def threads(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        include = query_param(request, "include") or "all"
        if include not in ("all", "participated"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter include must be 'all' or 'participated'")
        return 200, await messages.threads(requester, room_id, limit=_limit(request, 50), include=include)

    async def upgrade(request: server.Request, room_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        new_version = body.required_str("new_version")
        return 200, {"replacement_room": await rooms.upgrade_room(requester.user_id, room_id, new_version)}

    router.add("POST", client_path("/createRoom"), create_room)
    router.add("POST", client_path("/join/(?P<room>[^/]+)"), join)
    router.add("POST", client_path("/knock/(?P<room>[^/]+)"), knock)
    for action in ("join", "invite", "leave", "kick", "ban", "unban"):
        router.add("POST", client_path(f"{_ROOM}/{action}"), membership_action(action))
    router.add("POST", client_path(f"{_ROOM}/forget"), forget)
    router.add("GET", client_path("/joined_rooms"), joined_rooms)
    router.add("PUT", client_path(f"{_ROOM}/send/(?P<event_type>[^/]+)/(?P<txn_id>[^/]+)"), send_event)
    router.add("PUT", client_path(f"{_ROOM}/state/(?P<event_type>[^/]+)/?"), put_state)
    router.add("PUT", client_path(f"{_ROOM}/state/(?P<event_type>[^/]+)/(?P<state_key>[^/]+)"), put_state)
    router.add("GET", client_path(f"{_ROOM}/state/(?P<event_type>[^/]+)/?"), get_state_event)
    router.add("GET", client_path(f"{_ROOM}/state/(?P<event_type>[^/]+)/(?P<state_key>[^/]+)"), get_state_event)
    router.add("GET", client_path(f"{_ROOM}/state"), get_state)
    router.add("PUT", client_path(f"{_ROOM}/redact/(?P<event_id>[^/]+)/(?P<txn_id>[^/]+)"), redact)
    router.add("GET", client_path(f"{_ROOM}/event/(?P<event_id>[^/]+)"), get_event)
    router.add("GET", client_path(f"{_ROOM}/messages"), get_messages)
    router.add("GET", client_path(f"{_ROOM}/context/(?P<event_id>[^/]+)"), context)
    router.add("GET", client_path(f"{_ROOM}/members"), members)
    router.add("GET", client_path(f"{_ROOM}/joined_members"), joined_members)
    rel = f"{_ROOM}/relations/(?P<event_id>[^/]+)"
    router.add("GET", client_path(rel, ("v1",)), relations_handler())
    router.add("GET", client_path(rel + "/(?P<rel_type>[^/]+)", ("v1",)), relations_handler())
    router.add("GET", client_path(rel + "/(?P<rel_type>[^/]+)/(?P<event_type>[^/]+)", ("v1",)), relations_handler())
    router.add("GET", client_path(f"{_ROOM}/threads", ("v1",)), threads)
    router.add("POST", client_path(f"{_ROOM}/upgrade"), upgrade)
