"""/pushrules: read and change the user's push rules."""

from __future__ import annotations

from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.push import PushRuleService

_RULE = "/pushrules/global/(?P<kind>[^/]+)/(?P<rule_id>[^/]+)"


def register(router: Router, *, authenticate: RequestAuthenticator, push: PushRuleService) -> None:
    async def get_all(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await push.get_all(requester.user_id)

    async def get_global(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, (await push.get_all(requester.user_id))["global"]

    async def get_rule(request: server.Request, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, await push.get_one(requester.user_id, kind, rule_id)

    async def put_rule(request: server.Request, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        await push.put_rule(
            requester.user_id, kind, rule_id, body.data, query_param(request, "before"), query_param(request, "after")
        )
        return 200, {}

    async def delete_rule(request: server.Request, kind: str, rule_id: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        await push.delete_rule(requester.user_id, kind, rule_id)
        return 200, {}

    async def get_attr(request: server.Request, kind: str, rule_id: str, attr: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        rule = await push.get_one(requester.user_id, kind, rule_id)
        return 200, {attr: rule[attr]}

    async def put_attr(request: server.Request, kind: str, rule_id: str, attr: str) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        if attr == "enabled":
            await push.set_enabled(requester.user_id, kind, rule_id, body.data)
        elif attr == "actions":
            await push.set_actions(requester.user_id, kind, rule_id, body.data)
        else:  # pragma: no cover - the route only matches the two
            raise MatrixError(400, Codes.UNRECOGNIZED, f"Unknown attribute {attr}")
        return 200, {}

    router.add("GET", client_path("/pushrules/?"), get_all)
    router.add("GET", client_path("/pushrules/global/?"), get_global)
    router.add("GET", client_path(_RULE), get_rule)
    router.add("PUT", client_path(_RULE), put_rule)
    router.add("DELETE", client_path(_RULE), delete_rule)
    router.add("GET", client_path(_RULE + "/(?P<attr>enabled|actions)"), get_attr)
    router.add("PUT", client_path(_RULE + "/(?P<attr>enabled|actions)"), put_attr)
