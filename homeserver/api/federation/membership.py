"""Inbound membership handshakes (spec: server-server API, joins, leaves, knocks, invites).

``GET /v1/make_join|make_leave|make_knock/{roomId}/{userId}``, ``PUT /v1|v2/send_join``,
``PUT /v1|v2/send_leave``, ``PUT /v1/send_knock`` and ``PUT /v2/invite``.  Each first
authenticates the X-Matrix signature (a server outside the allowlist gets 403 before
anything is read), then makes one call to
:class:`homeserver.federation.membership_resident.ResidentMembership`, which checks the
room's server ACL.  The v1 ``send_*`` answers keep their historical ``[200, body]`` shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.events.model import Event
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
_ID = "[^/]+"

JsonDict = dict[str, Any]


class Authenticator(Protocol):
    async def authenticate(self, request: server.Request) -> str: ...


class Resident(Protocol):
    async def make_membership(
        self, origin: str, room_id: str, user_id: str, membership: str, supported_versions: Sequence[str] | None
    ) -> JsonDict: ...

    async def send_membership(
        self, origin: str, room_id: str, event_id: str, pdu_json: Any, membership: str
    ) -> tuple[Event, JsonDict]: ...

    async def on_invite(
        self, origin: str, room_id: str, event_id: str, room_version_id: Any, pdu_json: Any, invite_room_state: Any
    ) -> JsonDict: ...


def _versions(request: server.Request) -> list[str]:
    """The ``ver`` query parameters: the room versions the joining server supports
    (absent means version 1 only, as the spec says)."""
    raw = (request.args or {}).get(b"ver", [])
    try:
        versions = [v.decode("utf-8") for v in raw]
    except UnicodeDecodeError:
        raise MatrixError(400, Codes.INVALID_PARAM, "Query parameter ver is not valid UTF-8") from None
    return versions or ["1"]


def register(router: Router, *, authenticator: Authenticator, resident: Resident) -> None:
    authenticate = authenticator.authenticate

    def make(membership: str, *, with_versions: bool) -> Any:
        async def handler(request: server.Request, room_id: str, user_id: str) -> tuple[int, Any]:
            origin = await authenticate(request)
            versions = _versions(request) if with_versions else None
            return 200, await resident.make_membership(origin, room_id, user_id, membership, versions)

        return handler

    def send(membership: str, *, v1: bool) -> Any:
        async def handler(request: server.Request, room_id: str, event_id: str) -> tuple[int, Any]:
            origin = await authenticate(request)
            body = parse_json_object(request)
            _, answer = await resident.send_membership(origin, room_id, event_id, body.data, membership)
            if membership == "join" and v1:
                answer = {k: v for k, v in answer.items() if k in ("origin", "state", "auth_chain")}
            return 200, ([200, answer] if v1 else answer)

        return handler

    async def invite(request: server.Request, room_id: str, event_id: str) -> tuple[int, Any]:
        origin = await authenticate(request)
        body = parse_json_object(request)
        return 200, await resident.on_invite(
            origin,
            room_id,
            event_id,
            body.data.get("room_version"),
            body.data.get("event"),
            body.data.get("invite_room_state", []),
        )

    member = f"(?P<room_id>{_ID})/(?P<user_id>{_ID})"
    event = f"(?P<room_id>{_ID})/(?P<event_id>{_ID})"
    router.add("GET", f"^{V1}/make_join/{member}$", make("join", with_versions=True))
    router.add("GET", f"^{V1}/make_knock/{member}$", make("knock", with_versions=True))
    router.add("GET", f"^{V1}/make_leave/{member}$", make("leave", with_versions=False))
    router.add("PUT", f"^{V2}/send_join/{event}$", send("join", v1=False))
    router.add("PUT", f"^{V1}/send_join/{event}$", send("join", v1=True))
    router.add("PUT", f"^{V2}/send_leave/{event}$", send("leave", v1=False))
    router.add("PUT", f"^{V1}/send_leave/{event}$", send("leave", v1=True))
    router.add("PUT", f"^{V1}/send_knock/{event}$", send("knock", v1=False))
    router.add("PUT", f"^{V2}/invite/{event}$", invite)
