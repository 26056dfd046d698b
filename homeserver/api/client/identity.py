"""Which homeserver owns an e-mail address: Tchap's identity server lookup, served here.

``GET /_matrix/identity/api/v1/info?medium=email&address=...`` (and the v2 path) answers
``{"hs": "<server>"}`` from ``government_policy.email_domains`` / ``external_server``.
No access token is needed: clients ask before they have an account, peers before inviting.

``GET /_matrix/identity/v2/pubkey/isvalid?public_key=...`` is the ``key_validity_url`` of
this server's e-mail invites (``m.room.third_party_invite``): ``{"valid": bool}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.server import Router, query_param
from homeserver.services.policy.email_accounts import EmailMapping


def register(router: Router, *, mapping: EmailMapping, is_invite_key: Callable[[str], bool] | None = None) -> None:
    async def info(request: server.Request) -> tuple[int, Any]:
        return 200, mapping.info(query_param(request, "medium"), query_param(request, "address"))

    router.add("GET", r"^/_matrix/identity/(?:api/v1|v2)/info$", info)
    if is_invite_key is None:
        return
    check = is_invite_key

    async def key_is_valid(request: server.Request) -> tuple[int, Any]:
        public_key = query_param(request, "public_key")
        if not public_key:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: public_key")
        return 200, {"valid": check(public_key)}

    router.add("GET", r"^/_matrix/identity/(?:api/v1|v2)/pubkey/(?:ephemeral/)?isvalid$", key_is_valid)
