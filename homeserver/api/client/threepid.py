"""E-mail addresses: validation (/register/email/requestToken, submit_token by link or code)
and the account's addresses (/account/3pid, add, delete, /account/3pid/email/requestToken)."""

from __future__ import annotations

import html
from typing import Any

from twisted.web import server

from homeserver.core.errors import Codes, MatrixError
from homeserver.http.auth import RequestAuthenticator
from homeserver.http.params import Body, parse_json_object
from homeserver.http.server import Router, client_path, query_param
from homeserver.services.policy.email_accounts import ADD_THREEPID, REGISTRATION, SUBMIT_PATHS, ThreepidService
from homeserver.services.uia import UserInteractiveAuth

_PASSWORD_FLOWS = [["m.login.password"]]


def write_html(request: server.Request, code: int, title: str, message: str) -> tuple[int, Any]:
    """Answer a browser (a link followed from an e-mail) with a small page."""
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    ).encode()
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(page)).encode())
    request.write(page)
    request.finish()
    return 0, None


def _request_token_args(body: Body) -> tuple[str, str, int, str | None]:
    email = body.required_str("email", max_length=254)
    secret = body.required_str("client_secret", max_length=255)
    attempt = body.int("send_attempt", required=True, minimum=0)
    assert attempt is not None
    return email, secret, attempt, body.str("next_link", max_length=2048)


def register(
    router: Router,
    *,
    authenticate: RequestAuthenticator,
    threepids: ThreepidService,
    uia: UserInteractiveAuth,
    registration_enabled: bool,
) -> None:
    def request_token(purpose: str) -> Any:
        async def handler(request: server.Request) -> tuple[int, Any]:
            if purpose == REGISTRATION and not registration_enabled:
                raise MatrixError(403, Codes.FORBIDDEN, "Registration has been disabled")
            if purpose == ADD_THREEPID:
                await authenticate(request)
            email, secret, attempt, next_link = _request_token_args(parse_json_object(request))
            sid = await threepids.request_token(
                purpose, email=email, client_secret=secret, send_attempt=attempt, next_link=next_link
            )
            return 200, {"sid": sid, "submit_url": threepids.submit_url(purpose)}

        return handler

    def submit_token(purpose: str) -> tuple[Any, Any]:
        async def by_link(request: server.Request) -> tuple[int, Any]:
            token, secret, sid = (query_param(request, k) for k in ("token", "client_secret", "sid"))
            if not token or not secret or not sid:
                return write_html(
                    request, 400, "Invalid link", "This link is incomplete; copy it again from the e-mail."
                )
            try:
                await threepids.submit_token(sid=sid, client_secret=secret, token=token, purpose=purpose)
            except MatrixError as e:
                return write_html(request, 400, "Validation failed", e.msg)
            return write_html(
                request, 200, "Address validated", "Your e-mail address is validated: go back to your app."
            )

        async def by_code(request: server.Request) -> tuple[int, Any]:
            body = parse_json_object(request)
            await threepids.submit_token(
                sid=body.required_str("sid", max_length=255),
                client_secret=body.required_str("client_secret", max_length=255),
                token=body.required_str("token", max_length=255),
                purpose=purpose,
            )
            return 200, {"success": True}

        return by_link, by_code

    async def list_threepids(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        return 200, {"threepids": await threepids.list_for(requester.user_id)}

    async def add_threepid(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        creds = {
            "sid": body.required_str("sid", max_length=255),
            "client_secret": body.required_str("client_secret", max_length=255),
        }
        _, session_id, _ = await uia.check(
            body=body.data,
            flows=_PASSWORD_FLOWS,
            uri=request.path.decode("ascii"),
            method="POST",
            description="add an e-mail address to your account",
            user_id=requester.user_id,
        )
        await threepids.add_from_session(requester.user_id, creds)
        await uia.finish(session_id)
        return 200, {}

    async def legacy_add_threepid(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        creds = body.data.get("three_pid_creds", body.data.get("threePidCreds"))
        await threepids.add_from_session(requester.user_id, creds)
        return 200, {}

    async def delete_threepid(request: server.Request) -> tuple[int, Any]:
        requester = await authenticate(request)
        body = parse_json_object(request)
        await threepids.delete(
            requester.user_id, body.required_str("medium", max_length=16), body.required_str("address", max_length=254)
        )
        return 200, {"id_server_unbind_result": "no-support"}

    router.add("POST", client_path("/register/email/requestToken"), request_token(REGISTRATION))
    router.add("POST", client_path("/account/3pid/email/requestToken"), request_token(ADD_THREEPID))
    for purpose in (REGISTRATION, ADD_THREEPID):
        by_link, by_code = submit_token(purpose)
        router.add("GET", f"^{SUBMIT_PATHS[purpose]}$", by_link)
        router.add("POST", f"^{SUBMIT_PATHS[purpose]}$", by_code)
    router.add("GET", client_path("/account/3pid"), list_threepids)
    router.add("POST", client_path("/account/3pid"), legacy_add_threepid)
    router.add("POST", client_path("/account/3pid/add"), add_threepid)
    router.add("POST", client_path("/account/3pid/delete"), delete_threepid)
