"""Account validity: the renewal link, a new renewal e-mail, and Synapse's admin API."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.web import server

from homeserver.api.client.threepid import write_html
from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.auth import Requester
from homeserver.services.policy.validity import RENEW_PATH, AccountValidityService


def _date(ts_ms: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    require_admin: Any,
    validity: AccountValidityService,
) -> None:
    async def renew(request: server.Request) -> tuple[int, Any]:
        token = query_param(request, "token")
        if not token:
            return write_html(request, 400, "Invalid link", "This renewal link has no token.")
        try:
            renewed, expiry = await validity.renew(token)
        except MatrixError:
            return write_html(request, 404, "Invalid link", "This renewal link is not valid.")
        if renewed:
            return write_html(request, 200, "Account renewed", f"Your account is valid until {_date(expiry)}.")
        return write_html(request, 200, "Account already renewed", f"Your account is valid until {_date(expiry)}.")

    async def send_mail(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        if not await validity.send_renewal_email(requester.user_id):
            raise MatrixError(400, Codes.THREEPID_NOT_FOUND, "No e-mail address is bound to this account")
        return 200, {}

    async def admin_validity(request: server.Request) -> tuple[int, Any]:
        requester: Requester = await authenticate(request)
        await require_admin(requester)
        body = parse_json_object(request)
        user_id = body.required_str("user_id", max_length=255)
        expiration_ts = body.int("expiration_ts", minimum=0)
        enable_emails = body.bool("enable_renewal_emails", True)
        expiry = await validity.admin_set(user_id, expiration_ts, enable_emails)
        return 200, {"expiration_ts": expiry}

    router.add("GET", f"^{RENEW_PATH}$", renew)
    router.add("POST", client_path("/account_validity/send_mail", ()), send_mail)
    router.add("POST", r"^/_synapse/admin/v1/account_validity/validity$", admin_validity)
